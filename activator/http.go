package activator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/internal/h1"
)

// httpUpstream is an http app's way to its process: the front's own
// keep-alive connections to it, for every path (the event loops keep
// theirs apart, and give them back to pool when they leave them), dropped
// when it stops.
type httpUpstream struct {
	gate             *dialGate // the app's
	network, address string
	pool             upPool
	// For the event loops, which keep connections of their own: gen
	// changes when kept connections are to be dropped, retired when a
	// reload replaced the upstream; sa is the address to connect(2) to.
	gen     atomic.Uint64
	retired atomic.Bool
	saOnce  sync.Once
	sa      unix.Sockaddr
	// buffers are what responses are copied through: neither side of that
	// copy has ReadFrom or WriteTo, so io.Copy would allocate 32 KiB per
	// request.
	buffers sync.Pool
}

// newHTTPUpstream is an app's Upstream, made when a front first serves it
// and again when a reload changes its address.
func newHTTPUpstream(cfg *Config, gate *dialGate) Upstream {
	return &httpUpstream{gate: gate, network: cfg.UpstreamNetwork, address: cfg.UpstreamAddress,
		buffers: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

// upstreamOf is the front's connections to a's process.
func upstreamOf(a *App) *httpUpstream { return a.currentUpstream().(*httpUpstream) }

// ServeHTTP proxies one request that came through net/http's server (the
// requests an HTTPFront does not serve itself, see frontConn), starting the
// app if needed. Its body, up to request_buffer, is read first so that the
// request can be replayed if the app fails before answering.
func (a *App) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := a.now()
	rq := &httpRequest{a: a, w: w, r: r}
	if cfg := a.config(); cfg.AccessLog || cfg.ServerTiming {
		tw := &trackedWriter{ResponseWriter: w, a: a, r: r, tr: &rq.proxyTrace}
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
		r.Body = &timedBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: a.config().bodyTimeout()}
	}
	// With Expect: 100-continue the client waits for a go-ahead before
	// sending the body; net/http sends "100 Continue" when the body is
	// first read, so read it only once the app is ready.
	if !strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		if err := rq.prepare(); err != nil {
			a.log.Debug("reading request body", "remote", r.RemoteAddr, "err", err)
			a.bodyFailed(w, err)
			return
		}
	}
	if !a.proxy(rq, start) || rq.cut {
		// No made-up answer (net/http would send an empty 200), no
		// complete-looking short response: cut the connection (after
		// proxy released the app's slot).
		panic(http.ErrAbortHandler)
	}
}

// proxyRequest is one request as a front holds it: one net/http's server
// read (httpRequest) or one the front read itself (rawRequest).
type proxyRequest interface {
	context() context.Context // ends when the client goes away
	method() string
	accept() string // the Accept header
	path() string
	// prepare reads what had to wait until the app was ready: the body
	// behind an Expect: 100-continue. It is called before every exchange
	// and does nothing once done.
	prepare() error
	bodyReplayable() bool
	// exchange sends the request to inst once and passes the response on.
	exchange(inst *instance) exchangeResult
	// errorWriter is where rouse writes a response of its own.
	errorWriter() http.ResponseWriter
	// hold is called before waiting for the app to be ready (the front
	// then watches the client); the func it returns is called when the
	// wait is over.
	hold() func()
	// taken returns, once, the app's slot taken for the request before
	// proxy (by an event loop), or nil.
	taken() *instance
	// trace is where proxy notes how long the request was held and how
	// many attempts it took.
	trace() *proxyTrace
}

