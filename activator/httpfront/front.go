package httpfront

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/h1"
	"github.com/rouse-dev/rouse/listeners"
)

// HTTPFront serves HTTP/1.1 on one listener and routes every request to
// one of the http apps sharing that address, by Host. Close it before the
// apps it routes to.
type HTTPFront struct {
	ln     net.Listener
	srv    *http.Server           // serves what the front does not serve itself
	handed *handedListener        // how connections reach srv
	routes atomic.Pointer[routes] // replaced whole on reload
	log    *slog.Logger
	// accessLog takes the records of the requests the front answers
	// itself, for no app (SetAccessLog); nil: not logged.
	accessLog func(activator.AccessRecord)
	loopsOn   atomic.Bool // connections go to event loops
	// handedOff counts the connections given to srv; leftLoops those an
	// event loop gave to a goroutine.
	handedOff, leftLoops atomic.Int64

	mu        sync.Mutex
	closed    bool                    // Close began: no new handler or connection may join
	conns     map[*frontConn]struct{} // served by the front itself, on goroutines
	loops     []*evLoop               // made as connections come, up to loopCount
	nextLoop  int
	loopConns int      // served by the loops
	lnFile    *os.File // the listener, once the loops accept on it
	// lnBack is where the loop that accepts on a copy of lnFile says it
	// gave it back: nil, or the error accept failed with.
	lnBack chan error
	fdWarn rateWarner // out of descriptors in a loop
	// The event loops' copy of srv's IdleTimeout, read as each loop is
	// made (under mu).
	loopIdleTimeout time.Duration
	httpConns       int            // handed to srv, not yet closed or hijacked
	changed         chan struct{}  // closed and replaced when conns or httpConns drop
	handlers        sync.WaitGroup // requests srv is serving, also hijacked ones
	connWG          sync.WaitGroup // goroutines of conns
	shutting        atomic.Bool    // Shutdown or Close began
	stop            chan struct{}  // closed when shutting is set
	stopOnce        sync.Once
	started         atomic.Bool
	serving         sync.WaitGroup // Serve's goroutines
	accepting       chan struct{}  // closed when the accept loop returned
}

// routes is a front's Host table.
type routes struct {
	apps     []*activator.App
	exact    map[string]*activator.App
	wildcard []hostRoute    // "*.example.com" as suffix ".example.com", longest first
	fallback *activator.App // the app without hosts or with "*", if any
}

type hostRoute struct {
	suffix string
	app    *activator.App
}

func newRoutes(apps []*activator.App, addr net.Addr) (*routes, error) {
	r := &routes{apps: apps, exact: make(map[string]*activator.App)}
	for _, a := range apps {
		if a.Config().Mode != activator.ModeHTTP {
			return nil, fmt.Errorf("app %s: mode %s cannot be served by an HTTP front", a.Config().Name, a.Config().Mode)
		}
		// An app without hosts, or with the catch-all "*", gets every
		// request no other app claims; an address has one such app.
		if len(a.Config().Hosts) == 0 || slices.Contains(a.Config().Hosts, "*") {
			if r.fallback != nil {
				return nil, fmt.Errorf("apps %s and %s both take every host on %s (no hosts, or \"*\")", r.fallback.Config().Name, a.Config().Name, addr)
			}
			r.fallback = a
		}
		for _, h := range a.Config().Hosts {
			h = strings.ToLower(h)
			if h == "*" {
				continue
			}
			if suffix, ok := strings.CutPrefix(h, "*"); ok {
				r.wildcard = append(r.wildcard, hostRoute{suffix, a})
				continue
			}
			r.exact[h] = a
		}
	}
	sortRoutes(r.wildcard)
	return r, nil
}

// NewHTTPFront returns a front for apps on ln; at most one of them may have
// no hosts (it gets every request no other app claims).
func NewHTTPFront(ln net.Listener, apps []*activator.App, log *slog.Logger) (*HTTPFront, error) {
	if log == nil {
		log = slog.Default()
	}
	f := &HTTPFront{ln: ln, log: log, accepting: make(chan struct{}), stop: make(chan struct{}),
		conns: make(map[*frontConn]struct{}), changed: make(chan struct{}), handed: newHandedListener(ln.Addr()),
		lnBack: make(chan error, 1)}
	if err := f.SetApps(apps); err != nil {
		return nil, err
	}
	f.srv = &http.Server{
		Handler: f,
		// For the heads of later requests on a connection handed to srv
		// (the first has what was left of headerTimeout: handedConn).
		ReadHeaderTimeout: f.headerTimeout(),
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10, // beyond: 431
		// OPTIONS * is the app's to answer, as on the front's own paths.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, handedConnKey{}, c)
		},
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				f.mu.Lock()
				f.httpConns--
				f.changedLocked()
				f.mu.Unlock()
			}
		},
	}
	f.loopIdleTimeout = f.srv.IdleTimeout
	return f, nil
}

