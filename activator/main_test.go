package activator

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/leakcheck"
	"github.com/rouse-dev/rouse/internal/testbackend"
	"github.com/rouse-dev/rouse/internal/testport"
	"github.com/rouse-dev/rouse/procman"
)

// TestMain lets the test binary be the app: a child started with
// ROUSE_TEST_BACKEND=1 runs the example backend instead of the tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == shimVerb { // before the backend: the shim runs it
		os.Exit(ExecMain(os.Args[2:], os.Stderr))
	}
	if code, ran := testbackend.Main(); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// testConfig is an app in tcp mode whose process is this test binary
// running the backend, listening on upstream and noting its starts in starts.
func testConfig(listen, upstream, starts string) Config {
	return Config{
		Name:            "t",
		Mode:            ModeTCP,
		Listen:          []string{listen},
		Process:         testbackend.Spec(starts, upstream),
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
}

// testApp is an App under test with the files to observe it by.
type testApp struct {
	*App
	addr   string // where clients connect
	starts string // file the backend appends "PID UNIXNANO" to at each start
	dir    string // a temporary directory of the test
}

// newTestApp starts an app in tcp mode whose process is this test binary
// running the backend with args. edit may change the config.
func newTestApp(t testing.TB, args []string, edit func(*Config)) *testApp {
	t.Helper()
	return newTestApps(t, Capacity{}, appSpec{args: args, edit: edit})[0]
}

// newHTTPTestApp is newTestApp in http mode; the backend notes every
// request it receives in the returned hits file.
func newHTTPTestApp(t testing.TB, args []string, edit func(*Config)) (*testApp, string) {
	t.Helper()
	hits := filepath.Join(t.TempDir(), "hits")
	ta := newTestApp(t, append([]string{"-proto", "http", "-hits", hits}, args...), func(c *Config) {
		c.Mode = ModeHTTP
		c.RequestBuffer = 1 << 20
		c.ResponseTimeout = 30 * time.Second
		if edit != nil {
			edit(c)
		}
	})
	return ta, hits
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

// goroutineListener hides a TCP listener's type from an HTTP front, which
// then serves its connections on goroutines.
type goroutineListener struct{ net.Listener }

// newTestApps starts apps under one Supervisor sharing limits, each on its
// own listener, named t0, t1, ... Cleanup closes them all and checks that
// no process, goroutine or fd is left.
func newTestApps(t testing.TB, limits Capacity, specs ...appSpec) []*testApp {
	t.Helper()
	log := testbackend.Logger(t)
	base := leakcheck.Take(t)
	var (
		tas    []*testApp
		apps   []*App
		fronts []Front
	)
	// One watch for every tcp app, as the daemon has.
	watch, err := NewListenWatch()
	if err != nil {
		t.Fatal(err)
	}
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
		a, err := New(cfg, lns, Options{Logger: log, Guard: spec.guard, AccessLog: spec.access, ListenWatch: watch})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Mode == ModeHTTP {
			var fln net.Listener = ln
			if spec.onGoroutines {
				fln = goroutineListener{ln}
			}
			f, err := newFront(fln, []*App{a}, log)
			if err != nil {
				t.Fatal(err)
			}
			fronts = append(fronts, f)
		}
		apps = append(apps, a)
		tas = append(tas, &testApp{App: a, addr: ln.Addr().String(), starts: starts, dir: filepath.Dir(starts)})
	}
	if limits.Logger == nil {
		limits.Logger = log
	}
	sup, err := NewSupervisor(apps, fronts, limits)
	if err != nil {
		t.Fatal(err)
	}
	sup.Serve()
	base.After(t, func(ctx context.Context) {
		sup.Close(ctx)
		watch.Close() // after the apps that use it
	}, func() []int {
		var pids []int
		for _, ta := range tas {
			pids = append(pids, ta.pids()...)
		}
		return pids
	})
	return tas
}

// pids returns the pids of every process the app started, in order.
func (ta *testApp) pids() []int { return testbackend.Pids(ta.starts) }

type startLine struct {
	pid int
	at  time.Time
}

func (ta *testApp) startLines() []startLine {
	var out []startLine
	for _, s := range testbackend.Starts(ta.starts) {
		out = append(out, startLine{s.Pid, s.At})
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

// The shared helpers, under the names this package's tests use.
var (
	waitFor      = leakcheck.WaitFor
	alive        = leakcheck.Alive
	countFDs     = leakcheck.FDs
	checkNoLeaks = leakcheck.Check
	python3      = testbackend.Python3
	get          = testbackend.Get
	newClient    = testbackend.NewClient
)

// newFront makes the HTTP front of the http apps under test: httpfront's,
// set by front_test.go (package activator_test, since httpfront builds on
// this package).
var newFront func(ln net.Listener, apps []*App, log *slog.Logger) (Front, error)

// freePort is a port for an app to listen on later (testport.Free).
func freePort(t testing.TB) int { return testport.Free(t) }
