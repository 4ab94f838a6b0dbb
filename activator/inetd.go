package activator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rouse-dev/rouse/procman"
)

// inetd.go: mode = "inetd" (xinetd's nowait, systemd's Accept=yes). rouse
// accepts, and each connection gets a process of its own with the socket
// as stdin, stdout and fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES=connection,
// LISTEN_PID through the exec shim), REMOTE_ADDR and REMOTE_PORT for TCP.
// rouse drops its end of the connection once the process has it, so the
// connection ends when the process closes it or exits.
//
// In status, conns counts the processes running, queued the connections
// waiting for one of the max_conns slots, starts the spawns. The state is
// ready while a process runs and idle when none does; there is no idle
// timer, as each process ends with its connection.

// inetdConn is an accepted connection of an inetd app.
type inetdConn struct {
	net.Conn
	running bool // it holds one of the max_conns slots; guarded by App.mu
	cutOnce sync.Once
	cut     chan struct{} // closed to stop the connection's process
}

func newInetdConn(c net.Conn) *inetdConn { return &inetdConn{Conn: c, cut: make(chan struct{})} }

// stop asks the connection's process, if any, to stop.
func (c *inetdConn) stop() { c.cutOnce.Do(func() { close(c.cut) }) }

// Close cuts the connection: rouse's end, and the process serving it.
// App.Close calls it after the drain.
func (c *inetdConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

func (a *App) serveInetd() {
	for _, ln := range a.lns {
		a.wg.Add(1)
		go a.acceptLoop(ln)
	}
}

// serveInetdConn waits for a free slot, spawns the connection's process
// and waits until it exited, or stops it when the connection is cut.
func (a *App) serveInetdConn(c *inetdConn) {
	defer a.wg.Done()
	defer a.untrack(c)
	defer c.Close()
	remote := c.RemoteAddr().String()
	start := a.now()
	var tr proxyTrace
	if err := a.inetdAcquire(c, &tr); err != nil {
		why := describeErr(err)
		if errors.Is(err, ErrQueueTimeout) {
			why = fmt.Sprintf("no free process slot (max_conns %d) within queue_timeout", a.config().MaxConns)
		}
		a.log.Info("connection closed", "remote", remote, "why", why)
		a.logConn(c, start, connStatus(err), 0, &tr)
		return
	}
	t0 := a.now()
	tr.attempts = 1
	p, err := a.spawnInetd(c)
	if err != nil {
		a.inetdEnd(c, nil, false, err)
		a.logConn(c, start, http.StatusBadGateway, 0, &tr)
		return
	}
	defer a.logConn(c, start, http.StatusOK, 0, &tr)
	c.Conn.Close() // the process has the connection now
	a.log.Debug("spawned", "pid", p.Pid(), "remote", remote)
	stopped := false
	select {
	case <-p.Done():
	case <-c.cut:
		stopped = true
		a.stopProcess(p)
	}
	a.log.Debug("exited", "pid", p.Pid(), "remote", remote, "took", a.now().Sub(t0).Round(time.Microsecond), "err", p.Err())
	a.inetdEnd(c, p, stopped, nil)
}

// inetdAcquire takes one of the max_conns process slots for c, waiting up
// to queue_timeout for one to be free; tr notes the wait.
func (a *App) inetdAcquire(c *inetdConn, tr *proxyTrace) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := heldWait{a: a, arrived: a.now()}
	defer w.done()
	defer func() {
		if w.waiting {
			tr.holdBegan(w.arrived)
			tr.holdEnded(a.now())
		}
	}()
	deadline := w.arrived.Add(a.config().QueueTimeout)
	for {
		switch {
		case a.closing:
			return ErrClosing
		case a.state == Backoff:
			return &BackoffError{App: a.config().Name, Until: a.backoffUntil, Last: a.lastErr}
		case a.config().MaxConns <= 0 || a.active < a.config().MaxConns:
			a.active++
			a.starts++
			c.running = true
			a.setState(Ready)
			return nil
		}
		if err := w.wait(context.Background(), deadline); err != nil {
			return err
		}
	}
}

