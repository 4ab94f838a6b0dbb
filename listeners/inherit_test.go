package listeners

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests give newSet real sockets made the way systemd makes them
// (blocking, bound, listening), named as activation.Files names them.
// TestSystemdActivation covers the same paths through systemd-socket-activate.

// socketFile makes a unix socket of type typ bound at path, listening when
// listen is set, as an *os.File named name.
func socketFile(t *testing.T, name, path string, typ int, listen bool) *os.File {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if path != "" {
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
	}
	if listen {
		if err := unix.Listen(fd, 16); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
	}
	return ownedFile(t, fd, name)
}

// tcpSocketFile makes a blocking listening socket on 127.0.0.1, as systemd
// passes them, and returns it with its address.
func tcpSocketFile(t *testing.T, name string) (*os.File, string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := ownedFile(t, fd, name)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return f, (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
}

// ownedFile wraps fd, closing it when the test ends unless the Set did.
func ownedFile(t *testing.T, fd int, name string) *os.File {
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

// logRecords decodes the JSON lines an slog.JSONHandler wrote.
func logRecords(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

func listenNames(t *testing.T, set *Set, name string) []string {
	t.Helper()
	ls, err := set.Listen(Addr{Kind: Systemd, Address: name}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, l := range ls {
		t.Cleanup(func() { l.Close() })
		roundTrip(t, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs
}

func TestInheritedMatchedByName(t *testing.T) {
	dir := t.TempDir()
	sock := func(n string) string { return filepath.Join(dir, n) }
	web, webAddr := tcpSocketFile(t, "web")
	files := []*os.File{
		socketFile(t, "beta", sock("beta.sock"), unix.SOCK_STREAM, true),
		socketFile(t, "alpha", sock("alpha1.sock"), unix.SOCK_STREAM, true),
		socketFile(t, "unused", sock("unused.sock"), unix.SOCK_STREAM, true),
		socketFile(t, "alpha", sock("alpha2.sock"), unix.SOCK_STREAM, true),
		web,
	}
	unusedFD := fdOf(files[2])
	var logs bytes.Buffer
	set := newSet(slog.New(slog.NewJSONHandler(&logs, nil)), files)

	// Asked in another order than passed: only the names decide.
	for _, tt := range []struct {
		name string
		want []string
	}{
		{"web", []string{webAddr}},
		{"alpha", []string{sock("alpha1.sock"), sock("alpha2.sock")}},
		{"beta", []string{sock("beta.sock")}},
	} {
		if got := listenNames(t, set, tt.name); strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("Listen(systemd:%s) addresses %q; want %q", tt.name, got, tt.want)
		}
	}

	errText := func(name string) string {
		_, err := set.Listen(Addr{Kind: Systemd, Address: name}, Options{})
		if err == nil {
			t.Fatalf("Listen(systemd:%s) succeeded; want an error", name)
		}
		return err.Error()
	}
	if got, want := errText("alpha"), `listen systemd:alpha: systemd socket "alpha" was already claimed by an earlier listen`; got != want {
		t.Errorf("second claim: %q; want %q", got, want)
	}
	if got, want := errText("missing"), `listen systemd:missing: systemd passed no socket named "missing" (it passed "beta", "alpha", "unused", "web")`; got != want {
		t.Errorf("missing name: %q; want %q", got, want)
	}
	if logs.Len() != 0 {
		t.Fatalf("logs before CloseUnused: %s", logs.Bytes())
	}

	set.CloseUnused()
	recs := logRecords(t, logs.Bytes())
	if len(recs) != 1 || recs[0]["level"] != "WARN" || recs[0]["name"] != "unused" || recs[0]["fd"] != float64(unusedFD) {
		t.Fatalf("CloseUnused logged %v; want one WARN with name=unused fd=%d", recs, unusedFD)
	}
	if _, err := net.Dial("unix", sock("unused.sock")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the unused socket after CloseUnused: %v; want ECONNREFUSED", err)
	}
	if err := files[2].Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("closing the unused file again: %v; want os.ErrClosed (the Set closed it)", err)
	}
	if got, want := errText("unused"), `listen systemd:unused: systemd socket "unused" was closed as unused`; got != want {
		t.Errorf("claim after CloseUnused: %q; want %q", got, want)
	}
	set.CloseUnused()
	if n := len(logRecords(t, logs.Bytes())); n != 1 {
		t.Fatalf("second CloseUnused logged again: %d records", n)
	}
	// The claimed sockets are untouched by CloseUnused.
	listenersStillServe := []string{sock("beta.sock"), sock("alpha1.sock")}
	for _, p := range listenersStillServe {
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatalf("dial claimed %s after CloseUnused: %v", p, err)
		}
		c.Close()
	}
}

func TestInheritedNoSockets(t *testing.T) {
	_, err := newSet(nil, nil).Listen(Addr{Kind: Systemd, Address: "web"}, Options{})
	want := `listen systemd:web: systemd passed no socket named "web" (it passed no sockets: LISTEN_FDS unset, or LISTEN_PID not this process)`
	if err == nil || err.Error() != want {
		t.Fatalf("Listen = %v; want %q", err, want)
	}
}

func TestInheritedNotListeningStream(t *testing.T) {
	dir := t.TempDir()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	defer pr.Close()
	pipe, err := dupFile(pr, "pipe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pipe.Close() })

	tests := []struct {
		file *os.File
		want string
	}{
		{socketFile(t, "dgram", filepath.Join(dir, "d.sock"), unix.SOCK_DGRAM, false),
			"datagram (SOCK_DGRAM) socket: want a listening stream socket (ListenStream=)"},
		{socketFile(t, "seqpacket", filepath.Join(dir, "s.sock"), unix.SOCK_SEQPACKET, true),
			"sequential packet (SOCK_SEQPACKET) socket: want a listening stream socket"},
		{socketFile(t, "unbound", "", unix.SOCK_STREAM, false),
			"stream socket is not listening (Accept=yes passes connections, rouse needs Accept=no)"},
		{pipe, "not a socket: want a listening stream socket (ListenStream=)"},
	}
	var files []*os.File
	for _, tt := range tests {
		files = append(files, tt.file)
	}
	set := newSet(nil, files)
	for _, tt := range tests {
		name := tt.file.Name()
		fd := fdOf(tt.file)
		_, err := set.Listen(Addr{Kind: Systemd, Address: name}, Options{})
		want := "listen systemd:" + name + ": fd " + strconv.Itoa(fd) + ": " + tt.want
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Listen(systemd:%s) = %v; want %q", name, err, want)
		}
		if err := tt.file.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s after the failed claim: Close = %v; want os.ErrClosed (the Set closed it)", name, err)
		}
	}
}

func dupFile(f *os.File, name string) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// A name whose sockets are not all usable fails as a whole and closes them
// all, the good one included: half an app's addresses is a config error.
func TestInheritedSharedNameOneBad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.sock")
	files := []*os.File{
		socketFile(t, "app", good, unix.SOCK_STREAM, true),
		socketFile(t, "app", filepath.Join(dir, "bad.sock"), unix.SOCK_DGRAM, false),
	}
	set := newSet(nil, files)
	if _, err := set.Listen(Addr{Kind: Systemd, Address: "app"}, Options{}); err == nil || !strings.Contains(err.Error(), "SOCK_DGRAM") {
		t.Fatalf("Listen = %v; want the datagram socket's error", err)
	}
	if _, err := net.Dial("unix", good); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the good socket after the failed claim: %v; want ECONNREFUSED", err)
	}
}

