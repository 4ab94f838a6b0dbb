package activator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/procman"
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

// allocApp is an http app run by testdata/allocapp.py: it holds mib MiB
// and takes delay to start.
func allocApp(py string, mib int, delay time.Duration, edit func(*Config)) appSpec {
	return appSpec{edit: func(c *Config) {
		_, port, _ := net.SplitHostPort(c.UpstreamAddress)
		script, _ := filepath.Abs(filepath.Join("testdata", "allocapp.py"))
		c.Process.Argv = []string{py, script, port, strconv.Itoa(mib), startsFile(c.Process.Argv), strconv.FormatFloat(delay.Seconds(), 'f', 3, 64)}
		c.Mode = ModeHTTP
		c.ResponseTimeout = 30 * time.Second
		if edit != nil {
			edit(c)
		}
	}}
}

// answer is one request's outcome, timed.
type answer struct {
	code int
	body string
	took time.Duration
}

func getAsync(client *http.Client, url string) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		t0 := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			ch <- answer{body: err.Error(), took: time.Since(t0)}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- answer{resp.StatusCode, string(b), time.Since(t0)}
	}()
	return ch
}

// inQueue reports whether ta waits in its pool's queue.
func inQueue(ta *testApp) bool {
	ta.pool.mu.Lock()
	defer ta.pool.mu.Unlock()
	return slices.Contains(ta.pool.waiting, ta.App)
}

// An app that once ran past memory_budget (and was stopped to make room)
// never wedges the pool: asked for while others wait behind it, it gets an
// honest 503 at once and leaves the queue, and they are granted in the
// order they asked; asked for alone, it starts once the others are idle
// and stopped. No request waits beyond queue_timeout, and the other apps
// are served throughout. The apps are Python, holding known amounts.
func TestMemoryBudgetOversizeAppNeverWedges(t *testing.T) {
	py := python3(t)
	const budget = 160 << 20 // small apps hold about 40 MiB each, the big one about 220
	const queueTimeout = 8 * time.Second
	queue := func(c *Config) { c.QueueTimeout = queueTimeout }
	apps := newTestApps(t, Capacity{MemoryBudget: budget, MaxStarting: 1},
		allocApp(py, 20, 300*time.Millisecond, queue), // a
		allocApp(py, 20, 300*time.Millisecond, queue), // b
		allocApp(py, 20, 0, queue),                    // c: kept busy
		allocApp(py, 200, 0, queue))                   // x: bigger than the budget alone
	a, b, c, x := apps[0], apps[1], apps[2], apps[3]
	client := newClient(t)
	url := func(ta *testApp, path string) string { return "http://" + ta.addr + path }
	served := func(what string, ch <-chan answer) {
		t.Helper()
		ans := <-ch
		if ans.code != http.StatusOK {
			t.Errorf("%s: %d %q after %s, want 200", what, ans.code, ans.body, ans.took)
		}
		if ans.took > queueTimeout {
			t.Errorf("%s took %s, more than queue_timeout", what, ans.took)
		}
	}

	// x runs alone, past the budget, then is stopped to make room for a.
	served("x alone", getAsync(client, url(x, "/")))
	waitFor(t, "x's RSS past the budget", func() bool { return memoryOf(x).held > budget })
	served("a, stopping x", getAsync(client, url(a, "/")))
	if st := x.Status(); st.State != Idle || x.Metrics().Stops["lru"] != 1 {
		t.Fatalf("x is %s with stops %v, want stopped once for room", st.State, x.Metrics().Stops)
	}

	// c is busy for a while: no room for x while it is.
	slow := getAsync(client, url(c, "/slow/4000"))
	waitFor(t, "c's request in flight", func() bool { return c.Status().Conns == 1 })
	xFirst := getAsync(client, url(x, "/"))
	waitFor(t, "x at the head of the queue", func() bool { return inQueue(x) && a.State() == Idle })
	// b asks: x leaves the queue with a 503 that says why, b is granted.
	bAns := getAsync(client, url(b, "/"))
	ans := <-xFirst
	if ans.code != http.StatusServiceUnavailable || !strings.Contains(ans.body, "memory_budget") || ans.took > queueTimeout {
		t.Errorf("x with b waiting: %d %q after %s, want a 503 naming memory_budget", ans.code, ans.body, ans.took)
	}
	waitFor(t, "b starting", func() bool { return b.State() == Starting })
	// While b starts (max_starting 1), a and then x ask: a is granted
	// next, then x alone, once b, a and c are idle and stopped.
	aAns := getAsync(client, url(a, "/"))
	waitFor(t, "a queued", func() bool { return inQueue(a) })
	xAgain := getAsync(client, url(x, "/"))
	waitFor(t, "x queued behind a", func() bool { return inQueue(x) })
	served("b", bAns)
	served("a again", aAns)
	served("c's slow request", slow)
	served("x alone again", xAgain)
	for _, ta := range []*testApp{a, b, c} {
		if st := ta.State(); st != Idle {
			t.Errorf("%s is %s while x runs, want stopped for it", ta.Name(), st)
		}
	}
	last := func(ta *testApp) time.Time { s := ta.startLines(); return s[len(s)-1].at }
	if !(last(b).Before(last(a)) && last(a).Before(last(x))) {
		t.Errorf("granted b at %s, a at %s, x at %s: want that order",
			last(b).Format(time.StampMicro), last(a).Format(time.StampMicro), last(x).Format(time.StampMicro))
	}

	// And the others keep being served: b makes room again, then `rouse
	// start x` stops it and starts x, without hanging.
	served("b after x", getAsync(client, url(b, "/")))
	ctx, cancel := context.WithTimeout(t.Context(), queueTimeout)
	defer cancel()
	if err := x.Start(ctx); err != nil {
		t.Fatalf("Start x: %v", err)
	}
	if st := b.State(); st != Idle {
		t.Errorf("b is %s after Start x, want stopped for it", st)
	}
}

