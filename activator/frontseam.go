package activator

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
)

// The seam with the HTTP front (package httpfront), which parses,
// forwards and relays the requests of http apps: it routes a request to an
// App, hands it to App.Proxy (holding, retries, rouse's own answers), and
// for each attempt leases the app's process (TryAcquire or Proxy's own
// acquire, then Release), exchanges the request with it over connections
// it keeps itself (Upstream), and reports what happened (ExchangeResult,
// ResponseCut, LogAccess). The app tells it when kept connections must go
// (Upstream.DropIdle, Upstream.Retire).

// Instance is a lease on one start of an app's process: what the front's
// connections to the app belong to. It is opaque to the front.
type Instance = instance

// Front is an HTTP front as the Supervisor runs it (httpfront.HTTPFront;
// an interface only because that package builds on this one).
type Front interface {
	Serve()
	// Quiesce stops accepting at once; Shutdown then serves what was
	// accepted, and Close ends everything and returns when all is gone.
	Quiesce()
	Shutdown(ctx context.Context)
	Close()
}

// Request is one request as a front holds it, for Proxy: one net/http's
// server read, or one the front read itself.
type Request interface {
	Context() context.Context // ends when the client goes away
	Method() string
	Accept() string // the Accept header
	Path() string
	// Prepare reads what had to wait until the app was ready: the body
	// behind an Expect: 100-continue. It is called before every exchange
	// and does nothing once done.
	Prepare() error
	BodyReplayable() bool
	// Exchange sends the request to inst once and passes the response on.
	Exchange(inst *Instance) ExchangeResult
	// ErrorWriter is where rouse writes a response of its own.
	ErrorWriter() http.ResponseWriter
	// StartPage answers with the waiting page.
	StartPage(p StartPage)
	// Hold is called before waiting for the app to be ready (the front
	// then watches the client); the func it returns is called when the
	// wait is over.
	Hold() func()
	// Taken returns, once, the app's slot taken for the request before
	// Proxy (by an event loop), or nil.
	Taken() *Instance
	// Trace is where Proxy notes how long the request was held and how
	// many attempts it took.
	Trace() *ProxyTrace
}

// ProxyTrace is what Proxy saw of one request: how long it was held for
// the app, and how many attempts it took. A front's requests embed one.
type ProxyTrace = proxyTrace

// WasHeld reports whether the request waited for the app.
func (t *proxyTrace) WasHeld() bool { return t.wasHeld }

// Wait is how long the request was held for the app, a hold in progress
// aside.
func (t *proxyTrace) Wait() time.Duration { return t.wait }

// Attempts counts the exchanges with the app.
func (t *proxyTrace) Attempts() int { return t.attempts }

// Waited is how long the request has been held for the app by now.
func (t *proxyTrace) Waited(now time.Time) time.Duration { return t.waited(now) }

// ServerTiming reports whether a response to the request gets a
// Server-Timing header: it waited for the app, and the app wants it.
func (t *proxyTrace) ServerTiming(cfg *Config) bool { return t.serverTiming(cfg) }

// Config returns the app's settings; a reload may replace them between two
// calls, so a caller that needs several fields to agree reads it once.
func (a *App) Config() *Config { return a.config() }

// Now is the app's clock.
func (a *App) Now() time.Time { return a.now() }

// Logger is the app's logger (its records carry the app's name).
func (a *App) Logger() *slog.Logger { return a.log }

// TryAcquire leases the app's process for one request if it is ready and
// has a free slot, without waiting; nil otherwise (Proxy then holds the
// request). Every lease ends with Release.
func (a *App) TryAcquire() *Instance { return a.tryAcquire() }

// Release ends a lease from TryAcquire (or one Proxy took).
func (a *App) Release(inst *Instance) { a.release(inst) }

// Adopt hands conns (both ends of an upgraded connection) to inst, which
// closes them if its process goes; false if it is gone already.
func (a *App) Adopt(inst *Instance, conns ...io.Closer) bool { return a.adopt(inst, conns...) }

// Forget ends Adopt.
func (a *App) Forget(inst *Instance, conns ...io.Closer) { a.forget(inst, conns...) }

// ResponseCut reports a response the app broke off (the client's
// connection is cut).
func (a *App) ResponseCut(inst *Instance, method, path string, err error) {
	a.responseCut(inst, method, path, err)
}

// LogsAccess reports whether the app's requests are logged.
func (a *App) LogsAccess() bool { return a.logsAccess() }

// LogAccess completes r with the app's name and mode and hands it to
// Options.AccessLog.
func (a *App) LogAccess(r AccessRecord) { a.logAccess(r) }

// CountResponse counts a response of the app with status code.
func (a *App) CountResponse(code int) { a.metrics.outcome(statusClass(code)) }

// EffectiveHeaderTimeout is header_timeout, or its default.
func (c *Config) EffectiveHeaderTimeout() time.Duration { return c.headerTimeout() }

// EffectiveBodyTimeout is body_timeout, or its default.
func (c *Config) EffectiveBodyTimeout() time.Duration { return c.bodyTimeout() }

// EffectiveSendTimeout is send_timeout, or its default.
func (c *Config) EffectiveSendTimeout() time.Duration { return c.sendTimeout() }

// Upstream is what an HTTP front keeps of an http app between requests:
// its connections to the app's process. The app does not know what they
// are; it says when they must go. Both methods are called with the app's
// lock held, and must not block on anything but closing connections.
type Upstream interface {
	// DropIdle closes the kept connections that serve no request: the
	// process stops, exited or froze, and one kept would hold up its
	// graceful stop or carry a request across the freeze.
	DropIdle()
	// Retire drops every connection, the busy ones once they are done,
	// and keeps nothing more: a reload changed where the app listens.
	Retire()
}

// upstreamSlot is an http app's Upstream and how to make another when a
// reload changes the app's address.
type upstreamSlot struct {
	up    atomic.Pointer[upstreamBox]
	newUp atomic.Pointer[func(*Config, *DialGate) Upstream]
}

type upstreamBox struct{ Upstream }

// AttachUpstream gives an http app the front's way to keep connections to
// it, unless it has one (several fronts share an app's): newUp makes one
// for the app's settings and dial pacing, now and after a reload that
// moves the app.
func (a *App) AttachUpstream(newUp func(*Config, *DialGate) Upstream) {
	if a.upstream.newUp.CompareAndSwap(nil, &newUp) {
		a.upstream.up.Store(&upstreamBox{newUp(a.config(), a.gate)})
	}
}

// Upstream is the app's Upstream; nil before a front attached one.
func (a *App) Upstream() Upstream {
	if b := a.upstream.up.Load(); b != nil {
		return b.Upstream
	}
	return nil
}

// dropIdleConns tells the front that kept connections to the process must
// go (see Upstream.DropIdle).
func (a *App) dropIdleConns() {
	if up := a.Upstream(); up != nil {
		up.DropIdle()
	}
}

// renewUpstream replaces the app's Upstream after a reload changed cfg's
// address, retiring the old one.
func (a *App) renewUpstream(cfg *Config) {
	newUp := a.upstream.newUp.Load()
	if newUp == nil {
		return
	}
	if prev := a.upstream.up.Swap(&upstreamBox{(*newUp)(cfg, a.gate)}); prev != nil {
		prev.Retire()
	}
}