// The inherited fd arrives blocking; the listener must not be, or Close
// could not interrupt a goroutine blocked in Accept and shutdown would hang.
func TestInheritedAcceptInterruptedByClose(t *testing.T) {
	f, _ := tcpSocketFile(t, "web")
	if nonblocking(t, f) {
		t.Fatal("setup: the socket is already non-blocking")
	}
	ls, err := newSet(nil, []*os.File{f}).Listen(Addr{Kind: Systemd, Address: "web"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := ls[0]
	defer l.Close()
	if !nonblocking(t, l.(syscall.Conn)) {
		t.Fatal("listener fd is blocking")
	}

	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	// Parked in the runtime poller, not in a blocking accept(2) syscall.
	waitFor(t, 5*time.Second, "Accept to park in the poller", func() bool {
		return goroutineWaiting("[IO wait", "TCPListener).Accept")
	})
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not interrupt Accept")
	}
}

func nonblocking(t *testing.T, c syscall.Conn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		t.Fatal(err)
	}
	if ferr != nil {
		t.Fatal(ferr)
	}
	return flags&unix.O_NONBLOCK != 0
}

// goroutineWaiting reports whether some goroutine is in state (as
// runtime.Stack prints it) with frame in its stack.
func goroutineWaiting(state, frame string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, state) && strings.Contains(g, frame) {
			return true
		}
	}
	return false
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// Concurrent claims of one name hand its sockets to exactly one caller.
func TestInheritedConcurrentClaims(t *testing.T) {
	dir := t.TempDir()
	set := newSet(nil, []*os.File{
		socketFile(t, "app", filepath.Join(dir, "a.sock"), unix.SOCK_STREAM, true),
		socketFile(t, "app", filepath.Join(dir, "b.sock"), unix.SOCK_STREAM, true),
		socketFile(t, "other", filepath.Join(dir, "o.sock"), unix.SOCK_STREAM, true),
	})
	const callers = 8
	results := make(chan []net.Listener, callers)
	for range callers {
		go func() {
			ls, _ := set.Listen(Addr{Kind: Systemd, Address: "app"}, Options{})
			results <- ls
		}()
	}
	closed := make(chan struct{})
	go func() {
		set.CloseUnused()
		close(closed)
	}()
	defer func() { <-closed }()
	won := 0
	for range callers {
		if ls := <-results; ls != nil {
			won++
			if len(ls) != 2 {
				t.Errorf("winner got %d listeners; want 2", len(ls))
			}
			for _, l := range ls {
				l.Close()
			}
		}
	}
	if won > 1 {
		t.Fatalf("%d callers claimed systemd:app; want at most 1", won)
	}
	if _, err := set.Listen(Addr{Kind: Systemd, Address: "app"}, Options{}); err == nil {
		t.Fatal("claim after the race succeeded")
	}
}
