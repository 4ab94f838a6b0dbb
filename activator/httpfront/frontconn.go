package httpfront

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/h1"
)

// The front serves plain HTTP/1.1 requests itself, with its own keep-alive
// connections to the app: with net/http's server and Transport, every
// request crosses four goroutines, which costs more than the proxying. On a
// TCP or Unix address an event loop (loop.go) serves what it can finish at
// once; frontConn serves a connection on a goroutine: on other listeners,
// and for what a loop leaves (a held request, a head or body in parts, a
// slow or large response), after which the connection goes back to a
// loop. A request the front does not serve itself (see h1.ParseRequest),
// and every later one on its connection, goes to net/http's server, with
// nothing read off the connection lost and the head's deadline kept
// (handedConn); one whose framing is ambiguous does not (h1.AmbiguousFraming).
// The rules all paths share, and their owners, are in doc.go.

const (
	frontReadBuffer  = 8 << 10  // the longest request head served here
	frontWriteBuffer = 8 << 10  // response bytes gathered per write
	fastBodyMax      = 64 << 10 // larger request bodies go to net/http (streamed)
	// watchAfter is how long an exchange waits for the app before it
	// watches the client too, to give up when the client goes away.
	watchAfter = 50 * time.Millisecond
	// newConnGrace is how long a shutdown waits for the first request of
	// a connection that has sent none yet.
	newConnGrace = time.Second
)

// Connection states, for a graceful shutdown.
const (
	connNew    = iota // no request yet: its first one is still served
	connActive        // reading or serving a request
	connIdle          // between requests: closed by a shutdown
)

var (
	readerPool   = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, frontReadBuffer) }}
	writerPool   = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, frontWriteBuffer) }}
	aLongTimeAgo = time.Unix(1, 0)
)

// frontConn is one client connection the front serves itself.
type frontConn struct {
	f      *HTTPFront
	raw    net.Conn // the connection, also once handed off or closed
	c      net.Conn // nil once handed off or closed
	br     *bufio.Reader
	bw     *bufio.Writer
	ip     string // the client's, "" on a unix socket
	ctx    context.Context
	cancel context.CancelFunc // the client went away
	state  atomic.Int32

	served int // requests served before, by an event loop
	// headDeadline is when the head of the request being read must be
	// whole: header_timeout from its first byte, or from the connection
	// for the first request; zero between requests.
	headDeadline time.Time
	start        time.Time // of the request an event loop began (rq.held)
	closeAfter   bool      // the request or response said Connection: close
	cut          bool      // the response broke off: close without flushing
	rq           rawRequest
	head         h1.Request
	out          []byte // the request as sent to the app
	resp         []byte // a response head from the app
	line         []byte
	// For the access log: the status of the response being sent, the
	// bytes written to the client so far, and where the body began.
	status         int
	sent, bodyFrom int64
}

func newFrontConn(f *HTTPFront, c net.Conn) *frontConn {
	fc := &frontConn{f: f, raw: c, c: c}
	fc.br = readerPool.Get().(*bufio.Reader)
	fc.br.Reset(c)
	fc.bw = writerPool.Get().(*bufio.Writer)
	fc.bw.Reset(fc)
	if t, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		fc.ip = t.IP.String()
	}
	fc.rq.fc = fc
	return fc
}