// proxy takes one request through its attempts, under the retry rules of
// DESIGN.md ("Retries"): held while the app starts, replayed when that is
// safe, answered by rouse when it cannot be handed on. It returns false
// when the client's connection must be cut instead of answered.
func (a *App) proxy(rq proxyRequest, start time.Time) bool {
	a.pending.Add(1)
	defer a.pending.Add(-1)
	ctx := rq.context()
	cfg := a.config()
	tr := rq.trace()
	deadline := start.Add(cfg.QueueTimeout)
	retryDeadline := start.Add(cfg.RetryTimeout)
	var lastErr error
	for try := 1; ; try++ {
		inst := rq.taken()
		if inst == nil {
			inst = a.tryAcquire()
		}
		if inst == nil {
			tr.holdBegan(a.now())
			release := rq.hold()
			var err error
			if try == 1 && a.wantsStartPage(rq) {
				var answered bool
				inst, answered, err = a.holdForPage(rq, start, deadline)
				if answered {
					release()
					tr.holdEnded(a.now())
					return true
				}
			} else {
				inst, err = a.acquire(ctx, deadline, try > 1)
			}
			release()
			tr.holdEnded(a.now())
			if err != nil {
				return a.refuse(rq, err, lastErr)
			}
		}
		if err := rq.prepare(); err != nil {
			a.release(inst)
			a.bodyFailed(rq.errorWriter(), err)
			return true
		}
		tr.attempts++
		res := rq.exchange(inst)
		a.release(inst)
		if res.err == nil || res.answered {
			return true
		}
		lastErr = res.err
		v := blame(res.err, res.stage, ctx.Err() != nil)
		a.judge(inst, res.err, v)
		switch {
		case ctx.Err() != nil:
			// The client went away, or half-closed its side, which
			// cannot be told apart: no answer, cut the connection.
			return false
		case res.stage == stageRejected:
			a.writeError(rq.errorWriter(), http.StatusBadRequest, 0, "http_request_error",
				fmt.Sprintf("rouse cannot forward this request: %v", res.err))
			return true
		case res.timeout:
			a.writeError(rq.errorWriter(), http.StatusGatewayTimeout, 0, "http_response_timeout",
				fmt.Sprintf("the app did not answer within %s", cfg.ResponseTimeout))
			return true
		}
		if res.sent && !a.replayable(rq) {
			a.log.Info("request failed, not replayed", "method", rq.method(), "path", rq.path(), "err", res.err)
			a.writeError(rq.errorWriter(), http.StatusBadGateway, 0, "connection_terminated",
				"the app broke the connection before answering; the request was not repeated because it may have had an effect")
			return true
		}
		if try >= cfg.RetryTries || !a.now().Before(retryDeadline) {
			if !v.unhealthy || !a.replaced(inst) {
				if res.sent {
					a.writeError(rq.errorWriter(), http.StatusBadGateway, 0, "connection_terminated",
						fmt.Sprintf("the app broke the connection %d times", try))
				} else {
					a.writeError(rq.errorWriter(), http.StatusServiceUnavailable, time.Second, "connection_refused",
						fmt.Sprintf("the app refused the connection %d times", try))
				}
				return true
			}
			// The refusals restarted the app: the request is held for
			// its next process, as a new arrival would be, within
			// queue_timeout.
			try, retryDeadline = 0, later(start.Add(cfg.QueueTimeout), retryDeadline)
		}
		a.log.Debug("retrying request", "method", rq.method(), "path", rq.path(), "try", try, "err", res.err)
		deadline = retryDeadline
		if !a.pause(retryPause(try)) {
			return a.refuse(rq, ErrClosing, lastErr)
		}
	}
}

// httpRequest is a request read by net/http's server.
type httpRequest struct {
	a    *App
	w    http.ResponseWriter
	r    *http.Request
	body *requestBody
	cut  bool // the response broke off: cut the client's connection
	proxyTrace
}

func (q *httpRequest) context() context.Context         { return q.r.Context() }
func (q *httpRequest) method() string                   { return q.r.Method }
func (q *httpRequest) accept() string                   { return q.r.Header.Get("Accept") }
func (q *httpRequest) path() string                     { return q.r.URL.Path }
func (q *httpRequest) bodyReplayable() bool             { return q.body.replayable() }
func (q *httpRequest) errorWriter() http.ResponseWriter { return q.w }
func (q *httpRequest) hold() func()                     { return func() {} } // net/http watches the client
func (q *httpRequest) taken() *instance                 { return nil }

func (q *httpRequest) prepare() error {
	if q.body != nil {
		return nil
	}
	b, err := readBody(q.r, q.a.config().RequestBuffer)
	q.body = b
	return err
}

// timedBody is a request body net/http's server reads: each read must
// come within body_timeout of the previous one (nginx's
// client_body_timeout), or the request is answered 408.
type timedBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	ended   atomic.Bool // see end
}

var errBodyEnded = errors.New("the app answered before the request body was through")

