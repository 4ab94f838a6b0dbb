package httpfront

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/h1"
)

// The event loop serves the common case of a TCP or Unix-socket front: a
// plain request, and its response as it comes (whole at once, or passed on
// through the app connection's buffer: longer, chunked, streamed, or until
// the app closes; see beginRelay). Its sockets are raw
// non-blocking descriptors watched through an epoll instance of its own,
// outside Go's netpoller: a goroutine per connection costs, per request, a
// read that fails with EAGAIN and a park and a wake-up on each side, which
// made the front cost more CPU per request than nginx. One loop at a time
// also has the front's listener in its epoll instance and accepts on it,
// reading each request at once (TCP_DEFER_ACCEPT has the kernel hand over
// connections with their first bytes in): a connection handed from an
// accepting goroutine cost a wake-up on each side and an epoll event more.
//
// Everything else goes to a goroutine (frontConn) with what was read so far,
// where the rules of the slower path apply unchanged: a request head in
// parts or beyond the buffer, a body not yet all read, an app not ready (the
// request is held), a response with a Content-Length above relayMax (it is
// spliced there), and an exchange the app takes longer than watchAfter to
// begin answering (the goroutine then times it out, or notices the client
// going away).
// Before the request reached the app, the goroutine starts over with it;
// after, it continues the same exchange, with the app's bytes read so far.

const (
	loopEvents  = 128
	loopUpBuf   = 16 << 10       // the app connection's buffer: a response within it goes in one write
	scanBusy    = watchAfter / 2 // how often exchanges are checked for taking too long
	scanIdle    = time.Second    // how often idle connections are checked for timeouts
	loopIOFlags = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
	// A response with a longer Content-Length goes to a goroutine, which
	// splices it from socket to socket; shorter ones, and chunked ones of
	// any length, the loop passes on through its buffer.
	relayMax = 256 << 10
)

// Client connection states in the loop.
const (
	lcWaiting   = iota // for a request
	lcSending          // the request to the app
	lcAwaiting         // the app's response
	lcAnswering        // the response to the client
	lcRelaying         // a response passed on as it comes from the app
	lcGone             // closed, or given to a goroutine
)

// Buffers of app connections the loop closes; not those given to
// goroutines, which read them still.
var upBufs = sync.Pool{New: func() any { b := make([]byte, 0, loopUpBuf); return &b }}

// connBufs are what a client connection needs while it has a request in
// progress. Between requests it holds none: an idle keep-alive connection
// costs its loopConn and the kernel's socket, as in nginx, and not the
// kilobytes a response left behind.
type connBufs struct {
	in, out, resp []byte
}

// loopEnd is what an epoll event can be for.
type loopEnd interface{ event(l *evLoop, ev uint32) }

// evLoop is one event loop of a front; a front has one per P, made as
// connections come.
type evLoop struct {
	f    *HTTPFront
	epfd int
	ep   *os.File        // epfd, in Go's netpoller: the loop parks there
	raw  syscall.RawConn // ep's
	// pollReady bound, and what it found.
	pollFn func(uintptr) bool
	polled int
	wake   int // eventfd: commands from other goroutines

	// As the front's net/http server has it (copied: tests change it).
	idleTimeout time.Duration

	mu       sync.Mutex
	closed   bool
	pending  []*loopConn // accepted, not yet seen by the loop
	lnNext   int         // a listener to accept on (acceptOn), not yet seen by the loop; -1: none
	npending atomic.Int32
	cmd      atomic.Uint32 // cmdShutdown | cmdClose | cmdUnlisten
	done     chan struct{}

	// The loop goroutine's own.
	ends       []loopEnd     // by descriptor
	ln         *loopListener // the listener the loop accepts on, if any
	ips        clientIPs
	conns      map[*loopConn]struct{}
	idle       map[*httpUpstream][]*loopUp // kept connections to each app, newest last
	busy       int                         // exchanges in flight
	relaying   int                         // of them, passing a response on as it comes
	nextScan   time.Time                   // when to scan, or see whether to end
	emptySince time.Time                   // zero: the loop has connections
	deadline   time.Time                   // ep's read deadline
	now        time.Time                   // when the last wait ended: the clock of a round
	shutdown   bool
	evs        [loopEvents]unix.EpollEvent

	// Buffers shed by connections between requests, and how many
	// connections hold some: now (atomic for tests only), and at most
	// since the last trim of spare.
	spare        []connBufs
	equipped     atomic.Int32
	peakEquipped int32
	trimmed      time.Time
}

const (
	cmdShutdown = 1 << iota
	cmdClose
	cmdUnlisten // give the listener back
)

// acceptBatch is how many connections the loop accepts at most before it
// serves other events: the listener is watched level-triggered, so it is
// back at the next wait if more are queued.
const acceptBatch = 16

// loopListener is the listening socket a loop accepts on: a copy of the
// front's, the loop's to close.
type loopListener struct{ fd int }

// loopConn is a client connection served by the loop.
type loopConn struct {
	fd       int
	ip       string // the client's; "" on a Unix socket
	state    int
	readable bool      // an edge came that was not read through yet
	watched  bool      // in the loop's epoll instance (see watch)
	reading  bool      // in readRequest
	hup      bool      // the client closed its side, or failed
	deadline time.Time // lcWaiting, and a response waiting for the client to take more: when the connection is closed
	wrote    bool      // a write to the client made progress since deadline was set
	corked   bool      // the last write to the client said MSG_MORE: its tail may wait in the kernel
	blocked  bool      // lcAnswering, lcRelaying: the client's socket is full, until its EPOLLOUT
	served   int

	in      []byte // in[r:w] is read and not yet used; nil between requests
	r, w    int
	hasBufs bool // in, out and resp: between equip and shed

	// The request in progress.
	head       h1.Request
	headAt     int // where in in the head began
	headLen    int
	a          *activator.App
	inst       *activator.Instance
	up         *loopUp
	out        []byte // the request as it goes to the app
	sent       int    // of out
	resp       []byte // the response as it goes to the client
	written    int    // of resp
	start      time.Time
	closeAfter bool
	retried    bool       // the one silent retry on a new connection was used
	relay      relayState // lcRelaying
	// For the access log: the response's status and head length, and
	// the bytes of it written to the client so far.
	status   int
	respHead int
	toClient int64
}