// serve serves the connection's requests until it closes or one of them
// has to go to net/http.
func (fc *frontConn) serve() {
	f := fc.f
	defer f.connDone(fc)
	fc.ctx, fc.cancel = context.WithCancel(context.Background())
	defer fc.cancel()
	served := fc.served
	if a := fc.rq.a; fc.rq.held != nil {
		// An exchange an event loop began.
		fc.state.Store(connActive)
		if !fc.serveRequest(a, fc.start) || fc.closeAfter || f.shutting.Load() {
			fc.close()
			return
		}
		served++
		if fc.backToLoop(served) {
			return
		}
	}
	for ; ; served++ {
		if served > 0 {
			fc.state.Store(connIdle)
			if f.shutting.Load() && fc.br.Buffered() == 0 {
				fc.close()
				return
			}
			fc.c.SetReadDeadline(time.Now().Add(f.srv.IdleTimeout))
		} else {
			if fc.headDeadline.IsZero() {
				fc.headDeadline = time.Now().Add(f.headerTimeout())
			}
			fc.c.SetReadDeadline(fc.headDeadline)
		}
		if f.shutting.Load() {
			// Set after Shutdown's, or Shutdown's came after this.
			fc.shutdownDeadline()
		}
		if _, err := fc.br.Peek(1); err != nil {
			fc.close()
			return
		}
		fc.state.Store(connActive)
		start := time.Now()
		n, ok := fc.readHead(served > 0)
		if n < 0 {
			fc.close()
			return
		}
		var a *activator.App
		if ok {
			if head, _ := fc.br.Peek(n); h1.AmbiguousFraming(head) {
				fc.reject(n, start, h1.AmbiguousFramingText)
				return
			}
			a, ok = fc.simple(n)
		}
		if !ok {
			fc.handOff()
			return
		}
		if !fc.serveOne(a, n, start) || fc.closeAfter || f.shutting.Load() {
			fc.close()
			return
		}
		fc.headDeadline = time.Time{}
		if fc.backToLoop(served + 1) {
			return
		}
	}
}

// backToLoop gives the connection back to an event loop, between requests,
// when its front has loops: it came to this goroutine for one exchange (a
// cold start, a slow or large response), not for good.
func (fc *frontConn) backToLoop(served int) bool {
	if fc.br.Buffered() > 0 || !fc.f.loopsOn.Load() {
		return false
	}
	conn := fc.c
	if pc, ok := conn.(*prefixConn); ok {
		if len(pc.rest) > 0 {
			return false
		}
		conn = pc.Conn
	}
	sc, ok := conn.(syscall.Conn) // TCP or Unix
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	fd := dupFD(rc)
	if fd < 0 {
		return false
	}
	fc.close() // out of Go's netpoller: the copy is the connection now
	if !fc.f.toLoop(rawAccepted{fd: fd, ip: fc.ip, served: served}) {
		unix.Close(fd)
	}
	return true
}

// shutdownDeadline cuts short the wait for a request when the front shuts
// down: at once between requests, after a grace period before the first.
func (fc *frontConn) shutdownDeadline() {
	switch fc.state.Load() {
	case connIdle:
		fc.raw.SetReadDeadline(aLongTimeAgo)
	case connNew:
		fc.raw.SetReadDeadline(time.Now().Add(newConnGrace))
	}
}

// readHead waits for a whole request head in the read buffer and returns
// its length; idleDeadline says the read deadline is still the one for
// waiting between requests. ok is false when it cannot be served here
// (too long, bare LF); n < 0 when the connection is to be closed (read
// error, timeout).
func (fc *frontConn) readHead(idleDeadline bool) (n int, ok bool) {
	if fc.headDeadline.IsZero() {
		fc.headDeadline = time.Now().Add(fc.f.headerTimeout()) // its first byte came
	}
	from := 0
	for {
		buf, _ := fc.br.Peek(fc.br.Buffered())
		if n := h1.HeadEnd(buf, from); n >= 0 {
			return n, true
		}
		if len(buf) == fc.br.Size() || h1.NotARequest(buf) {
			// net/http answers 431 beyond its own limit, and 400 at
			// once to a first line that is not a request's.
			return 0, false
		}
		if idleDeadline {
			// The head came in parts: from now on it has
			// headDeadline, not the keep-alive's IdleTimeout.
			fc.c.SetReadDeadline(fc.headDeadline)
			idleDeadline = false
		}
		from = max(0, len(buf)-2)
		if _, err := fc.br.Peek(len(buf) + 1); err != nil {
			return -1, false // as net/http: no answer to a head cut short
		}
	}
}

