package httpfront

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/leakcheck"
	"github.com/rouse-dev/rouse/internal/testbackend"
	"github.com/rouse-dev/rouse/internal/testport"
)

// TestMain lets the test binary be the app (testbackend.Main).
func TestMain(m *testing.M) {
	if code, ran := testbackend.Main(); ran {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// The shared helpers, under the names this package's tests use.
var (
	waitFor      = leakcheck.WaitFor
	checkNoLeaks = leakcheck.Check
	python3      = testbackend.Python3
	get          = testbackend.Get
	newClient    = testbackend.NewClient
	hitCount     = testbackend.HitCount
)

// freePort is a port for an app to listen on later (testport.Free).
func freePort(t testing.TB) int { return testport.Free(t) }

// testConfig is an http app whose process is this test binary running
// the backend in http mode, listening on upstream and noting its starts
// in starts; settings as DESIGN.md's defaults, but shorter waits.
func testConfig(listen, upstream, starts string) activator.Config {
	p := testbackend.Spec(starts, upstream)
	p.Argv = append(p.Argv, "-proto", "http")
	return activator.Config{
		Name: "t", Mode: activator.ModeHTTP, Listen: []string{listen}, Process: p,
		UpstreamNetwork: "tcp", UpstreamAddress: upstream, Ready: activator.Readiness{Kind: "tcp"},
		StartTimeout: 10 * time.Second, IdleTimeout: time.Minute, QueueTimeout: 10 * time.Second,
		MaxQueued: 1024, RetryTries: 3, RetryTimeout: 10 * time.Second, MaxFails: 3,
		FailTimeout: 30 * time.Second, BackoffMax: 5 * time.Minute,
		RequestBuffer: 1 << 20, ResponseTimeout: 30 * time.Second,
	}
}

// testApp is an http app under test, behind a front of its own.
type testApp struct {
	*activator.App
	addr   string // where clients connect
	starts string // file the backend appends "PID UNIXNANO" to at each start
	dir    string // a temporary directory of the test
	front  *HTTPFront
}

// appSpec is one app of newTestApps: backend arguments and a config edit.
type appSpec struct {
	args []string
	edit func(*activator.Config)
	// onGoroutines: the front serves every connection on a goroutine
	// (frontConn), never in an event loop.
	onGoroutines bool
	access       func(activator.AccessRecord) // activator.Options.AccessLog
}

// goroutineListener hides a TCP listener's type from an HTTPFront, which
// then serves its connections on goroutines.
type goroutineListener struct{ net.Listener }

// newTestApps starts http apps under one Supervisor, each behind its own
// front, named t0, t1, ... (t when alone). Cleanup closes them all and
// checks that no process, goroutine or fd is left.
func newTestApps(t testing.TB, specs ...appSpec) []*testApp {
	t.Helper()
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
	goroutines, fds := runtime.NumGoroutine(), leakcheck.FDs(t)
	var tas []*testApp
	var apps []*activator.App
	var fronts []activator.Front
	for i, spec := range specs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		starts := filepath.Join(t.TempDir(), "starts")
		cfg := testConfig(ln.Addr().String(), "127.0.0.1:"+strconv.Itoa(freePort(t)), starts)
		if len(specs) > 1 {
			cfg.Name = "t" + strconv.Itoa(i)
		}
		cfg.Process.Argv = append(cfg.Process.Argv, spec.args...)
		if spec.edit != nil {
			spec.edit(&cfg)
		}
		a, err := activator.New(cfg, nil, activator.Options{Logger: log, AccessLog: spec.access})
		if err != nil {
			t.Fatal(err)
		}
		var fln net.Listener = ln
		if spec.onGoroutines {
			fln = goroutineListener{ln}
		}
		f, err := NewHTTPFront(fln, []*activator.App{a}, log)
		if err != nil {
			t.Fatal(err)
		}
		apps, fronts = append(apps, a), append(fronts, f)
		tas = append(tas, &testApp{App: a, addr: ln.Addr().String(), starts: starts, dir: filepath.Dir(starts), front: f})
	}
	sup, err := activator.NewSupervisor(apps, fronts, activator.Capacity{})
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

// newTestApp is one app of newTestApps.
func newTestApp(t testing.TB, args []string, edit func(*activator.Config)) *testApp {
	t.Helper()
	return newTestApps(t, appSpec{args: args, edit: edit})[0]
}

// newHTTPTestApp is newTestApp whose backend notes every request it
// receives in the returned hits file.
func newHTTPTestApp(t testing.TB, args []string, edit func(*activator.Config)) (*testApp, string) {
	t.Helper()
	hits := filepath.Join(t.TempDir(), "hits")
	return newTestApp(t, append([]string{"-hits", hits}, args...), edit), hits
}

// pids returns the pids of every process the app started, in order.
func (ta *testApp) pids() []int {
	var pids []int
	for _, s := range testbackend.Starts(ta.starts) {
		pids = append(pids, s.Pid)
	}
	return pids
}

func (ta *testApp) waitState(t testing.TB, want activator.State) activator.Status {
	t.Helper()
	var st activator.Status
	waitFor(t, "state "+want.String(), func() bool {
		st = ta.Status()
		return st.State == want
	})
	return st
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
