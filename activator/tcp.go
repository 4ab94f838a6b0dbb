package activator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"syscall"
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
		pause = nextAcceptPause(pause)
		warn.failed(addr, err, pause)
		if !wait(pause) {
			return c, false
		}
	}
}

// nextAcceptPause is the pause after a failed accept, the one before
// being pause: accept fails for want of descriptors or memory, which others
// may free soon, or not.
func nextAcceptPause(pause time.Duration) time.Duration {
	return min(max(2*pause, 5*time.Millisecond), time.Second)
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
func (a *App) acceptLoop(ln net.Listener) { a.acceptFrom(ln, ln.Accept) }

// acceptFrom is acceptLoop with next as the way of accepting on ln; it
// returns when next returns net.ErrClosed.
func (a *App) acceptFrom(ln net.Listener, next func() (net.Conn, error)) {
	defer a.wg.Done()
	inetd := a.config().Mode == ModeInetd
	warn := newAcceptWarner(a.log)
	for {
		c, _ := acceptWith(next, ln.Addr(), warn, a.pause)
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

// tcpListener is one listener of a tcp app. While the app is idle no
// goroutine accepts on it: the ListenWatch wakes the app when a connection
// waits, and a goroutine accepts from then on, until the app is idle
// again with no connection left (dozeLocked). The fields are guarded by
// App.mu.
type tcpListener struct {
	ln        net.Listener
	dl        deadlineListener // ln, when it can be watched; else nil: always accepted on
	raw       syscall.RawConn
	id        int32 // its registration in the watch
	accepting bool  // a goroutine accepts on it; else the watch waits for it
	closed    bool  // unwatched, about to be closed
}

// deadlineListener is what a listener needs to be watched: a deadline that
// ends an Accept under way when the app goes idle, and the socket.
type deadlineListener interface {
	SetDeadline(time.Time) error
	SyscallConn() (syscall.RawConn, error)
}

// serveTCP watches or accepts on each listener of a tcp app.
func (a *App) serveTCP(lns []net.Listener) {
	if a.watch == nil {
		// No watch shared by the daemon (a test, a library user): one of
		// the app's own.
		w, err := NewListenWatch()
		if err != nil {
			a.log.Warn("accepting at all times: cannot watch the listeners", "err", err)
		}
		a.watch, a.ownWatch = w, w != nil
	}
	for _, ln := range lns {
		l := &tcpListener{ln: ln}
		a.mu.Lock()
		a.tcpLns = append(a.tcpLns, l)
		if dl, ok := ln.(deadlineListener); ok && a.watch != nil {
			raw, err := dl.SyscallConn()
			if err == nil {
				l.id, err = a.watch.watch(raw, func() { a.wakeTCP(l) })
			}
			if err == nil {
				l.dl, l.raw = dl, raw
				a.mu.Unlock()
				continue
			}
			a.log.Warn("accepting at all times: cannot watch the listener", "addr", ln.Addr().String(), "err", err)
		}
		a.acceptTCPLocked(l)
		a.mu.Unlock()
	}
}

// wakeTCP is called by the watch: a connection waits on l.
func (a *App) wakeTCP(l *tcpListener) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !l.accepting && !l.closed {
		a.acceptTCPLocked(l)
	}
}

// acceptTCPLocked starts a goroutine accepting on l; call with mu held.
func (a *App) acceptTCPLocked(l *tcpListener) {
	l.accepting = true
	if l.dl != nil {
		_ = l.dl.SetDeadline(time.Time{}) // set by the last doze
	}
	a.wg.Add(1)
	go a.acceptFrom(l.ln, func() (net.Conn, error) {
		for {
			c, err := l.ln.Accept()
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return c, err
			}
			if a.doze(l) {
				return nil, net.ErrClosed
			}
		}
	})
}

// dozeLocked ends the accepting on the tcp listeners once the app is idle
// with no connection left; call with mu held wherever that may have become
// true. The accept under way ends at once (a deadline in the past), and
// doze hands the listener back to the watch.
func (a *App) dozeLocked() {
	if len(a.tcpLns) == 0 || !a.quietLocked() {
		return
	}
	for _, l := range a.tcpLns {
		if l.accepting && l.dl != nil {
			_ = l.dl.SetDeadline(longAgo)
		}
	}
}

// longAgo is a deadline that has passed.
var longAgo = time.Unix(1, 0)

func (a *App) quietLocked() bool {
	return a.state == Idle && a.active == 0 && a.queued == 0 && len(a.conns) == 0
}

// doze is called by the accept loop of l when its deadline ended an
// accept. Still quiet (nothing came in meanwhile), it arms l's
// registration (a connection waiting now wakes the app at once) and says
// to stop accepting, with net.ErrClosed; else it accepts on.
func (a *App) doze(l *tcpListener) (stop bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if l.closed {
		return true
	}
	if a.quietLocked() {
		err := a.watch.arm(l.raw, l.id)
		if err == nil {
			l.accepting = false
			return true
		}
		a.log.Warn("accepting at all times: cannot watch the listener", "addr", l.ln.Addr().String(), "err", err)
		l.dl = nil // never dozes again; raw stays, for unwatchTCP to drop the registration
	}
	_ = l.ln.(deadlineListener).SetDeadline(time.Time{})
	return false
}

// unwatchTCP takes ln out of the watch before it is closed; call without mu.
func (a *App) unwatchTCP(ln net.Listener) {
	a.mu.Lock()
	var l *tcpListener
	for i, x := range a.tcpLns {
		if x.ln == ln {
			l = x
			a.tcpLns = append(a.tcpLns[:i:i], a.tcpLns[i+1:]...)
			break
		}
	}
	if l == nil {
		a.mu.Unlock()
		return
	}
	l.closed = true
	raw, id := l.raw, l.id
	a.mu.Unlock()
	if raw != nil {
		_ = a.watch.unwatch(raw, id) // a failure leaves a registration that wakes nothing
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