// simple parses the head of length n and picks its app; false leaves the
// request to net/http.
func (fc *frontConn) simple(n int) (*activator.App, bool) {
	head, _ := fc.br.Peek(n)
	h := &fc.head
	if !h1.ParseRequest(head, h) {
		return nil, false
	}
	a := fc.f.routeBytes(h.Host)
	if a == nil || h.ContentLength > min(fastBodyMax, a.Config().RequestBuffer) {
		return nil, false // net/http answers 404, or streams the body
	}
	if h.Forwarded && trusted(a, fc.ip) {
		return nil, false // the trusted proxy's headers are extended there
	}
	fc.out = h1.AppendOutgoing(fc.out[:0], head, h, fc.ip)
	// head is fc.br's buffer, which the watch goroutine refills with a
	// pipelined request during the exchange: from here on the request
	// line is read from fc.out, which starts with it, and nothing else
	// of head is kept.
	m, t := len(h.Method), len(h.Target)
	h.Method, h.Target = fc.out[:m:m], fc.out[m+1:m+1+t:m+1+t]
	h.Host, h.Referer, h.UserAgent = nil, nil, nil
	return a, true
}

// serveOne serves the request whose head (n bytes) simple accepted. It
// returns false when the connection must be cut.
func (fc *frontConn) serveOne(a *activator.App, n int, start time.Time) bool {
	fc.br.Discard(n)
	if cl := int(fc.head.ContentLength); cl > 0 {
		m := len(fc.out)
		fc.out = append(fc.out, make([]byte, cl)...)
		if err := fc.readBody(a, fc.out[m:]); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				q := &fc.rq
				q.a, fc.closeAfter = a, true
				fc.beginResponse()
				a.BodyFailed(q.ErrorWriter(), err)
				q.err.writeTo(fc)
				fc.bw.Flush()
				fc.logAccess(a, start)
			}
			return false
		}
	}
	return fc.serveRequest(a, start)
}

// readBody reads p, a request body, whole: each read from the client
// within the app's body_timeout of the previous one.
func (fc *frontConn) readBody(a *activator.App, p []byte) error {
	timeout := a.Config().EffectiveBodyTimeout()
	for len(p) > 0 {
		if fc.br.Buffered() == 0 {
			fc.c.SetReadDeadline(time.Now().Add(timeout))
		}
		n, err := fc.br.Read(p)
		p = p[n:]
		if err != nil && len(p) > 0 {
			return err
		}
	}
	return nil
}

// serveRequest serves the request in fc.head and fc.out. It returns false
// when the connection must be cut.
func (fc *frontConn) serveRequest(a *activator.App, start time.Time) bool {
	q := &fc.rq
	q.a, q.err = a, nil
	fc.closeAfter, fc.cut = fc.head.Close, false
	fc.beginResponse()
	defer fc.logAccess(a, start)
	if !a.Proxy(q, start) || fc.cut {
		return false
	}
	if q.err != nil {
		q.err.writeTo(fc)
		q.err = nil
	}
	if fc.bw.Flush() != nil {
		return false
	}
	return true
}

// beginResponse readies the access log's counts for the next response.
func (fc *frontConn) beginResponse() {
	fc.rq.ProxyTrace = activator.ProxyTrace{}
	fc.status, fc.sent, fc.bodyFrom = 0, 0, 0
}

// written is how many response bytes went to fc.bw so far: sent to the
// client, or buffered.
func (fc *frontConn) written() int64 {
	if fc.bw == nil {
		return fc.sent
	}
	return fc.sent + int64(fc.bw.Buffered())
}

// headWritten notes a response head (of status) written to fc.bw; what
// follows is its body.
func (fc *frontConn) headWritten(status int) {
	fc.status, fc.bodyFrom = status, fc.written()
}

// appendServerTiming adds to a response head being built for the request
// in progress the Server-Timing header of a request held for the app.
func (fc *frontConn) appendServerTiming(head []byte) []byte {
	q := &fc.rq
	if !q.ServerTiming(q.a.Config()) {
		return head
	}
	head = append(head, "Server-Timing: "...)
	return append(appendServerTiming(head, q.Waited(q.a.Now())), '\r', '\n')
}