// relayState is where a response the loop passes on as it comes stands.
type relayState struct {
	left      int64 // body bytes still to come: Content-Length; -1 until the app closes
	chunked   bool
	chunks    h1.ChunkScanner
	done      bool // the app's last byte of the response was read
	keep      bool // the app's connection can serve another request after
	fromUp    bool // what is being written is up.buf, not resp
	drained   bool // a short read from the app: wait for its next edge
	keptBytes bool // the app sent bytes past the response's end
}

// loopUp is a connection of the loop to an app's process.
type loopUp struct {
	fd       int
	upstream *httpUpstream
	inst     *activator.Instance
	gen      uint64 // upstream.gen when made or kept
	reused   bool
	c        *loopConn // the request it serves; nil while kept
	buf      []byte    // the response so far
	eof      bool      // read to the end: the app closed its side (or failed)
	hup      bool      // the app closed its side, or failed: read on to the end
}

func newEvLoop(f *HTTPFront) (*evLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	l := &evLoop{f: f, epfd: epfd, wake: -1, lnNext: -1, done: make(chan struct{}),
		idleTimeout: f.loopIdleTimeout,
		conns:       make(map[*loopConn]struct{}), idle: make(map[*httpUpstream][]*loopUp)}
	fail := func(what string, err error) (*evLoop, error) {
		if l.wake >= 0 {
			unix.Close(l.wake)
		}
		unix.Close(epfd)
		return nil, os.NewSyscallError(what, err)
	}
	if l.wake, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return fail("eventfd", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, l.wake, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(l.wake)}); err != nil {
		return fail("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		return fail("fcntl", err)
	}
	l.ep = os.NewFile(uintptr(epfd), "front epoll")
	if l.raw, err = l.ep.SyscallConn(); err != nil {
		l.ep.Close()
		unix.Close(l.wake)
		return nil, err
	}
	l.pollFn = l.pollReady
	f.serving.Add(1)
	go l.run()
	return l, nil
}

// add gives the loop a connection; false when the loop is closed (the
// descriptor is then the caller's).
func (l *evLoop) add(a rawAccepted) bool {
	fd := a.fd
	c := &loopConn{fd: fd, ip: a.ip, served: a.served, readable: true, watched: true}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.pending = append(l.pending, c)
	l.npending.Add(1)
	// Under mu: an event for fd finds c in pending. A new socket is
	// writable, so the loop wakes at once and takes it.
	if err := epollAdd(l.epfd, fd); err != nil {
		l.pending = l.pending[:len(l.pending)-1]
		l.npending.Add(-1)
		return false
	}
	return true
}

// acceptOn gives the loop the listening socket fd (a copy, which the loop
// closes) to accept on until it gives it back through the front's lnBack;
// false when the loop is closed (fd is then the caller's).
func (l *evLoop) acceptOn(fd int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.lnNext = fd
	l.npending.Add(1)
	var one = [8]byte{1}
	unix.Write(l.wake, one[:])
	return true
}

// command asks the loop to shut down or close, and wakes it.
func (l *evLoop) command(cmd uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return // ended, or ending: its eventfd may be closed
	}
	l.cmd.Or(cmd)
	var one = [8]byte{1}
	unix.Write(l.wake, one[:])
}

// close closes every connection of the loop and waits for it to end.
func (l *evLoop) close() {
	l.command(cmdClose)
	<-l.done
}

// run is the loop.
func (l *evLoop) run() {
	defer l.f.serving.Done()
	defer close(l.done)
	defer l.f.loopEnded(l)
	defer l.closeAll()
	for {
		n, err := l.wait()
		l.now = time.Now()
		if err != nil && !os.IsTimeout(err) {
			l.f.log.Error("event loop", "err", err)
			return
		}
		if l.npending.Load() > 0 {
			l.adopt()
		}
		if l.cmd.Load() != 0 {
			cmd := l.cmd.Swap(0)
			if cmd&cmdClose != 0 {
				return
			}
			if cmd&cmdUnlisten != 0 {
				l.unlisten(nil)
			}
			if cmd&cmdShutdown != 0 && !l.shutdown {
				l.shutdown = true
				l.beginShutdown()
			}
		}
		for i := range n {
			ev := &l.evs[i]
			if int(ev.Fd) == l.wake {
				var b [8]byte
				unix.Read(l.wake, b[:])
				continue
			}
			if e := l.end(int(ev.Fd)); e != nil {
				e.event(l, ev.Events)
			}
		}
		if !l.schedule() {
			return
		}
	}
}

// schedule runs scan when it is due, and says when it is next due. It
// returns false when the loop is to end: it has had no connection for
// scanIdle, so it costs nothing while its front is unused.
func (l *evLoop) schedule() bool {
	now := l.now
	if len(l.conns) == 0 {
		if l.emptySince.IsZero() {
			l.emptySince = now
			l.nextScan = now.Add(scanIdle)
			return true
		}
		if now.Before(l.nextScan) {
			return true
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.pending) > 0 || l.lnNext >= 0 {
			return true // adopted next time round
		}
		l.closed = true
		return false
	}
	l.emptySince = time.Time{}
	if !l.nextScan.IsZero() && !now.Before(l.nextScan) {
		l.scan(now)
		l.nextScan = time.Time{}
	}
	every := scanIdle
	if l.busy > l.relaying || l.shutdown {
		every = scanBusy // a relayed response has no time limit: nothing to check
	}
	if l.nextScan.IsZero() || l.nextScan.Sub(now) > every {
		l.nextScan = now.Add(every)
	}
	return true
}

// wait returns the next events; it parks the goroutine (in Go's netpoller)
// when there are none, until the next scan is due.
func (l *evLoop) wait() (n int, err error) {
	if n = l.poll(); n > 0 {
		return n, nil
	}
	if !l.deadline.Equal(l.nextScan) {
		l.deadline = l.nextScan
		l.ep.SetReadDeadline(l.deadline)
	}
	l.polled = 0
	err = l.raw.Read(l.pollFn)
	return l.polled, err
}

