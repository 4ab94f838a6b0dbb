package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/internal/testbackend"
)

// notifyReceiver is the systemd side of sd_notify: a unixgram socket whose
// datagrams the test reads. Like systemd, it keeps the descriptors sent with
// FDSTORE=1 under their FDNAME and closes them on FDSTOREREMOVE=1.
type notifyReceiver struct {
	conn   *net.UnixConn
	path   string
	mu     sync.Mutex
	msgs   []string
	stored map[string]*os.File
	done   chan struct{}
}

func newNotifyReceiver(t *testing.T) *notifyReceiver {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyReceiver{conn: conn, path: path, stored: make(map[string]*os.File), done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf, oob := make([]byte, 4096), make([]byte, syscall.CmsgSpace(4*8))
		for {
			k, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			n.received(string(buf[:k]), oob[:oobn])
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-n.done
		for _, f := range n.stored {
			f.Close()
		}
	})
	return n
}

func (n *notifyReceiver) received(msg string, oob []byte) {
	var files []*os.File
	cmsgs, _ := syscall.ParseSocketControlMessage(oob)
	for _, c := range cmsgs {
		fds, _ := syscall.ParseUnixRights(&c)
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "stored"))
		}
	}
	fields := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			fields[k] = v
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs = append(n.msgs, msg)
	name := fields["FDNAME"]
	switch {
	case fields["FDSTORE"] == "1" && len(files) == 1 && n.stored[name] == nil:
		n.stored[name] = files[0]
		files = nil
	case fields["FDSTOREREMOVE"] == "1" && n.stored[name] != nil:
		n.stored[name].Close()
		delete(n.stored, name)
	}
	for _, f := range files {
		f.Close()
	}
}

func (n *notifyReceiver) storedCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.stored)
}

// store returns the names and dups of the descriptors held, as systemd
// passes them to the next start (LISTEN_FDNAMES, LISTEN_FDS).
func (n *notifyReceiver) store(t *testing.T) ([]string, []*os.File) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	var names []string
	var files []*os.File
	for name, f := range n.stored {
		// Close-on-exec, or every process the test starts would hold it.
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		dup := os.NewFile(uintptr(fd), name)
		t.Cleanup(func() { dup.Close() })
		names, files = append(names, name), append(files, dup)
	}
	return names, files
}

// has reports whether some datagram holds the line want.
func (n *notifyReceiver) has(want string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.msgs {
		for _, line := range strings.Split(m, "\n") {
			if line == want || (strings.HasSuffix(want, "*") && strings.HasPrefix(line, strings.TrimSuffix(want, "*"))) {
				return true
			}
		}
	}
	return false
}

func (n *notifyReceiver) count(want string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, m := range n.msgs {
		if strings.Contains(m, want) {
			c++
		}
	}
	return c
}

func TestNotifiesSystemd(t *testing.T) {
	recv := newNotifyReceiver(t)
	port := freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.echo]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
