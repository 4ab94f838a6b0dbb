package listeners

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fdStoreReceiver is systemd's end of the notify socket: it reads each
// datagram with the descriptors attached to it, as systemd's store does.
type fdStoreReceiver struct {
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []storeMsg
	done chan struct{}
}

type storeMsg struct {
	state string
	files []*os.File
}

func newFDStoreReceiver(t *testing.T) (*fdStoreReceiver, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	r := &fdStoreReceiver{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*16))
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := storeMsg{state: string(buf[:n])}
			cmsgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, c := range cmsgs {
				fds, _ := unix.ParseUnixRights(&c)
				for _, fd := range fds {
					m.files = append(m.files, os.NewFile(uintptr(fd), "stored"))
				}
			}
			r.mu.Lock()
			r.msgs = append(r.msgs, m)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-r.done
		for _, m := range r.msgs {
			for _, f := range m.files {
				f.Close()
			}
		}
	})
	client, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return r, client
}

// wait returns the messages once at least n have come.
func (r *fdStoreReceiver) wait(t *testing.T, n int) []storeMsg {
	t.Helper()
	var got []storeMsg
	if !poll(10*time.Second, func() bool {
		r.mu.Lock()
		got = append([]storeMsg(nil), r.msgs...)
		r.mu.Unlock()
		return len(got) >= n
	}) {
		t.Fatalf("got %d messages on the notify socket, want %d", len(got), n)
	}
	return got
}