// pollReady is the raw read of wait: bound once (in newEvLoop), so that a
// wait allocates nothing.
func (l *evLoop) pollReady(uintptr) bool {
	l.polled = l.poll()
	return l.polled > 0 || l.cmd.Load() != 0
}

// poll takes the events there are, without blocking.
func (l *evLoop) poll() int {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.evs[0])), loopEvents, 0, 0, 0)
	if e != 0 {
		return 0 // EINTR
	}
	return int(n)
}

// end returns what fd is for, nil for an event that came for a descriptor
// already closed.
func (l *evLoop) end(fd int) loopEnd {
	if fd < len(l.ends) && l.ends[fd] != nil {
		return l.ends[fd]
	}
	l.adopt()
	if fd < len(l.ends) {
		return l.ends[fd]
	}
	return nil
}

func (l *evLoop) setEnd(fd int, e loopEnd) {
	for fd >= len(l.ends) {
		l.ends = append(l.ends, nil)
	}
	l.ends[fd] = e
}

// adopt takes the connections accepted since last time, and the listener
// acceptOn gave it.
func (l *evLoop) adopt() {
	l.mu.Lock()
	pending, lnfd := l.pending, l.lnNext
	l.pending, l.lnNext = nil, -1
	l.npending.Store(0)
	l.mu.Unlock()
	for _, c := range pending {
		l.take(c)
	}
	if lnfd >= 0 {
		l.listen(lnfd)
	}
}

// take makes c one of the loop's connections.
func (l *evLoop) take(c *loopConn) {
	now := l.now
	l.setEnd(c.fd, c)
	l.conns[c] = struct{}{}
	switch {
	case l.shutdown && c.served > 0:
		c.deadline = now // idle: closed at the next scan
	case l.shutdown:
		c.deadline = now.Add(newConnGrace)
	case c.served > 0:
		c.deadline = now.Add(l.idleTimeout) // back from a goroutine
	default:
		c.deadline = now.Add(l.f.headerTimeout())
	}
}

// listen watches the listening socket fd, level-triggered, to accept on
// it as connections come (loopListener.event).
func (l *evLoop) listen(fd int) {
	if l.shutdown {
		l.f.lnBack <- nil
		unix.Close(fd)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.f.lnBack <- os.NewSyscallError("epoll_ctl", err)
		unix.Close(fd)
		return
	}
	l.ln = &loopListener{fd: fd}
	l.setEnd(fd, l.ln)
}

// unlisten gives the listener back to the front, saying err.
func (l *evLoop) unlisten(err error) {
	if l.ln == nil {
		return
	}
	fd := l.ln.fd
	l.ln = nil
	l.forget(fd)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	unix.Close(fd)
	l.f.lnBack <- err
}

// event accepts the connections that came, up to acceptBatch.
func (ln *loopListener) event(l *evLoop, _ uint32) {
	for range acceptBatch {
		if l.f.shutting.Load() {
			l.unlisten(nil) // the front accepts no more
			return
		}
		if l.cmd.Load() != 0 {
			return // seen to first
		}
		fd, ip, err := rawAccept(ln.fd, &l.ips)
		switch err {
		case nil:
		case unix.EINTR, unix.ECONNABORTED:
			continue // as net's accept: the next one
		case unix.EAGAIN:
			return
		default:
			// Out of descriptors or memory: the front pauses before it
			// gives the listener out again.
			l.unlisten(os.NewSyscallError("accept4", err))
			return
		}
		to := l.f.loopFor()
		switch {
		case to == l:
			c := &loopConn{fd: fd, ip: ip, readable: true}
			l.take(c)
			// Its request is likely in already (TCP_DEFER_ACCEPT): served
			// now, without waiting for an event that says so; and the loop
			// watches it only once it has to wait for the client (watch).
			l.readRequest(c)
		case !l.f.giveLoop(rawAccepted{fd: fd, ip: ip}, to):
			rawClose(fd) // the front closed
		}
	}
}

// scan closes connections whose wait timed out and gives exchanges that
// take long to a goroutine.
func (l *evLoop) scan(now time.Time) {
	l.trimSpare(now)
	for c := range l.conns {
		switch c.state {
		case lcWaiting:
			if now.After(c.deadline) {
				l.closeConn(c)
			}
		case lcSending, lcAwaiting:
			if now.Sub(c.start) >= watchAfter {
				l.continueElsewhere(c)
			}
		case lcAnswering, lcRelaying:
			if c.blocked && now.After(c.deadline) {
				c.a.Logger().Info("client cut: it took none of its response", "for", c.a.Config().EffectiveSendTimeout(), "client", c.ip)
				l.closeConn(c)
			}
		}
	}
}

// beginShutdown gives the listener back, closes idle connections and
// gives those that have sent nothing yet a grace period; the others close
// after their response.
func (l *evLoop) beginShutdown() {
	l.unlisten(nil)
	now := l.now
	for c := range l.conns {
		if c.state != lcWaiting {
			continue
		}
		if c.served > 0 && c.r == c.w {
			l.closeConn(c)
		} else if c.served == 0 {
			c.deadline = now.Add(newConnGrace)
		}
	}
}

// closeAll closes everything the loop has; the loop is done.
func (l *evLoop) closeAll() {
	l.mu.Lock()
	l.closed = true
	pending, lnfd := l.pending, l.lnNext
	l.pending, l.lnNext = nil, -1
	l.mu.Unlock()
	for _, c := range pending {
		unix.Close(c.fd)
		l.f.loopConnDone()
	}
	if lnfd >= 0 {
		unix.Close(lnfd)
		l.f.lnBack <- nil
	}
	l.unlisten(nil)
	for c := range l.conns {
		l.closeConn(c)
	}
	for _, ups := range l.idle {
		for _, up := range ups {
			l.closeUp(up)
		}
	}
	unix.Close(l.wake)
	l.ep.Close()
}