// end cuts short a read of the body, and fails every later one: the app
// answered without it, and the handler must not wait for the client's
// next bytes to return that answer. (The client's connection then closes
// after the response, as net/http's server does when a body is left
// unread.)
func (b *timedBody) end() {
	b.ended.Store(true)
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
		b.rc.SetReadDeadline(aLongTimeAgo)
		return 0, errBodyEnded
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		// net/http watches the client from now on (a background read),
		// with no deadline.
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// bodyFailed answers a request whose body could not be read, on every
// path: 408 when the client let body_timeout pass between two reads, 400
// otherwise. The client's connection closes after it.
func (a *App) bodyFailed(w http.ResponseWriter, err error) {
	w.Header().Set("Connection", "close")
	if errors.Is(err, os.ErrDeadlineExceeded) {
		a.writeError(w, http.StatusRequestTimeout, 0, "http_request_error",
			fmt.Sprintf("the client sent none of its request body for %s", a.config().bodyTimeout()))
		return
	}
	a.writeError(w, http.StatusBadRequest, 0, "http_request_error", "could not read the request body")
}

// replayable reports whether a request that reached the app but got no
// response byte back may be sent again.
func (a *App) replayable(rq proxyRequest) bool {
	if !rq.bodyReplayable() {
		return false
	}
	if a.config().RetryNonIdempotent {
		return true
	}
	switch rq.method() {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// exchangeResult says how one attempt went.
type exchangeResult struct {
	err      error // nil: the response went to the client
	answered bool  // the client got a response (or part of one): never retry
	sent     bool  // request bytes reached the app
	timeout  bool  // the app was too slow to answer
	cut      bool  // the response broke off (net/http's path): cut the client's connection
	stage    attemptStage
}

// isWriteError reports whether a copy failed on the client's side.
func isWriteError(err error) bool {
	var we writeError
	return errors.As(err, &we)
}

type writeError struct{ error }

func (e writeError) Unwrap() error { return e.error }

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
		return n, writeError{err}
	}
	if c.flush {
		if err := c.rc.Flush(); err != nil {
			return n, writeError{err}
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
func (a *App) setForwarded(r *http.Request, out http.Header) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = "" // a unix socket client has no address
	}
	trusted := a.trusted(ip)
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

func (a *App) trusted(ip string) bool {
	if len(a.config().TrustedProxies) == 0 {
		return false
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	addr = addr.Unmap()
	for _, p := range a.config().TrustedProxies {
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

// refuse answers a request rouse could not hand to the app; false means
// cut the connection instead.
func (a *App) refuse(rq proxyRequest, err, lastErr error) bool {
	w := rq.errorWriter()
	var be *BackoffError
	switch {
	case errors.As(err, &be):
		wait := max(be.Until.Sub(a.now()), time.Second)
		a.writeError(w, http.StatusServiceUnavailable, wait, "destination_unavailable",
			fmt.Sprintf("the app failed to start and is in back-off for %s more (last error: %s)", roundUp(wait), be.Last))
	case errors.Is(err, ErrQueueFull):
		a.writeError(w, http.StatusServiceUnavailable, time.Second, "connection_limit_reached",
			"too many requests are already waiting for the app")
	case errors.Is(err, ErrQueueTimeout):
		if lastErr != nil {
			a.writeError(w, http.StatusBadGateway, 0, "connection_terminated",
				fmt.Sprintf("the app failed and was not back within retry_timeout: %v", lastErr))
			break
		}
		a.writeError(w, http.StatusServiceUnavailable, 5*time.Second, "destination_unavailable",
			fmt.Sprintf("the app was not ready within %s", a.config().QueueTimeout))
	case errors.Is(err, ErrClosing) && a.removed.Load():
		a.writeError(w, http.StatusServiceUnavailable, 5*time.Second, "destination_unavailable",
			"the app was removed from rouse's configuration")
	case errors.Is(err, ErrClosing):
		a.writeError(w, http.StatusServiceUnavailable, 5*time.Second, "destination_unavailable",
			"rouse is shutting down")
	case rq.context().Err() != nil:
		// The client went away (or half-closed) while its request was
		// held: no made-up answer, cut the connection.
		return false
	default:
		a.writeError(w, http.StatusServiceUnavailable, time.Second, "destination_unavailable", err.Error())
	}
	return true
}

// statusClass is "2xx" for 200..299 and so on.
func statusClass(code int) string {
	if c := code / 100; c >= 1 && c <= 5 {
		return statusClasses[c-1]
	}
	return strconv.Itoa(code/100) + "xx"
}

var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

func roundUp(d time.Duration) time.Duration {
	return time.Duration(math.Ceil(d.Seconds())) * time.Second
}

// writeError writes a response rouse makes itself: short, plain text,
// never cached, naming the app and the reason, with an RFC 9209
// Proxy-Status naming the error type.
func (a *App) writeError(w http.ResponseWriter, code int, retryAfter time.Duration, proxyError, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Proxy-Status", "rouse; error="+proxyError)
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(max(1, roundUp(retryAfter)/time.Second))))
	}
	a.metrics.outcome("rouse_" + strconv.Itoa(code))
	// (Not for the front's own rawResponse: it is written through
	// frontConn.Write, with its own deadline.)
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(a.config().sendTimeout()))
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s: rouse: app %s: %s\n", code, http.StatusText(code), a.config().Name, msg)
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
