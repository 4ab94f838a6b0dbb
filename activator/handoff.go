package activator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/procman"
)

// handoff.go: mode = "handoff" (systemd's Accept=no). The app's process gets
// the listening sockets themselves; rouse never accepts on them. It learns
// what happens on them from the kernel:
//
//   - a connection is waiting: the socket is readable. While the app is
//     stopped, one goroutine per socket waits for that in the runtime's
//     netpoller (RawConn.Read), and the connection, still in the backlog,
//     starts the app.
//   - the app is ready: what was waiting in the backlog was accepted (the
//     socket is no longer readable), or the app holds a connection from it
//     (sock_diag), or, with ready = "notify", READY=1.
//   - the app is busy: sock_diag counts the connections the app holds on
//     the sockets, sampled while it runs; a connection that arrives between
//     two samples restarts the idle countdown (the same netpoller wake-up).
//
// The file description of a socket is shared by rouse and the app. The app
// gets it in blocking mode, as systemd passes sockets (NonBlocking=no); the
// app may change that. Neither matters to rouse: it only polls the socket
// and closes it, which never blocks.

// handoff is what a handoff app needs of its sockets. It is set up by New
// and read-only afterwards.
type handoff struct {
	socks []*handoffSocket
	names string        // LISTEN_FDNAMES
	poke  chan struct{} // a connection arrived, or a socket was closed: look again
}

// handoffSocket is one listening socket of a handoff app. A net.Listener
// cannot wait for readability without accepting, so rouse keeps a second
// descriptor of the socket as an os.File, registered with the runtime's
// netpoller, to wait on; Close of the app's listener closes it too.
type handoffSocket struct {
	ln     net.Listener    // the app's listener: Close unlinks a unix socket file
	file   *os.File        // the same socket, to wait on and to poll
	raw    syscall.RawConn // file's
	addr   sockAddr
	closed atomic.Bool // the app closed it: the end of the wait is no error
}

// fileListener is what net.TCPListener and net.UnixListener offer to hand
// their socket to a child.
type fileListener interface {
	File() (*os.File, error)
	SyscallConn() (syscall.RawConn, error)
}

// handoffListener is the app's listener as Close sees it: it closes the
// waiting descriptor too, which ends the wait.
type handoffListener struct {
	net.Listener
	s *handoffSocket
}

func (l *handoffListener) Close() error {
	l.s.closed.Store(true)
	l.s.file.Close()
	return l.Listener.Close()
}

// samplePeriod is how often the connections of a running handoff app are
// counted: often enough for idle_timeout, at most once a second.
func samplePeriod(idle time.Duration) time.Duration {
	if idle <= 0 {
		return time.Second
	}
	return min(max(idle/4, 10*time.Millisecond), time.Second)
}

// newHandoff sets up the sockets of a handoff app and returns the
// listeners the app closes when it closes.
func newHandoff(cfg Config, lns []net.Listener) (*handoff, []net.Listener, error) {
	if len(lns) == 0 {
		return nil, nil, errors.New("handoff mode needs at least one listen address")
	}
	h := &handoff{poke: make(chan struct{}, 1)}
	wrapped := make([]net.Listener, 0, len(lns))
	for _, ln := range lns {
		s, err := newHandoffSocket(ln)
		if err != nil {
			for _, s := range h.socks {
				s.file.Close()
			}
			return nil, nil, err
		}
		h.socks = append(h.socks, s)
		wrapped = append(wrapped, &handoffListener{Listener: ln, s: s})
	}
	h.names = strings.Join(fdNames(cfg.Listen, len(lns), cfg.Name), ":")
	return h, wrapped, nil
}

