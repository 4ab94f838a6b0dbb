package activator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// shimVerb is how TestMain recognizes the exec shim, as rouse's __exec.
const shimVerb = "__exec"

// shimApp is a handoff or inetd app under test, served without a
// Supervisor, with its log kept for assertions.
type shimApp struct {
	*testApp
	ends string // file the backend appends "PID UNIXNANO" to when it exits by itself
	logs *logBuffer
}

// newShimApp serves an app of mode on lns, its process being this test
// binary running the backend with args (plus -starts and -ends), spawned
// through the exec shim. Cleanup closes it and checks that no process,
// goroutine or fd is left.
func newShimApp(t *testing.T, mode Mode, lns []net.Listener, args []string, edit func(*Config)) *shimApp {
	t.Helper()
	goroutines := runtime.NumGoroutine()
	fds := countFDs(t) - len(lns) // the listeners are the app's: Close closes them
	dir := t.TempDir()
	starts, ends := filepath.Join(dir, "starts"), filepath.Join(dir, "ends")
	var listen []string
	for _, ln := range lns {
		listen = append(listen, ln.Addr().String())
	}
	cfg := testConfig(listen[0], "", starts)
	cfg.Mode, cfg.Listen = mode, listen
	cfg.UpstreamNetwork, cfg.UpstreamAddress = "", ""
	cfg.Process.Argv = append([]string{os.Args[0], "-starts", starts, "-ends", ends}, args...)
	if edit != nil {
		edit(&cfg)
	}
	logs := &logBuffer{t: t}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := New(cfg, lns, Options{Logger: log, ExecShim: []string{os.Args[0], shimVerb}})
	if err != nil {
		t.Fatal(err)
	}
	a.Serve()
	sa := &shimApp{
		testApp: &testApp{App: a, addr: lns[0].Addr().String(), starts: starts, dir: dir},
		ends:    ends,
		logs:    logs,
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.Close(ctx)
		checkNoLeaks(t, sa.pids(), goroutines, fds)
	})
	return sa
}

// logBuffer passes log lines to t.Log and keeps them.
type logBuffer struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (l *logBuffer) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	l.mu.Lock()
	l.lines = append(l.lines, line)
	l.mu.Unlock()
	l.t.Log(line)
	return len(p), nil
}

// has reports whether a logged line contains every one of parts.
func (l *logBuffer) has(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func listenUnix(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "app.sock"))
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// banner connects to addr ("unix:PATH" or HOST:PORT), writes early (bytes
// sent before anything answers) and returns the connection and the banner
// line's fields.
func banner(t *testing.T, addr, early string) (net.Conn, []string) {
	t.Helper()
	network := "tcp"
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", p
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if early != "" {
		if _, err := io.WriteString(c, early); err != nil {
			t.Fatal(err)
		}
	}
	// Byte by byte: what follows the line (an echo) stays in c.
	var line []byte
	for b := make([]byte, 1); len(line) == 0 || line[len(line)-1] != '\n'; {
		if _, err := c.Read(b); err != nil {
			c.Close()
			t.Fatalf("reading the banner after %q: %v", line, err)
		}
		line = append(line, b[0])
	}
	return c, strings.Fields(string(line))
}

func pidOf(t *testing.T, fields []string) int {
	t.Helper()
	pid, err := strconv.Atoi(fields[len(fields)-1])
	if err != nil {
		t.Fatalf("banner %q: no pid", fields)
	}
	return pid
}

// readEcho reads len(want) bytes from c and compares.
func readEcho(t *testing.T, c net.Conn, want string) {
	t.Helper()
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
		t.Fatalf("echo: got %q, %v; want %q", buf, err, want)
	}
}

