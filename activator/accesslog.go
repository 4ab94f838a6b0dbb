package activator

import (
	"errors"
	"net"
	"net/http"
	"time"
)

// The access log and Server-Timing. Every path that ends a request (http)
// or a connection (tcp, inetd) hands one AccessRecord to
// Options.AccessLog, for an app whose Config.AccessLog is set: the HTTP
// front's paths (package httpfront, through App.LogAccess), tcp
// (serveConn) and inetd (serveInetdConn). What the record says of waiting
// comes from Proxy (or connect, inetdAcquire), which alone holds requests:
// proxyTrace. The
// activator formats and writes nothing: cmd/rouse's sink copies the
// record into a bounded buffer and a goroutine of its own writes it.

// AccessRecord is one line of an app's access log. Its byte slices are
// borrowed: they are valid only during the call to Options.AccessLog,
// which copies what it keeps.
type AccessRecord struct {
	App    string
	Mode   Mode
	Client string    // the client's IP address; "" on a unix socket
	Time   time.Time // when the request's head was read, or the connection accepted
	// Duration runs from Time to the response's last byte written, or to
	// the connection's close.
	Duration time.Duration
	// http: the request line, and two of its headers; empty for tcp and
	// inetd.
	Method, Target, Proto []byte
	Referer, UserAgent    []byte
	// Status is the response's status (http; 499 when the client went
	// away before one was sent), or for a connection (tcp, inetd) 200
	// when it reached the app, 503 when rouse could not hand it on (queue
	// full, back-off, not ready in time, shutting down) and 502 when the
	// app could not be reached or run.
	Status int
	// Bytes: http, the response body bytes sent to the client (nginx's
	// $body_bytes_sent); tcp, the bytes sent to the client; inetd, 0 (the
	// app's process has the socket).
	Bytes int64
	// Waited: the request was held because the app could not take it at
	// once (it was starting, or thawing, or had no free slot), for Wait.
	Waited bool
	Wait   time.Duration
	// Attempts counts the exchanges with the app (http) or the dials to
	// it (tcp): 0 when it never got that far, more than 1 after retries.
	Attempts int
}

// StatusClientGone is the status an access record gives a request whose
// client went away before a response was sent (nginx's 499).
const StatusClientGone = 499

// logsAccess reports whether the app's requests are logged.
func (a *App) logsAccess() bool { return a.accessLog != nil && a.config().AccessLog }

// logAccess completes r with the app's name and mode and hands it on.
func (a *App) logAccess(r AccessRecord) {
	cfg := a.config()
	r.App, r.Mode = cfg.Name, cfg.Mode
	a.accessLog(r)
}

// proxyTrace is what Proxy (or connect) saw of one request or connection:
// how long it was held for the app, and how many attempts it took. The
// requests Proxy serves embed one.
type proxyTrace struct {
	wasHeld  bool
	wait     time.Duration // held for, the hold in progress aside
	since    time.Time     // when the hold in progress began; zero when none is
	attempts int
}

// Trace is the trace itself, for a Request that embeds one.
func (t *proxyTrace) Trace() *proxyTrace { return t }

// holdBegan and holdEnded bracket a wait for the app, which began or ended at now.
func (t *proxyTrace) holdBegan(now time.Time) { t.wasHeld, t.since = true, now }

func (t *proxyTrace) holdEnded(now time.Time) {
	t.wait += now.Sub(t.since)
	t.since = time.Time{}
}

// waited is how long the request has been held for the app by now (a
// response written while it is held, the waiting page, counts the wait so
// far).
func (t *proxyTrace) waited(now time.Time) time.Duration {
	if t.since.IsZero() {
		return t.wait
	}
	return t.wait + now.Sub(t.since)
}

// serverTiming reports whether a response to the request t traced gets a
// Server-Timing header: it waited for the app, and the app wants it.
func (t *proxyTrace) serverTiming(cfg *Config) bool { return t.wasHeld && cfg.ServerTiming }

// connStatus is the access log's status of a tcp or inetd connection that
// could not be handed on: 503 when rouse held it back, 502 when the app
// could not be reached or run.
func connStatus(err error) int {
	var be *BackoffError
	var bu *BudgetError
	switch {
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrQueueTimeout), errors.Is(err, ErrClosing),
		errors.As(err, &be), errors.As(err, &bu):
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// ClientIP is the address part of a RemoteAddr; "" for a unix socket's.
func ClientIP(remote string) string {
	ip, _, err := net.SplitHostPort(remote)
	if err != nil {
		return ""
	}
	return ip
}

// logConn logs a tcp or inetd connection c, accepted at start.
func (a *App) logConn(c net.Conn, start time.Time, status int, bytes int64, tr *proxyTrace) {
	if !a.logsAccess() {
		return
	}
	a.logAccess(AccessRecord{
		Client: ClientIP(c.RemoteAddr().String()), Time: start, Duration: a.now().Sub(start),
		Status: status, Bytes: bytes, Waited: tr.wasHeld, Wait: tr.wait, Attempts: tr.attempts,
	})
}
