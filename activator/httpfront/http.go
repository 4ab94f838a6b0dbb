package httpfront

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/h1"
)

// httpUpstream is an http app's way to its process: the front's own
// keep-alive connections to it, for every path (the event loops keep
// theirs apart, and give them back to pool when they leave them), dropped
// when it stops.
type httpUpstream struct {
	gate             *activator.DialGate // the app's
	network, address string
	pool             upPool
	// For the event loops, which keep connections of their own: gen
	// changes when kept connections are to be dropped, retired when a
	// reload replaced the upstream; sa is the address to connect(2) to.
	gen     atomic.Uint64
	retired atomic.Bool
	saOnce  sync.Once
	sa      unix.Sockaddr
}

// copyBufs are what net/http's path copies bodies through: neither side
// of that copy has ReadFrom or WriteTo, so io.Copy would allocate 32 KiB
// per request. One pool for every app, as the loops' upBufs.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// newHTTPUpstream is an app's activator.Upstream, made when a front first serves it
// and again when a reload changes its address.
func newHTTPUpstream(cfg *activator.Config, gate *activator.DialGate) activator.Upstream {
	return &httpUpstream{gate: gate, network: cfg.UpstreamNetwork, address: cfg.UpstreamAddress}
}

// upstreamOf is the front's connections to a's process.
func upstreamOf(a *activator.App) *httpUpstream { return a.Upstream().(*httpUpstream) }

// ServeHTTP proxies one request that came through net/http's server (the
// requests an HTTPFront does not serve itself, see frontConn), starting the
// app if needed. Its body, up to request_buffer, is read first so that the
// request can be replayed if the app fails before answering.
func serveNet(a *activator.App, w http.ResponseWriter, r *http.Request) {
	start := a.Now()
	rq := &httpRequest{a: a, w: w, r: r}
	if cfg := a.Config(); cfg.AccessLog || cfg.ServerTiming {
		tw := &trackedWriter{ResponseWriter: w, a: a, r: r, tr: &rq.ProxyTrace}
		w, rq.w = tw, tw
		defer tw.done(start)
	}
	if len(r.TransferEncoding) > 0 {
		// net/http's server read it de-chunked; it might have come with a
		// Content-Length, which net/http does not say (h1.AmbiguousFraming):
		// close after it, as RFC 9112 6.3 asks then.
		w.Header().Set("Connection", "close")
	}
	if r.Body != nil && r.Body != http.NoBody {
		rc := http.NewResponseController(w)
		// The body is the app's to read, also after its response began
		// (an app that echoes an upload as it comes): net/http's server
		// must not read what is left of it itself when the head goes out.
		rc.EnableFullDuplex()
		hc, _ := r.Context().Value(handedConnKey{}).(*handedConn)
		tb := &timedBody{ReadCloser: r.Body, rc: rc, conn: hc, timeout: a.Config().EffectiveBodyTimeout()}
		r.Body = tb
		defer func() {
			// A body not read through (an Expect: 100-continue answered
			// before its go-ahead went, a client that stalled) is cut
			// short, and the connection closes after the response: the
			// client may never send the rest, and Close would wait for it
			// with no deadline. Closed here, not after the handler by
			// net/http's server: in full duplex it would then start
			// watching the client as it reads the next request, and panic
			// (golang/go#68560).
			tb.end()
			tb.Close()
		}()
	}
	// With Expect: 100-continue the client waits for a go-ahead before
	// sending the body; net/http sends "100 Continue" when the body is
	// first read, so read it only once the app is ready.
	if !strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		if err := rq.Prepare(); err != nil {
			a.Logger().Debug("reading request body", "remote", r.RemoteAddr, "err", err)
			a.BodyFailed(w, err)
			return
		}
	}
	if !a.Proxy(rq, start) || rq.cut {
		// No made-up answer (net/http would send an empty 200), no
		// complete-looking short response: cut the connection (after
		// proxy released the app's slot).
		panic(http.ErrAbortHandler)
	}
}

// httpRequest is a request read by net/http's server.
type httpRequest struct {
	a    *activator.App
	w    http.ResponseWriter
	r    *http.Request
	body *requestBody
	cut  bool // the response broke off: cut the client's connection
	activator.ProxyTrace
}

func (q *httpRequest) Context() context.Context         { return q.r.Context() }
func (q *httpRequest) Method() string                   { return q.r.Method }
func (q *httpRequest) Accept() string                   { return q.r.Header.Get("Accept") }
func (q *httpRequest) Path() string                     { return q.r.URL.Path }
func (q *httpRequest) BodyReplayable() bool             { return q.body.replayable() }
func (q *httpRequest) ErrorWriter() http.ResponseWriter { return q.w }
func (q *httpRequest) Hold() func()                     { return func() {} } // net/http watches the client
func (q *httpRequest) Taken() *activator.Instance       { return nil }

func (q *httpRequest) Prepare() error {
	if q.body != nil {
		return nil
	}
	b, err := readBody(q.r, q.a.Config().RequestBuffer)
	q.body = b
	return err
}

// timedBody is a request body net/http's server reads: each read must
// come within body_timeout of the one before (else the client gets 408).
type timedBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	conn    *handedConn // the client's connection (nil if not one the front handed)
	timeout time.Duration
	ended   atomic.Bool // see end
	eof     atomic.Bool // the body was read whole
}