// TestFDStore walks a socket through two runs of rouse under a fake
// systemd: the first run binds a TCP and a unix address and stores both
// with FDSTORE=1 under their names (the control-like socket, without Keep,
// is not stored); while no rouse runs, a client connects and is queued,
// not refused; the second run takes both back by name without binding
// (the queued client is accepted), drops a stored socket whose address is
// gone with FDSTOREREMOVE=1 and its file, and Forget drops another.
func TestFDStore(t *testing.T) {
	before := openFDs(t)
	dir := t.TempDir()
	systemd, notify := newFDStoreReceiver(t)
	tcp := Addr{Kind: TCP, Address: freeTCPAddr(t)}
	sock := Addr{Kind: Unix, Address: filepath.Join(dir, "app.sock")}
	gone := Addr{Kind: Unix, Address: filepath.Join(dir, "gone.sock")}
	control := Addr{Kind: Unix, Address: filepath.Join(dir, "control.sock")}

	// First run.
	first := newSet(nil, nil)
	first.UseFDStore(notify)
	var lns []net.Listener
	for _, a := range []Addr{tcp, sock, gone} {
		ls, err := first.Listen(a, Options{Keep: true})
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ls...)
	}
	ctl, err := first.Listen(control, Options{})
	if err != nil {
		t.Fatal(err)
	}
	msgs := systemd.wait(t, 3)
	var passed []*os.File
	for i, a := range []Addr{tcp, sock, gone} {
		name, _ := StoreName(a)
		if want := "FDSTORE=1\nFDNAME=" + name; msgs[i].state != want || len(msgs[i].files) != 1 {
			t.Fatalf("message %d: %q with %d fds, want %q with one", i, msgs[i].state, len(msgs[i].files), want)
		}
		if got, want := sockName(t, msgs[i].files[0]), lns[i].Addr().String(); got != want {
			t.Errorf("stored fd for %s is bound to %s, want %s", a, got, want)
		}
		// What systemd passes at the next start: a dup, named.
		fd, err := unix.FcntlInt(msgs[i].files[0].Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		passed = append(passed, os.NewFile(uintptr(fd), name))
	}
	closeAll(lns) // rouse exits: the stored sockets and the unix files stay
	ctl[0].Close()
	for _, a := range []Addr{sock, gone} {
		if _, err := os.Lstat(a.Address); err != nil {
			t.Errorf("the file of stored %s is gone after close: %v", a, err)
		}
	}
	if _, err := os.Lstat(control.Address); err == nil {
		t.Errorf("the control socket (not stored) left its file behind")
	}

	// Between the runs: a client is queued by the kernel, not refused.
	waiting, err := net.DialTimeout("tcp", tcp.Address, 5*time.Second)
	if err != nil {
		t.Fatalf("connect while no rouse runs: %v (want it queued)", err)
	}
	defer waiting.Close()
	io.WriteString(waiting, "queued\n")

	// Second run: gone is no longer in the config.
	second := newSet(nil, passed)
	second.UseFDStore(notify)
	ln, err := second.Listen(tcp, Options{Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ln[0].Close()
	setDeadline(t, ln[0], time.Now().Add(5*time.Second))
	c, err := ln[0].Accept()
	if err != nil {
		t.Fatalf("accept the client queued between the runs: %v", err)
	}
	line := make([]byte, 7)
	io.ReadFull(c, line)
	c.Close()
	if string(line) != "queued\n" {
		t.Errorf("read %q from the queued client", line)
	}
	us, err := second.Listen(sock, Options{Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, us[0])
	us[0].Close()
	second.CloseUnused()
	goneName, _ := StoreName(gone)
	msgs = systemd.wait(t, 4)
	if want := "FDSTOREREMOVE=1\nFDNAME=" + goneName; len(msgs) != 4 || msgs[3].state != want {
		t.Errorf("after CloseUnused: %d messages, last %q; want only %q more (nothing stored again)", len(msgs), msgs[len(msgs)-1].state, want)
	}
	if _, err := os.Lstat(gone.Address); err == nil {
		t.Errorf("the file of the dropped stored socket %s is still there", gone)
	}
	second.Forget(sock)
	sockName, _ := StoreName(sock)
	if msgs = systemd.wait(t, 5); msgs[4].state != "FDSTOREREMOVE=1\nFDNAME="+sockName {
		t.Errorf("Forget sent %q", msgs[4].state)
	}
	if _, err := os.Lstat(sock.Address); err == nil {
		t.Errorf("Forget left the file of %s", sock)
	}
	ln[0].Close()
	waiting.Close()
	systemd.conn.Close()
	<-systemd.done
	for _, m := range systemd.msgs {
		for _, f := range m.files {
			f.Close()
		}
	}
	systemd.msgs = nil
	notify.Close()
	if after := openFDs(t); after > before {
		t.Errorf("%d descriptors open after the test, %d before", after, before)
	}
}

// TestStoreName proves that store names are valid FileDescriptorName=
// values, distinct for distinct addresses, and read back to the address.
func TestStoreName(t *testing.T) {
	seen := map[string]string{}
	for _, s := range []string{
		"127.0.0.1:80", "[::1]:80", ":80", "localhost:8080",
		"unix:/run/rouse/a.sock", "unix:/tmp/a:b.sock", "unix:/tmp/a%3Ab.sock", "unix:/tmp/with space.sock",
	} {
		a, err := ParseAddr(s)
		if err != nil {
			t.Fatal(err)
		}
		name, ok := StoreName(a)
		if !ok {
			t.Errorf("%s: not storable", s)
			continue
		}
		if err := checkFDName(name); err != nil {
			t.Errorf("%s: name %q: %v", s, name, err)
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("%s and %s share the name %q", prev, s, name)
		}
		seen[name] = s
		if back, ok := addrOfStoreName(name); !ok || back != a {
			t.Errorf("%s: name %q reads back as %v %v", s, name, back, ok)
		}
	}
	if _, ok := StoreName(Addr{Kind: Systemd, Address: "web"}); ok {
		t.Error("a systemd socket would be stored")
	}
	if _, ok := StoreName(Addr{Kind: Unix, Address: "/" + strings.Repeat("%", 100)}); ok {
		t.Error("a name over 255 bytes would be stored")
	}
}

func sockName(t *testing.T, f *os.File) string {
	t.Helper()
	sa, err := unix.Getsockname(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
	case *unix.SockaddrUnix:
		return sa.Name
	}
	return ""
}

func closeAll(lns []net.Listener) {
	for _, l := range lns {
		l.Close()
	}
}
