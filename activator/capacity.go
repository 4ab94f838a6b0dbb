package activator

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rouse-dev/rouse/procman"
)

// Capacity bounds what the apps of one daemon may use together.
type Capacity struct {
	MaxRunning   int   // apps starting, ready or stopping; 0 = no limit
	MemoryBudget int64 // total memory of running apps, bytes (see reservation); 0 = no limit
	MaxStarting  int   // concurrent spawns; 0 = no limit

	Logger *slog.Logger // where the memory budget is reported; nil: slog.Default()
}

func (c Capacity) limited() bool {
	return c.MaxRunning > 0 || c.MemoryBudget > 0 || c.MaxStarting > 0
}

// budgetCheck is how often the memory of running apps is compared with
// the memory budget while any app runs and is not frozen (never while
// none does: frozen apps do not grow, and a thaw wakes the manager).
// Every decision to start an app samples afresh as well; this catches an
// app that grows while nothing starts. A sample is one read of
// memory.current per app with the memory controller, else one scan of
// /proc for all apps (procman.Memory): 2 ms for 20 apps on a box of 100
// processes (sampling each app on its own, with gopsutil, took 37 ms), so
// checking twice a second costs under 0.5% of a core.
const budgetCheck = 500 * time.Millisecond

// growthRoom is the share of memory_budget a start leaves free (1/32):
// apps are granted a start up to budget - budget/growthRoom, and stopped
// to make room only above the budget itself. What an app holds varies
// from run to run (a few hundred KiB for a small Go app, more for a
// runtime with a garbage collector), and without that band apps packed
// to the last byte of the budget by their last runs' figures would go
// above it at each run that takes a little more than the one before.
const growthRoom = 32

// admitLimit is what the running apps may count, a start included, for
// the start to be granted.
func (p *pool) admitLimit() uint64 {
	b := uint64(p.limits().MemoryBudget)
	return b - b/growthRoom
}

// defaultReserve is what a start reserves for an app never measured, when
// it has no memory_max and no app has been measured yet to take the mean
// of: until that app is ready and has served, it counts this much.
const defaultReserve = 64 << 20

// reservation is what a start of an app counts in memory_budget before
// the app is measured, and where the figure comes from. An app that ran
// before reserves the largest memory sampled of its last run (kept across
// its restarts and across reloads: it belongs to the app, not to the
// process), and counts at least that for the whole run: an app grows
// after it is ready, as it serves, and the last run is the evidence of
// how far. An app never measured reserves its memory_max, else the mean
// of the apps measured so far, else defaultReserve, never more than
// starts may take of the budget beside the keep_warm apps (an estimate
// alone must never make an app too big to start); it counts that until it is ready and
// has served once, then what it is measured at. In both cases memory
// sampled above the reservation counts as it is.
type reservation struct {
	bytes uint64
	from  string // one of the from* below
}

const (
	fromLastRun   = "its last run"
	fromMemoryMax = "memory_max"
	fromMean      = "the mean of the measured apps"
	fromDefault   = "the default for an app never measured"
)

// pool shares Capacity between apps. An app that wants to start asks for a
// slot with admit, under its own lock; the pool's lock is taken after an
// app's, never before, and the manager goroutine (run) calls into apps
// holding no lock at all: it grants slots to waiting apps in order and,
// when none is free, stops the least recently used app that has nothing in
// flight ("lru"), one at a time. A start that cannot be granted yet leaves
// the app's connections held; queue_timeout answers them (503 in http
// mode). One that can never fit while others wait is refused at once
// (BudgetError), so that the queue always moves (see settle).
type pool struct {
	lim  atomic.Pointer[Capacity] // SetCapacity may change it
	apps func() []*App
	kick chan struct{}

	mu       sync.Mutex
	running  int    // apps holding a run slot: from spawn until idle or back-off
	starting int    // apps holding a start slot: from spawn until ready or gone
	waiting  []*App // apps that want to start, in order
	evicting *App   // the app being stopped to make room, if any

	// The budget as last sampled (Budget): only the manager samples.
	last     usage
	over     bool   // the last sample was above the budget
	reason   string // why it was last above it
	exceeded uint64 // times the apps went above the budget
	log      *slog.Logger
}