func TestHandoffStartsOnFirstConnectionAndStopsWhenIdle(t *testing.T) {
	ln := listenTCP(t)
	ta := newShimApp(t, ModeHandoff, []net.Listener{ln}, []string{"-listen-fds", "-proto", "echo", "-banner"}, func(c *Config) {
		c.IdleTimeout = 300 * time.Millisecond
	})
	if st := ta.Status(); st.State != Idle || st.Starts != 0 {
		t.Fatalf("before any connection: %+v", st)
	}
	// The first connection's bytes go to the app, which accepts it itself.
	c, fields := banner(t, ta.addr, "first bytes\n")
	pid1 := pidOf(t, fields)
	if fields[0] != "backend/t" {
		t.Errorf("banner %q: want the socket named after the app (LISTEN_FDNAMES=t)", fields)
	}
	readEcho(t, c, "first bytes\n")
	st := ta.waitState(t, Ready) // the probe may take a moment to see it accepted
	if st.State != Ready || st.PID != pid1 || st.Starts != 1 {
		t.Errorf("status %+v, want ready, pid %d, 1 start", st, pid1)
	}
	// An open connection keeps it up past idle_timeout.
	waitFor(t, "conns 1", func() bool { return ta.Status().Conns == 1 })
	deadline := time.Now().Add(700 * time.Millisecond)
	for time.Now().Before(deadline) {
		if st := ta.Status(); st.State != Ready {
			t.Fatalf("stopped with a connection open: %+v", st)
		}
		time.Sleep(25 * time.Millisecond) // sampling during a period, not waiting for a condition
	}
	c.Close()
	st = ta.waitState(t, Idle)
	if st.Conns != 0 || st.Failures != 0 {
		t.Errorf("after the idle stop: %+v", st)
	}
	waitFor(t, "the process to be gone", func() bool { return !alive(pid1) })
	if !ta.logs.has("stopped", "why=idle") {
		t.Error("no log line for the idle stop")
	}

	c2, fields := banner(t, ta.addr, "again\n")
	defer c2.Close()
	readEcho(t, c2, "again\n")
	if pid2 := pidOf(t, fields); pid2 == pid1 {
		t.Errorf("second connection served by the stopped process %d", pid1)
	}
	if st := ta.Status(); st.Starts != 2 {
		t.Errorf("starts %d, want 2", st.Starts)
	}
}

func TestHandoffConnectionsWhileStoppingOrStoppedWait(t *testing.T) {
	ln := listenTCP(t)
	// On SIGTERM the app stops accepting at once but takes 600ms to exit:
	// connections in that window wait in the backlog for the next one.
	ta := newShimApp(t, ModeHandoff, []net.Listener{ln}, []string{"-listen-fds", "-proto", "echo", "-banner", "-stop-delay", "600ms"}, func(c *Config) {
		c.IdleTimeout = 50 * time.Millisecond
	})
	c, fields := banner(t, ta.addr, "")
	pid1 := pidOf(t, fields)
	c.Close()
	ta.waitState(t, Stopping)
	// Once the app has closed its listener (it takes the signal a moment
	// after rouse sent it), connections are for the next process.
	waitFor(t, "the app to stop accepting", func() bool { return ta.logs.has("backend/t: stopping") })
	c2, fields := banner(t, ta.addr, "during stopping\n")
	readEcho(t, c2, "during stopping\n")
	c2.Close()
	pid2 := pidOf(t, fields)
	if pid2 == pid1 {
		t.Fatalf("served by the stopping process %d", pid1)
	}
	if alive(pid1) {
		t.Errorf("process %d still alive while its successor serves", pid1)
	}

	// Stopped: a burst of connections all wait in the backlog and are
	// served by one new process.
	ta.waitState(t, Idle)
	const n = 20
	var wg sync.WaitGroup
	pids := make(chan int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := fmt.Sprintf("burst %d\n", i)
			c, fields := banner(t, ta.addr, msg)
			defer c.Close()
			readEcho(t, c, msg)
			pids <- pidOf(t, fields)
		}()
	}
	wg.Wait()
	close(pids)
	for pid := range pids {
		if pid == pid1 || pid == pid2 {
			t.Errorf("burst served by an old process %d", pid)
		}
	}
	if st := ta.Status(); st.Starts != 3 || st.Failures != 0 {
		t.Errorf("starts %d failures %d, want 3 and 0", st.Starts, st.Failures)
	}
}

func TestHandoffShortConnectionsKeepItUp(t *testing.T) {
	ln := listenTCP(t)
	ta := newShimApp(t, ModeHandoff, []net.Listener{ln}, []string{"-listen-fds", "-proto", "echo", "-banner"}, func(c *Config) {
		c.IdleTimeout = 600 * time.Millisecond
	})
	c, _ := banner(t, ta.addr, "")
	c.Close()
	ta.waitState(t, Ready)
	// Connections far shorter than the sampling period (150ms), for more
	// than two idle timeouts: each arrival counts as activity.
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		c, _ := banner(t, ta.addr, "")
		c.Close()
		time.Sleep(30 * time.Millisecond) // pacing the load, not waiting for a condition
	}
	if st := ta.Status(); st.Starts != 1 || st.State != Ready {
		t.Errorf("status %+v: want one start, still ready", st)
	}
	ta.waitState(t, Idle)
}

// watching returns how the open sockets are registered in the epoll
// instance.
func (h *handoff) watching() []watch {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ws []watch
	for _, s := range h.socks {
		if !s.closed {
			ws = append(ws, s.watch)
		}
	}
	return ws
}

