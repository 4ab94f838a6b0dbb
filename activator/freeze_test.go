package activator

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/testbackend"
	"github.com/rouse-dev/rouse/procman"
)

// guardVerb is how TestMain recognizes the guard process, as rouse's.
const guardVerb = testbackend.GuardVerb

// cgroupGuard starts a guard that gives every app a cgroup of its own; it
// skips the test where no cgroup v2 subtree can be managed.
func cgroupGuard(t *testing.T) *procman.Guard {
	t.Helper()
	g, err := procman.StartGuard([]string{os.Args[0], guardVerb}, procman.GuardOptions{Containment: procman.ContainAuto})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if g.Cgroup() == "" {
		t.Skip("no cgroup v2 subtree rouse may manage here")
	}
	return g
}

// freezers are the two ways an app is frozen: its cgroup (with a guard),
// or SIGSTOP to its process group (none).
var freezers = []struct {
	name  string
	guard func(*testing.T) *procman.Guard
}{
	{"cgroup", cgroupGuard},
	{"sigstop", func(*testing.T) *procman.Guard { return nil }},
}

// frozenOnOS reports whether the kernel has the app's process frozen: its
// cgroup's freezer (g set), else stopped by SIGSTOP.
func frozenOnOS(t *testing.T, g *procman.Guard, pid int) bool {
	t.Helper()
	if g != nil {
		events, _ := filepath.Glob(filepath.Join(g.Cgroup(), "app-*", "cgroup.events"))
		for _, ev := range events {
			procs, _ := os.ReadFile(filepath.Join(filepath.Dir(ev), "cgroup.procs"))
			if !strings.Contains("\n"+string(procs), "\n"+strconv.Itoa(pid)+"\n") {
				continue
			}
			b, _ := os.ReadFile(ev)
			return strings.Contains(string(b), "frozen 1")
		}
		t.Fatalf("pid %d in no app cgroup", pid)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] == "T"
}

// freezeAfter makes an app freeze after d idle, and stop a minute later.
func freezeAfter(d time.Duration, edit func(*Config)) func(*Config) {
	return func(c *Config) {
		c.FreezeAfter, c.IdleTimeout = d, time.Minute
		if edit != nil {
			edit(c)
		}
	}
}

// checkFrozeAndThawed checks that the app was frozen and thawed, by one
// process that nothing counted against.
func checkFrozeAndThawed(t *testing.T, ta *testApp) {
	t.Helper()
	m := ta.Metrics()
	if m.Freezes == 0 || m.Thaws == 0 {
		t.Errorf("freezes %d, thaws %d: the load did not cross the freeze boundary", m.Freezes, m.Thaws)
	}
	t.Logf("freezes %d, thaws %d", m.Freezes, m.Thaws)
	onePid(t, ta)
	if len(m.Failures) != 0 {
		t.Errorf("failures counted against the app: %v", m.Failures)
	}
}

// A bounded client whose requests come apart by about freeze_after, so
// that they arrive as the app freezes, while it is frozen and as it
// thaws: every one is served, by the one process, whatever the mode and
// the app (Go backend over http and tcp, Python's http.server).
func TestFreezeThawUnderLoad(t *testing.T) {
	const after = 25 * time.Millisecond
	tests := []struct {
		name string
		app  func(t *testing.T) (*testApp, func(i int) error)
	}{
		{"go http", func(t *testing.T) (*testApp, func(int) error) {
			ta, _ := newHTTPTestApp(t, nil, freezeAfter(after, nil))
			client := newClient(t)
			return ta, func(i int) error { return getOK(client, fmt.Sprintf("http://%s/r%d", ta.addr, i)) }
		}},
		{"python http", func(t *testing.T) (*testApp, func(int) error) {
			ta := newPyApp(t, "http", nil, freezeAfter(after, nil))
			client := newClient(t)
			return ta, func(int) error { return getOK(client, "http://"+ta.addr+"/") }
		}},
		{"go tcp", func(t *testing.T) (*testApp, func(int) error) {
			ta := newTestApp(t, []string{"-proto", "echo"}, freezeAfter(after, nil))
			return ta, func(i int) error {
				msg := fmt.Sprintf("message %d", i)
				got, err := echo(t, ta.addr, msg) // no Fatal: safe off the test's goroutine
				if err == nil && !strings.HasSuffix(got, msg) {
					err = fmt.Errorf("echo %q, want %q", got, msg)
				}
				return err
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ta, do := tt.app(t)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var errs []error
			for w := range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 40 {
						if err := do(w*1000 + i); err != nil {
							mu.Lock()
							errs = append(errs, err)
							mu.Unlock()
						}
						// The client's pace, around freeze_after: not a wait for a condition.
						time.Sleep(time.Duration(rand.Int64N(int64(2 * after))))
					}
				}()
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Errorf("%d of 120 lost at the freeze boundary, first: %v", len(errs), errs[0])
			}
			checkFrozeAndThawed(t, ta)
		})
	}
}