// Start of an app too big for the budget while another waits to start
// returns the refusal at once instead of hanging.
func TestMemoryBudgetStartOfOversizeAppIsRefusedNotHung(t *testing.T) {
	py := python3(t)
	const budget = 100 << 20
	apps := newTestApps(t, Capacity{MemoryBudget: budget},
		allocApp(py, 20, 0, nil), allocApp(py, 20, 0, nil), allocApp(py, 150, 0, nil))
	busy, other, x := apps[0], apps[1], apps[2]
	client := newClient(t)
	// x's size is learnt from a first run.
	if err := x.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "x's RSS past the budget", func() bool { return memoryOf(x).held > budget })
	if err := x.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	slow := getAsync(client, "http://"+busy.addr+"/slow/3000")
	waitFor(t, "a request in flight", func() bool { return busy.Status().Conns == 1 })
	started := make(chan error, 1)
	go func() { started <- x.Start(t.Context()) }()
	waitFor(t, "x waiting for room", func() bool { return inQueue(x) })
	otherAns := getAsync(client, "http://"+other.addr+"/")
	select {
	case err := <-started:
		var be *BudgetError
		if !errors.As(err, &be) || be.App != x.Name() || be.Need <= budget {
			t.Errorf("Start x with another app waiting: %v, want a BudgetError", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start x hangs")
	}
	if ans := <-otherAns; ans.code != http.StatusOK {
		t.Errorf("other app: %d %q", ans.code, ans.body)
	}
	if ans := <-slow; ans.code != http.StatusOK {
		t.Errorf("busy app: %d %q", ans.code, ans.body)
	}
}

// memoryOf samples ta as the memory budget does.
func memoryOf(ta *testApp) appMemory { return sampleApps([]*App{ta.App})[0] }

// A starting app counts in the budget for what its last run took, not
// for the little it holds while it boots: apps starting together cannot
// each be let in on that little and then take the budget past its limit.
// It keeps counting that once ready (it may grow back to it as it
// serves); the next start reserves what this run took.
func TestStartingAppCountsItsLastRun(t *testing.T) {
	ta := newTestApps(t, Capacity{MemoryBudget: 1 << 30}, appSpec{args: []string{"-proto", "echo", "-delay", "1s"}})[0]
	const last = 512 << 20
	ta.rssSeen.Store(last)
	started := make(chan error, 1)
	go func() { started <- ta.Start(t.Context()) }()
	waitFor(t, "the process spawned", func() bool {
		ta.mu.Lock()
		defer ta.mu.Unlock()
		return ta.state == Starting && ta.inst != nil && ta.inst.proc != nil
	})
	if got := memoryOf(ta).charged; got < last {
		t.Errorf("starting app counts %d bytes, want at least its last run's %d", got, last)
	}
	if got := ta.lastRSS(); got != last {
		t.Errorf("lastRSS %d while it boots, want the last run's %d kept", got, last)
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	m := memoryOf(ta)
	if m.charged < last || m.held >= last {
		t.Errorf("ready app holds %d and counts %d bytes, want it to hold less and count its last run's %d", m.held, m.charged, last)
	}
	if got := ta.lastRSS(); got >= last {
		t.Errorf("lastRSS %d once it ran, want this run's", got)
	}
}

// What a start reserves: the app's last run, else its memory_max, else
// the mean of the apps measured, else the default; an estimate never
// more than starts may take of the budget beside the keep_warm apps, the
// last run as it was. A reload that leaves the app as it is keeps its figure.
func TestReservation(t *testing.T) {
	const budget = 100 << 20
	maxMem := func(n int64) appSpec {
		return appSpec{edit: func(c *Config) { c.Process.Limits.MemoryMax = n }}
	}
	apps := newTestApps(t, Capacity{MemoryBudget: budget}, echoSpec(), echoSpec(), echoSpec(), maxMem(30<<20), maxMem(1<<30))
	a, b, c, small, big := apps[0], apps[1], apps[2], apps[3], apps[4]
	p := a.pool
	check := func(what string, ta *testApp, want reservation) {
		t.Helper()
		if got := p.reserve(ta.App); got != want {
			t.Errorf("%s: %s reserves %d (%s), want %d (%s)", what, ta.Name(), got.bytes>>20, got.from, want.bytes>>20, want.from)
		}
	}
	check("nothing measured", a, reservation{defaultReserve, fromDefault})
	check("memory_max", small, reservation{30 << 20, fromMemoryMax})
	const limit = budget - budget/growthRoom // what starts may take of it
	check("memory_max above the budget", big, reservation{limit, fromMemoryMax})
	b.rssSeen.Store(20 << 20)
	check("one app measured", a, reservation{20 << 20, fromMean})
	a.rssSeen.Store(40 << 20)
	check("its last run", a, reservation{40 << 20, fromLastRun})
	check("two apps measured", c, reservation{30 << 20, fromMean})
	// keep_warm apps hold 90 MiB: as a sample would record it. The
	// pool's manager samples too (its first pass may come now) and would
	// record what runs (nothing): try again until no sample came between.
	for {
		p.mu.Lock()
		p.last.pinned = 90 << 20
		p.mu.Unlock()
		got := p.reserve(c.App)
		p.mu.Lock()
		kept := p.last.pinned == 90<<20
		p.mu.Unlock()
		if kept {
			if want := (reservation{limit - 90<<20, fromMean}); got != want {
				t.Errorf("beside keep_warm apps: %s reserves %d (%s), want %d (%s)", c.Name(), got.bytes>>20, got.from, want.bytes>>20, want.from)
			}
			break
		}
	}
	a.rssSeen.Store(200 << 20)
	check("a last run past the budget", a, reservation{200 << 20, fromLastRun})
	a.Reconfigure(*a.config())
	check("after a reload", a, reservation{200 << 20, fromLastRun})
}

// allocRSS is what an allocApp of mib MiB holds once it has served a
// request: run alone first, then stopped.
func allocRSS(t *testing.T, py string, mib int) uint64 {
	t.Helper()
	ta := newTestApps(t, Capacity{}, allocApp(py, mib, 0, nil))[0]
	if err := getOK(newClient(t), "http://"+ta.addr+"/"); err != nil {
		t.Fatal(err)
	}
	rss := ta.Status().RSSBytes
	if err := ta.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	return rss
}

// heldSum samples what the processes of apps hold, as rouse status does,
// without touching what the budget records of them.
func heldSum(apps []*testApp) uint64 {
	procs := make([]*procman.Process, len(apps))
	for i, ta := range apps {
		procs[i] = ta.process()
	}
	var sum uint64
	for _, n := range procman.Memory(procs) {
		sum += n
	}
	return sum
}

// watchHeld samples heldSum every few milliseconds until the returned
// function is called, which returns the largest sum seen.
func watchHeld(apps []*testApp) (stop func() uint64) {
	done, result := make(chan struct{}), make(chan uint64, 1)
	go func() {
		var peak uint64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, heldSum(apps))
			select {
			case <-done:
				result <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		return <-result
	}
}

// Apps that never ran, all asked for at once under a budget that holds
// three of them: each start reserves an estimate before it is granted,
// so the memory they hold never goes above the budget, and every request
// is served (room is made by stopping the least recently used). Python
// apps that allocate a known amount while they boot.
func TestMemoryBudgetNeverRunAppsStartedAtOnce(t *testing.T) {
	py := python3(t)
	const mib = 40
	rss := allocRSS(t, py, mib)
	budget := rss*3 + rss/2
	client := newClient(t)

	specs := make([]appSpec, 6)
	for i := range specs {
		specs[i] = allocApp(py, mib, 300*time.Millisecond, nil)
	}
	apps := newTestApps(t, Capacity{MemoryBudget: int64(budget)}, specs...)
	stop := watchHeld(apps)
	var wg sync.WaitGroup
	for _, ta := range apps {
		wg.Go(func() {
			if err := getOK(client, "http://"+ta.addr+"/"); err != nil {
				t.Errorf("%s: %v", ta.Name(), err)
			}
		})
	}
	wg.Wait()
	peak := stop()
	t.Logf("one app holds %d MiB; budget %d MiB; the apps held at most %d MiB", rss>>20, budget>>20, peak>>20)
	if peak > budget {
		t.Errorf("the apps held %d MiB at once, more than the budget of %d MiB", peak>>20, budget>>20)
	}
	var lru uint64
	for _, ta := range apps {
		lru += ta.Metrics().Stops["lru"]
	}
	if lru < 3 {
		t.Errorf("%d apps stopped to make room, want at least 3 (six apps, room for three)", lru)
	}
	if b := apps[0].pool.budget(); b.Exceeded != 0 {
		t.Errorf("budget exceeded %d times (%s), want never", b.Exceeded, b.Reason)
	}
}

// An app that grows after it is ready, past what its start reserved (its
// last run was small), takes the apps above the budget: rouse makes room
// without touching it while it serves, a frozen app first, then a ready
// one, and says why. Alone above the budget it is left running, and the
// budget says so.
func TestMemoryBudgetAppThatGrowsAfterReady(t *testing.T) {
	py := python3(t)
	const mib = 30
	budget := 2*allocRSS(t, py, mib) + allocRSS(t, py, 0) + 20<<20 // r, fz and g as it first is, with 20 MiB to spare
	client := newClient(t)
	apps := newTestApps(t, Capacity{MemoryBudget: int64(budget)},
		allocApp(py, mib, 0, nil), allocApp(py, mib, 0, freezeAfter(20*time.Millisecond, nil)), allocApp(py, 0, 0, nil))
	r, fz, g := apps[0], apps[1], apps[2]
	url := func(ta *testApp, path string) string { return "http://" + ta.addr + path }
	get := func(ta *testApp, path string) {
		t.Helper()
		if err := getOK(client, url(ta, path)); err != nil {
			t.Fatal(err)
		}
	}
	// g's last run is small: what it will reserve.
	get(g, "/")
	waitFor(t, "g measured", func() bool { return g.lastRSS() > 0 })
	if err := g.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	get(r, "/")
	get(fz, "/")
	fz.waitState(t, Frozen)
	get(g, "/")
	if r.State() != Ready || fz.State() != Frozen {
		t.Fatalf("r %s, fz %s: want both left running when g starts within the budget", r.State(), fz.State())
	}
	lru := func(ta *testApp) uint64 { return ta.Metrics().Stops["lru"] }

	// g grows by 50 MiB as it serves a request: the frozen app is stopped.
	first := getAsync(client, url(g, "/grow/50/2000"))
	waitFor(t, "the frozen app stopped to make room", func() bool { return fz.State() == Idle })
	b := g.pool.budget()
	if lru(fz) != 1 || r.State() != Ready || lru(r) != 0 {
		t.Errorf("fz stopped %d times for room, r %s stopped %d times: want the frozen app stopped, not the ready one", lru(fz), r.State(), lru(r))
	}
	if b.Exceeded != 1 || !strings.Contains(b.Reason, g.Name()+" holds") || !strings.Contains(b.Reason, "stopping "+fz.Name()) {
		t.Errorf("budget %+v: want it exceeded once, because of %s, stopping %s", b, g.Name(), fz.Name())
	}
	// And by 60 MiB more: the ready app is stopped too.
	second := getAsync(client, url(g, "/grow/60/2000"))
	waitFor(t, "the ready app stopped to make room", func() bool { return r.State() == Idle })
	if lru(r) != 1 {
		t.Errorf("r stopped %d times for room, want once", lru(r))
	}
	for _, ans := range []<-chan answer{first, second} {
		if a := <-ans; a.code != http.StatusOK {
			t.Errorf("g's request: %d %q", a.code, a.body)
		}
	}
	// Far past the budget alone: g runs on, and the budget says why.
	get(g, "/grow/100/0")
	waitFor(t, "the budget to say it is exceeded", func() bool { return g.pool.budget().Over > 0 })
	if b := g.pool.budget(); !strings.Contains(b.Reason, "only app running") || b.Exceeded < 2 {
		t.Errorf("budget %+v: want it exceeded again, g being the only app running", b)
	}
	if st := g.Status(); st.State != Ready || st.Starts != 2 || lru(g) != 0 {
		t.Errorf("g is %s after %d starts, %d stops for room: want it never stopped", st.State, st.Starts, lru(g))
	}
}
