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
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// notifyReceiver is the systemd side of sd_notify: a unixgram socket whose
// datagrams the test reads.
type notifyReceiver struct {
	conn *net.UnixConn
	path string
	mu   sync.Mutex
	msgs []string
	done chan struct{}
}

func newNotifyReceiver(t *testing.T) *notifyReceiver {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyReceiver{conn: conn, path: path, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-n.done
	})
	return n
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

	var served, failed atomic.Int64
	var failures sync.Map
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, addr := range [][2]string{{"tcp", tcpAddr.String()}, {"unix", unixPath}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				c, err := net.DialTimeout(addr[0], addr[1], 10*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(20 * time.Second))
					fmt.Fprintf(c, "ping\n")
					line, rerr := bufio.NewReader(c).ReadString('\n')
					c.Close()
					if rerr == nil && line == "ping\n" {
						served.Add(1)
						continue
					}
					err = fmt.Errorf("read %q: %v", line, rerr)
				}
				failed.Add(1)
				failures.Store(addr[0]+": "+err.Error(), true)
			}
		}()
	}
	for round := range 3 {
		r := startOne()
		waitControl(t, control, r)
		before := served.Load()
		waitFor(t, fmt.Sprintf("round %d to serve", round), func() bool { return served.Load() > before+20 })
		r.cmd.Process.Signal(syscall.SIGTERM)
		<-r.done
		if code := r.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("round %d: rouse exited %d", round, code)
		}
	}
	startOne()
	before := served.Load()
	waitFor(t, "the last rouse to serve", func() bool { return served.Load() > before+10 })
	stop()
	wg.Wait()
	if n := failed.Load(); n > 0 {
		failures.Range(func(k, _ any) bool {
			t.Errorf("failure: %v", k)
			return true
		})
		t.Errorf("%d of %d connections failed across 3 restarts", n, n+served.Load())
	}
}