func TestHandoffArrivalsWhileReady(t *testing.T) {
	const idle = 600 * time.Millisecond
	tests := []struct {
		name string
		idle time.Duration
		hold bool // a connection stays open throughout
		// wakeups is how many times the connections may wake rouse in
		// elapsed: the samples alone tell a busy app; an idle one needs
		// one arrival per look (a sample, and the change of counts it
		// may bring), not each of them.
		wakeups func(elapsed time.Duration) int64
	}{
		{"no idle timeout", 0, false, func(time.Duration) int64 { return 0 }},
		{"the app holds a connection", idle, true, func(time.Duration) int64 { return 0 }},
		{"the app looks idle", idle, false, func(d time.Duration) int64 { return 2*int64(d/samplePeriod(idle, 0)+1) + 2 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta := newShimApp(t, ModeHandoff, []net.Listener{listenTCP(t), listenUnix(t)}, []string{"-listen-fds", "-proto", "echo", "-banner"}, func(c *Config) {
				c.IdleTimeout = tt.idle
			})
			addrs := []string{ta.addr, "unix:" + ta.handoff.socks[1].addr.path}
			c, _ := banner(t, ta.addr, "")
			if tt.hold {
				defer c.Close()
				waitFor(t, "conns 1", func() bool { return ta.Status().Conns == 1 })
			} else {
				c.Close()
			}
			ta.waitState(t, Ready)
			want := unwatched
			if tt.wakeups(time.Hour) > 0 {
				want = watchOnce
			}
			waitFor(t, fmt.Sprintf("the sockets to be %d", want), func() bool {
				ws := ta.handoff.watching()
				return len(ws) == 2 && ws[0] == want && ws[1] == want
			})
			// Back to back, on both sockets, for longer than idle_timeout.
			start, wakeups, conns := time.Now(), ta.handoff.wakeups.Load(), 0
			for time.Since(start) < idle+idle/2 {
				c, _ := banner(t, addrs[conns%2], "")
				c.Close()
				conns++
			}
			n, limit := ta.handoff.wakeups.Load()-wakeups, tt.wakeups(time.Since(start))
			if n > limit {
				t.Errorf("%d connections woke rouse %d times, want at most %d", conns, n, limit)
			}
			if st := ta.Status(); st.State != Ready || st.Starts != 1 {
				t.Errorf("status %+v: want ready, one start", st)
			}
		})
	}
}

func TestHandoffTwoSocketsByName(t *testing.T) {
	tcp, ux := listenTCP(t), listenUnix(t)
	ta := newShimApp(t, ModeHandoff, []net.Listener{tcp, ux}, []string{"-listen-fds", "-proto", "echo", "-banner"}, func(c *Config) {
		c.Listen = []string{"systemd:web", "systemd:admin"}
	})
	// The unix socket first: any socket starts the app, and it serves both.
	c1, f1 := banner(t, "unix:"+ux.Addr().String(), "over unix\n")
	defer c1.Close()
	readEcho(t, c1, "over unix\n")
	c2, f2 := banner(t, tcp.Addr().String(), "over tcp\n")
	defer c2.Close()
	readEcho(t, c2, "over tcp\n")
	if f1[0] != "backend/admin" || f2[0] != "backend/web" {
		t.Errorf("banners %q and %q: want the sockets named admin and web (LISTEN_FDNAMES)", f1, f2)
	}
	if pidOf(t, f1) != pidOf(t, f2) {
		t.Errorf("two processes %q %q for one app", f1, f2)
	}
	waitFor(t, "conns 2 (one per socket)", func() bool { return ta.Status().Conns == 2 })
}