// logAccess logs the request of fc.out, served since start.
func (fc *frontConn) logAccess(a *activator.App, start time.Time) {
	if !a.LogsAccess() {
		return
	}
	status, body := fc.status, int64(0)
	if status == 0 {
		status = activator.StatusClientGone
	} else {
		body = fc.written() - fc.bodyFrom
	}
	// From fc.out, not fc.head: the reader's buffer, where fc.head
	// points, may hold the next request by now.
	method, target, _ := h1.RequestLine(fc.out)
	q := &fc.rq
	a.LogAccess(activator.AccessRecord{
		Client: fc.ip, Time: start, Duration: a.Now().Sub(start),
		Method: method, Target: target, Proto: proto11,
		Referer: h1.HeaderValue(fc.out, "referer"), UserAgent: h1.HeaderValue(fc.out, "user-agent"),
		Status: status, Bytes: body, Waited: q.WasHeld(), Wait: q.Wait(), Attempts: q.Attempts(),
	})
}

// reject answers the request whose head, of n bytes, was read at start
// with 400 and text, logs it for no app, and closes the connection.
func (fc *frontConn) reject(n int, start time.Time, text string) {
	// Before writing: the head is in the reader's buffer.
	head, _ := fc.br.Peek(n)
	method, target, proto := h1.RequestLine(head)
	record := func(status int, sent int64) {
		fc.f.logOwn(fc.ip, start, method, target, proto, h1.HeaderValue(head, "referer"), h1.HeaderValue(head, "user-agent"), status, sent)
	}
	fc.bw.WriteString("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: ")
	fc.bw.WriteString(strconv.Itoa(len(text)))
	fc.bw.WriteString("\r\n\r\n")
	fc.bw.WriteString(text)
	if err := fc.bw.Flush(); err != nil {
		record(activator.StatusClientGone, 0)
	} else {
		record(http.StatusBadRequest, int64(len(text)))
	}
	fc.close()
}

// handOff gives the connection, and what was read off it, to net/http's
// server.
func (fc *frontConn) handOff() {
	fc.c.SetDeadline(time.Time{}) // net/http sets its own, or none
	fc.bw.Reset(nil)
	writerPool.Put(fc.bw)
	hc := &handedConn{Conn: fc.c, r: fc.br, headDeadline: fc.headDeadline}
	fc.c, fc.br, fc.bw = nil, nil, nil
	fc.f.handOff(hc)
}

// abandon closes a connection an event loop gave up as the front closed,
// and the exchange it had begun.
func (fc *frontConn) abandon() {
	q := &fc.rq
	if q.resume != nil {
		q.resume.c.Close()
		q.resume = nil
	}
	if q.held != nil {
		q.a.Release(q.held)
		q.held = nil
	}
	fc.close()
}

// Write is where fc.bw's bytes go: to the client, which must take some
// within the app's send_timeout.
func (fc *frontConn) Write(p []byte) (int, error) {
	fc.c.SetWriteDeadline(time.Now().Add(fc.sendTimeout()))
	n, err := fc.c.Write(p)
	fc.sent += int64(n)
	return n, err
}

// sendTimeout is the send_timeout of the app of the request being served.
func (fc *frontConn) sendTimeout() time.Duration {
	if a := fc.rq.a; a != nil {
		return a.Config().EffectiveSendTimeout()
	}
	return activator.DefaultSendTimeout
}

// close closes the connection and recycles its buffers.
func (fc *frontConn) close() {
	if fc.c == nil {
		return
	}
	fc.c.Close()
	fc.br.Reset(nil)
	readerPool.Put(fc.br)
	fc.bw.Reset(nil)
	writerPool.Put(fc.bw)
	fc.c, fc.br, fc.bw = nil, nil, nil
}

// watch watches the client while the serving goroutine waits for something
// else: when the client goes away (or half-closes), ctx is cancelled and
// cut, if any, closed. The returned func ends the watch.
func (fc *frontConn) watch(cut io.Closer) (stop func()) {
	fc.c.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	var stopping atomic.Bool
	go func() {
		defer close(done)
		// Peek consumes nothing: a pipelined request stays for later.
		if _, err := fc.br.Peek(1); err != nil && !stopping.Load() {
			fc.cancel()
			if cut != nil {
				cut.Close()
			}
		}
	}()
	return func() {
		stopping.Store(true)
		fc.c.SetReadDeadline(aLongTimeAgo)
		<-done
		fc.c.SetReadDeadline(time.Time{})
	}
}

// gone reports whether the client went away.
func (fc *frontConn) gone() bool { return fc.ctx.Err() != nil }