// BudgetError is what the connections waiting for an app get when the app
// cannot start within memory_budget even with every other app that may be
// stopped stopped, and other apps wait to start: the pool grants those
// instead. Alone, such an app is started anyway, the others stopped first.
type BudgetError struct {
	App    string
	Need   uint64 // bytes: the largest RSS of its last run
	Budget int64  // memory_budget
	Pinned uint64 // RSS of the keep_warm apps, which are never stopped for it
}

func (e *BudgetError) Error() string {
	kept := ""
	if e.Pinned > 0 {
		kept = fmt.Sprintf(" with %s held by keep_warm apps", mib(e.Pinned))
	}
	return fmt.Sprintf("%s needs about %s (its last run), more than memory_budget %s allows%s, and other apps are waiting to start",
		e.App, mib(e.Need), mib(uint64(e.Budget)), kept)
}

func mib(n uint64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

func newPool(limits Capacity, apps func() []*App) *pool {
	log := limits.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &pool{apps: apps, kick: make(chan struct{}, 1), log: log}
	p.lim.Store(&limits)
	return p
}

// limits is the Capacity in force.
func (p *pool) limits() Capacity { return *p.lim.Load() }

// setLimits puts c in force: the next decision uses it. Apps already
// running are not stopped for a lower max_running (they leave as they go
// idle); a lower memory_budget is held as a budget exceeded is, by stopping
// idle apps.
func (p *pool) setLimits(c Capacity) {
	p.lim.Store(&c)
	p.wake()
}

func (p *pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// admit takes a run and a start slot for a at once if the counts allow and
// no memory budget needs checking; else it queues a for the manager and
// returns false. Called with a.mu held.
func (p *pool) admit(a *App) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.waiting) == 0 && p.countsFitLocked() && (p.limits().MemoryBudget <= 0 || p.running == 0) {
		p.running++
		p.starting++
		return true
	}
	for _, w := range p.waiting {
		if w == a {
			return false
		}
	}
	p.waiting = append(p.waiting, a)
	p.wake()
	return false
}

func (p *pool) countsFitLocked() bool {
	l := p.limits()
	return (l.MaxRunning <= 0 || p.running < l.MaxRunning) &&
		(l.MaxStarting <= 0 || p.starting < l.MaxStarting)
}

// started gives back a start slot (the app is ready, or gone).
func (p *pool) started() {
	p.mu.Lock()
	p.starting--
	p.mu.Unlock()
	p.wake()
}

// stopped gives back a run slot (the app is idle or in back-off).
func (p *pool) stopped(a *App) {
	p.mu.Lock()
	p.running--
	if p.evicting == a {
		p.evicting = nil
	}
	p.mu.Unlock()
	p.wake()
}

// idle tells the manager an app may have become evictable, which matters
// only to a start that waits or to a budget found exceeded: it is called
// at the end of every request, and a sample of every app's memory at each
// would keep the manager busy under load (growth is caught by the
// budgetCheck while apps run).
func (p *pool) idle() {
	if !p.limits().limited() {
		return // nothing waits for room (setLimits woke the manager)
	}
	p.mu.Lock()
	need := len(p.waiting) > 0 || p.over
	p.mu.Unlock()
	if need {
		p.wake()
	}
}

// run is the manager; it returns when ctx ends.
func (p *pool) run(ctx context.Context) {
	var check *time.Timer
	var checkC <-chan time.Time
	defer func() {
		if check != nil {
			check.Stop()
		}
	}()
	for {
		p.settle()
		// With a memory budget, look again in a while as long as apps
		// run; with nothing running, or only frozen apps (whose memory
		// does not grow; a thaw wakes the manager), there is nothing to
		// watch.
		p.mu.Lock()
		watch := p.limits().MemoryBudget > 0 && p.running > 0
		p.mu.Unlock()
		watch = watch && p.anyRunsUnfrozen()
		switch {
		case watch && checkC == nil:
			check = time.NewTimer(budgetCheck)
			checkC = check.C
		case !watch && check != nil:
			check.Stop()
			check, checkC = nil, nil
		}
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-checkC:
			check, checkC = nil, nil
		}
	}
}

