package activator

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

	"github.com/rouse-dev/rouse/examples/backend"
	"github.com/rouse-dev/rouse/internal/testport"
	"github.com/rouse-dev/rouse/procman"
)

// TestMain lets the test binary be the app: a child started with
// ROUSE_TEST_BACKEND=1 runs the example backend instead of the tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == shimVerb { // before the backend: the shim runs it
		os.Exit(ExecMain(os.Args[2:], os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == guardVerb {
		os.Exit(procman.GuardMain(os.Stdin))
	}
	if os.Getenv("ROUSE_TEST_BACKEND") == "1" {
		os.Exit(backend.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// testConfig is an app in tcp mode whose process is this test binary
// running the backend, listening on upstream and noting its starts in starts.
func testConfig(listen, upstream, starts string) Config {
	cfg := Config{
		Name:   "t",
		Mode:   ModeTCP,
		Listen: []string{listen},
		Process: procman.Spec{
			Argv: []string{os.Args[0], "-starts", starts, "-listen", upstream},
			// A race-built child sleeps 1 s at exit by default: that would
			// hide how fast exits are noticed, and slow the suite.
			Env:         []string{"ROUSE_TEST_BACKEND=1", "GORACE=atexit_sleep_ms=0"},
			StopTimeout: 5 * time.Second,
		},
		UpstreamNetwork: "tcp",
		UpstreamAddress: upstream,
		Ready:           Readiness{Kind: "tcp"},
		StartTimeout:    10 * time.Second,
		IdleTimeout:     time.Minute,
		QueueTimeout:    10 * time.Second,
		MaxQueued:       1024,
		RetryTries:      3,
		RetryTimeout:    10 * time.Second,
		MaxFails:        3,
		FailTimeout:     30 * time.Second,
		BackoffMax:      5 * time.Minute,
	}
	if os.Geteuid() == 0 {
		cfg.Process.User = "root" // CI runs as root; apps need an explicit user then
	}
	return cfg
}

// testApp is an App under test with the files to observe it by.
type testApp struct {
	*App
	addr   string     // where clients connect
	starts string     // file the backend appends "PID UNIXNANO" to at each start
	dir    string     // a temporary directory of the test
	front  *HTTPFront // an http app's
}

// newTestApp starts an app in tcp mode whose process is this test binary
// running the backend with args. edit may change the config.
func newTestApp(t testing.TB, args []string, edit func(*Config)) *testApp {
	t.Helper()
	return newTestApps(t, Capacity{}, appSpec{args: args, edit: edit})[0]
}

// appSpec is one app of newTestApps: backend arguments and a config edit.
type appSpec struct {
	args []string
	edit func(*Config)
	// onGoroutines: an http app's front serves every connection on a
	// goroutine (frontConn), never in an event loop.
	onGoroutines bool
	guard        *procman.Guard     // contains the app's processes (testGuard); nil: none
	access       func(AccessRecord) // Options.AccessLog
}

// goroutineListener hides a TCP listener's type from an HTTPFront, which
// then serves its connections on goroutines.
type goroutineListener struct{ net.Listener }

// newTestApps starts apps under one Supervisor sharing limits, each on its
// own listener, named t0, t1, ... Cleanup closes them all and checks that
// no process, goroutine or fd is left.
func newTestApps(t testing.TB, limits Capacity, specs ...appSpec) []*testApp {
	t.Helper()
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
	goroutines := runtime.NumGoroutine()
	fds := countFDs(t)
	var (
		tas    []*testApp
		apps   []*App
		fronts []*HTTPFront
	)
	// Upstream ports, one per app (freePort never gives one twice).
	ports := make([]int, len(specs))
	for i := range ports {
		ports[i] = freePort(t)
	}
	for i, spec := range specs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ports[i]
		starts := filepath.Join(t.TempDir(), "starts")
		cfg := testConfig(ln.Addr().String(), "127.0.0.1:"+strconv.Itoa(port), starts)
		if len(specs) > 1 {
			cfg.Name = "t" + strconv.Itoa(i)
		}
		cfg.Process.Argv = append(cfg.Process.Argv, spec.args...)
		if spec.edit != nil {
			spec.edit(&cfg)
		}
		lns := []net.Listener{ln}
		if cfg.Mode == ModeHTTP {
			lns = nil // the front accepts for an http app
		}
		a, err := New(cfg, lns, Options{Logger: log, Guard: spec.guard, AccessLog: spec.access})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Mode == ModeHTTP {
			var fln net.Listener = ln
			if spec.onGoroutines {
				fln = goroutineListener{ln}
			}
			f, err := NewHTTPFront(fln, []*App{a}, log)
			if err != nil {
				t.Fatal(err)
			}
			fronts = append(fronts, f)
		}
		apps = append(apps, a)
		ta := &testApp{App: a, addr: ln.Addr().String(), starts: starts, dir: filepath.Dir(starts)}
		if cfg.Mode == ModeHTTP {
			ta.front = fronts[len(fronts)-1]
		}
		tas = append(tas, ta)
	}
	if limits.Logger == nil {
		limits.Logger = log
	}
	sup, err := NewSupervisor(apps, fronts, limits)
	if err != nil {
		t.Fatal(err)
	}
	sup.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sup.Close(ctx)
		var pids []int
		for _, ta := range tas {
			pids = append(pids, ta.pids()...)
		}
		checkNoLeaks(t, pids, goroutines, fds)
	})
	return tas
}

// checkNoLeaks fails t if any of pids still runs (or is an unreaped child
// of ours), or if goroutines or fds did not come back to what they were.
func checkNoLeaks(t testing.TB, pids []int, goroutines, fds int) {
	t.Helper()
	for _, pid := range pids {
		// A process of the group that is not our child (the app's own
		// child) is reaped by init, which takes its time.
		deadline := time.Now().Add(2 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // polling with a deadline
		}
		if alive(pid) {
			t.Errorf("app process %d still alive after Close", pid)
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("timed out waiting for goroutines back to where they were (%d > %d):\n%s",
				runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	// splice(2) keeps a pool of pipes that only the garbage collector
	// closes: collect while polling.
	waitFor(t, "fds back to where they were", func() bool {
		runtime.GC()
		return countFDs(t) <= fds
	})
}

// pids returns the pids of every process the app started, in order.
func (ta *testApp) pids() []int {
	var pids []int
	for _, s := range ta.startLines() {
		pids = append(pids, s.pid)
	}
	return pids
}

type startLine struct {
	pid int
	at  time.Time
}

func (ta *testApp) startLines() []startLine {
	b, err := os.ReadFile(ta.starts)
	if err != nil {
		return nil
	}
	var out []startLine
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		pid, _ := strconv.Atoi(f[0])
		ns, _ := strconv.ParseInt(f[1], 10, 64)
		out = append(out, startLine{pid, time.Unix(0, ns)})
	}
	return out
}

func (ta *testApp) waitState(t testing.TB, want State) Status {
	t.Helper()
	var st Status
	waitFor(t, "state "+want.String(), func() bool {
		st = ta.Status()
		return st.State == want
	})
	return st
}

// echo connects, sends msg, half-closes and returns what came back.
func echo(t *testing.T, addr, msg string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// bannerConn connects to an app run with -banner and returns the
// connection and the pid of the process that answered.
func bannerConn(t *testing.T, addr string) (net.Conn, int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		t.Fatalf("reading banner: %v", err)
	}
	f := strings.Fields(line)
	pid, _ := strconv.Atoi(f[len(f)-1])
	return c, pid
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for d := time.Millisecond; !cond(); d = min(2*d, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(d) // polling interval of a condition with a deadline
	}
}

// alive reports whether pid runs, or is a zombie of ours: procman must
// reap its children, so an unreaped child is a leak. The zombie of a
// process that is not our child is init's to reap and counts as dead.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return false
	}
	switch f[0] {
	case "X":
		return false
	case "Z":
		return f[1] == strconv.Itoa(os.Getpid())
	}
	return true
}

// freePort is a port for an app to listen on later (testport.Free).
func freePort(t testing.TB) int { return testport.Free(t) }

func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