// spawnInetd starts the process of connection c.
func (a *App) spawnInetd(c *inetdConn) (*procman.Process, error) {
	f, err := c.Conn.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", a.config().Name, err)
	}
	defer f.Close() // the child has its own copy
	spec := a.config().Process
	spec.Name = a.config().Name
	spec.Guard = a.guard
	spec.Notify = false // nothing waits for readiness
	var pid atomic.Int64
	if spec.Output == nil {
		spec.Output = func(stream, line string) { a.log.Info(line, "stream", stream, "pid", pid.Load()) }
	}
	env := []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=connection"}
	if addr, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := addr.AddrPort()
		env = append(env, "REMOTE_ADDR="+ap.Addr().Unmap().String(), "REMOTE_PORT="+strconv.Itoa(int(ap.Port())))
	}
	spec, err = a.shimSpec(spec, []*os.File{f}, true, env...)
	if err != nil {
		return nil, err
	}
	p, err := procman.Start(spec)
	if err != nil {
		return nil, err
	}
	pid.Store(int64(p.Pid()))
	return p, nil
}

// inetdEnd gives c's slot back and records how its process p ended, or
// why it could not be spawned (spawnErr, a failure that puts the app in
// back-off). A process killed by a signal rouse did not send (SIGPIPE
// aside: its client went away) is a failure too; an exit status, zero or
// not, is the program's answer to its client.
func (a *App) inetdEnd(c *inetdConn, p *procman.Process, stopped bool, spawnErr error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c.running = false
	a.active--
	switch {
	case spawnErr != nil:
		a.inetdFailLocked(spawnErr)
	case !stopped:
		a.consecutive = 0
		if sig, ok := killedBy(p.Err()); ok && sig != syscall.SIGPIPE {
			a.failures++
			a.lastErr = fmt.Sprintf("pid %d killed by %v", p.Pid(), sig)
			a.log.Warn("process of a connection crashed", "pid", p.Pid(), "err", p.Err(), "stderr", p.StderrTail(1))
		}
	}
	a.inetdSettleLocked()
	a.broadcast() // a slot is free for a waiting connection, or Close may go on
}

func killedBy(err error) (syscall.Signal, bool) {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 0, false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return 0, false
	}
	return ws.Signal(), true
}

// inetdSettleLocked sets the state from the running processes, unless the
// app is in back-off.
func (a *App) inetdSettleLocked() {
	switch {
	case a.state == Backoff:
	case a.active > 0:
		a.setState(Ready)
	default:
		a.setState(Idle)
	}
}

// inetdFailLocked puts the app in back-off after a spawn failure: the
// connections arriving meanwhile are closed at once. Failures of spawns
// that were under way when it began do not lengthen it.
func (a *App) inetdFailLocked(err error) {
	a.failures++
	a.lastErr = err.Error()
	if a.state == Backoff {
		return
	}
	a.consecutive++
	delay := backoffDelay(a.consecutive, a.config().BackoffMax)
	a.backoffUntil = a.now().Add(delay)
	a.setState(Backoff)
	a.log.Warn("failed", "state", Backoff, "err", err, "retry_in", delay, "failures_in_a_row", a.consecutive)
	if a.closing {
		return
	}
	if a.backoffTimer != nil {
		a.backoffTimer.Stop()
	}
	a.backoffTimer = time.AfterFunc(delay, a.inetdBackoffOver)
}

func (a *App) inetdBackoffOver() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != Backoff || a.now().Before(a.backoffUntil) {
		return
	}
	a.state = Idle // settled below from the processes running
	a.inetdSettleLocked()
	a.broadcast() // out of back-off
}

// inetdStart is Start for an inetd app: there is no process to start until
// a connection comes, but a back-off is cut short.
func (a *App) inetdStart() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return ErrClosing
	}
	if a.state == Backoff {
		if a.backoffTimer != nil {
			a.backoffTimer.Stop()
		}
		a.state = Idle // settled below from the processes running
		a.inetdSettleLocked()
		a.broadcast() // out of back-off
	}
	return nil
}

// inetdStop is Stop for an inetd app: it stops the processes running now
// (their connections end with them), cuts a back-off short and waits until
// they are gone. Connections waiting for a slot then get one.
func (a *App) inetdStop(ctx context.Context) error {
	deadline := a.now().Add(a.config().Process.StopTimeout + 10*time.Second)
	if err := a.inetdStart(); err != nil && !errors.Is(err, ErrClosing) {
		return err
	}
	var cut []*inetdConn
	a.mu.Lock()
	for c := range a.conns {
		if ic, ok := c.(*inetdConn); ok && ic.running {
			ic.stop()
			cut = append(cut, ic)
		}
	}
	a.mu.Unlock()
	for {
		a.mu.Lock()
		left, ch := 0, a.changed
		for _, ic := range cut {
			if ic.running {
				left++
			}
		}
		a.mu.Unlock()
		if left == 0 {
			return nil
		}
		if err := waitChange(ctx, ch, deadline); err != nil {
			return fmt.Errorf("stop %s: %w", a.config().Name, err)
		}
	}
}
