package activator

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// Supervisor is the set of apps of one daemon. Its methods are safe to call
// concurrently.
type Supervisor struct {
	mu     sync.Mutex
	apps   map[string]*App
	fronts []Front
	pool   *pool // always: a reload may set limits (SetCapacity)

	stopPool context.CancelFunc
	poolDone chan struct{}
	retired  sync.WaitGroup // apps and fronts removed by a reload, draining
	// frontsRetiring: fronts removed by a reload, serving what they
	// accepted; a removed http app waits for them.
	frontsRetiring sync.WaitGroup
}

// NewSupervisor groups apps and the HTTP fronts that route to them, and
// shares limits between the apps; app names must be unique.
func NewSupervisor(apps []*App, fronts []Front, limits Capacity) (*Supervisor, error) {
	s := &Supervisor{apps: make(map[string]*App, len(apps)), fronts: fronts}
	// The pool counts running and starting apps even without limits, so
	// that limits a reload sets start from the true counts.
	s.pool = newPool(limits, s.Apps)
	for _, a := range apps {
		a.pool = s.pool
	}
	for _, a := range apps {
		if _, dup := s.apps[a.Name()]; dup {
			return nil, fmt.Errorf("app %s defined twice", a.Name())
		}
		s.apps[a.Name()] = a
	}
	return s, nil
}

// Apps returns the apps sorted by name.
func (s *Supervisor) Apps() []*App {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*App, 0, len(s.apps))
	for _, a := range s.apps {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// App returns the app called name.
func (s *Supervisor) App(name string) (*App, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[name]
	return a, ok
}

// Serve starts the capacity manager and accepting on every app's listeners
// and every front.
func (s *Supervisor) Serve() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopPool, s.poolDone = cancel, make(chan struct{})
	go func() {
		defer close(s.poolDone)
		s.pool.run(ctx)
	}()
	for _, a := range s.Apps() {
		a.Serve()
	}
	for _, f := range s.Fronts() {
		f.Serve()
	}
}

// Fronts returns the HTTP fronts.
func (s *Supervisor) Fronts() []Front {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Front(nil), s.fronts...)
}

// Add adds an app (a reload found it new) and starts serving it.
func (s *Supervisor) Add(a *App) error {
	s.mu.Lock()
	if _, dup := s.apps[a.Name()]; dup {
		s.mu.Unlock()
		return fmt.Errorf("app %s defined twice", a.Name())
	}
	a.pool = s.pool
	s.apps[a.Name()] = a
	s.mu.Unlock()
	a.Serve()
	return nil
}

// AddFront adds and starts a front (a reload found a new http address).
func (s *Supervisor) AddFront(f Front) {
	s.mu.Lock()
	s.fronts = append(s.fronts, f)
	s.mu.Unlock()
	f.Serve()
}

// Retire removes an app: it stops accepting at once, and in the background
// serves what it has accepted until ctx ends, then stops. Close waits for
// it. An http app must already be out of every front's routes; it closes
// once the fronts retired before it have served what they accepted, which
// may be for it. quiesce: the app's listeners are rouse's own (not
// systemd's), and the connections queued on them are taken before they
// close (see listeners.Quiesce).
func (s *Supervisor) Retire(ctx context.Context, a *App, quiesce bool) {
	s.mu.Lock()
	if s.apps[a.Name()] == a {
		delete(s.apps, a.Name())
	}
	s.mu.Unlock()
	a.removed.Store(true)
	a.stopAccepting(quiesce)
	s.retired.Add(1)
	go func() {
		defer s.retired.Done()
		if a.config().Mode == ModeHTTP {
			s.frontsRetiring.Wait()
		}
		a.Close(ctx)
	}()
}

// RetireFront removes a front: it stops accepting at once and closes when
// its requests are done or ctx ends. Close waits for it. quiesce: as for
// Retire.
func (s *Supervisor) RetireFront(ctx context.Context, f Front, quiesce bool) {
	s.mu.Lock()
	for i, g := range s.fronts {
		if g == f {
			s.fronts = append(s.fronts[:i], s.fronts[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if quiesce {
		f.Quiesce()
	}
	s.retired.Add(1)
	s.frontsRetiring.Add(1)
	go func() {
		defer s.retired.Done()
		defer s.frontsRetiring.Done()
		f.Shutdown(ctx)
		f.Close()
	}()
}

// Status returns every app's status, sorted by name.
func (s *Supervisor) Status() []Status {
	apps := s.Apps()
	out := make([]Status, len(apps))
	for i, a := range apps {
		out[i] = a.Status()
	}
	return out
}

// Close stops accepting everywhere, gives open connections and requests
// until ctx ends to finish, stops every app and returns when all of it is
// done.
func (s *Supervisor) Close(ctx context.Context) {
	var wg, frontsDone sync.WaitGroup
	fronts := s.Fronts()
	for _, f := range fronts {
		frontsDone.Add(1)
		go func() {
			defer frontsDone.Done()
			f.Shutdown(ctx)
		}()
	}
	for _, a := range s.Apps() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a.config().Mode == ModeHTTP {
				// The requests a front still serves need their app.
				frontsDone.Wait()
			}
			a.Close(ctx)
		}()
	}
	frontsDone.Wait()
	wg.Wait()
	for _, f := range fronts {
		f.Close()
	}
	s.retired.Wait()
	if s.stopPool != nil {
		s.stopPool()
		<-s.poolDone
	}
}

// SetCapacity puts new limits in force (a reload changed them): the next
// start is decided by them. Apps already running are not stopped for a
// lower max_running; a lower memory_budget stops idle apps to come within
// it, as when an app grows. The logger stays the one NewSupervisor got.
func (s *Supervisor) SetCapacity(limits Capacity) {
	limits.Logger = nil
	s.pool.setLimits(limits)
}

// MemoryUsed is the memory all running apps hold, bytes, sampled now.
func (s *Supervisor) MemoryUsed() uint64 {
	var used uint64
	for _, m := range sampleApps(s.Apps()) {
		used += m.held
	}
	return used
}

// Budget is memory_budget as the capacity manager last sampled it, with
// why it is exceeded when it is; the zero value without a budget.
func (s *Supervisor) Budget() BudgetStatus {
	if s.pool.limits().MemoryBudget <= 0 {
		return BudgetStatus{}
	}
	return s.pool.budget()
}

// Summary counts the apps by state, cheaply (no /proc reads): what rouse
// tells systemd in STATUS=.
type Summary struct {
	Apps, Running, Backoff int
}

// Summary returns the counts for all apps.
func (s *Supervisor) Summary() Summary {
	var sum Summary
	for _, a := range s.Apps() {
		sum.Apps++
		switch a.State() {
		case Starting, Ready, Frozen, Stopping:
			sum.Running++
		case Backoff:
			sum.Backoff++
		}
	}
	return sum
}

func (s Summary) String() string {
	return fmt.Sprintf("%d apps, %d running, %d in back-off", s.Apps, s.Running, s.Backoff)
}
