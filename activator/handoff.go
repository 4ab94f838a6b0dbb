package activator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
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
//     stopped, each arrival wakes rouse, and the connection, still in the
//     backlog, starts the app.
//   - the app is ready: what was waiting in the backlog was accepted (the
//     socket is no longer readable), or the app holds a connection from it
//     (sock_diag), or, with ready = "notify", READY=1.
//   - the app is busy: sock_diag counts the connections the app holds on
//     the sockets, sampled while it runs. Once a sample finds it idle, an
//     arrival restarts the idle countdown: the first one wakes rouse, and
//     the next sample watches again, counting what it could not see in
//     between as activity (at most one wake-up per sample period). While
//     the app holds connections or has no idle timeout, an arrival wakes
//     nothing: the samples alone say it is busy.
//
// Waking nothing means keeping the sockets out of the runtime's netpoller:
// there every arrival wakes a thread of rouse, goroutine waiting or not,
// which costs a busy app (thousands of connections a second) a CPU share
// of its own. So rouse keeps its own descriptor of each socket, out of the
// netpoller; closes the TCP listener it was given, which loses nothing
// (a unix listener stays, and with it its wake-ups: its Close removes the
// socket file when rouse created it, which net does not tell); and watches
// the sockets through a private epoll instance, the only one of these in
// the netpoller, which becomes readable only when a socket registered in
// it had an arrival.
//
// The file description of a socket is shared by rouse and the app. It is
// in blocking mode, as systemd passes sockets (NonBlocking=no), from the
// start; the app may change that. Neither matters to rouse: it only polls
// the socket, registers it with epoll and closes it, which never blocks.

// handoff is what a handoff app needs of its sockets. The fields above mu
// are set up by New and read-only afterwards.
type handoff struct {
	socks []*handoffSocket
	names string        // LISTEN_FDNAMES
	poke  chan struct{} // a connection arrived, or the sockets were closed: look again
	ep    *os.File      // the epoll instance the watched sockets are registered in
	epfd  int           // ep's descriptor, valid while a socket is open
	raw   syscall.RawConn

	wakeups atomic.Int64 // times the watcher ran: what watching costs

	mu      sync.Mutex // guards the fields below and the sockets' watch and closed
	open    int        // sockets not closed yet: ep is closed with the last one
	failing bool       // the last change of the registrations failed (logged once)
}

// handoffSocket is one listening socket of a handoff app: rouse's own
// descriptor of it, out of the runtime's netpoller, and the listener it
// was given for the socket.
type handoffSocket struct {
	ln       net.Listener    // as given; closed by New when detached
	detached bool            // ln is closed: only file keeps the socket in rouse
	file     *os.File        // blocking, hence not in the netpoller
	raw      syscall.RawConn // file's
	addr     sockAddr
	watch    watch // how it is registered in the epoll instance; handoff.mu
	closed   bool  // the app closed it; handoff.mu
}

// watch is how a socket is registered in the epoll instance of its app.
type watch uint8

const (
	unwatched watch = iota // not registered: an arrival wakes nothing
	following              // each arrival (or burst) wakes the watcher: edge-triggered
	watchOnce              // the next arrival wakes it, then nothing: one-shot
	spent                  // was watchOnce and woke it; registered, but disabled
)

// rawListener is what net.TCPListener and net.UnixListener offer to reach
// their socket.
type rawListener interface {
	SyscallConn() (syscall.RawConn, error)
}

// handoffListener is the app's listener as Close sees it: it closes rouse's
// descriptor of the socket too, after the last of which the watcher ends.
type handoffListener struct {
	net.Listener
	h *handoff
	s *handoffSocket
}

func (l *handoffListener) Close() error {
	err := l.h.closeSocket(l.s)
	if !l.s.detached {
		return l.Listener.Close() // removes a unix socket file that net created
	}
	return err
}

// samplePeriod is how often the connections of a running handoff app are
// counted: often enough for idle_timeout and freeze_after, at most once a
// second.
func samplePeriod(idle, freeze time.Duration) time.Duration {
	if freeze > 0 && (idle <= 0 || freeze < idle) {
		idle = freeze
	}
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
	if err := h.openEpoll(); err != nil {
		return nil, nil, err
	}
	wrapped := make([]net.Listener, 0, len(lns))
	for _, ln := range lns {
		s, err := newHandoffSocket(ln)
		if err != nil {
			for _, s := range h.socks {
				s.file.Close()
			}
			h.ep.Close()
			return nil, nil, err
		}
		h.socks = append(h.socks, s)
		wrapped = append(wrapped, &handoffListener{Listener: ln, h: h, s: s})
	}
	h.open = len(h.socks)
	// Only once nothing can fail: on an error the caller still owns lns.
	for _, s := range h.socks {
		if s.detached {
			s.ln.Close() // out of the netpoller; file keeps the socket
		}
	}
	h.names = strings.Join(fdNames(cfg.Listen, len(lns), cfg.Name), ":")
	return h, wrapped, nil
}