// rawRequest is a request the front read itself; fc.out holds it as it
// goes to the app, body included.
type rawRequest struct {
	fc  *frontConn
	a   *activator.App
	err *rawResponse // a response rouse made, written once proxy returns
	// An exchange an event loop began: the app's slot it took, the
	// connection the request went on (nil if not sent), and how much of
	// fc.out is still to send.
	held   *activator.Instance
	resume *upConn
	unsent int
	activator.ProxyTrace
}

func (q *rawRequest) Context() context.Context { return q.fc.ctx }
func (q *rawRequest) Method() string           { return string(q.fc.head.Method) }
func (q *rawRequest) Accept() string           { return string(h1.HeaderValue(q.fc.out, "accept")) }
func (q *rawRequest) Prepare() error           { return nil }
func (q *rawRequest) BodyReplayable() bool     { return true }
func (q *rawRequest) Hold() func()             { return q.fc.watch(nil) }

func (q *rawRequest) Taken() *activator.Instance {
	inst := q.held
	q.held = nil
	return inst
}

func (q *rawRequest) Path() string { return targetPath(q.fc.head.Target) }

// targetPath is a request target without its query.
func targetPath(t []byte) string {
	for i, c := range t {
		if c == '?' {
			return string(t[:i])
		}
	}
	return string(t)
}

func (q *rawRequest) ErrorWriter() http.ResponseWriter {
	q.err = &rawResponse{header: make(http.Header)}
	return q.err
}

// rawResponse gathers a response rouse makes, for a connection the front
// serves itself.
type rawResponse struct {
	header http.Header
	code   int
	body   []byte
}

func (w *rawResponse) Header() http.Header { return w.header }
func (w *rawResponse) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *rawResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, p...)
	return len(p), nil
}

func (w *rawResponse) writeTo(fc *frontConn) {
	bw := fc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(w.code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(w.code))
	bw.WriteString("\r\n")
	w.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	w.header.Set("Content-Length", strconv.Itoa(len(w.body)))
	if fc.closeAfter || fc.f.shutting.Load() {
		w.header.Set("Connection", "close")
	}
	if q := &fc.rq; q.ServerTiming(q.a.Config()) {
		w.header.Add("Server-Timing", serverTimingValue(q.Waited(q.a.Now())))
	}
	w.header.Write(bw)
	bw.WriteString("\r\n")
	fc.headWritten(w.code)
	if !fc.head.IsHead() {
		bw.Write(w.body)
	}
}

// handedConn is a connection given to net/http's server, with the bytes
// the front had read first.
type handedConn struct {
	net.Conn
	r io.Reader
	// headDeadline, if set, is the deadline of the head the front began
	// to read: it replaces the fresh ReadHeaderTimeout net/http's first
	// SetReadDeadline would give it.
	headDeadline time.Time
	retired      atomic.Bool // see retire
}

// handedConnKey is the context key under which net/http's server keeps
// the *handedConn a request came on.
type handedConnKey struct{}

// retire ends the connection after the response being written: net/http's
// server reads no further request off it, as the next read says EOF.
func (c *handedConn) retire() { c.retired.Store(true) }

func (c *handedConn) SetReadDeadline(t time.Time) error {
	if d := c.headDeadline; !d.IsZero() {
		c.headDeadline = time.Time{}
		t = d
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *handedConn) Read(p []byte) (int, error) {
	if c.retired.Load() {
		return 0, io.EOF
	}
	return c.r.Read(p)
}

// CloseWrite lets net/http half-close the connection as it does a TCP one.
func (c *handedConn) CloseWrite() error { return halfClose(c.Conn) }

// halfClose half-closes c if it can (unlike tcp.go's closeWrite, which
// closes c if it cannot).
func halfClose(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// handedListener is how connections reach net/http's server: Accept
// returns those the front handed off.
type handedListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newHandedListener(addr net.Addr) *handedListener {
	return &handedListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *handedListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// give hands c to Accept; false when the listener is closed (c is then the
// caller's to close).
func (l *handedListener) give(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *handedListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *handedListener) Addr() net.Addr { return l.addr }