// SetAccessLog has the requests the front answers itself, for no app (a
// Host no app takes, an invalid Host, ambiguous framing), logged through
// fn with an empty AccessRecord.App; call it before Serve.
func (f *HTTPFront) SetAccessLog(fn func(activator.AccessRecord)) { f.accessLog = fn }

// logOwn logs a request the front answered itself with status and a body
// of n bytes, its head read at start.
func (f *HTTPFront) logOwn(ip string, start time.Time, method, target, proto, referer, userAgent []byte, status int, n int64) {
	if f.accessLog == nil {
		return
	}
	f.accessLog(activator.AccessRecord{Mode: activator.ModeHTTP, Client: ip, Time: start, Duration: time.Since(start),
		Method: method, Target: target, Proto: proto, Referer: referer, UserAgent: userAgent, Status: status, Bytes: n})
}

// headerTimeout is how long a client has for a request head, from its
// first byte (or from the connection, for the first request): the longest
// header_timeout of the front's apps, as the head says which app it is for.
func (f *HTTPFront) headerTimeout() time.Duration {
	d := time.Duration(0)
	for _, a := range f.routes.Load().apps {
		d = max(d, a.Config().EffectiveHeaderTimeout())
	}
	if d == 0 {
		d = activator.DefaultHeaderTimeout // no apps
	}
	return d
}

func sortRoutes(r []hostRoute) {
	for i := 1; i < len(r); i++ {
		for j := i; j > 0 && len(r[j].suffix) > len(r[j-1].suffix); j-- {
			r[j], r[j-1] = r[j-1], r[j]
		}
	}
}

// Serve starts serving in the background and returns at once.
func (f *HTTPFront) Serve() {
	f.started.Store(true)
	f.serving.Add(2)
	go func() {
		defer f.serving.Done()
		f.srv.Serve(f.handed) // returns once Close closed f.handed
	}()
	go func() {
		defer f.serving.Done()
		defer close(f.accepting)
		f.acceptLoop()
	}()
}

// acceptLoop accepts connections until the listener is closed. Those of a
// TCP or Unix listener go to the event loops.
func (f *HTTPFront) acceptLoop() {
	if file := f.takeListener(); file != nil {
		rc, err := file.SyscallConn()
		if err != nil {
			f.log.Error("accept", "addr", f.ln.Addr().String(), "err", err)
			return
		}
		rc.Control(func(fd uintptr) {
			// As net's accept does, but once: accepted sockets inherit it.
			// No TCP keep-alive (see listeners.Options).
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			// A connection is accepted once its first bytes came (or after
			// a second without): the loop reads the request right away,
			// with no wait in between, as nginx's "deferred" and
			// HAProxy's "defer-accept" have it.
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 1)
		})
		f.loopsOn.Store(true)
		f.acceptToLoops(rc) // until file is closed
		return
	}
	if f.shutting.Load() {
		return
	}
	warn := activator.NewAcceptWarner(f.log)
	for {
		c := activator.Accept(f.ln, warn, f.pause)
		if c == nil {
			return
		}
		fc := newFrontConn(f, c)
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			fc.close()
			return
		}
		f.conns[fc] = struct{}{}
		f.connWG.Add(1)
		f.mu.Unlock()
		go fc.serve()
	}
}

// takeListener returns a copy of the listening socket for the event loops
// to accept on, or nil: the listener is neither TCP nor Unix, or the front
// shuts down.
func (f *HTTPFront) takeListener() *os.File {
	var file *os.File
	var err error
	switch ln := f.ln.(type) {
	case *net.TCPListener:
		if file, err = ln.File(); err == nil {
			// Out of Go's netpoller, where it would wake Go for each
			// connection too: file is the listener from now on.
			ln.Close()
		}
	case *net.UnixListener:
		// Left open: its Close, at Shutdown, removes the socket's path
		// if rouse made it. A connection readies it in the netpoller
		// along with file: one wake-up, two events.
		file, err = ln.File()
	default:
		return nil
	}
	if err != nil {
		f.log.Warn("accept: event loops off", "addr", f.ln.Addr().String(), "err", err)
		return nil
	}
	f.mu.Lock()
	f.lnFile = file
	stopping := f.shutting.Load() // beginShutdown came before: it did not see file
	f.mu.Unlock()
	if stopping {
		file.Close()
		return nil
	}
	return file
}