// settle grants what it can and makes room for the rest. The head of the
// queue always leaves it: granted (after making room), dropped when it no
// longer wants to start, or, when it cannot fit within the budget even
// alone and others wait behind it, refused. An app that does not fit even
// alone is started when no other app waits, once every app that may be
// stopped is: the budget degrades, it never wedges the queue.
func (p *pool) settle() {
	for {
		p.mu.Lock()
		if p.evicting != nil {
			p.mu.Unlock()
			return // wait until that app is stopped
		}
		var next *App
		var behind []*App
		if len(p.waiting) > 0 {
			next, behind = p.waiting[0], p.waiting[1:]
		}
		countsFit := p.countsFitLocked()
		maxStarting := p.limits().MaxStarting
		startingFull := maxStarting > 0 && p.starting >= maxStarting
		running := p.running
		p.mu.Unlock()

		if next == nil {
			p.holdBudget(running)
			return
		}
		if !next.wantsStart() {
			p.dropHead()
			continue
		}
		if startingFull {
			return // a spawn in progress will end and wake us
		}
		u := p.usage()
		r := p.reserve(next)
		need := r.bytes
		// Only a measured app is ever too big: an estimate is capped.
		oversize := r.from == fromLastRun && u.pinned+need > p.admitLimit()
		switch {
		case countsFit && (p.limits().MemoryBudget <= 0 || u.charged+need <= p.admitLimit()),
			countsFit && oversize && running == u.pinnedRunning && !anyWants(behind):
			p.dropHead()
			if p.limits().MemoryBudget > 0 {
				p.log.Debug("start granted", "app", next.Name(), "reserve", mib(need), "from", r.from, "counted", mib(u.charged))
			}
			p.mu.Lock()
			p.running++
			p.starting++
			p.mu.Unlock()
			if !next.grant(r) {
				p.mu.Lock()
				p.running--
				p.starting--
				p.mu.Unlock()
			}
			continue
		case oversize && anyWants(behind):
			p.dropHead()
			next.refuseStart(&BudgetError{App: next.Name(), Need: need, Budget: p.limits().MemoryBudget, Pinned: u.pinned})
			continue
		}
		if _, ok := p.evict(next); !ok {
			return // nothing can be stopped now; a release will wake us
		}
	}
}

// anyRunsUnfrozen reports whether an app has a process that is not frozen.
func (p *pool) anyRunsUnfrozen() bool {
	for _, a := range p.apps() {
		if st := a.State(); st != Idle && st != Backoff && st != Frozen {
			return true
		}
	}
	return false
}

// dropHead takes the head off the queue; only settle removes from it, so
// the head is the one settle looked at.
func (p *pool) dropHead() {
	p.mu.Lock()
	p.waiting = p.waiting[1:]
	p.mu.Unlock()
}

func anyWants(apps []*App) bool {
	for _, a := range apps {
		if a.wantsStart() {
			return true
		}
	}
	return false
}

