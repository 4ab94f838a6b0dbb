package activator

import (
	"errors"
	"fmt"
	"time"
)

// State is where an app is in its life cycle; status shows it.
type State int

// The states of DESIGN.md.
const (
	Idle     State = iota // no process; the next connection starts one
	Starting              // spawned, waiting for readiness
	Ready                 // serving
	Stopping              // asked to stop; connections arriving now are held
	Backoff               // failed; no start attempt until the back-off ends
	Frozen                // idle for freeze_after: the process is frozen; the next connection thaws it
)

// settled reports whether an app in state s has a process that is up and
// not leaving: ready, or frozen (the states in which it may be idle).
func (s State) settled() bool { return s == Ready || s == Frozen }

func (s State) String() string {
	switch s {
	case Idle:
		return "idle"
	case Starting:
		return "starting"
	case Ready:
		return "ready"
	case Stopping:
		return "stopping"
	case Backoff:
		return "backoff"
	case Frozen:
		return "frozen"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// MarshalText makes a State read as its name in JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a State from its name, as status clients need.
func (s *State) UnmarshalText(b []byte) error {
	for st := Idle; st <= Frozen; st++ {
		if st.String() == string(b) {
			*s = st
			return nil
		}
	}
	return fmt.Errorf("unknown state %q", b)
}

// backoffReset is how long an app must have been ready for its back-off
// counter to start again from 1s (DESIGN.md: "resets after 10 minutes of
// healthy running").
const backoffReset = 10 * time.Minute

// backoffDelay is the pause after the n-th consecutive failure (n >= 1):
// 1s, 2s, 4s ... capped at max.
func backoffDelay(n int, max time.Duration) time.Duration {
	d := time.Second
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Errors a held connection can end with; callers branch on them to choose
// between 503 (not sent yet), 502 and 504, or to close a TCP connection.
var (
	ErrQueueFull    = errors.New("too many connections waiting")
	ErrQueueTimeout = errors.New("app not ready within queue_timeout")
	ErrClosing      = errors.New("rouse is shutting down")
)

// BackoffError is returned while an app is in back-off after failures.
type BackoffError struct {
	App   string
	Until time.Time // when the next start attempt may happen
	Last  string    // the failure that caused it
}

func (e *BackoffError) Error() string {
	return fmt.Sprintf("%s is in back-off until %s after: %s", e.App, e.Until.Format(time.TimeOnly), e.Last)
}
