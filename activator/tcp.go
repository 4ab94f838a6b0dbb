package activator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// accept accepts on ln. Errors such as EMFILE are waited out with a
// growing pause (5 ms doubling up to 1 s) as long as wait(pause) says to go
// on, and told by warn; nil means ln is closed or wait said stop.
func accept(ln net.Listener, warn *acceptWarner, wait func(time.Duration) bool) net.Conn {
	c, _ := acceptWith(ln.Accept, ln.Addr(), warn, wait)
	return c
}

// acceptWith is accept's loop for any way of accepting: false once the
// listener is closed, or wait said to stop.
func acceptWith[T any](next func() (T, error), addr net.Addr, warn *acceptWarner, wait func(time.Duration) bool) (T, bool) {
	var pause time.Duration
	for {
		c, err := next()
		if err == nil {
			warn.ok(addr)
			return c, true
		}
		if errors.Is(err, net.ErrClosed) {
			return c, false
		}
		pause = min(max(2*pause, 5*time.Millisecond), time.Second)
		warn.failed(addr, err, pause)
		if !wait(pause) {
			return c, false
		}
	}
}

// acceptWarnEvery is how often an accept loop that keeps failing (EMFILE:
// rouse is out of fds) says so: a line at the first error, then at most
// one per interval with the number of errors since the line before. An
// accept that succeeds between errors resets the pause, not the count.
const acceptWarnEvery = 10 * time.Second

// acceptWarner rate-limits the warnings of one accept loop, which owns it.
type acceptWarner struct {
	log   *slog.Logger
	now   func() time.Time // time.Now; a test's clock
	last  time.Time        // of the last line
	quiet int              // errors not told yet
}

func newAcceptWarner(log *slog.Logger) *acceptWarner {
	return &acceptWarner{log: log, now: time.Now}
}

func (w *acceptWarner) failed(addr net.Addr, err error, pause time.Duration) {
	w.quiet++
	if now := w.now(); w.last.IsZero() || now.Sub(w.last) >= acceptWarnEvery {
		w.log.Warn("accept", "addr", addr.String(), "err", err, "retry_in", pause, "errors", w.quiet, "per", acceptWarnEvery)
		w.last, w.quiet = now, 0
	}
}

// ok tells, one interval after the last line, the errors not told yet.
func (w *acceptWarner) ok(addr net.Addr) {
	if w.quiet == 0 {
		return
	}
	if now := w.now(); now.Sub(w.last) >= acceptWarnEvery {
		w.log.Warn("accept works again", "addr", addr.String(), "errors", w.quiet, "per", acceptWarnEvery)
		w.last, w.quiet = now, 0
	}
}

// acceptLoop accepts until the listener is closed and serves each
// connection in a goroutine of its own: serveConn (tcp) or serveInetdConn.
func (a *App) acceptLoop(ln net.Listener) {
	defer a.wg.Done()
	inetd := a.config().Mode == ModeInetd
	warn := newAcceptWarner(a.log)
	for {
		c := accept(ln, warn, a.pause)
		if c == nil {
			return
		}
		var tracked net.Conn = c
		if inetd {
			tracked = newInetdConn(c)
		}
		if !a.track(tracked) {
			c.Close()
			return
		}
		a.wg.Add(1)
		if inetd {
			go a.serveInetdConn(tracked.(*inetdConn))
		} else {
			go a.serveConn(c)
		}
	}
}

// pause waits d, or less when the app closes; it reports whether to go on.
func (a *App) pause(d time.Duration) bool {
	a.mu.Lock()
	closing, ch := a.closing, a.changed
	a.mu.Unlock()
	if closing {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ch:
	}
	return true
}

// serveConn holds a client connection until the app is ready, connects it
// to the app and copies bytes both ways. Bytes the client sends while it is
// held wait in the kernel's receive buffer and are delivered in order.
func (a *App) serveConn(c net.Conn) {
	defer a.wg.Done()
	defer a.untrack(c)
	defer c.Close()
	start := a.now()
	var tr proxyTrace
	inst, up, err := a.connect(context.Background(), c, &tr)
	if err != nil {
		a.metrics.outcome(OutcomeRefused)
		a.log.Info("connection refused", "remote", c.RemoteAddr().String(), "why", describeErr(err))
		a.logConn(c, start, connStatus(err), 0, &tr)
		return
	}
	a.metrics.outcome(OutcomeServed)
	defer a.release(inst, c, up)
	defer up.Close()
	in, out, err := proxy(c, up)
	a.metrics.bytes(in, out)
	a.logConn(c, start, http.StatusOK, out, &tr)
	if err != nil {
		// Whichever side broke it, the app had accepted the connection:
		// never evidence against its process.
		a.judge(inst, err, verdict{kind: ErrKindReset})
	}
}

// connect waits for the app and dials it for client, retrying a failed dial
// within retry_tries and retry_timeout, and notes the wait and the dials
// in tr. On success the caller owns a slot and must release it.
func (a *App) connect(ctx context.Context, client net.Conn, tr *proxyTrace) (*instance, net.Conn, error) {
	a.pending.Add(1)
	defer a.pending.Add(-1)
	start := a.now()
	deadline := start.Add(a.config().QueueTimeout)
	retryDeadline := start.Add(a.config().RetryTimeout)
	var lastErr error
	for try := 1; ; try++ {
		inst := a.tryAcquire()
		var err error
		if inst == nil {
			tr.holdBegan(a.now())
			inst, err = a.acquire(ctx, deadline, try > 1)
			tr.holdEnded(a.now())
		}
		if err != nil {
			if lastErr != nil {
				return nil, nil, errors.Join(lastErr, err)
			}
			return nil, nil, err
		}
		tr.attempts++
		up, err := a.gate.open(ctx, a.config().UpstreamNetwork, a.config().UpstreamAddress)
		if err == nil {
			if a.adopt(inst, client, up) {
				return inst, up, nil
			}
			up.Close()
			err = errors.New("the app's process ended")
		}
		a.release(inst)
		v := blame(err, StageDial, ctx.Err() != nil)
		a.judge(inst, err, v)
		lastErr = err
		if try >= a.config().RetryTries || !a.now().Before(retryDeadline) {
			if !v.unhealthy || !a.replaced(inst) {
				return nil, nil, err
			}
			// The refusals restarted the app: hold the connection for
			// its next process, within queue_timeout.
			try, retryDeadline = 0, later(start.Add(a.config().QueueTimeout), retryDeadline)
		}
		// The app refused: give it a moment (it may be restarting) and
		// wait for ready again, no longer than the retry budget.
		deadline = retryDeadline
		if !a.pause(retryPause(try)) {
			return nil, nil, ErrClosing
		}
	}
}

// proxy copies both ways until both directions are done, passing each
// half-close on, and returns the bytes copied each way and the first error
// that is not a plain end of stream. Between two TCP connections io.Copy
// uses splice(2).
func proxy(client, up net.Conn) (in, out int64, err error) {
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := io.Copy(up, client)
		closeWrite(up)
		done <- result{n, err}
	}()
	out, err = io.Copy(client, up)
	if err != nil {
		// The app broke the exchange: cut the client too instead of
		// waiting for it to stop sending.
		client.Close()
		up.Close()
	} else {
		closeWrite(client)
	}
	r := <-done
	if err == nil {
		err = r.err
	}
	return r.n, out, err
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