// holdBudget makes room when the running apps went above the budget with
// no start asking for it (an app grew since it was sampled): it stops
// the least recently used app that serves nothing, frozen ones first, as
// for a start, and never the only app running (that makes room for
// nobody). It records what it found for Budget, and logs when the budget
// is exceeded and when it holds again.
func (p *pool) holdBudget(running int) {
	budget := p.limits().MemoryBudget
	u := p.usage()
	if !u.over(budget, 0) {
		p.mu.Lock()
		was := p.over
		p.over = false
		p.mu.Unlock()
		if was {
			p.log.Info("memory budget held again", "used", mib(u.used), "counted", mib(u.charged), "budget", mib(uint64(budget)))
		}
		return
	}
	why := "the running apps hold more than it"
	if u.grew != nil {
		why = fmt.Sprintf("%s holds %s, %s more than its start reserved", u.grew.Name(), mib(u.grewHeld), mib(u.grewBy))
	}
	if running <= 1 {
		why += "; it is the only app running"
	} else if victim, ok := p.evict(nil); victim != nil {
		why += "; stopping " + victim.Name() + " to make room"
	} else if !ok {
		why += "; nothing can be stopped: the other apps serve, start or are keep_warm"
	}
	p.mu.Lock()
	first := !p.over
	if first {
		p.exceeded++
	}
	p.over, p.reason = true, why
	p.mu.Unlock()
	if first {
		p.log.Warn("memory budget exceeded", "counted", mib(u.charged), "budget", mib(uint64(budget)), "reason", why)
	}
}

// BudgetStatus is memory_budget as the capacity manager last sampled it:
// at the last start it decided, or its last check while apps run.
type BudgetStatus struct {
	Budget   int64  `json:"budget_bytes"`
	Used     uint64 `json:"used_bytes"`       // the memory the running apps hold
	Counted  uint64 `json:"counted_bytes"`    // what they count: Used, or more where a start's reservation holds
	Over     uint64 `json:"over_bytes"`       // Counted beyond Budget; 0 within it
	Exceeded uint64 `json:"exceeded_total"`   // times the apps went above the budget
	Reason   string `json:"reason,omitempty"` // why they last did, and what rouse did about it
}

func (p *pool) budget() BudgetStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := BudgetStatus{Budget: p.limits().MemoryBudget, Used: p.last.used, Counted: p.last.charged, Exceeded: p.exceeded, Reason: p.reason}
	if p.over && b.Counted > uint64(b.Budget) {
		b.Over = b.Counted - uint64(b.Budget)
	}
	return b
}

// reserve is what a start of a reserves in the budget (see reservation);
// nothing without a budget. Safe to call with a.mu held: it takes no
// other app's lock.
func (p *pool) reserve(a *App) reservation {
	if p == nil || p.limits().MemoryBudget <= 0 {
		return reservation{}
	}
	if seen := a.rssSeen.Load(); seen > 0 {
		return reservation{seen, fromLastRun}
	}
	r := reservation{defaultReserve, fromDefault}
	if m := a.config().Process.Limits.MemoryMax; m > 0 {
		r = reservation{uint64(m), fromMemoryMax}
	} else {
		var sum, n uint64
		for _, b := range p.apps() {
			if seen := b.rssSeen.Load(); seen > 0 && b != a {
				sum += seen
				n++
			}
		}
		if n > 0 {
			r = reservation{sum / n, fromMean}
		}
	}
	p.mu.Lock()
	room := p.admitLimit() - min(p.last.pinned, p.admitLimit())
	p.mu.Unlock()
	r.bytes = min(r.bytes, room)
	return r
}

// usage is what the running apps hold and count, sampled now.
type usage struct {
	used          uint64 // memory the running apps hold
	charged       uint64 // what they count in the budget (see reservation)
	pinned        uint64 // counted by keep_warm apps: never stopped to make room
	pinnedRunning int    // how many keep_warm apps hold a run slot
	grew          *App   // the app furthest above what its start reserved, if any
	grewHeld      uint64
	grewBy        uint64
}

// usage samples every app (one procman.Memory for all) and records the
// result for Budget.
func (p *pool) usage() usage {
	var u usage
	if p.limits().MemoryBudget <= 0 {
		return u
	}
	apps := p.apps()
	for i, s := range sampleApps(apps) {
		u.used += s.held
		u.charged += s.charged
		if s.pinned {
			u.pinned += s.charged
			u.pinnedRunning++
		}
		if s.held > s.reserved && s.held-s.reserved > u.grewBy {
			u.grew, u.grewHeld, u.grewBy = apps[i], s.held, s.held-s.reserved
		}
	}
	p.mu.Lock()
	p.last = u
	p.mu.Unlock()
	return u
}

