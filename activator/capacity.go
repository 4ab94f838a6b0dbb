package activator

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Capacity bounds what the apps of one daemon may use together.
type Capacity struct {
	MaxRunning   int   // apps starting, ready or stopping; 0 = no limit
	MemoryBudget int64 // total RSS of running apps, bytes; 0 = no limit
	MaxStarting  int   // concurrent spawns; 0 = no limit
}

func (c Capacity) limited() bool {
	return c.MaxRunning > 0 || c.MemoryBudget > 0 || c.MaxStarting > 0
}

// budgetCheck is how often the RSS of running apps is compared with the
// memory budget while any app runs (never while none does).
const budgetCheck = 2 * time.Second

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
	limits Capacity
	apps   func() []*App
	kick   chan struct{}

	mu       sync.Mutex
	running  int    // apps holding a run slot: from spawn until idle or back-off
	starting int    // apps holding a start slot: from spawn until ready or gone
	waiting  []*App // apps that want to start, in order
	evicting *App   // the app being stopped to make room, if any
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
	return &pool{limits: limits, apps: apps, kick: make(chan struct{}, 1)}
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
	if len(p.waiting) == 0 && p.countsFitLocked() && (p.limits.MemoryBudget <= 0 || p.running == 0) {
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
	return (p.limits.MaxRunning <= 0 || p.running < p.limits.MaxRunning) &&
		(p.limits.MaxStarting <= 0 || p.starting < p.limits.MaxStarting)
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

// idle tells the manager an app may have become evictable.
func (p *pool) idle() {
	p.mu.Lock()
	need := len(p.waiting) > 0 || p.limits.MemoryBudget > 0
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
		watch := p.limits.MemoryBudget > 0 && p.running > 0
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
		startingFull := p.limits.MaxStarting > 0 && p.starting >= p.limits.MaxStarting
		running := p.running
		p.mu.Unlock()

		if next == nil {
			// Stopping the only app that runs makes room for nobody.
			if running > 1 && p.usage().over(p.limits.MemoryBudget, 0) {
				p.evict(nil)
			}
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
		need := next.lastRSS()
		oversize := p.limits.MemoryBudget > 0 && u.pinned+need > uint64(p.limits.MemoryBudget)
		switch {
		case countsFit && !u.over(p.limits.MemoryBudget, need),
			countsFit && oversize && running == u.pinnedRunning && !anyWants(behind):
			p.dropHead()
			p.mu.Lock()
			p.running++
			p.starting++
			p.mu.Unlock()
			if !next.grant() {
				p.mu.Lock()
				p.running--
				p.starting--
				p.mu.Unlock()
			}
			continue
		case oversize && anyWants(behind):
			p.dropHead()
			next.refuseStart(&BudgetError{App: next.Name(), Need: need, Budget: p.limits.MemoryBudget, Pinned: u.pinned})
			continue
		}
		if !p.evict(next) {
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

// usage is what the running apps hold, sampled from /proc.
type usage struct {
	used          uint64 // RSS of all running apps
	pinned        uint64 // of those that are keep_warm: never stopped to make room
	pinnedRunning int    // how many keep_warm apps hold a run slot
}

func (p *pool) usage() usage {
	var u usage
	if p.limits.MemoryBudget <= 0 {
		return u
	}
	for _, a := range p.apps() {
		rss := a.rss()
		u.used += rss
		if a.pinned() {
			u.pinned += rss
			u.pinnedRunning++
		}
	}
	return u
}

// over reports whether extra more bytes would take the apps past budget
// (0: no budget).
func (u usage) over(budget int64, extra uint64) bool {
	return budget > 0 && u.used+extra > uint64(budget)
}

// evict stops the least recently used app that has nothing in flight and
// is not keep_warm (and is not for): a frozen one first, then a ready one.
// It reports whether one was found.
func (p *pool) evict(forApp *App) bool {
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
		return false
	}
	p.mu.Lock()
	p.evicting = victim
	p.mu.Unlock()
	if !victim.stopFor("lru") {
		p.mu.Lock()
		p.evicting = nil
		p.mu.Unlock()
		return true // it got busy meanwhile: look again
	}
	return true
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

// pinned reports whether the app holds a run slot that the pool may never
// take back: a keep_warm app that runs.
func (a *App) pinned() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inst != nil && a.config().KeepWarm
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