`, port))
	t.Setenv("NOTIFY_SOCKET", recv.path)
	t.Setenv("WATCHDOG_USEC", "200000")
	r := startRouse(t, file, control)
	os.Unsetenv("NOTIFY_SOCKET")
	waitFor(t, "READY=1", func() bool { return recv.has("READY=1") })
	if !recv.has("STATUS=1 apps, 0 running, 0 in back-off") {
		t.Errorf("no STATUS with the summary at READY: %q", recv.msgs)
	}
	waitFor(t, "watchdog pings at half of WATCHDOG_USEC", func() bool { return recv.count("WATCHDOG=1") >= 3 })
	if got := echoOnce(t, port, "x"); got != "x" {
		t.Fatalf("echo: %q", got)
	}
	waitFor(t, "STATUS to show the running app", func() bool { return recv.has("STATUS=1 apps, 1 running, 0 in back-off") })
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", r.app(t, "echo").pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"NOTIFY_SOCKET=", "WATCHDOG_USEC=", "LISTEN_FDS="} {
		if bytes.Contains(env, []byte(k)) {
			t.Errorf("the app inherited rouse's %s", k)
		}
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	<-r.done
	if !recv.has("STOPPING=1") {
		t.Errorf("no STOPPING=1 on SIGTERM: %q", recv.msgs)
	}
}

func TestJournalHandler(t *testing.T) {
	type entry struct {
		msg  string
		prio journal.Priority
		vars map[string]string
	}
	var got []entry
	h := &journalHandler{
		level:    slog.LevelInfo,
		fallback: slog.NewTextHandler(io.Discard, nil),
		send: func(msg string, p journal.Priority, vars map[string]string) error {
			got = append(got, entry{msg, p, vars})
			return nil
		},
	}
	log := slog.New(h)
	app := log.With("app", "blog")
	app.Info("ready", "state", "ready", "pid", 42, "took", 1500*time.Microsecond)
	app.Info("GET / 200", "stream", "stdout")
	app.Debug("not shown")
	log.Warn("failed", slog.Group("err", "kind", "exit"), "9bad key", 1)
	want := []entry{
		{"ready", journal.PriInfo, map[string]string{"APP": "blog", "STATE": "ready", "PID": "42", "TOOK": "1.5ms", "SYSLOG_IDENTIFIER": "rouse"}},
		{"GET / 200", journal.PriInfo, map[string]string{"APP": "blog", "STREAM": "stdout", "SYSLOG_IDENTIFIER": "blog"}},
		{"failed", journal.PriWarning, map[string]string{"ERR_KIND": "exit", "BAD_KEY": "1", "SYSLOG_IDENTIFIER": "rouse"}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("journal entries:\n got %v\nwant %v", got, want)
	}
}

// TestRestartOverHeldSockets plays systemd's part: the test holds the
// listening sockets (as PID 1 does for .socket units) and passes them by
// name, in an order unlike the config's, to one rouse after another. A
// client hammering both addresses all along sees no connection refused:
// while no rouse runs, connections wait in the kernel's backlog.
func TestRestartOverHeldSockets(t *testing.T) {
	tcpAddr, tcpFile := heldSocket(t, "tcp", "127.0.0.1:0")
	unixPath := filepath.Join(t.TempDir(), "b.sock")
	_, unixFile := heldSocket(t, "unix", unixPath)

	file, control := writeConfig(t, `