// over reports whether extra more bytes would take the apps past budget
// (0: no budget).
func (u usage) over(budget int64, extra uint64) bool {
	return budget > 0 && u.charged+extra > uint64(budget)
}

// appMemory is one app's memory as the budget sees it.
type appMemory struct {
	held     uint64 // sampled: memory.current of its cgroup, or the RSS of its processes
	charged  uint64 // what it counts: held, or its reservation while that holds
	reserved uint64 // what its start reserved
	pinned   bool   // keep_warm and running
}

// sampleApps samples the memory of apps with one procman.Memory call, and
// records each app's peak: what its next start reserves.
func sampleApps(apps []*App) []appMemory {
	procs := make([]*procman.Process, len(apps))
	for i, a := range apps {
		procs[i] = a.process()
	}
	held := procman.Memory(procs)
	out := make([]appMemory, len(apps))
	for i, a := range apps {
		out[i] = a.account(procs[i], held[i])
	}
	return out
}

// process is the app's current process; nil when it has none.
func (a *App) process() *procman.Process {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inst == nil {
		return nil
	}
	return a.inst.proc
}

// account turns held, sampled of p, into what the app counts, and keeps
// the peak of the run. Only a run that became ready is a measurement:
// what an app holds while it boots is not what it needs, and neither the
// figure of its last run nor the mean of the measured apps may take it.
func (a *App) account(p *procman.Process, held uint64) appMemory {
	a.mu.Lock()
	defer a.mu.Unlock()
	inst := a.inst
	if inst == nil {
		return appMemory{}
	}
	if inst.proc != p {
		held = 0 // sampled before the process was spawned
	}
	inst.rssPeak = max(inst.rssPeak, held)
	if inst.rssPeak > 0 && !inst.readyAt.IsZero() {
		a.rssSeen.Store(inst.rssPeak)
	}
	m := appMemory{held: held, charged: held, reserved: inst.reserve.bytes, pinned: a.config().KeepWarm}
	// An estimate holds until the app is ready and has served once (a
	// connection ended after it was ready); the last run, throughout.
	served := a.state != Starting && a.lastUsed.After(inst.readyAt)
	if inst.reserve.from == fromLastRun || !served {
		m.charged = max(held, inst.reserve.bytes)
	}
	return m
}

// lastRSS is the largest memory sampled of the app's last run: what its
// next start reserves. One large run does not mark the app large for
// ever: its next run sampled replaces it.
func (a *App) lastRSS() uint64 { return a.rssSeen.Load() }

// evict stops the least recently used app that has nothing in flight and
// is not keep_warm (and is not for): a frozen one first, then a ready one.
// It returns the app it stopped, and whether one was found (one that got
// busy meanwhile is found, not stopped: look again).
func (p *pool) evict(forApp *App) (*App, bool) {
	var victim *App
	var used time.Time
	var frozen bool
	for _, a := range p.apps() {
		if a == forApp {
			continue
		}
		last, fz, ok := a.evictable()
		if ok && (victim == nil || fz && !frozen || fz == frozen && last.Before(used)) {
			victim, used, frozen = a, last, fz
		}
	}
	if victim == nil {
		return nil, false
	}
	p.mu.Lock()
	p.evicting = victim
	p.mu.Unlock()
	if !victim.stopFor("lru") {
		p.mu.Lock()
		p.evicting = nil
		p.mu.Unlock()
		return nil, true
	}
	return victim, true
}

// wantsStart reports whether the app still waits for the pool to grant it
// a start: idle with connections held, keep_warm, or asked by Start.
func (a *App) wantsStart() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.wantsStartLocked()
}

func (a *App) wantsStartLocked() bool {
	return a.state == Idle && !a.closing && (a.queued > 0 || a.config().KeepWarm || a.asked)
}

// refuseStart answers what waits for a start the pool will not grant: the
// connections held and a Start get err (503 in http mode).
func (a *App) refuseStart(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refusals++
	a.refusal = err
	a.asked = false
	a.log.Warn("not started", "state", a.state, "err", err)
	a.broadcast()
}
