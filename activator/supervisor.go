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
	fronts []*HTTPFront
}

// NewSupervisor groups apps and the HTTP fronts that route to them; app
// names must be unique.
func NewSupervisor(apps []*App, fronts []*HTTPFront) (*Supervisor, error) {
	s := &Supervisor{apps: make(map[string]*App, len(apps)), fronts: fronts}
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

// Serve starts accepting on every app's listeners and every front.
func (s *Supervisor) Serve() {
	for _, a := range s.Apps() {
		a.Serve()
	}
	for _, f := range s.fronts {
		f.Serve()
	}
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
	var wg sync.WaitGroup
	for _, f := range s.fronts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.Shutdown(ctx)
		}()
	}
	for _, a := range s.Apps() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.Close(ctx)
		}()
	}
	wg.Wait()
	for _, f := range s.fronts {
		f.Close()
	}
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
		case Starting, Ready, Stopping:
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