// event handles what epoll said about a client connection.
func (c *loopConn) event(l *evLoop, ev uint32) {
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.hup = true // no edge comes for the EOF after the bytes before it
	}
	switch c.state {
	case lcWaiting:
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.readable = true
			l.readRequest(c)
		}
	case lcAnswering:
		if ev&unix.EPOLLIN != 0 {
			c.readable = true
		}
		if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.blocked = false
			l.answer(c)
		}
	case lcRelaying:
		if ev&unix.EPOLLIN != 0 {
			c.readable = true
		}
		if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			// Gone, not just half-closed (that is EPOLLRDHUP alone): the
			// app may be silent for long (a stream of events), so now.
			l.closeConn(c)
			return
		}
		if ev&unix.EPOLLOUT != 0 && c.blocked {
			c.blocked = false
			l.relayOn(c)
		}
	default:
		// The next request, or the client going away, is for later.
		if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			c.readable = true
		}
	}
}

// watch has the loop's epoll instance watch c, if it does not yet: a
// connection the loop accepted is served without it as long as it need not
// wait for the client (its request in at once, its response taken whole),
// which spares a short connection an epoll_ctl and the event that a new
// socket is writable. Until then c.readable stays as the last read left
// it: a later request is read when the one before is answered, and an
// edge for what came meanwhile comes when c is added. false if it failed
// (c is closed).
func (l *evLoop) watch(c *loopConn) bool {
	if c.watched {
		return true
	}
	if err := epollAdd(l.epfd, c.fd); err != nil {
		l.closeConn(c)
		return false
	}
	c.watched = true
	return true
}

// equip gives c buffers for a request: those another connection shed, or
// new ones.
func (l *evLoop) equip(c *loopConn) {
	if c.hasBufs {
		return
	}
	if n := len(l.spare); n > 0 {
		b := l.spare[n-1]
		l.spare[n-1] = connBufs{}
		l.spare = l.spare[:n-1]
		c.in, c.out, c.resp = b.in, b.out, b.resp
	}
	if c.in == nil {
		c.in = make([]byte, frontReadBuffer)
	}
	c.hasBufs = true
	l.peakEquipped = max(l.peakEquipped, l.equipped.Add(1))
}

// shed takes c's buffers back, between requests or as c goes; in stays
// with c when a goroutine reads the rest of it (hand nil then).
func (l *evLoop) shed(c *loopConn) {
	if !c.hasBufs {
		return
	}
	l.spare = append(l.spare, connBufs{in: c.in, out: c.out[:0], resp: c.resp[:0]})
	c.in, c.out, c.resp = nil, nil, nil
	c.hasBufs = false
	l.equipped.Add(-1)
}

// trimSpare lets go, at most once per scanIdle, of the spare buffers
// beyond what the most connections served at once since last time needed.
func (l *evLoop) trimSpare(now time.Time) {
	if now.Sub(l.trimmed) < scanIdle {
		return
	}
	l.trimmed = now
	equipped := l.equipped.Load()
	if keep := int(l.peakEquipped - equipped); len(l.spare) > keep {
		clear(l.spare[keep:])
		l.spare = l.spare[:keep]
	}
	l.peakEquipped = equipped
}

// readRequest reads and serves the requests the client sent, until it
// has to wait.
func (l *evLoop) readRequest(c *loopConn) {
	c.reading = true
	defer func() { c.reading = false }()
	for c.state == lcWaiting {
		if c.r == c.w && c.readable {
			c.r, c.w = 0, 0
			l.equip(c)
			n, err := rawRead(c.fd, c.in)
			switch {
			case err == unix.EAGAIN:
				c.readable = false
			case err != nil || n == 0:
				l.closeConn(c) // closed, reset, or half-closed between requests
				return
			default:
				c.w = n
				c.readable = n == len(c.in) || c.hup
			}
		}
		if c.r == c.w {
			if l.f.shutting.Load() && c.served > 0 {
				l.closeConn(c)
				return
			}
			l.shed(c)
			timeout := l.idleTimeout
			if c.served == 0 {
				timeout = l.f.headerTimeout()
			}
			if !l.shutdown {
				c.deadline = l.now.Add(timeout)
			}
			l.watch(c)
			return
		}
		l.serveRequest(c)
	}
}

// serveRequest begins to serve the request at in[r:]: the loop sends it,
// or a goroutine gets the connection.
func (l *evLoop) serveRequest(c *loopConn) {
	buf := c.in[c.r:c.w]
	n := h1.HeadEnd(buf, 0)
	if n < 0 {
		// In parts, or longer than the buffer: a goroutine reads it,
		// with the slow path's timeouts and limits.
		l.startOver(c)
		return
	}
	h := &c.head
	if !h1.ParseRequest(buf[:n], h) {
		l.startOver(c)
		return
	}
	a := l.f.routeBytes(h.Host)
	if a == nil || h.ContentLength > int64(min(len(buf)-n, fastBodyMax)) || h.ContentLength > a.Config().RequestBuffer ||
		(h.Forwarded && trusted(a, c.ip)) {
		l.startOver(c) // 404, a body still to read, or headers to extend
		return
	}
	up := upstreamOf(a)
	if up.sockaddr() == nil {
		l.startOver(c)
		return
	}
	inst := a.TryAcquire()
	if inst == nil {
		l.startOver(c) // held there until the app is ready
		return
	}
	body := int(h.ContentLength)
	c.out = h1.AppendOutgoing(c.out[:0], buf[:n], h, c.ip)
	c.out = append(c.out, buf[n:n+body]...)
	c.headAt, c.headLen = c.r, n
	c.r += n + body
	c.a, c.inst, c.start = a, inst, l.now
	c.closeAfter, c.retried, c.sent = h.Close, false, 0
	c.status, c.toClient = 0, 0
	c.state = lcSending
	l.busy++
	if l.connect(c, up) {
		l.send(c)
	}
}

