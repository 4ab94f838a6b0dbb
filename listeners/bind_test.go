package listeners

import (
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// listenOne listens on s with default options and wants exactly one listener,
// closed when the test ends.
func listenOne(t *testing.T, set *Set, s string) net.Listener {
	t.Helper()
	a, err := ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := set.Listen(a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 {
		t.Fatalf("Listen(%s) returned %d listeners; want 1", s, len(ls))
	}
	t.Cleanup(func() { ls[0].Close() })
	return ls[0]
}

// roundTrip dials l's address, sends a line and checks that l accepts the
// connection and reads it.
func roundTrip(t *testing.T, l net.Listener) {
	t.Helper()
	network := l.Addr().Network()
	c, err := net.DialTimeout(network, l.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, l.Addr(), err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	setDeadline(t, l, time.Now().Add(5*time.Second))
	s, err := l.Accept()
	if err != nil {
		t.Fatalf("accept on %s: %v", l.Addr(), err)
	}
	defer s.Close()
	s.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("read %q, %v; want %q", buf, err, "ping\n")
	}
}

func setDeadline(t *testing.T, l net.Listener, d time.Time) {
	t.Helper()
	dl, ok := l.(interface{ SetDeadline(time.Time) error })
	if !ok {
		t.Fatalf("%T has no SetDeadline", l)
	}
	if err := dl.SetDeadline(d); err != nil {
		t.Fatal(err)
	}
}

func hasIPv6(t *testing.T) bool {
	t.Helper()
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func TestListenTCP(t *testing.T) {
	set := newSet(nil, nil)
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0", ":0"} {
		t.Run(addr, func(t *testing.T) {
			if strings.Contains(addr, "::") && !hasIPv6(t) {
				t.Skip("no IPv6 loopback")
			}
			l := listenOne(t, set, addr)
			if strings.HasPrefix(addr, "[::1]") && l.Addr().(*net.TCPAddr).IP.To4() != nil {
				t.Fatalf("listening on %s; want an IPv6 address", l.Addr())
			}
			roundTrip(t, l)
		})
	}
}

// An IPv4 wildcard and an IPv6 wildcard on one port are two sockets, as
// written, not two dual-stack sockets fighting over the port.
func TestListenTCPWildcardsCoexist(t *testing.T) {
	if !hasIPv6(t) {
		t.Skip("no IPv6")
	}
	set := newSet(nil, nil)
	v4 := listenOne(t, set, "0.0.0.0:0")
	port := v4.Addr().(*net.TCPAddr).Port
	v6 := listenOne(t, set, "[::]:"+strconv.Itoa(port))
	if got := v6.Addr().(*net.TCPAddr).Port; got != port {
		t.Fatalf("[::] listener on port %d; want %d", got, port)
	}
}

func TestListenTCPInUse(t *testing.T) {
	set := newSet(nil, nil)
	l := listenOne(t, set, "127.0.0.1:0")
	a, _ := ParseAddr(l.Addr().String())
	_, err := set.Listen(a, Options{})
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second Listen(%s) = %v; want EADDRINUSE", a, err)
	}
	want := "listen " + a.String() + ": bind: address already in use"
	if err.Error() != want {
		t.Fatalf("error %q; want %q", err, want)
	}
}

func unixAddr(t *testing.T, path string) Addr {
	t.Helper()
	a, err := ParseAddr("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	set := newSet(nil, nil)

	t.Run("new", func(t *testing.T) {
		path := filepath.Join(dir, "new.sock")
		l := listenOne(t, set, "unix:"+path)
		roundTrip(t, l)
		checkMode(t, path, 0o666)
		l.Close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("socket file after Close: %v; want it removed", err)
		}
	})

	t.Run("mode", func(t *testing.T) {
		path := filepath.Join(dir, "mode.sock")
		ls, err := set.Listen(unixAddr(t, path), Options{UnixMode: 0o600})
		if err != nil {
			t.Fatal(err)
		}
		defer ls[0].Close()
		checkMode(t, path, 0o600)
	})

	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		old, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		old.(*net.UnixListener).SetUnlinkOnClose(false)
		old.Close() // leaves a socket file nobody listens on, as a killed rouse would
		if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
			t.Fatalf("setup: stale socket file: %v, %v", fi, err)
		}
		roundTrip(t, listenOne(t, set, "unix:"+path))
	})

	t.Run("live socket refused", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		live, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		_, err = set.Listen(unixAddr(t, path), Options{})
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("Listen over a live socket = %v; want EADDRINUSE", err)
		}
		want := "listen unix:" + path + ": another process is listening on " + path + ": address already in use"
		if err.Error() != want {
			t.Fatalf("error %q; want %q", err, want)
		}
		// The probe that found it live is the first connection in its
		// backlog: it arrives empty and closed.
		setDeadline(t, live, time.Now().Add(5*time.Second))
		probe, err := live.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if n, err := probe.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("probe connection read %d, %v; want EOF", n, err)
		}
		probe.Close()
		roundTrip(t, live) // untouched: the file is still there and still served
	})

	t.Run("non-socket refused", func(t *testing.T) {
		path := filepath.Join(dir, "file.sock")
		if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := set.Listen(unixAddr(t, path), Options{})
		if err == nil || !strings.Contains(err.Error(), path+" exists and is not a socket (mode -rw-r--r--); not removing it") {
			t.Fatalf("Listen over a regular file = %v", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Fatalf("file after refused Listen: %q, %v; want it untouched", b, err)
		}
	})

	t.Run("directory refused", func(t *testing.T) {
		path := filepath.Join(dir, "adir")
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := set.Listen(unixAddr(t, path), Options{})
		if err == nil || !strings.Contains(err.Error(), "is not a socket") {
			t.Fatalf("Listen over a directory = %v", err)
		}
	})

	t.Run("missing parent refused", func(t *testing.T) {
		parent := filepath.Join(dir, "missing")
		_, err := set.Listen(unixAddr(t, filepath.Join(parent, "x.sock")), Options{})
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "socket directory: stat "+parent) {
			t.Fatalf("Listen with a missing parent = %v; want a not-exist error naming %s", err, parent)
		}
		if _, err := os.Stat(parent); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("parent after Listen: %v; want it still missing", err)
		}
	})

	t.Run("relative path refused", func(t *testing.T) {
		_, err := set.Listen(Addr{Kind: Unix, Address: "rel.sock"}, Options{})
		if err == nil || err.Error() != `listen unix:rel.sock: unix socket path "rel.sock" is not absolute` {
			t.Fatalf("Listen(relative) = %v", err)
		}
	})
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != want {
		t.Fatalf("%s has mode %v; want a socket with %v", path, fi.Mode(), want)
	}
}

func TestListenUnknownKind(t *testing.T) {
	_, err := newSet(nil, nil).Listen(Addr{Kind: Kind(9), Address: "x"}, Options{})
	if err == nil || err.Error() != "listen x: unknown address kind Kind(9)" {
		t.Fatalf("Listen(Kind 9) = %v", err)
	}
}

// NoKeepAlive: connections accepted on the listener have SO_KEEPALIVE off;
// by default Go turns it on.
func TestListenTCPNoKeepAlive(t *testing.T) {
	set := newSet(nil, nil)
	for _, no := range []bool{false, true} {
		a, err := ParseAddr("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns, err := set.Listen(a, Options{NoKeepAlive: no})
		if err != nil {
			t.Fatal(err)
		}
		l := lns[0]
		defer l.Close()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		raw, _ := s.(*net.TCPConn).SyscallConn()
		var on int
		raw.Control(func(fd uintptr) {
			on, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		})
		if err != nil {
			t.Fatal(err)
		}
		if (on == 0) != no {
			t.Errorf("NoKeepAlive %v: SO_KEEPALIVE = %d", no, on)
		}
	}
}