// acceptToLoops has an event loop accept the listener's connections
// itself, as they come, and reads each request right away: a connection
// handed from an accepting goroutine to a loop cost both a wake-up. While
// no loop accepts (the front is unused, and its loops ended), it waits for
// a connection to come, then gives the listener to a loop until the loop
// gives it back: it ended, the front shuts down, or accept failed (then
// after a pause that grows while it keeps failing, as the apps' accept
// loops have it).
func (f *HTTPFront) acceptToLoops(rc syscall.RawConn) {
	warn := activator.NewAcceptWarner(f.log)
	var pause time.Duration
	for !f.shutting.Load() {
		if err := rc.Read(listeners.Queued); err != nil {
			return // closed: the front shuts down
		}
		l := f.pickLoop(false)
		if l == nil {
			if f.shutting.Load() {
				return
			}
			// No loop could be made (out of descriptors: an epoll
			// instance and an eventfd): as a failed accept, after a
			// pause.
			pause = activator.AcceptFailed(warn, f.ln.Addr(), errNoLoop, pause)
			if !f.pause(pause) {
				return
			}
			continue
		}
		fd := dupFD(rc)
		if fd < 0 {
			if !f.pause(time.Second) { // out of descriptors
				return
			}
			continue
		}
		if !l.acceptOn(fd) {
			unix.Close(fd) // it ended meanwhile: another
			f.loopEnded(l)
			continue
		}
		var err error
		select {
		case err = <-f.lnBack:
		case <-f.stop:
			l.command(cmdUnlisten)
			<-f.lnBack // its last connection is counted now
			return
		}
		if err == nil {
			activator.AcceptWorked(warn, f.ln.Addr())
			pause = 0
			continue
		}
		pause = activator.AcceptFailed(warn, f.ln.Addr(), err, pause)
		if !f.pause(pause) {
			return
		}
	}
}

// rateWarner says a warning that may come again and again (rouse is out
// of descriptors) at most once per warnEvery, with how often it came.
type rateWarner struct {
	mu    sync.Mutex
	last  time.Time
	times int
}

const warnEvery = 10 * time.Second

func (w *rateWarner) warn(log *slog.Logger, msg string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.times++
	if now := time.Now(); w.last.IsZero() || now.Sub(w.last) >= warnEvery {
		log.Warn(msg, "err", err, "times", w.times, "per", warnEvery)
		w.last, w.times = now, 0
	}
}

// errNoLoop is why acceptToLoops waits when no event loop could be made.
var errNoLoop = errors.New("no event loop could be made to accept on")

// toLoop gives c to a loop; false if none would take it.
func (f *HTTPFront) toLoop(c rawAccepted) bool { return f.giveLoop(c, f.loopFor()) }

// giveLoop gives c to l, picked for it by loopFor, or to another loop if l
// ended meanwhile; false if none would take it.
func (f *HTTPFront) giveLoop(c rawAccepted, l *evLoop) bool {
	for l != nil {
		if l.add(c) {
			return true
		}
		// The loop ended for want of connections meanwhile: another.
		f.loopConnDone()
		f.loopEnded(l)
		l = f.loopFor()
	}
	return false
}

// loopEnded forgets a loop that ended.
func (f *HTTPFront) loopEnded(l *evLoop) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.loops {
		if m == l {
			f.loops = append(f.loops[:i], f.loops[i+1:]...)
			return
		}
	}
}

// loopFor counts a new connection and picks the loop for it (see
// pickLoop).
func (f *HTTPFront) loopFor() *evLoop { return f.pickLoop(true) }

// pickLoop picks a loop, the next in turn, and counts a new connection if
// conn; nil when the front is closed or no loop could be made. It makes a
// loop while there are fewer than loopCount, and as many connections as
// loops (or none): a loop is made for connections to share out, not for
// the listener alone.
func (f *HTTPFront) pickLoop(conn bool) *evLoop {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	if n := len(f.loops); n == 0 || n < loopCount() && f.loopConns >= n {
		l, err := newEvLoop(f)
		if err == nil {
			f.loops = append(f.loops, l)
		} else if len(f.loops) == 0 {
			f.log.Warn("event loop", "err", err)
			return nil
		}
	}
	f.nextLoop = (f.nextLoop + 1) % len(f.loops)
	if conn {
		f.loopConns++
	}
	return f.loops[f.nextLoop]
}