// connect gives c a connection to the app: a kept one, or a new one.
func (l *evLoop) connect(c *loopConn, up *httpUpstream) bool {
	gen := up.gen.Load()
	for ups := l.idle[up]; len(ups) > 0; {
		u := ups[len(ups)-1]
		ups = ups[:len(ups)-1]
		l.idle[up] = ups // kept even when empty: keep appends to it, allocating nothing
		if u.inst == c.inst && u.gen == gen && !u.eof && !u.hup && reusable(0, uintptr(u.fd)) {
			u.c, u.reused, u.buf = c, true, u.buf[:0]
			c.up = u
			return true
		}
		l.closeUp(u)
	}
	if fd := up.takeIdleFD(c.inst); fd >= 0 {
		if u, err := l.register(fd, up, c.inst, gen); err == nil {
			u.c, u.reused = c, true
			c.up = u
			return true
		}
	}
	u, err := l.dial(up, c.inst, gen)
	if err != nil {
		l.sendElsewhere(c)
		return false
	}
	u.c = c
	c.up = u
	return true
}

// dial opens a new connection to the app, without waiting for it.
func (l *evLoop) dial(up *httpUpstream, inst *activator.Instance, gen uint64) (*loopUp, error) {
	// A copy: connect(2) writes into it, and loops dial at once.
	var sa unix.Sockaddr
	family := unix.AF_INET
	switch v := up.sockaddr().(type) {
	case *unix.SockaddrInet4:
		c := *v
		sa = &c
	case *unix.SockaddrInet6:
		c := *v
		sa, family = &c, unix.AF_INET6
	case *unix.SockaddrUnix:
		c := *v
		sa, family = &c, unix.AF_UNIX
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if family != unix.AF_UNIX {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, err
	}
	return l.register(fd, up, inst, gen)
}

// register makes fd, a connection to the app, the loop's.
func (l *evLoop) register(fd int, up *httpUpstream, inst *activator.Instance, gen uint64) (*loopUp, error) {
	if err := epollAdd(l.epfd, fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	u := &loopUp{fd: fd, upstream: up, inst: inst, gen: gen, buf: (*upBufs.Get().(*[]byte))[:0]}
	l.setEnd(fd, u)
	return u, nil
}

// event handles what epoll said about a connection to an app.
func (u *loopUp) event(l *evLoop, ev uint32) {
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		u.hup = true
	}
	c := u.c
	if c == nil {
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 || (ev&unix.EPOLLIN != 0 && !u.quiet()) {
			l.dropIdle(u) // a kept connection the app closed, or wrote to unasked
		}
		return
	}
	switch c.state {
	case lcSending:
		if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			l.send(c)
		}
	case lcAwaiting:
		l.receive(c)
	case lcRelaying:
		c.relay.drained = false
		l.relayOn(c)
	}
}

// quiet reports whether a kept connection has nothing to read: an event
// may come late, for bytes of the last response, read already.
func (u *loopUp) quiet() bool { return quiet(uintptr(u.fd)) }

// send writes the request to the app.
func (l *evLoop) send(c *loopConn) {
	u := c.up
	// A connection still being made says EAGAIN to a write, and the
	// error of a failed one.
	for c.sent < len(c.out) {
		n, err := rawWrite(u.fd, c.out[c.sent:])
		if err == unix.EAGAIN {
			return // on EPOLLOUT
		}
		if err != nil {
			if c.sent > 0 {
				u.eof = true
				l.continueElsewhere(c) // reads the error there, as for any exchange
				return
			}
			l.sendFailed(c)
			return
		}
		c.sent += n
	}
	// The answer comes after the request, and with it an edge: no read
	// until then.
	c.state = lcAwaiting
}

// sendFailed handles a connection to the app that failed before any of the
// request went: a kept one once more on a new connection, as net/http's
// Transport does (the app most likely closed its kept connections, and
// the others too); otherwise a goroutine starts over with the request.
func (l *evLoop) sendFailed(c *loopConn) {
	u := c.up
	c.up = nil
	l.closeUp(u)
	if u.reused && !c.retried {
		c.retried = true
		l.dropAllIdle(u.upstream)
		if nu, err := l.dial(u.upstream, c.inst, u.upstream.gen.Load()); err == nil {
			nu.c, c.up = c, nu
			l.send(c)
			return
		}
	}
	l.sendElsewhere(c)
}

// sendElsewhere gives the request, not sent, to a goroutine, which tries
// again under the retry rules.
func (l *evLoop) sendElsewhere(c *loopConn) {
	l.release(c)
	c.r = c.headAt
	l.startOver(c)
}

// receive reads the app's response; it is passed on once whole.
func (l *evLoop) receive(c *loopConn) {
	u := c.up
	for !u.eof && len(u.buf) < cap(u.buf) {
		n, err := rawRead(u.fd, u.buf[len(u.buf):cap(u.buf)])
		if err == unix.EAGAIN {
			break
		}
		if err != nil || n == 0 {
			u.eof = true
			break
		}
		u.buf = u.buf[:len(u.buf)+n]
		if len(u.buf) < cap(u.buf) && !u.hup {
			break // a short read: nothing more for now
		}
	}
	if len(u.buf) == 0 {
		if u.eof {
			// Closed before answering: a kept connection's silent retry,
			// and otherwise the rules for a failed exchange, are the
			// goroutine's.
			l.continueElsewhere(c)
		}
		return
	}
	var r h1.Response
	from := 0
	for {
		n := h1.HeadEnd(u.buf[from:], 0)
		if n < 0 {
			if u.eof || len(u.buf) == cap(u.buf) {
				l.continueElsewhere(c) // a cut or long head: there
			}
			return
		}
		var ok bool
		c.resp, ok = h1.AppendResponseHead(c.resp[:0], u.buf[from:from+n], &r)
		if !ok {
			l.continueElsewhere(c)
			return
		}
		from += n
		if r.Status >= 200 {
			break
		}
		// 1xx interim responses are dropped, as net/http's Transport does.
	}
	if c.head.IsHead() {
		r.NoBody = true
	}
	body := int64(0)
	if !r.NoBody {
		switch {
		case r.Length > relayMax:
			l.continueElsewhere(c) // spliced there
			return
		case r.Chunked || r.BodyUntilClose() || r.Length > int64(cap(u.buf)-from):
			l.beginRelay(c, &r, from)
			return
		}
		body = r.Length
	}
	if int64(len(u.buf)-from) < body {
		if u.eof {
			l.continueElsewhere(c) // cut short: the client must see that
		}
		return
	}
	end := from + int(body)
	l.endHead(c, &r)
	c.resp = append(c.resp, u.buf[from:end]...)
	c.up = nil
	u.c = nil
	if r.KeepsConn() && end == len(u.buf) && !u.eof && !u.hup {
		l.keep(u)
	} else {
		l.closeUp(u)
	}
	l.release(c)
	c.written, c.wrote = 0, true // (a first wait starts the send timeout)
	c.state = lcAnswering
	l.answer(c)
}

