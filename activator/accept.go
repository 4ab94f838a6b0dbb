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