func TestHandoffFailuresBackOff(t *testing.T) {
	t.Run("exit", func(t *testing.T) {
		ta := newShimApp(t, ModeHandoff, []net.Listener{listenTCP(t)}, []string{"-exit", "3"}, nil)
		c, err := net.Dial("tcp", ta.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The connection stays in the backlog: one start now, one when the
		// 1s back-off is over, then 2s of back-off.
		waitFor(t, "two starts", func() bool { return len(ta.pids()) >= 2 })
		st := ta.waitState(t, Backoff)
		starts := ta.startLines()
		if gap := starts[1].at.Sub(starts[0].at); gap < 950*time.Millisecond {
			t.Errorf("second start %s after the first, want >= 1s", gap)
		}
		if !strings.Contains(st.LastError, "exit status 3") || st.Queued != 1 {
			t.Errorf("status %+v: want the exit status, 1 queued", st)
		}
		time.Sleep(300 * time.Millisecond) // a period in which nothing may happen
		if n := len(ta.pids()); n != 2 {
			t.Errorf("%d starts within 1.3s of a crash loop, want 2", n)
		}
	})
	t.Run("never accepts", func(t *testing.T) {
		ta := newShimApp(t, ModeHandoff, []net.Listener{listenTCP(t)}, []string{"-never-listen"}, func(c *Config) {
			c.StartTimeout = 300 * time.Millisecond
		})
		c, err := net.Dial("tcp", ta.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		st := ta.waitState(t, Backoff)
		if !strings.Contains(st.LastError, "none accepted yet") {
			t.Errorf("last_error %q: want the readiness timeout of a handoff app", st.LastError)
		}
		for _, pid := range ta.pids() {
			waitFor(t, "the process to be killed", func() bool { return !alive(pid) })
		}
	})
	t.Run("checks LISTEN_PID", func(t *testing.T) {
		// Without the shim LISTEN_PID would be wrong and the backend exit 3.
		ta := newShimApp(t, ModeHandoff, []net.Listener{listenTCP(t)}, []string{"-listen-fds", "-proto", "echo"}, func(c *Config) {
			c.Process.Env = append(c.Process.Env, "LISTEN_PID=1")
		})
		got, err := echo(t, ta.addr, "pid")
		if err != nil || got != "pid" {
			t.Fatalf("echo %q, %v", got, err)
		}
	})
}

func TestHandoffReadyWhenTheAppAccepts(t *testing.T) {
	ta := newShimApp(t, ModeHandoff, []net.Listener{listenTCP(t)}, []string{"-listen-fds", "-proto", "echo", "-delay", "300ms"}, nil)
	done := make(chan string)
	go func() {
		got, _ := echo(t, ta.addr, "slow start")
		done <- got
	}()
	st := ta.waitState(t, Starting)
	if got := <-done; got != "slow start" {
		t.Errorf("echo %q", got)
	}
	st = ta.waitState(t, Ready) // the probe may take a moment to see it accepted
	if st.State != Ready || st.LastStartMS < 300 {
		t.Errorf("status %+v: want ready, last_start_ms >= 300", st)
	}
}

func TestHandoffReadyNotify(t *testing.T) {
	// READY=1 comes from the app's own pid: the shim execs in place.
	ta := newShimApp(t, ModeHandoff, []net.Listener{listenTCP(t)}, []string{"-listen-fds", "-proto", "echo", "-notify"}, func(c *Config) {
		c.Ready = Readiness{Kind: "notify"}
	})
	if got, err := echo(t, ta.addr, "notified"); got != "notified" {
		t.Fatalf("echo %q, %v", got, err)
	}
	st := ta.waitState(t, Ready)
	if !strings.HasPrefix(st.AppStatus, "serving on") {
		t.Errorf("app status %q: want the STATUS= the app sent", st.AppStatus)
	}
}

func TestHandoffCloseWhileTheAppHoldsTheSockets(t *testing.T) {
	ta := newShimApp(t, ModeHandoff, []net.Listener{listenTCP(t), listenUnix(t)}, []string{"-listen-fds", "-proto", "echo", "-banner"}, nil)
	c, fields := banner(t, ta.addr, "")
	defer c.Close()
	pid := pidOf(t, fields)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	ta.Close(ctx) // the drain ends with ctx: the connection stays open
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %s", took)
	}
	if alive(pid) {
		t.Errorf("process %d alive after Close", pid)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after Close stopped the app")
	}
	// The unix listener was kept for this: its Close removes the socket
	// file that net created.
	if _, err := os.Stat(ta.handoff.socks[1].addr.path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("unix socket file after Close: %v, want it removed", err)
	}
}

func TestFDNames(t *testing.T) {
	tests := []struct {
		listen []string
		n      int
		want   string
	}{
		{[]string{"127.0.0.1:80"}, 1, "app"},
		{[]string{"systemd:web", "unix:/run/a.sock"}, 2, "web:app"},
		{[]string{"systemd:web", "127.0.0.1:80"}, 3, "web:web:app"}, // web passed twice
		{[]string{"systemd:a", "systemd:b"}, 3, "app:app:app"},      // which one has two?
	}
	for _, tt := range tests {
		if got := strings.Join(fdNames(tt.listen, tt.n, "app"), ":"); got != tt.want {
			t.Errorf("fdNames(%q, %d) = %q, want %q", tt.listen, tt.n, got, tt.want)
		}
	}
}