func newHandoffSocket(ln net.Listener) (*handoffSocket, error) {
	fl, ok := ln.(fileListener)
	if !ok {
		return nil, fmt.Errorf("listener %s cannot be handed off", ln.Addr())
	}
	addr, err := sockAddrOf(ln)
	if err != nil {
		return nil, err
	}
	lraw, err := fl.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	dup, serr := -1, error(nil)
	err = lraw.Control(func(fd uintptr) {
		dup, serr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if serr == nil {
			// os.NewFile registers only a non-blocking descriptor with the
			// netpoller. No child has the socket yet.
			serr = unix.SetNonblock(dup, true)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		if dup >= 0 {
			unix.Close(dup)
		}
		return nil, fmt.Errorf("listener %s: dup: %w", ln.Addr(), err)
	}
	f := os.NewFile(uintptr(dup), "handoff "+addr.String())
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	return &handoffSocket{ln: ln, file: f, raw: raw, addr: addr}, nil
}

// fdNames names the n sockets of the listen addresses for LISTEN_FDNAMES:
// "systemd:NAME" keeps its name, any other address is named after the app.
// The listeners come in the order of the addresses, one per address except
// for a systemd name that was passed several sockets; when more than one
// systemd name could be that one, every socket is named after the app.
func fdNames(listen []string, n int, app string) []string {
	var names []string
	systemd := 0
	for _, l := range listen {
		if strings.HasPrefix(l, "systemd:") {
			systemd++
		}
	}
	extra := n - len(listen)
	for _, l := range listen {
		name, ok := strings.CutPrefix(l, "systemd:")
		if !ok {
			name = app
		}
		names = append(names, name)
		if ok && systemd == 1 {
			for ; extra > 0; extra-- {
				names = append(names, name)
			}
		}
	}
	if len(names) != n {
		names = names[:0]
		for range n {
			names = append(names, app)
		}
	}
	return names
}

// serveHandoff starts the goroutines that start the app when a connection
// waits: one per socket in the netpoller, and one that acts on what they see.
func (a *App) serveHandoff() {
	for _, s := range a.handoff.socks {
		a.wg.Add(1)
		go a.watchSocket(s)
	}
	a.wg.Add(1)
	go a.handoffLoop()
}

// watchSocket is woken by the netpoller each time connections arrive on s
// (epoll is edge-triggered: one wake-up per arrival or burst), until s is
// closed. It never accepts.
func (a *App) watchSocket(s *handoffSocket) {
	defer a.wg.Done()
	defer a.pokeHandoff() // closed: the loop must notice Close
	first := true
	err := s.raw.Read(func(uintptr) bool {
		if first {
			// Called once the wait is armed, before waiting: what arrived
			// until now made no wake-up, so have the loop look.
			first = false
			a.pokeHandoff()
			return false
		}
		a.handoffArrival()
		return false
	})
	if err != nil && !s.closed.Load() {
		a.log.Error("watching socket: no more starts on it", "addr", s.addr.String(), "err", err)
	}
}

func (a *App) pokeHandoff() {
	select {
	case a.handoff.poke <- struct{}{}:
	default:
	}
}

// handoffArrival notes connections arriving on a socket.
func (a *App) handoffArrival() {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch a.state {
	case Idle, Backoff, Stopping:
		a.pokeHandoff() // they wait in the backlog: count them
	case Ready:
		if a.active == 0 {
			// Maybe gone again before the next sample: it is activity.
			a.armIdleLocked()
		}
	}
}

// handoffLoop keeps queued, the connections waiting in the backlogs, up
// to date while no process accepts them, and starts the app when it is
// idle and one waits. The app's own state machine starts it again when an
// instance ends or a back-off is over with queued > 0, and a capacity pool
// grants it a start then too: at most one start per such transition,
// whatever waits. The loop returns when Close begins.
func (a *App) handoffLoop() {
	defer a.wg.Done()
	counted := State(-1) // the state queued was last counted in
	for {
		a.mu.Lock()
		done := a.draining || a.closing
		st, queued, ch := a.state, a.queued, a.changed
		if done && a.queued > 0 {
			a.queued = 0 // no process will take them: the next rouse will
			a.broadcast()
		}
		a.mu.Unlock()
		if done {
			return
		}
		switch st {
		case Idle, Backoff, Stopping:
			if st == counted && queued > 0 && st != Idle {
				break // enough to start it at the next transition
			}
			n := a.handoff.backlog()
			a.mu.Lock()
			if a.state == st && !a.draining && !a.closing {
				counted = st
				if a.queued != n {
					a.queued = n
					a.broadcast()
				}
				if st == Idle && n > 0 {
					a.startLocked("connection")
				}
				ch = a.changed
			}
			a.mu.Unlock()
		}
		select {
		case <-ch:
		case <-a.handoff.poke:
		}
	}
}

// backlog returns how many connections wait to be accepted on the
// sockets: at least 1 when one is readable.
func (h *handoff) backlog() int {
	if !h.pending() {
		return 0
	}
	n := 0
	for _, s := range h.socks {
		if c, err := countConns(s.addr); err == nil {
			n += c.queued
		}
	}
	return max(n, 1)
}

// pending reports whether a connection waits to be accepted on any socket.
func (h *handoff) pending() bool {
	for _, s := range h.socks {
		if s.readable() {
			return true
		}
	}
	return false
}

// readable polls the socket without waiting: a listening socket is
// readable when its accept queue is not empty.
func (s *handoffSocket) readable() bool {
	readable := false
	s.raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, 0)
			if err == unix.EINTR {
				continue
			}
			readable = err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
			return
		}
	})
	return readable
}