// answer writes the response to the client, then goes on to the next
// request.
func (l *evLoop) answer(c *loopConn) {
	if l.writeClient(c, c.resp, l.closesNext(c)) {
		l.answered(c)
	}
}

// closesNext reports whether the client's connection is closed right
// after the response, with nothing of the client's left unread: the last
// write then says MSG_MORE, and the close sends it with the FIN, one
// segment where there were two. (With bytes unread, close resets the
// connection instead and drops what the kernel still holds: those writes
// go at once.)
func (l *evLoop) closesNext(c *loopConn) bool {
	if !c.closeAfter || c.readable {
		return false
	}
	if !c.watched && unread(c.fd) {
		// No edge told of it: the connection was not watched (watch).
		c.readable = true
		return false
	}
	return true
}

// unread reports whether bytes wait unread on the socket fd.
func unread(fd int) bool {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n > 0
}

// endHead counts the response whose head is in resp and ends the head,
// telling the client the connection closes after it if it must.
func (l *evLoop) endHead(c *loopConn, r *h1.Response) {
	c.a.CountResponse(r.Status)
	if r.BodyUntilClose() || c.closeAfter || l.f.shutting.Load() {
		c.closeAfter = true
		c.resp = append(c.resp, "Connection: close\r\n"...)
	}
	c.resp = append(c.resp, '\r', '\n')
	c.status, c.respHead = r.Status, len(c.resp)
}

// writeClient writes out[c.written:] to the client; false when it has to
// wait for the client's EPOLLOUT (send_timeout from the last write that
// took anything), or the client went away and the connection is closed.
// more says that more of the response follows at once: the kernel may
// then hold a tail shorter than a segment until the next write (MSG_MORE,
// as HAProxy sends), so that a long response leaves in fewer, fuller
// segments, each of which costs the loop a pass through loopback's
// receive path; uncork sends such a tail when the loop has to wait.
func (l *evLoop) writeClient(c *loopConn, out []byte, more bool) bool {
	// A Unix socket (no client IP) holds nothing back: no cork, and so no
	// uncork to fail with EOPNOTSUPP.
	more = more && c.ip != ""
	flags := uintptr(unix.MSG_NOSIGNAL)
	if more {
		flags |= unix.MSG_MORE
	}
	for c.written < len(out) {
		n, err := rawSend(c.fd, out[c.written:], flags)
		if err == unix.EAGAIN {
			c.blocked = true
			if c.wrote {
				c.deadline, c.wrote = l.now.Add(c.a.Config().EffectiveSendTimeout()), false
			}
			l.watch(c)
			return false
		}
		if err != nil {
			l.closeConn(c) // the exchange, if any, ends with it
			return false
		}
		c.written += n
		c.wrote = true
		c.corked = more
		c.toClient += int64(n)
	}
	return true
}