// openEpoll creates the epoll instance the sockets are watched through.
// It is itself in the netpoller: readable when a socket had an arrival.
func (h *handoff) openEpoll() error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil { // for the netpoller
		unix.Close(fd)
		return os.NewSyscallError("epoll: set non-blocking", err)
	}
	h.ep, h.epfd = os.NewFile(uintptr(fd), "handoff epoll"), fd
	if h.raw, err = h.ep.SyscallConn(); err != nil {
		h.ep.Close()
		return fmt.Errorf("epoll: %w", err)
	}
	return nil
}

func newHandoffSocket(ln net.Listener) (*handoffSocket, error) {
	fl, ok := ln.(rawListener)
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
			// os.NewFile leaves a blocking descriptor out of the
			// netpoller. No child has the socket yet, and the listener
			// is never accepted on: nothing else sees the mode.
			serr = unix.SetNonblock(dup, false)
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
	_, tcp := ln.(*net.TCPListener)
	return &handoffSocket{ln: ln, detached: tcp, file: f, raw: raw, addr: addr}, nil
}

// closeSocket closes rouse's descriptor of s, and the epoll instance with
// the last one, which ends the watcher's wait. A second call does nothing.
func (h *handoff) closeSocket(s *handoffSocket) error {
	h.mu.Lock()
	if s.closed {
		h.mu.Unlock()
		return nil
	}
	if s.watch != unwatched {
		// Before the close: epoll drops a socket only when no process
		// has it any more, and the app may have it still.
		h.ctl(s, unix.EPOLL_CTL_DEL, &unix.EpollEvent{})
		s.watch = unwatched
	}
	s.closed = true
	err := s.file.Close()
	h.open--
	last := h.open == 0
	h.mu.Unlock()
	if last {
		h.ep.Close() // without mu: it waits for the watcher, which takes mu
	}
	return err
}

// closed reports whether every socket is closed.
func (h *handoff) closed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open == 0
}

func (h *handoff) ctl(s *handoffSocket, op int, ev *unix.EpollEvent) error {
	var cerr error
	err := s.raw.Control(func(fd uintptr) { cerr = unix.EpollCtl(h.epfd, op, int(fd), ev) })
	if err == nil {
		err = os.NewSyscallError("epoll_ctl", cerr)
	}
	return err
}

// setWatch registers the open sockets in the epoll instance as w says.
// It reports whether an arrival on one of them could have gone unseen
// until now (it was unwatched, or its one wake-up spent), and an error
// only for the first of a run of failures.
func (h *handoff) setWatch(w watch) (blind bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for i, s := range h.socks {
		if s.closed || s.watch == w {
			continue
		}
		blind = blind || s.watch == unwatched || s.watch == spent
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(i)}
		if w == watchOnce {
			ev.Events |= unix.EPOLLONESHOT
		}
		op := unix.EPOLL_CTL_MOD
		switch {
		case w == unwatched:
			op = unix.EPOLL_CTL_DEL
		case s.watch == unwatched:
			op = unix.EPOLL_CTL_ADD // reports a connection already waiting
		}
		if err := h.ctl(s, op, &ev); err != nil {
			errs = append(errs, fmt.Errorf("watch %s: %w", s.addr, err))
			continue
		}
		s.watch = w
	}
	if len(errs) == 0 {
		h.failing = false
		return blind, nil
	}
	if h.failing {
		return true, nil
	}
	h.failing = true
	return true, errors.Join(errs...)
}

