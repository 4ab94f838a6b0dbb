package activator

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func echoSpec(extra ...string) appSpec {
	return appSpec{args: append([]string{"-proto", "echo", "-banner"}, extra...)}
}

func TestMaxRunningStopsTheLeastRecentlyUsed(t *testing.T) {
	apps := newTestApps(t, Capacity{MaxRunning: 2}, echoSpec(), echoSpec(), echoSpec())
	a, b, c := apps[0], apps[1], apps[2]
	for _, ta := range []*testApp{a, b} {
		conn, _ := bannerConn(t, ta.addr)
		conn.Close()
		waitFor(t, "the connection to end", func() bool { return ta.Status().Conns == 0 })
	}
	// b is in use; a is the least recently used and idle.
	held, _ := bannerConn(t, b.addr)
	defer held.Close()
	got, err := echo(t, c.addr, "third app")
	if err != nil || !strings.HasSuffix(got, "third app") {
		t.Fatalf("third app under max_running=2: %q %v", got, err)
	}
	if st := a.Status(); st.State != Idle {
		t.Errorf("least recently used app is %s, want idle", st.State)
	}
	if m := a.Metrics(); m.Stops["lru"] != 1 {
		t.Errorf("a's stops %v, want one lru", m.Stops)
	}
	if st := b.Status(); st.State != Ready {
		t.Errorf("the app in use is %s, want it left running", st.State)
	}
	// And a, asked again, makes room in turn: nothing is refused.
	if got, err := echo(t, a.addr, "back"); err != nil || !strings.HasSuffix(got, "back") {
		t.Fatalf("a again: %q %v", got, err)
	}
}

func TestNoRoomMeansTheQueueTimesOut(t *testing.T) {
	apps := newTestApps(t, Capacity{MaxRunning: 1},
		echoSpec(), appSpec{args: []string{"-proto", "echo"}, edit: func(c *Config) { c.QueueTimeout = 300 * time.Millisecond }})
	held, _ := bannerConn(t, apps[0].addr)
	defer held.Close()
	start := time.Now()
	if got, _ := echo(t, apps[1].addr, "x"); got != "" {
		t.Errorf("got %q with no room to start", got)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("closed after %s, want about queue_timeout", took)
	}
	if st := apps[1].Status(); st.Starts != 0 {
		t.Errorf("started with no room")
	}
}

func TestMemoryBudgetStopsIdleAppsAboveIt(t *testing.T) {
	// Each app holds 100 MiB. What that costs in RSS (the race detector
	// doubles it) is measured on one app first; the budget fits two, not
	// three.
	const mb = 100
	one := newTestApp(t, []string{"-proto", "echo", "-banner", "-alloc", fmt.Sprint(mb)}, nil)
	conn, _ := bannerConn(t, one.addr)
	conn.Close()
	rss := one.Status().RSSBytes
	one.Stop(t.Context())
	apps := newTestApps(t, Capacity{MemoryBudget: int64(rss * 5 / 2)},
		echoSpec("-alloc", fmt.Sprint(mb)), echoSpec("-alloc", fmt.Sprint(mb)), echoSpec("-alloc", fmt.Sprint(mb)))
	for _, ta := range apps {
		conn, _ := bannerConn(t, ta.addr)
		conn.Close()
	}
	waitFor(t, "the least recently used app to be stopped for the budget", func() bool {
		return apps[0].Status().State == Idle
	})
	if m := apps[0].Metrics(); m.Stops["lru"] != 1 {
		t.Errorf("stops %v, want one lru", m.Stops)
	}
	for _, ta := range apps[1:] {
		if st := ta.Status(); st.State != Ready || st.RSSBytes < mb<<20 {
			t.Errorf("%s: %s with %d bytes, want ready and holding its memory", st.Name, st.State, st.RSSBytes)
		}
	}
}

func TestMaxStartingBoundsConcurrentSpawns(t *testing.T) {
	const n, limit = 50, 5
	specs := make([]appSpec, n)
	for i := range specs {
		specs[i] = echoSpec("-delay", "100ms")
		specs[i].edit = func(c *Config) {
			ready := filepath.Join(filepath.Dir(startsFile(c.Process.Argv)), "ready")
			c.Process.Argv = append(c.Process.Argv, "-ready-file", ready)
		}
	}
	apps := newTestApps(t, Capacity{MaxStarting: limit}, specs...)
	var wg sync.WaitGroup
	for _, ta := range apps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := echo(t, ta.addr, "hi"); err != nil || !strings.HasSuffix(got, "hi") {
				t.Errorf("%s: %q %v", ta.Name(), got, err)
			}
		}()
	}
	wg.Wait()
	// From each process's start to its socket listening (both noted by
	// the backend; rouse takes and gives back a start slot a little before
	// and after): never more than limit of these overlap.
	type span struct{ from, to time.Time }
	var spans []span
	for _, ta := range apps {
		s := ta.startLines()
		if len(s) != 1 {
			t.Fatalf("%s started %d times", ta.Name(), len(s))
		}
		b, err := os.ReadFile(filepath.Join(ta.dir, "ready"))
		if err != nil {
			t.Fatal(err)
		}
		ns, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		spans = append(spans, span{s[0].at, time.Unix(0, ns)})
	}
	most := 0
	for _, x := range spans {
		n := 0
		for _, y := range spans {
			if !y.from.After(x.from) && y.to.After(x.from) {
				n++
			}
		}
		most = max(most, n)
	}
	if most > limit {
		t.Errorf("%d spawns overlapped, max_starting is %d", most, limit)
	}
	t.Logf("at most %d of %d apps were starting at once", most, n)
}

func TestKeepWarm(t *testing.T) {
	apps := newTestApps(t, Capacity{MaxRunning: 1},
		appSpec{args: []string{"-proto", "echo", "-banner"}, edit: func(c *Config) { c.KeepWarm = true; c.IdleTimeout = 50 * time.Millisecond }},
		appSpec{args: []string{"-proto", "echo"}, edit: func(c *Config) { c.QueueTimeout = 300 * time.Millisecond }})
	warm := apps[0]
	warm.waitState(t, Ready) // started with rouse, no connection needed
	conn, _ := bannerConn(t, warm.addr)
	conn.Close()
	// Far past idle_timeout, and another app asking for the only slot:
	// a keep_warm app is never stopped.
	if got, _ := echo(t, apps[1].addr, "x"); got != "" {
		t.Errorf("other app got %q although the only slot is kept warm", got)
	}
	if st := warm.Status(); st.State != Ready || st.Starts != 1 {
		t.Errorf("keep_warm app: %s after %d starts", st.State, st.Starts)
	}
}

// An explicit Start (rouse start APP) with no room waits for room like a
// connection does, and starts once the pool can make some.
func TestStartWaitsForRoom(t *testing.T) {
	apps := newTestApps(t, Capacity{MaxRunning: 1}, echoSpec(), echoSpec())
	held, _ := bannerConn(t, apps[0].addr)
	started := make(chan error, 1)
	go func() { started <- apps[1].Start(t.Context()) }()
	waitFor(t, "the start to be queued in the pool", func() bool {
		apps[1].pool.mu.Lock()
		defer apps[1].pool.mu.Unlock()
		return len(apps[1].pool.waiting) == 1
	})
	held.Close() // apps[0] goes idle: the pool stops it to make room
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Start did not return once there was room")
	}
	if st := apps[1].Status(); st.State != Ready {
		t.Errorf("after Start: %s", st.State)
	}
}
