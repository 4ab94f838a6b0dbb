package activator

import (
	"context"
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
// flight ("lru"), one at a time. A start that cannot be granted leaves the
// app's connections held; queue_timeout answers them (503 in http mode).
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
		// run; with nothing running there is nothing to watch.
		p.mu.Lock()
		watch := p.limits.MemoryBudget > 0 && p.running > 0
		p.mu.Unlock()
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

// settle grants what it can and makes room for the rest.
func (p *pool) settle() {
	for {
		p.mu.Lock()
		if p.evicting != nil {
			p.mu.Unlock()
			return // wait until that app is stopped
		}
		var next *App
		if len(p.waiting) > 0 {
			next = p.waiting[0]
		}
		countsFit := p.countsFitLocked()
		startingFull := p.limits.MaxStarting > 0 && p.starting >= p.limits.MaxStarting
		p.mu.Unlock()

		if next == nil {
			if p.overBudget(0) {
				p.evict(nil)
			}
			return
		}
		if startingFull {
			return // a spawn in progress will end and wake us
		}
		if countsFit && !p.overBudget(next.lastRSS()) {
			p.mu.Lock()
			p.waiting = p.waiting[1:]
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
		}
		if !p.evict(next) {
			return // nothing can be stopped now; a release will wake us
		}
	}
}

// overBudget reports whether the running apps' RSS plus extra exceeds the
// memory budget. It reads /proc for running apps only.
func (p *pool) overBudget(extra uint64) bool {
	if p.limits.MemoryBudget <= 0 {
		return false
	}
	used := extra
	for _, a := range p.apps() {
		used += a.rss()
	}
	return used > uint64(p.limits.MemoryBudget)
}

// evict stops the least recently used app that has nothing in flight and
// is not keep_warm (and is not for). It reports whether one was found.
func (p *pool) evict(forApp *App) bool {
	var victim *App
	var used time.Time
	for _, a := range p.apps() {
		if a == forApp {
			continue
		}
		if last, ok := a.evictable(); ok && (victim == nil || last.Before(used)) {
			victim, used = a, last
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