// arrivals takes the events waiting in the epoll instance (epfd, as the
// netpoller passes it) and reports whether a socket had arrivals.
func (h *handoff) arrivals(epfd int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	var evs [8]unix.EpollEvent
	any := false
	for {
		n, err := unix.EpollWait(epfd, evs[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		any = true
		for _, ev := range evs[:n] {
			if i := int(ev.Fd); i >= 0 && i < len(h.socks) && h.socks[i].watch == watchOnce {
				h.socks[i].watch = spent // the kernel disabled it
			}
		}
		if n < len(evs) {
			break
		}
	}
	return any
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
// waits: one woken by arrivals on the sockets, one that acts on what it
// sees and on the app's changes of state.
func (a *App) serveHandoff() {
	a.wg.Add(2)
	go a.watchArrivals()
	go a.handoffLoop()
}

// watchArrivals is woken by the netpoller when watched sockets had
// arrivals, until the sockets are closed. It never accepts.
func (a *App) watchArrivals() {
	defer a.wg.Done()
	defer a.pokeHandoff() // closed: the loop must notice Close
	h := a.handoff
	err := h.raw.Read(func(epfd uintptr) bool {
		h.wakeups.Add(1)
		if h.arrivals(int(epfd)) {
			a.handoffArrival()
		}
		return false
	})
	if err != nil && !h.closed() {
		a.log.Error("watching the sockets: no more starts on them", "err", err)
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
	case Frozen:
		a.thawLocked("connection") // it waits in the backlog for the thawed app
	}
}

// watchHandoffLocked registers the sockets for what the app's state needs
// to learn of arrivals; call with mu held after a change of state or of
// the counts. Stopped, every arrival matters. Starting, none does: the
// probe looks. Ready, one does only while the idle countdown runs, and
// one wake-up per look is enough: the arrivals that could not be seen
// since count as activity now. The lock is held across epoll_ctl, which
// never blocks, so that a decision cannot be applied after a newer one.
func (a *App) watchHandoffLocked() {
	w := unwatched
	switch a.state {
	case Idle, Backoff, Stopping, Frozen:
		w = following
	case Ready:
		if d, _ := a.idleStepLocked(a.config()); d > 0 && a.active+a.queued == 0 {
			w = watchOnce
		}
	}
	blind, err := a.handoff.setWatch(w)
	if err != nil {
		a.log.Error("cannot watch the sockets: arrivals may go unnoticed", "state", a.state, "err", err)
	}
	if w == watchOnce && blind {
		a.armIdleLocked()
	}
}

// handoffLoop keeps queued, the connections waiting in the backlogs, up
// to date while no process accepts them, and starts the app when it is
// idle and one waits. The app's own state machine starts it again when an
// instance ends or a back-off is over with queued > 0, and a capacity pool
// grants it a start then too: at most one start per such transition,
// whatever waits. It registers the sockets for what each state needs to
// learn of arrivals (watchHandoffLocked). The loop returns when Close
// begins.
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
		if !done {
			// Before the count, so that what arrives after it wakes the loop.
			a.watchHandoffLocked()
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

// dup returns a new descriptor of the socket, for a child.
func (s *handoffSocket) dup() (*os.File, error) {
	fd, derr := -1, error(nil)
	err := s.raw.Control(func(sfd uintptr) {
		fd, derr = unix.FcntlInt(sfd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err == nil {
		err = os.NewSyscallError("dup", derr)
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), s.addr.String()), nil
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
		f, err := s.dup()
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
		period := samplePeriod(a.config().IdleTimeout, a.config().FreezeAfter)
		t := time.NewTicker(period)
		defer t.Stop()
		warned := false
		for {
			if ch, frozen := a.frozenInst(inst); frozen {
				t.Stop()
				if !a.frozenLook(ctx, inst, ch) {
					return
				}
				t.Reset(period)
				continue
			}
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
	if a.state == Frozen {
		if n.accepted <= 0 && n.queued == 0 {
			return
		}
		// Taken just before the freeze, or waiting: to be served.
		a.thawLocked("connection")
	}
	if n.accepted < 0 {
		n.accepted = max(a.active, 1)
	}
	if n.accepted != a.active || n.queued != a.queued {
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
	a.watchHandoffLocked() // each sample: a spent wake-up is armed again
}

// frozenInst reports whether inst is the app's frozen instance, with the
// channel its next change of state closes.
func (a *App) frozenInst(inst *instance) (<-chan struct{}, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed, a.inst == inst && a.state == Frozen
}

// frozenLook is the sampling of a frozen handoff app: none, but for one
// look once the freeze took effect at what the app took just before it or
// what waits in the backlog, which thaws it. It then waits for a change
// of state (ch) and reports false when ctx ended.
func (a *App) frozenLook(ctx context.Context, inst *instance, ch <-chan struct{}) bool {
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	err := inst.proc.WaitFrozen(wctx)
	cancel()
	if err == nil {
		if n, err := a.handoff.countConns(); err == nil {
			a.setConns(inst, n)
		}
	}
	select {
	case <-ctx.Done():
		return false
	case <-ch:
		return true
	}
}
