package httpfront

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
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
	log := testbackend.Logger(t)
	base := leakcheck.Take(t)
	tas := make([]*testApp, len(specs))
	apps := make([]*activator.App, len(specs))
	fronts := make([]activator.Front, len(specs))
	var starts []string
	for i, spec := range specs {
		ta := startTestApp(t, log, spec, len(specs) > 1, i)
		tas[i], apps[i], fronts[i] = ta, ta.App, ta.front
		starts = append(starts, ta.starts)
	}
	sup, err := activator.NewSupervisor(apps, fronts, activator.Capacity{})
	if err != nil {
		t.Fatal(err)
	}
	sup.Serve()
	base.After(t, sup.Close, func() []int { return testbackend.Pids(starts...) })
	return tas
}

// startTestApp makes the i-th app of newTestApps and its front (named
// for i when numbered).
func startTestApp(t testing.TB, log *slog.Logger, spec appSpec, numbered bool, i int) *testApp {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta := &testApp{addr: ln.Addr().String(), dir: t.TempDir()}
	ta.starts = filepath.Join(ta.dir, "starts")
	cfg := testConfig(ta.addr, "127.0.0.1:"+strconv.Itoa(freePort(t)), ta.starts)
	cfg.Process.Argv = append(cfg.Process.Argv, spec.args...)
	if numbered {
		cfg.Name = fmt.Sprintf("t%d", i)
	}
	if spec.edit != nil {
		spec.edit(&cfg)
	}
	if ta.App, err = activator.New(cfg, nil, activator.Options{Logger: log, AccessLog: spec.access}); err != nil {
		t.Fatal(err)
	}
	var fln net.Listener = ln
	if spec.onGoroutines {
		fln = goroutineListener{ln}
	}
	if ta.front, err = NewHTTPFront(fln, []*activator.App{ta.App}, log); err != nil {
		t.Fatal(err)
	}
	return ta
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
func (ta *testApp) pids() []int { return testbackend.Pids(ta.starts) }

func (ta *testApp) waitState(t testing.TB, want activator.State) activator.Status {
	t.Helper()
	var st activator.Status
	leakcheck.WaitFor(t, "state "+want.String(), func() bool {
		st = ta.Status()
		return st.State == want
	})
	return st
}
