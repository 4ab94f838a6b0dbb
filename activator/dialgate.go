package activator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"
)

// New connections to an app's process are opened at the pace it accepts
// them. When a cold app becomes ready, every request held meanwhile is
// released at once; dialing them all at once overflows a small listen
// backlog (Python's socketserver listens with 5), and the kernel drops the
// SYNs beyond it, to be retransmitted 1, 3, 7 ... seconds later: a burst
// of held requests then waits tens of seconds for what the app could serve
// in one. So dials go through a DialGate:
//   - at most window of them are in flight at once; window starts small
//     for each new process and grows by one with each dial that completes
//     (as TCP's slow start), halves when one stalls, and from then on grows
//     by one per window of completed dials (TCP's congestion avoidance);
//   - a dial that has not completed within 4 times the recent dial time
//     (stall, 2-100 ms) has most likely lost its SYN to a full backlog (on
//     loopback, connect(2) otherwise completes at once): it is abandoned
//     and made again on a new connection as soon as it gets a slot, not
//     after the kernel's second;
//   - a request waiting for a slot takes a kept connection instead as soon
//     as one comes back (Kick), so kept connections are used first.
// Stalls are not failures: an app busy accepting is not unhealthy. A dial
// refused, or not completed within dialBound while no other dial to the app
// completed, is (see blame).

const (
	gateInitial = 4   // dials in flight to a process that just became ready
	gateMax     = 256 // at most, however well it takes them
	// A dial is taken for stalled after 4 times the recent time dials
	// took to complete, within these bounds: on loopback connect(2)
	// completes in microseconds unless its SYN was dropped, but a loaded
	// machine may take a while to tell.
	dialStallMin = 2 * time.Millisecond
	dialStallMax = 100 * time.Millisecond
	dialBound    = 5 * time.Second  // without any dial completing: a timeout
	dialPatience = 30 * time.Second // while others complete: the app is busy
	// backlogPause is the wait before dialing again a Unix socket whose
	// backlog is full: connect(2) says so at once (EAGAIN), unlike TCP.
	backlogPause = 2 * time.Millisecond
)

// DialGate paces the dials to one app's process. Its methods are safe for
// concurrent use; mu is never held across a dial or a wait.
type DialGate struct {
	mu        sync.Mutex
	window    int
	inflight  int
	waiters   []chan bool   // FIFO; true hands over a slot, false says "look again"
	completed time.Time     // when a dial last completed
	threshold int           // window size from which it grows slowly (TCP's ssthresh)
	acked     int           // dials completed since the window last grew, above threshold
	rtt       time.Duration // how long dials take to complete, averaged
}

func newDialGate() *DialGate { return &DialGate{window: gateInitial, threshold: gateMax} }

// reset starts the window small again: a new process is ready.
func (g *DialGate) reset() {
	g.mu.Lock()
	g.window, g.threshold, g.acked = gateInitial, gateMax, 0
	g.mu.Unlock()
}

// Enter waits for a dial slot (true), or for a kept connection to have
// come back (false: look at the pool, then Enter again), or for ctx to end
// (ctx's error).
func (g *DialGate) Enter(ctx context.Context) (bool, error) {
	g.mu.Lock()
	if g.inflight < g.window && len(g.waiters) == 0 {
		g.inflight++
		g.mu.Unlock()
		return true, nil
	}
	ch := make(chan bool, 1)
	g.waiters = append(g.waiters, ch)
	g.mu.Unlock()
	select {
	case slot := <-ch:
		return slot, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if i := slices.Index(g.waiters, ch); i >= 0 {
		g.waiters = slices.Delete(g.waiters, i, i+1)
		g.mu.Unlock()
		return false, ctx.Err()
	}
	g.mu.Unlock()
	if <-ch { // handed a slot as ctx ended: pass it on
		g.leave(0)
	}
	return false, ctx.Err()
}

// leave gives a slot back; grow > 0 widens the window (a dial completed),
// < 0 narrows it (a dial stalled), 0 leaves it.
func (g *DialGate) leave(grow int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight--
	switch {
	case grow > 0:
		g.completed = time.Now()
		if g.window < g.threshold {
			g.window++ // slow start
		} else if g.acked++; g.acked >= g.window {
			g.window, g.acked = g.window+1, 0 // then one more per window
		}
		g.window = min(g.window, gateMax)
	case grow < 0:
		g.window = max(g.window/2, 1)
		g.threshold, g.acked = g.window, 0
	}
	for g.inflight < g.window && len(g.waiters) > 0 {
		g.inflight++
		g.waiters[0] <- true
		g.waiters = g.waiters[1:]
	}
}

// Kick tells the longest waiter that a kept connection came back.
func (g *DialGate) Kick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.waiters) > 0 {
		g.waiters[0] <- false
		g.waiters = g.waiters[1:]
	}
}

// open waits for a slot and dials network/address (see dial). A kept
// connection that comes back meanwhile is for others: open passes the
// word on.
func (g *DialGate) open(ctx context.Context, network, address string) (net.Conn, error) {
	for {
		slot, err := g.Enter(ctx)
		if err != nil {
			return nil, err
		}
		if slot {
			return g.Dial(ctx, network, address)
		}
		g.Kick()
	}
}

// Dial opens a connection to network/address, with a slot already taken
// by Enter; it gives the slot back. A stalled dial is made again, each time
// after a slot of its own, until one completes or ctx ends, or dialBound
// passes without any dial to the app completing (then it is a timeout
// that counts against the app); while others complete, the app is busy,
// not unhealthy, and it goes on, up to dialPatience. Its callers report
// its errors at StageDial.
func (g *DialGate) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	start := time.Now()
	stalls := 0
	for {
		d := net.Dialer{Timeout: g.stall(), KeepAlive: -1} // loopback to a process rouse watches: no TCP keep-alive
		t0 := time.Now()
		c, err := d.DialContext(ctx, network, address)
		switch {
		case err == nil:
			g.took(time.Since(t0))
			g.leave(1)
			return c, nil
		case ctx.Err() != nil:
			g.leave(0)
			return nil, err
		case !IsTimeout(err) && !errors.Is(err, syscall.EAGAIN):
			g.leave(0) // refused: the process is to blame, not the pace
			return nil, err
		}
		g.leave(-1)
		stalls++
		if waited := time.Since(start); waited >= dialBound && (!g.progressSince(start) || waited >= dialPatience) {
			return nil, fmt.Errorf("%w (%d tries in %s)", err, stalls, waited.Round(time.Millisecond))
		}
		if errors.Is(err, syscall.EAGAIN) && !sleepCtx(ctx, backlogPause) {
			return nil, ctx.Err()
		}
		for {
			slot, err := g.Enter(ctx)
			if err != nil {
				return nil, err
			}
			if slot {
				break
			}
			g.Kick() // this dial has no use for a kept connection
		}
	}
}

// stall is how long a dial may take before it is taken for stalled.
func (g *DialGate) stall() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return min(max(4*g.rtt, dialStallMin), dialStallMax)
}

// took notes how long a dial took to complete (an average of the last
// few, as TCP's SRTT).
func (g *DialGate) took(d time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rtt += (d - g.rtt) / 8
}

// progressSince reports whether a dial to the app completed after t.
func (g *DialGate) progressSince(t time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.completed.After(t)
}

// sleepCtx waits d, or less if ctx ends first (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