[apps.alpha]
listen = ["systemd:alpha"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
idle_timeout = "0"

[apps.beta]
listen = ["systemd:beta"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
idle_timeout = "0"
`)
	startOne := func() *rouseProc {
		// fd 3 = beta, fd 4 = alpha: named in an order unlike the config's.
		return heldRouse(t, file, []string{"beta", "alpha"}, []*os.File{unixFile, tcpFile})
	}

	load := startLoad([][2]string{{"tcp", tcpAddr.String()}, {"unix", unixPath}})
	for round := range 3 {
		r := startOne()
		waitControl(t, control, r)
		load.waitServed(t, fmt.Sprintf("round %d", round), 20)
		r.cmd.Process.Signal(syscall.SIGTERM)
		<-r.done
		if code := r.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("round %d: rouse exited %d", round, code)
		}
	}
	startOne()
	load.waitServed(t, "the last rouse", 10)
	load.stop(t, "across 3 restarts")
}

// echoLoad is clients that connect to addresses one connection after
// another, send a line and read it back, counting what failed.
type echoLoad struct {
	served, failed atomic.Int64
	failures       sync.Map
	cancel         context.CancelFunc
	wg             sync.WaitGroup
}

// startLoad starts one client per address (network, address).
func startLoad(addrs [][2]string) *echoLoad {
	l := &echoLoad{}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for _, addr := range addrs {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				c, err := net.DialTimeout(addr[0], addr[1], 10*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(20 * time.Second))
					fmt.Fprintf(c, "ping\n")
					line, rerr := bufio.NewReader(c).ReadString('\n')
					c.Close()
					if rerr == nil && line == "ping\n" {
						l.served.Add(1)
						continue
					}
					err = fmt.Errorf("read %q: %v", line, rerr)
				}
				l.failed.Add(1)
				l.failures.Store(addr[0]+": "+err.Error(), true)
			}
		}()
	}
	return l
}

// waitServed waits until n more connections have been served.
func (l *echoLoad) waitServed(t *testing.T, who string, n int64) {
	t.Helper()
	before := l.served.Load()
	waitFor(t, who+" to serve", func() bool { return l.served.Load() > before+n })
}

// stop ends the clients and fails the test if any connection failed.
func (l *echoLoad) stop(t *testing.T, during string) {
	t.Helper()
	l.cancel()
	l.wg.Wait()
	if n := l.failed.Load(); n > 0 {
		l.failures.Range(func(k, _ any) bool {
			t.Errorf("failure: %v", k)
			return true
		})
		t.Errorf("%d of %d connections failed %s", n, n+l.served.Load(), during)
	}
}

// pythonEcho is an echo server in Python: each line back, a thread per
// connection, on the port given as its argument.
const pythonEcho = `import socket, sys, threading
def serve(c):
    with c, c.makefile("rwb") as f:
        for line in f:
            f.write(line)
            f.flush()
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
`

// TestRestartOverFDStore plays systemd's file descriptor store: a rouse run
// with NOTIFY_SOCKET stores the sockets it binds (a TCP address with a
// Python app behind it, a unix one, and one that the next config drops) with FDSTORE=1; the next rouse gets
// them back by name in LISTEN_FDS, as systemd passes them, and binds
// nothing. Clients hammering both addresses all along see no failure. The
// dropped address is removed from the store (FDSTOREREMOVE=1) and refuses
// connections: no process still holds it (the guard, spawned first, once
// inherited every passed socket).
func TestRestartOverFDStore(t *testing.T) {
	recv := newNotifyReceiver(t)
	tcpPort, gonePort := freePort(t), freePort(t)
	unixPath := filepath.Join(t.TempDir(), "b.sock")
	app := func(name, listen string) string {
		return fmt.Sprintf("[apps.%s]\nlisten = [%q]\ncommand = [\"@BIN@\", \"__backend\", \"-proto\", \"echo\", \"-listen\", \"127.0.0.1:{port}\"]\n", name, listen)
	}
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	// alpha is not a Go program: a Python echo server.
	python := fmt.Sprintf("[apps.alpha]\nlisten = [%q]\ncommand = [%q, \"-c\", %q, \"{port}\"]\n", tcpAddr, testbackend.Python3(t), pythonEcho)
	file, control := writeConfig(t, python+app("beta", "unix:"+unixPath)+app("gone", fmt.Sprintf("127.0.0.1:%d", gonePort)))
	t.Setenv("NOTIFY_SOCKET", recv.path)
	first := startRouse(t, file, control)
	waitFor(t, "3 sockets in the store", func() bool { return recv.storedCount() == 3 })
	load := startLoad([][2]string{{"tcp", tcpAddr}, {"unix", unixPath}})
	load.waitServed(t, "the first rouse", 20)
	first.cmd.Process.Signal(syscall.SIGTERM)
	<-first.done

	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	gone := strings.ReplaceAll(app("gone", fmt.Sprintf("127.0.0.1:%d", gonePort)), "@BIN@", os.Args[0])
	if !bytes.Contains(text, []byte(gone)) {
		t.Fatalf("no app gone in %s:\n%s", file, text)
	}
	if err := os.WriteFile(file, bytes.Replace(text, []byte(gone), nil, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	names, files := recv.store(t)
	second := heldRouse(t, file, names, files)
	waitControl(t, control, second)
	load.waitServed(t, "the second rouse", 20)
	load.stop(t, "across a restart over the fd store")

	waitFor(t, "the dropped address to leave the store", func() bool { return recv.storedCount() == 2 })
	for _, f := range files {
		f.Close() // the test's own copies, as systemd's are gone
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", gonePort), 5*time.Second); err == nil {
		c.Close()
		out, _ := exec.Command("ss", "-ltnpe", fmt.Sprintf("sport = :%d", gonePort)).CombinedOutput()
		t.Errorf("the dropped address still accepts connections; who holds it: %s", out)
	}
	if strings.Contains(second.log.String(), "bind") && strings.Contains(second.log.String(), "address already in use") {
		t.Errorf("the second rouse tried to bind what it was passed:\n%s", second.log.String())
	}
}