// getOK gets url and wants a 200.
func getOK(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// A frozen app is left alone: it stays frozen (the kernel says so) with
// nothing probing it, however strict max_fails is, and the next request
// thaws the same process, with nothing counted against it. A Python app
// with an http readiness probe.
func TestFrozenAppIsNeverProbedOrRestarted(t *testing.T) {
	for _, f := range freezers {
		t.Run(f.name, func(t *testing.T) {
			g := f.guard(t)
			py := python3(t)
			ta := newTestApps(t, Capacity{}, appSpec{guard: g, edit: func(c *Config) {
				_, port, _ := net.SplitHostPort(c.UpstreamAddress)
				script, _ := filepath.Abs("../examples/apps/pyapp.py")
				c.Process.Argv = []string{py, script, "http", "--port", port, "--starts", startsFile(c.Process.Argv)}
				c.Process.Env = nil
				c.Mode, c.Ready = ModeHTTP, Readiness{Kind: "http", Path: "/"}
				c.MaxFails, c.FailTimeout = 1, time.Minute
				freezeAfter(20*time.Millisecond, nil)(c)
			}})[0]
			client := newClient(t)
			if err := getOK(client, "http://"+ta.addr+"/"); err != nil {
				t.Fatal(err)
			}
			pid := ta.waitState(t, Frozen).PID
			waitFor(t, "the kernel to freeze it", func() bool { return frozenOnOS(t, g, pid) })
			// A period sampled, not a wait for a condition: it stays frozen.
			for end := time.Now().Add(600 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if st := ta.Status(); st.State != Frozen || st.PID != pid || !frozenOnOS(t, g, pid) {
					t.Fatalf("a frozen app changed without a request: %s pid %d (was %d)", st.State, st.PID, pid)
				}
			}
			freezes := ta.Metrics().Freezes
			if err := getOK(client, "http://"+ta.addr+"/"); err != nil {
				t.Fatal(err)
			}
			// freeze_after is 20 ms: the app may be frozen again by now,
			// which is no failure to thaw. The kernel's word first, then
			// rouse's count (Status waits for a freeze in progress).
			onOS := frozenOnOS(t, g, pid)
			if st := ta.Status(); st.PID != pid || st.Starts != 1 || st.Failures != 0 {
				t.Errorf("after the thaw: pid %d, %d starts, %d failures; want pid %d, 1 start, none", st.PID, st.Starts, st.Failures, pid)
			}
			if onOS && ta.Metrics().Freezes == freezes {
				t.Error("the kernel still has it frozen after it answered, and rouse did not freeze it again")
			}
		})
	}
}

// Stopping a frozen app (rouse stop, or idle_timeout after the freeze)
// thaws it so that it gets its stop signal, well before stop_timeout, and
// leaves no process, nor cgroup.
func TestStopFrozenLeavesNoProcess(t *testing.T) {
	for _, f := range freezers {
		for _, how := range []string{"asked", "idle"} {
			t.Run(f.name+"/"+how, func(t *testing.T) {
				g := f.guard(t)
				idle := time.Minute
				if how == "idle" {
					idle = 300 * time.Millisecond
				}
				ta := newTestApps(t, Capacity{}, appSpec{guard: g, args: []string{"-proto", "echo"}, edit: func(c *Config) {
					c.FreezeAfter, c.IdleTimeout, c.Process.StopTimeout = 20*time.Millisecond, idle, 20*time.Second
				}})[0]
				if _, err := echo(t, ta.addr, "x"); err != nil {
					t.Fatal(err)
				}
				pid := ta.waitState(t, Frozen).PID
				waitFor(t, "the kernel to freeze it", func() bool { return frozenOnOS(t, g, pid) })
				t0 := time.Now()
				if how == "asked" {
					if err := ta.Stop(t.Context()); err != nil {
						t.Fatal(err)
					}
				} else {
					ta.waitState(t, Idle)
				}
				if took := time.Since(t0); took > 10*time.Second {
					t.Errorf("stopping the frozen app took %v: killed at stop_timeout, not stopped by its signal", took)
				}
				waitFor(t, "the process to be gone", func() bool { return !alive(pid) })
				if n := ta.Metrics().Stops[how]; n != 1 {
					t.Errorf("stops %v, want one %q", ta.Metrics().Stops, how)
				}
				if g != nil {
					if left, _ := filepath.Glob(filepath.Join(g.Cgroup(), "app-*")); len(left) > 0 {
						t.Errorf("cgroups left: %v", left)
					}
				}
			})
		}
	}
}

// A handoff app freezes too: connections arriving on its socket wait in
// the kernel's backlog, and the first wakes rouse, which thaws it; the
// app accepts them itself. Connections come apart by about freeze_after.
func TestFreezeHandoff(t *testing.T) {
	const after = 40 * time.Millisecond
	ln := listenTCP(t)
	ta := newShimApp(t, ModeHandoff, []net.Listener{ln}, []string{"-listen-fds", "-proto", "echo", "-banner"}, freezeAfter(after, nil))
	var pid int
	for i := range 25 {
		c, fields := banner(t, ta.addr, fmt.Sprintf("hello %d\n", i))
		readEcho(t, c, fmt.Sprintf("hello %d\n", i))
		c.Close()
		if p := pidOf(t, fields); pid == 0 {
			pid = p
		} else if p != pid {
			t.Fatalf("connection %d served by pid %d, want %d", i, p, pid)
		}
		if i == 0 {
			ta.waitState(t, Frozen)
			waitFor(t, "the kernel to freeze it", func() bool { return frozenOnOS(t, nil, pid) })
		}
		time.Sleep(time.Duration(rand.Int64N(int64(3 * after)))) // the client's pace
	}
	checkFrozeAndThawed(t, ta.testApp)
}

// memory_budget counts frozen apps, and making room stops a frozen app
// before a ready one, even one used less recently. Python apps that hold
// a known amount each; the budget fits two of them, not three.
func TestMemoryBudgetStopsFrozenBeforeReady(t *testing.T) {
	py := python3(t)
	const mib = 60
	// What one costs in RSS, measured first.
	rss := allocRSS(t, py, mib)
	budget := int64(rss) * 5 / 2
	client := newClient(t)

	ready, frozen, third := allocApp(py, mib, 0, nil), allocApp(py, mib, 0, freezeAfter(20*time.Millisecond, nil)), allocApp(py, mib, 0, nil)
	apps := newTestApps(t, Capacity{MemoryBudget: budget}, ready, frozen, third)
	r, fz, c := apps[0], apps[1], apps[2]

	// r is used first (least recently). c's last run sets what it needs:
	// the pool samples it while two apps run.
	for _, ta := range []*testApp{r, c} {
		if err := getOK(client, "http://"+ta.addr+"/"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the pool to know what c needs", func() bool { return c.lastRSS() > rss/2 })
	if err := c.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Then fz, which freezes.
	if err := getOK(client, "http://"+fz.addr+"/"); err != nil {
		t.Fatal(err)
	}
	fz.waitState(t, Frozen)
	if st := r.Status(); st.State != Ready {
		t.Fatalf("r is %s, want ready", st.State)
	}

	if err := getOK(client, "http://"+c.addr+"/"); err != nil {
		t.Fatal(err)
	}
	if st := fz.Status(); st.State != Idle || fz.Metrics().Stops["lru"] != 1 {
		t.Errorf("the frozen app is %s with stops %v, want stopped to make room (lru)", st.State, fz.Metrics().Stops)
	}
	if st := r.Status(); st.State != Ready || r.Metrics().Stops["lru"] != 0 {
		t.Errorf("the ready app is %s with stops %v, want left running", st.State, r.Metrics().Stops)
	}
}

// A frozen app with no idle_timeout has no timer left; a reload that sets
// one stops it (before, it stayed frozen until a connection thawed it).
func TestReloadGivesAFrozenAppItsIdleTimeout(t *testing.T) {
	ta := newTestApps(t, Capacity{}, appSpec{args: []string{"-proto", "echo"}, edit: freezeAfter(20*time.Millisecond, func(c *Config) {
		c.IdleTimeout = 0
	})})[0]
	if _, err := echo(t, ta.addr, "x"); err != nil {
		t.Fatal(err)
	}
	ta.waitState(t, Frozen)
	cfg := *ta.Config()
	cfg.IdleTimeout = 100 * time.Millisecond
	ta.Reconfigure(cfg)
	ta.waitState(t, Idle)
	if m := ta.Metrics(); m.Stops["idle"] != 1 {
		t.Errorf("stops %v, want one idle stop", m.Stops)
	}
}
