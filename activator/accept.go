package activator

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// PatientListener returns ln with an Accept that waits out errors such as
// EMFILE (rouse out of fds) as the apps' accept loops do, with a growing
// pause and one warning per acceptWarnEvery saying how many there were,
// instead of returning each one to its caller (net/http's server logs
// every retry). Accept returns net.ErrClosed once ln is closed; a pause
// under way ends first, so that takes up to a second.
func PatientListener(ln net.Listener, log *slog.Logger) net.Listener {
	return &patientListener{Listener: ln, warn: newAcceptWarner(log)}
}

type patientListener struct {
	net.Listener
	mu   sync.Mutex // one Accept at a time: warn is the loop's state
	warn *acceptWarner
}

func (l *patientListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := acceptWith(l.Listener.Accept, l.Addr(), l.warn, func(d time.Duration) bool {
		time.Sleep(d) // the pause between two failed accepts
		return true
	})
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}

// The HTTP front (package httpfront) accepts as the apps' accept loops
// do, with the same patience (tcp.go).

// AcceptWarner counts failed accepts of one loop and warns of them once
// per acceptWarnEvery.
type AcceptWarner = acceptWarner

// NewAcceptWarner returns the warner of one accept loop.
func NewAcceptWarner(log *slog.Logger) *AcceptWarner { return newAcceptWarner(log) }

// Accept accepts on ln, waiting out errors as the apps' accept loops do
// (wait pauses, false to give up); nil once ln is closed.
func Accept(ln net.Listener, warn *AcceptWarner, wait func(time.Duration) bool) net.Conn {
	return accept(ln, warn, wait)
}

// AcceptFailed tells warn that an accept on addr failed with err, and
// returns how long to pause before the next: pause, the one before (0
// after an accept that worked), doubled, from 5 ms up to a second.
func AcceptFailed(warn *AcceptWarner, addr net.Addr, err error, pause time.Duration) time.Duration {
	pause = nextAcceptPause(pause)
	warn.failed(addr, err, pause)
	return pause
}

// AcceptWorked tells warn that an accept on addr worked.
func AcceptWorked(warn *AcceptWarner, addr net.Addr) { warn.ok(addr) }

// QuiesceWait bounds how long a removed listener's queued connections are
// served (listeners.Quiesce).
const QuiesceWait = quiesceWait