// uncork sends the tail a write with MSG_MORE left in the kernel: the loop
// waits for the app now, and the client must not wait with it. Setting
// TCP_NODELAY, on already, pushes what is pending (tcp(7)); a Unix socket
// holds nothing back and says EOPNOTSUPP.
func (l *evLoop) uncork(c *loopConn) {
	if c.corked {
		c.corked = false
		unix.SetsockoptInt(c.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
}

// answered goes on to the next request, the response being sent.
func (l *evLoop) answered(c *loopConn) {
	l.logAccess(c)
	c.served++
	c.state = lcWaiting
	if c.closeAfter {
		l.closeConn(c)
		return
	}
	if !c.reading {
		l.readRequest(c) // else readRequest goes on with the next one
	}
}

// beginRelay sends the head of a response that does not come whole at
// once (longer than the buffer, chunked, or until the app closes), with the
// body bytes read so far, and passes the rest on as it comes. The client's
// connection is cut if the app breaks the response halfway, as on the
// goroutine path.
func (l *evLoop) beginRelay(c *loopConn, r *h1.Response, from int) {
	u := c.up
	rs := &c.relay
	*rs = relayState{left: r.Length, chunked: r.Chunked, keep: r.KeepsConn()}
	if r.BodyUntilClose() {
		rs.left = -1
	}
	body := u.buf[from:]
	n, done, err := rs.take(body)
	if err != nil {
		l.continueElsewhere(c) // nothing sent yet: the goroutine's rules for a malformed response
		return
	}
	rs.done = done || (rs.left < 0 && !rs.chunked && u.eof)
	rs.keptBytes = n < len(body)
	l.endHead(c, r)
	c.resp = append(c.resp, body[:n]...)
	// receive read until a short read, or until the buffer was full.
	rs.drained = len(u.buf) < cap(u.buf) && !u.hup
	u.buf = u.buf[:0]
	c.written, c.wrote = 0, true
	if !l.watch(c) {
		return // (closed: it could not be watched while the app streams)
	}
	c.state = lcRelaying
	l.relaying++
	l.relayOn(c)
}

// take says how many of p, bytes the app sent after those already passed
// on, belong to the response, and whether they end it.
func (rs *relayState) take(p []byte) (n int, done bool, err error) {
	switch {
	case rs.chunked:
		return rs.chunks.Feed(p)
	case rs.left < 0:
		return len(p), false, nil // until the app closes
	}
	n = int(min(int64(len(p)), rs.left))
	rs.left -= int64(n)
	return n, rs.left == 0, nil
}

// relayOn writes what the client has not got yet, then reads on from the
// app, until one of them has to be waited for or the response is through.
func (l *evLoop) relayOn(c *loopConn) {
	u, rs := c.up, &c.relay
	for !c.blocked {
		out := c.resp
		if rs.fromUp {
			out = u.buf
		}
		if !l.writeClient(c, out, (!rs.done && !rs.drained) || (rs.done && l.closesNext(c))) {
			return // on the client's EPOLLOUT (a tail held back goes with the next write), or closed
		}
		if rs.done {
			l.endRelay(c)
			return
		}
		if rs.drained {
			return // on the app's next edge
		}
		u.buf = u.buf[:cap(u.buf)]
		n, err := rawRead(u.fd, u.buf)
		u.buf = u.buf[:0]
		switch {
		case err == unix.EAGAIN:
			rs.drained = true
			l.uncork(c)
			return
		case err != nil || n == 0:
			u.eof = true
			if rs.left < 0 && !rs.chunked && err == nil {
				// The end of a body read until the app closes: what out
				// held is written already (the write above), nothing
				// more comes.
				rs.done = true
				continue
			}
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			l.cutRelay(c, err)
			return
		}
		rs.drained = n < cap(u.buf) && !u.hup
		k, done, err := rs.take(u.buf[:n])
		if err != nil {
			l.cutRelay(c, err)
			return
		}
		rs.keptBytes = rs.keptBytes || k < n
		u.buf, rs.done, rs.fromUp, c.written = u.buf[:k], done, true, 0
	}
}

// endRelay finishes an exchange whose response went through: the app's
// connection is kept if it can serve another request.
func (l *evLoop) endRelay(c *loopConn) {
	u, rs := c.up, &c.relay
	c.up, u.c = nil, nil
	if rs.keep && !rs.keptBytes && !u.eof && !u.hup {
		u.buf = u.buf[:0]
		l.keep(u)
	} else {
		l.closeUp(u)
	}
	l.relaying--
	l.release(c)
	if !l.closesNext(c) {
		l.uncork(c) // (the last write was without MSG_MORE, unless it had nothing to send)
	}
	l.answered(c)
}

// cutRelay ends an exchange whose response the app broke halfway: the
// client's connection is cut, so that it cannot take a short body for a
// whole one, and the failure counts against the app.
func (l *evLoop) cutRelay(c *loopConn, err error) {
	c.a.ResponseCut(c.inst, string(c.head.Method), targetPath(c.head.Target), err)
	l.closeConn(c)
}

// logAccess logs the exchange of c, which ends: answered, or cut short.
func (l *evLoop) logAccess(c *loopConn) {
	a := c.a
	if !a.LogsAccess() {
		return
	}
	status, body := c.status, int64(0)
	if status == 0 {
		status = activator.StatusClientGone
	} else {
		body = max(0, c.toClient-int64(c.respHead))
	}
	h := &c.head
	a.LogAccess(activator.AccessRecord{
		Client: c.ip, Time: c.start, Duration: l.now.Sub(c.start),
		Method: h.Method, Target: h.Target, Proto: proto11, Referer: h.Referer, UserAgent: h.UserAgent,
		Status: status, Bytes: body, Attempts: 1,
	})
}

// release gives back the app's slot the request held.
func (l *evLoop) release(c *loopConn) {
	if c.inst != nil {
		c.a.Release(c.inst)
		c.inst = nil
		l.busy--
	}
}

// keep keeps u for the next request to its app.
func (l *evLoop) keep(u *loopUp) {
	ups := l.idle[u.upstream]
	if len(ups) >= maxIdleUpstream || u.upstream.retired.Load() {
		l.closeUp(u)
		return
	}
	l.idle[u.upstream] = append(ups, u)
}

// dropIdle closes a kept connection.
func (l *evLoop) dropIdle(u *loopUp) {
	ups := l.idle[u.upstream]
	for i, v := range ups {
		if v == u {
			ups = append(ups[:i], ups[i+1:]...)
			break
		}
	}
	l.idle[u.upstream] = ups
	l.closeUp(u)
}

// dropAllIdle closes the kept connections to an app.
func (l *evLoop) dropAllIdle(up *httpUpstream) {
	for _, u := range l.idle[up] {
		l.closeUp(u)
	}
	delete(l.idle, up)
}

func (l *evLoop) closeUp(u *loopUp) {
	l.forget(u.fd)
	rawClose(u.fd)
	b := u.buf[:0]
	upBufs.Put(&b)
	u.buf = nil
}

// forget unregisters fd, which is closed next.
func (l *evLoop) forget(fd int) {
	if fd < len(l.ends) {
		l.ends[fd] = nil
	}
}

// closeConn closes a client connection and whatever it had going.
func (l *evLoop) closeConn(c *loopConn) {
	if c.state != lcWaiting && c.state != lcGone {
		l.logAccess(c) // an exchange cut short
	}
	if c.up != nil {
		c.up.c = nil
		l.closeUp(c.up)
		c.up = nil
	}
	l.release(c)
	if c.state == lcRelaying {
		l.relaying--
	}
	c.state = lcGone
	delete(l.conns, c)
	l.forget(c.fd)
	rawClose(c.fd)
	l.shed(c)
	l.f.loopConnDone()
}

// startOver gives the client connection to a goroutine, with the request
// at in[r:] not yet sent: the goroutine serves it from the start.
func (l *evLoop) startOver(c *loopConn) {
	fc := l.leave(c, c.in[c.r:c.w], outOfFDs503)
	c.in = nil // fc reads the rest of it
	l.shed(c)
	if fc == nil {
		return
	}
	// The head's time runs on: from the connection for a first request,
	// from now (its first bytes) for a later one.
	fc.headDeadline = c.deadline
	if c.served > 0 {
		fc.headDeadline = l.now.Add(l.f.headerTimeout())
	}
	fc.served = c.served
	l.f.goServe(fc)
}

// continueElsewhere gives the client connection and the exchange in
// progress to a goroutine: the request went to the app (all or part), and
// the app's bytes read so far are read again there.
func (l *evLoop) continueElsewhere(c *loopConn) {
	u, a, inst, start := c.up, c.a, c.inst, c.start
	c.up, c.inst = nil, nil
	l.busy--
	u.c = nil
	fc := l.leave(c, c.in[c.r:c.w], outOfFDs502)
	upc := l.toConn(u.fd, nil)
	if fc == nil || upc == nil {
		// Out of descriptors: the request went to the app, and is not
		// sent again; the client gets a 502 saying why.
		if upc != nil {
			upc.Close()
		}
		if fc != nil {
			conn := fc.c
			if pc, ok := conn.(*prefixConn); ok {
				conn = pc.Conn
			}
			if sc, ok := conn.(syscall.Conn); ok {
				if rc, err := sc.SyscallConn(); err == nil {
					rc.Control(func(fd uintptr) { lastWord(int(fd), outOfFDs502) })
				}
			}
			fc.close()
			l.f.loopConnDone()
		}
		a.Release(inst)
		c.in = nil
		l.shed(c)
		return
	}
	uc := &upConn{c: upc, inst: inst}
	// Big enough to take all of u.buf at its first read: once its buffer
	// is empty, the goroutine splices from upc itself (frontConn.copyN).
	uc.br = bufio.NewReaderSize(&prefixConn{Conn: upc, rest: u.buf}, max(upReadBuffer, len(u.buf)))
	if sc, ok := upc.(syscall.Conn); ok {
		uc.raw, _ = sc.SyscallConn()
	}
	uc.reused = u.reused // the retry rules for a kept connection apply
	fc.served = c.served
	fc.out = append(fc.out[:0], c.out...)
	head := append([]byte(nil), c.in[c.headAt:c.headAt+c.headLen]...)
	h1.ParseRequest(head, &fc.head)
	q := &fc.rq
	q.a, q.held, q.resume, q.unsent = a, inst, uc, len(c.out)-c.sent
	c.in = nil // fc reads the rest of it
	l.shed(c)
	fc.start = start
	l.f.goServe(fc)
}

// leave takes the client connection out of the loop and makes it a
// frontConn that reads rest first; nil if that failed (rouse is out of
// descriptors: the connection is then closed, after answer, a response
// saying so).
func (l *evLoop) leave(c *loopConn, rest []byte, answer string) *frontConn {
	l.f.leftLoops.Add(1)
	c.state = lcGone
	delete(l.conns, c)
	conn := l.toConn(c.fd, func(fd int) { lastWord(fd, answer) })
	if conn == nil {
		l.f.loopConnDone()
		return nil
	}
	if len(rest) > 0 {
		conn = &prefixConn{Conn: conn, rest: rest}
	}
	return newFrontConn(l.f, conn)
}

// toConn makes fd, registered with the loop, a net.Conn in Go's netpoller
// instead; fd is closed. If that fails (rouse is out of descriptors: the
// net.Conn's is a copy), fail, if not nil, has a last word on fd, and nil
// is returned.
func (l *evLoop) toConn(fd int, fail func(fd int)) net.Conn {
	l.forget(fd)
	// Before the close: epoll drops a descriptor only when every one of
	// its file is closed, and the net.Conn's is a copy.
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, &unix.EpollEvent{})
	f := os.NewFile(uintptr(fd), "")
	conn, err := net.FileConn(f)
	if err != nil {
		if fail != nil {
			fail(fd)
		}
		l.f.fdWarn.warn(l.f.log, "event loop: a connection could not go to a goroutine, and is closed", err)
	}
	f.Close()
	return conn
}

// outOfFDs503 is the answer to a request rouse has no descriptor to
// serve with, not sent to the app: it may be sent again. outOfFDs502 is
// the answer to one that went to the app, whose response rouse has no
// descriptor to pass on.
var (
	outOfFDs503 = ownAnswer("503 Service Unavailable", "Retry-After: 1\r\n",
		"503 Service Unavailable: rouse is out of file descriptors; try again\n")
	outOfFDs502 = ownAnswer("502 Bad Gateway", "",
		"502 Bad Gateway: rouse ran out of file descriptors while the app answered\n")
)

// ownAnswer is a whole response of rouse's own, after which the
// connection closes.
func ownAnswer(status, header, text string) string {
	return "HTTP/1.1 " + status + "\r\nContent-Type: text/plain; charset=utf-8\r\n" + header +
		"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(text)) + "\r\n\r\n" + text
}

// lastWord sends answer on the client's connection fd, as far as its
// socket buffer takes it at once, and its FIN, then reads off what the
// client sent meanwhile (a body, a pipelined request, some of it): the
// close that follows would reset the connection over unread bytes, and a
// reset can drop the answer.
func lastWord(fd int, answer string) {
	rawSend(fd, []byte(answer), unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
	unix.Shutdown(fd, unix.SHUT_WR)
	var buf [4 << 10]byte
	for range 16 {
		if n, err := rawRead(fd, buf[:]); err != nil || n == 0 {
			return
		}
	}
}

// prefixConn is a connection whose first bytes were read already.
type prefixConn struct {
	net.Conn
	rest []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite as handedConn expects of a TCP connection.
func (c *prefixConn) CloseWrite() error { return halfClose(c.Conn) }

func rawRead(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawClose closes a socket of the loop: it does not block (no SO_LINGER).
func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// epollAdd watches fd, a socket of the loop, with the loop's epoll
// instance epfd: edge-triggered, for reading and writing.
func epollAdd(epfd, fd int) error {
	ev := unix.EpollEvent{Events: loopIOFlags, Fd: int32(fd)}
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), unix.EPOLL_CTL_ADD, uintptr(fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// rawSend is send(2) with flags, as a raw system call.
func rawSend(fd int, p []byte, flags uintptr) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), flags, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// sockaddr is the app's address for the event loop's connect(2); nil when
// it is not a literal address (a name is left to net's resolver).
func (up *httpUpstream) sockaddr() unix.Sockaddr {
	up.saOnce.Do(func() {
		switch up.network {
		case "unix":
			up.sa = &unix.SockaddrUnix{Name: up.address}
		case "tcp", "tcp4", "tcp6":
			ap, err := netip.ParseAddrPort(up.address)
			if err != nil {
				return
			}
			if ip := ap.Addr().Unmap(); ip.Is4() {
				up.sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
			} else {
				up.sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16()}
			}
		}
	})
	return up.sa
}

// loopCount is how many event loops a front may run: one per P.
func loopCount() int { return runtime.GOMAXPROCS(0) }