// loopConnDone forgets a connection a loop closed.
func (f *HTTPFront) loopConnDone() {
	f.mu.Lock()
	f.loopConns--
	if f.shutting.Load() {
		f.changedLocked()
	}
	f.mu.Unlock()
}

// goServe serves on a goroutine a connection a loop gave up.
func (f *HTTPFront) goServe(fc *frontConn) {
	f.mu.Lock()
	f.loopConns--
	if f.closed {
		f.changedLocked()
		f.mu.Unlock()
		fc.abandon()
		return
	}
	f.conns[fc] = struct{}{}
	f.connWG.Add(1)
	f.mu.Unlock()
	go fc.serve()
}

// connCount is how many connections the front serves itself.
func (f *HTTPFront) connCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns) + f.loopConns
}

// rawAccepted is a connection accepted for an event loop.
type rawAccepted struct {
	fd     int
	ip     string
	served int // requests served on it before
}

// rawAccept is accept4(2) on the listening socket ln, as a raw system call
// (it does not block), without the getsockopt(SO_PROTOCOL) x/sys/unix
// makes on each to tell IPv4 from L2TP.
func rawAccept(ln int, ips *clientIPs) (fd int, ip string, err error) {
	var sa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(ln), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, "", e
	}
	return int(r), ips.of(&sa), nil
}

// clientIPs gives the text of a client's address, allocating it only when
// it is not the address of the previous connection: those often come from
// one address (a proxy in front, a load generator).
type clientIPs struct {
	last     netip.Addr
	lastText string
}

func (c *clientIPs) of(sa *unix.RawSockaddrAny) string {
	var ip netip.Addr
	switch sa.Addr.Family {
	case unix.AF_INET:
		ip = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr)
	case unix.AF_INET6:
		ip = netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(sa)).Addr).Unmap()
	default:
		return ""
	}
	if ip != c.last {
		c.last, c.lastText = ip, ip.String()
	}
	return c.lastText
}

// pause waits d, or less when the front shuts down; it reports whether to
// go on.
func (f *HTTPFront) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-f.stop:
		return false
	}
}

// connDone forgets a connection whose goroutine returns.
func (f *HTTPFront) connDone(fc *frontConn) {
	f.mu.Lock()
	delete(f.conns, fc)
	if f.shutting.Load() {
		f.changedLocked() // Shutdown waits for the count to drop
	}
	f.mu.Unlock()
	f.connWG.Done()
}

// handOff gives a connection to net/http's server.
func (f *HTTPFront) handOff(c net.Conn) {
	f.handedOff.Add(1)
	f.mu.Lock()
	f.httpConns++ // now, so that Shutdown cannot miss it on its way
	f.mu.Unlock()
	if !f.handed.give(c) {
		c.Close()
		f.mu.Lock()
		f.httpConns--
		f.changedLocked()
		f.mu.Unlock()
	}
}

func (f *HTTPFront) changedLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// SetApps replaces the apps the front routes to, at once: a request is
// routed by the old table or the new one, never by neither. Safe to call
// while serving.
func (f *HTTPFront) SetApps(apps []*activator.App) error {
	r, err := newRoutes(apps, f.ln.Addr())
	if err != nil {
		return err
	}
	for _, a := range apps {
		a.AttachUpstream(newHTTPUpstream)
	}
	f.routes.Store(r)
	return nil
}

// Apps returns the apps the front routes to.
func (f *HTTPFront) Apps() []*activator.App { return f.routes.Load().apps }

// Addr is the address the front listens on.
func (f *HTTPFront) Addr() net.Addr { return f.ln.Addr() }

// route picks the app for a Host header value.
func (f *HTTPFront) route(host string) *activator.App {
	r := f.routes.Load()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if a, ok := r.exact[host]; ok {
		return a
	}
	for _, w := range r.wildcard {
		if strings.HasSuffix(host, w.suffix) && len(host) > len(w.suffix) {
			return w.app
		}
	}
	return r.fallback
}

// routeBytes is route for the front's own parser, without allocating when
// the address has one app and no hosts.
func (f *HTTPFront) routeBytes(host []byte) *activator.App {
	if r := f.routes.Load(); len(r.exact) == 0 && len(r.wildcard) == 0 {
		return r.fallback
	}
	return f.route(string(host))
}