// handoffReady is the readiness probe of a handoff app: the connections
// that waited were accepted, or the app holds one.
func (a *App) handoffReady(context.Context) error {
	h := a.handoff
	if !h.pending() {
		return nil
	}
	var queued int
	for _, s := range h.socks {
		c, err := countConns(s.addr)
		if err != nil {
			return err
		}
		if c.accepted > 0 {
			return nil
		}
		queued += c.queued
	}
	return fmt.Errorf("%d connections wait in the backlog, none accepted yet", queued)
}

// countConns counts the connections on all the sockets.
func (h *handoff) countConns() (connCount, error) {
	var n connCount
	for _, s := range h.socks {
		c, err := countConns(s.addr)
		if err != nil {
			return connCount{}, fmt.Errorf("count connections on %s: %w", s.addr, err)
		}
		n.accepted += c.accepted
		n.queued += c.queued
	}
	return n, nil
}

// spawnHandoff starts the app's process with the sockets as fd 3, 4, ...
// (LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID set by the exec shim).
func (a *App) spawnHandoff(spec procman.Spec) (*procman.Process, error) {
	files := make([]*os.File, 0, len(a.handoff.socks))
	defer func() {
		for _, f := range files {
			f.Close() // the child has its own copies
		}
	}()
	for _, s := range a.handoff.socks {
		f, err := s.ln.(fileListener).File()
		if err != nil {
			return nil, fmt.Errorf("start %s: socket %s: %w", a.config().Name, s.addr, err)
		}
		files = append(files, f)
	}
	spec, err := a.shimSpec(spec, files, false,
		fmt.Sprintf("LISTEN_FDS=%d", len(files)),
		"LISTEN_FDNAMES="+a.handoff.names)
	if err != nil {
		return nil, err
	}
	return procman.Start(spec)
}

// watchConns samples the connections of a handoff app's ready instance
// until the returned function is called, which waits for the sampling to
// end and clears the counts. For other modes it does nothing.
func (a *App) watchConns(inst *instance) (stop func()) {
	if a.handoff == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(inst.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(samplePeriod(a.config().IdleTimeout))
		defer t.Stop()
		warned := false
		for {
			n, err := a.handoff.countConns()
			switch {
			case err == nil:
				a.setConns(inst, n)
			case !warned:
				// Without counts the app is never stopped for idleness.
				a.log.Warn("cannot see the app's connections: it stays up", "err", err)
				a.setConns(inst, connCount{accepted: -1})
				warned = true
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
		a.setConns(inst, connCount{})
	}
}

// setConns records the connections of inst's process: status conns are
// those it holds, queued those in the backlog. accepted < 0 means unknown,
// which counts as busy.
func (a *App) setConns(inst *instance, n connCount) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inst != inst {
		return
	}
	if n.accepted < 0 {
		n.accepted = max(a.active, 1)
	}
	if n.accepted == a.active && n.queued == a.queued {
		return
	}
	busy := a.active+a.queued > 0
	a.active, a.queued = n.accepted, n.queued
	a.broadcast() // for Close's drain, among others
	if busy && a.active+a.queued == 0 && a.state == Ready {
		// As release does when the last connection ends.
		a.lastUsed = a.now()
		if a.pool != nil {
			a.pool.idle()
		}
		a.armIdleLocked()
	}
}