var errBodyEnded = errors.New("the app answered before the request body was through")

// end cuts short a read of the body, and fails every later one: the app
// answered without it, and the handler must not wait for the client's
// next bytes to return that answer. The client's connection then closes
// after the response (as net/http's server closes one whose body was left
// unread): what comes next on it is the rest of this body.
func (b *timedBody) end() {
	b.ended.Store(true)
	if !b.eof.Load() {
		b.cut()
	}
}

// cut interrupts a read of the client's connection, and retires the
// connection. The past deadline may also meet net/http's own read that
// watches the client once a body is through (end can come as the last
// read of the body returns), which then takes the connection for gone:
// no request may follow on it, so none does.
func (b *timedBody) cut() {
	if b.conn != nil {
		b.conn.retire()
	}
	b.rc.SetReadDeadline(aLongTimeAgo)
}

func (b *timedBody) Read(p []byte) (int, error) {
	if b.ended.Load() {
		return 0, errBodyEnded
	}
	b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	if b.ended.Load() {
		// end's deadline may have come before this one: net/http's
		// server, which reads what is left of the body before it
		// answers, must not wait either.
		b.cut()
		return 0, errBodyEnded
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
		// net/http watches the client from now on (a background read),
		// with no deadline.
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// clientWriter marks errors as the client's, gives each write the app's
// send_timeout, and when flush is set flushes after every write, so
// streamed responses (SSE) reach the client as the app sends them.
type clientWriter struct {
	w       io.Writer
	rc      *http.ResponseController
	timeout time.Duration
	flush   bool
}

func (c clientWriter) Write(p []byte) (int, error) {
	c.deadline()
	n, err := c.w.Write(p)
	if err != nil {
		return n, activator.WriteError{Err: err}
	}
	if c.flush {
		if err := c.rc.Flush(); err != nil {
			return n, activator.WriteError{Err: err}
		}
	}
	return n, nil
}

// deadline gives the client send_timeout from now to take what is
// written next (net/http resets it after the response).
func (c clientWriter) deadline() { c.rc.SetWriteDeadline(time.Now().Add(c.timeout)) }

// absoluteForm reports whether a request target is in absolute form
// (http://host/path).
func absoluteForm(target string) bool {
	i := strings.Index(target, "://")
	return i > 0 && !strings.ContainsAny(target[:i], "/?#")
}

// setForwarded sets X-Forwarded-For/-Proto/-Host. What the client sent is
// replaced unless the client is a trusted proxy (trusted_proxies), whose
// values are kept and extended.
func setForwarded(a *activator.App, r *http.Request, out http.Header) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = "" // a unix socket client has no address
	}
	trusted := trusted(a, ip)
	xff := ip
	if prior := r.Header.Values("X-Forwarded-For"); trusted && len(prior) > 0 {
		xff = strings.Join(prior, ", ")
		if ip != "" {
			xff += ", " + ip
		}
	}
	if xff != "" {
		out.Set("X-Forwarded-For", xff)
	} else {
		out.Del("X-Forwarded-For")
	}
	if !trusted || out.Get("X-Forwarded-Proto") == "" {
		proto := "http"
		if r.TLS != nil {
			proto = "https"
		}
		out.Set("X-Forwarded-Proto", proto)
	}
	if !trusted || out.Get("X-Forwarded-Host") == "" {
		out.Set("X-Forwarded-Host", r.Host)
	}
	if !trusted {
		out.Del("Forwarded")
	}
	for k := range out {
		// Set above, or kept from a trusted proxy, are the canonical
		// spellings; any other (X_Forwarded_For) is a spoof.
		switch k {
		case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded":
		default:
			if h1.ForwardedHeader(k) {
				delete(out, k)
			}
		}
	}
}

func trusted(a *activator.App, ip string) bool {
	if len(a.Config().TrustedProxies) == 0 {
		return false
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	addr = addr.Unmap()
	for _, p := range a.Config().TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func upgradeType(h http.Header) string {
	for _, v := range h.Values("Connection") {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "upgrade") {
				return h.Get("Upgrade")
			}
		}
	}
	return ""
}

// requestBody is a request's body as rouse holds it: complete in memory
// (replayable), or a prefix plus the rest still on the client connection.
type requestBody struct {
	buf      []byte
	rest     io.Reader // nil when buf is the whole body
	consumed atomic.Bool
}

// readBody reads up to limit bytes of r's body.
func readBody(r *http.Request, limit int64) (*requestBody, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return &requestBody{}, nil
	}
	if r.ContentLength > limit {
		return &requestBody{rest: r.Body}, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) <= limit {
		return &requestBody{buf: b}, nil
	}
	return &requestBody{buf: b, rest: r.Body}, nil
}

// replayable reports whether the whole body can still be sent again.
func (b *requestBody) replayable() bool { return b.rest == nil || !b.consumed.Load() }

type consumeReader struct{ b *requestBody }

func (c consumeReader) Read(p []byte) (int, error) {
	n, err := c.b.rest.Read(p)
	if n > 0 {
		c.b.consumed.Store(true)
	}
	return n, err
}