// ServeHTTP routes one request.
func (f *HTTPFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		panic(http.ErrAbortHandler) // read as the front closed: nobody will wait for it
	}
	f.handlers.Add(1)
	f.mu.Unlock()
	defer f.handlers.Done()
	if !h1.ValidHost(r.Host) && (r.Host != "" || r.ProtoAtLeast(1, 1)) {
		// (An absolute-form target's host: net/http checks only the
		// Host header.) It would be routed, and become X-Forwarded-Host.
		w.Header().Set("Connection", "close")
		f.answerOwn(w, r, http.StatusBadRequest, fmt.Sprintf("400 Bad Request: rouse: invalid host %q\n", r.Host))
		return
	}
	a := f.route(r.Host)
	if a == nil {
		w.Header().Set("Cache-Control", "no-store")
		f.answerOwn(w, r, http.StatusNotFound, fmt.Sprintf("404 Not Found: rouse: no app for host %q on %s\n", r.Host, f.ln.Addr()))
		return
	}
	serveNet(a, w, r)
}

// answerOwn answers r with status and text, for no app, and logs it.
func (f *HTTPFront) answerOwn(w http.ResponseWriter, r *http.Request, status int, text string) {
	start := time.Now()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	n, _ := io.WriteString(w, text)
	proto := proto11
	if !r.ProtoAtLeast(1, 1) {
		proto = proto10
	}
	f.logOwn(activator.ClientIP(r.RemoteAddr), start, []byte(r.Method), []byte(r.RequestURI), proto,
		[]byte(r.Header.Get("Referer")), []byte(r.Header.Get("User-Agent")), status, int64(n))
}

// Shutdown stops accepting and waits, until ctx ends, for every accepted
// connection to be done: a request being served is answered, with
// Connection: close; a connection with no request yet gets a second to send
// one; idle keep-alive connections are closed. The apps' own Close cuts
// the rest.
func (f *HTTPFront) Shutdown(ctx context.Context) {
	f.beginShutdown()
	// Not f.srv.Shutdown: it drops a request it reads once shutting down
	// (golang/go#65805). Without keep-alives, each connection closes after
	// the request it has.
	f.srv.SetKeepAlivesEnabled(false)
	if f.started.Load() {
		<-f.accepting // a connection it accepted last is counted now
	}
	f.mu.Lock()
	for fc := range f.conns {
		fc.shutdownDeadline()
	}
	for _, l := range f.loops {
		l.command(cmdShutdown)
	}
	f.mu.Unlock()
	for {
		f.mu.Lock()
		n, ch := len(f.conns)+f.loopConns+f.httpConns, f.changed
		f.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// Quiesce makes the front's listener complete no new connection and waits
// for the accept loop to take those queued (listeners.Quiesce): the front
// is removed for good.
func (f *HTTPFront) Quiesce() {
	f.mu.Lock()
	var sc syscall.Conn
	if f.lnFile != nil {
		sc = f.lnFile // the loops accept on it; f.ln may be closed
	} else if c, ok := f.ln.(syscall.Conn); ok {
		sc = c
	}
	f.mu.Unlock()
	if sc == nil {
		return
	}
	if err := listeners.Quiesce(sc, activator.QuiesceWait); err != nil {
		f.log.Warn("removing the front: its queued connections may be reset", "addr", f.ln.Addr().String(), "err", err)
	}
}

func (f *HTTPFront) beginShutdown() {
	f.shutting.Store(true)
	f.stopOnce.Do(func() { close(f.stop) })
	f.ln.Close()
	f.mu.Lock()
	if f.lnFile != nil {
		f.lnFile.Close()
	}
	f.mu.Unlock()
}

// Close closes every connection and returns once every request handler,
// including those of upgraded connections, has returned.
func (f *HTTPFront) Close() {
	f.mu.Lock()
	f.closed = true
	loops := f.loops
	f.mu.Unlock()
	f.beginShutdown()
	for _, l := range loops {
		l.close() // what a loop gives up from now on is closed: f.closed
	}
	f.mu.Lock()
	conns := make([]*frontConn, 0, len(f.conns))
	for fc := range f.conns {
		conns = append(conns, fc)
	}
	f.mu.Unlock()
	for _, fc := range conns {
		fc.raw.Close()
	}
	f.handed.Close()
	f.srv.Close()
	if !f.started.Load() {
		return
	}
	f.serving.Wait()
	f.connWG.Wait()
	f.handlers.Wait()
}
