package activator

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rouse-dev/rouse/internal/h1"
)

// The per-request rules of mode http, which the front (package
// httpfront) calls for every request on every path: holding, retries,
// what rouse answers itself (502, 503, 504, 408, 400), and whose fault a
// failure was. The front parses, forwards and relays; it knows nothing of
// the app's state, and this file nothing of HTTP framing or connections.

// ErrBadResponse is a failed exchange's error when the app's response
// could not be passed on (malformed, or framed ambiguously): the front
// returns it, or an error wrapping it, and blame counts it apart. It is
// h1's own, which the chunk follower returns on every path.
var ErrBadResponse = h1.ErrBadResponse

// Proxy takes one request through its attempts, under the retry rules of
// DESIGN.md ("Retries"): held while the app starts, replayed when that is
// safe, answered by rouse when it cannot be handed on. It returns false
// when the client's connection must be cut instead of answered.
func (a *App) Proxy(rq Request, start time.Time) bool {
	a.pending.Add(1)
	defer a.pending.Add(-1)
	ctx := rq.Context()
	cfg := a.config()
	tr := rq.Trace()
	deadline := start.Add(cfg.QueueTimeout)
	retryDeadline := start.Add(cfg.RetryTimeout)
	var lastErr error
	for try := 1; ; try++ {
		inst := rq.Taken()
		if inst == nil {
			inst = a.tryAcquire()
		}
		if inst == nil {
			tr.holdBegan(a.now())
			release := rq.Hold()
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
		if err := rq.Prepare(); err != nil {
			a.release(inst)
			a.BodyFailed(rq.ErrorWriter(), err)
			return true
		}
		tr.attempts++
		res := rq.Exchange(inst)
		a.release(inst)
		if res.Err == nil || res.Answered {
			return true
		}
		lastErr = res.Err
		v := blame(res.Err, res.Stage, ctx.Err() != nil)
		a.judge(inst, res.Err, v)
		switch {
		case ctx.Err() != nil:
			// The client went away, or half-closed its side, which
			// cannot be told apart: no answer, cut the connection.
			return false
		case res.Stage == StageRejected:
			a.WriteAnswer(rq.ErrorWriter(), http.StatusBadRequest, 0, "http_request_error",
				fmt.Sprintf("rouse cannot forward this request: %v", res.Err))
			return true
		case res.Timeout:
			a.WriteAnswer(rq.ErrorWriter(), http.StatusGatewayTimeout, 0, "http_response_timeout",
				fmt.Sprintf("the app did not answer within %s", cfg.ResponseTimeout))
			return true
		}
		if res.Sent && !a.replayable(rq) {
			a.log.Info("request failed, not replayed", "method", rq.Method(), "path", rq.Path(), "err", res.Err)
			a.WriteAnswer(rq.ErrorWriter(), http.StatusBadGateway, 0, "connection_terminated",
				"the app broke the connection before answering; the request was not repeated because it may have had an effect")
			return true
		}
		if try >= cfg.RetryTries || !a.now().Before(retryDeadline) {
			if !v.unhealthy || !a.replaced(inst) {
				if res.Sent {
					a.WriteAnswer(rq.ErrorWriter(), http.StatusBadGateway, 0, "connection_terminated",
						fmt.Sprintf("the app broke the connection %d times", try))
				} else {
					a.WriteAnswer(rq.ErrorWriter(), http.StatusServiceUnavailable, time.Second, "connection_refused",
						fmt.Sprintf("the app refused the connection %d times", try))
				}
				return true
			}
			// The refusals restarted the app: the request is held for
			// its next process, as a new arrival would be, within
			// queue_timeout.
			try, retryDeadline = 0, later(start.Add(cfg.QueueTimeout), retryDeadline)
		}
		a.log.Debug("retrying request", "method", rq.Method(), "path", rq.Path(), "try", try, "err", res.Err)
		deadline = retryDeadline
		if !a.pause(retryPause(try)) {
			return a.refuse(rq, ErrClosing, lastErr)
		}
	}
}

// BodyFailed answers a request whose body could not be read, on every
// path: 408 when the client let body_timeout pass between two reads, 400
// otherwise. The client's connection closes after it.
func (a *App) BodyFailed(w http.ResponseWriter, err error) {
	w.Header().Set("Connection", "close")
	if errors.Is(err, os.ErrDeadlineExceeded) {
		a.WriteAnswer(w, http.StatusRequestTimeout, 0, "http_request_error",
			fmt.Sprintf("the client sent none of its request body for %s", a.config().bodyTimeout()))
		return
	}
	a.WriteAnswer(w, http.StatusBadRequest, 0, "http_request_error", "could not read the request body")
}

// replayable reports whether a request that reached the app but got no
// response byte back may be sent again.
func (a *App) replayable(rq Request) bool {
	if !rq.BodyReplayable() {
		return false
	}
	if a.config().RetryNonIdempotent {
		return true
	}
	switch rq.Method() {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// ExchangeResult says how one attempt went.
type ExchangeResult struct {
	Err      error // nil: the response went to the client
	Answered bool  // the client got a response (or part of one): never retry
	Sent     bool  // request bytes reached the app
	Timeout  bool  // the app was too slow to answer
	Cut      bool  // the response broke off (net/http's path): cut the client's connection
	Stage    Stage
}

// IsWriteError reports whether a copy failed on the client's side.
func IsWriteError(err error) bool {
	var we WriteError
	return errors.As(err, &we)
}

// WriteError is how the front marks an error as the client's: a write to
// it failed (blame: not the app's fault).
type WriteError struct{ Err error }

func (e WriteError) Error() string { return e.Err.Error() }
func (e WriteError) Unwrap() error { return e.Err }

// refuse answers a request rouse could not hand to the app; false means
// cut the connection instead.
func (a *App) refuse(rq Request, err, lastErr error) bool {
	w := rq.ErrorWriter()
	var be *BackoffError
	switch {
	case errors.As(err, &be):
		wait := max(be.Until.Sub(a.now()), time.Second)
		a.WriteAnswer(w, http.StatusServiceUnavailable, wait, "destination_unavailable",
			fmt.Sprintf("the app failed to start and is in back-off for %s more (last error: %s)", roundUp(wait), be.Last))
	case errors.Is(err, ErrQueueFull):
		a.WriteAnswer(w, http.StatusServiceUnavailable, time.Second, "connection_limit_reached",
			"too many requests are already waiting for the app")
	case errors.Is(err, ErrQueueTimeout):
		if lastErr != nil {
			a.WriteAnswer(w, http.StatusBadGateway, 0, "connection_terminated",
				fmt.Sprintf("the app failed and was not back within retry_timeout: %v", lastErr))
			break
		}
		a.WriteAnswer(w, http.StatusServiceUnavailable, 5*time.Second, "destination_unavailable",
			fmt.Sprintf("the app was not ready within %s", a.config().QueueTimeout))
	case errors.Is(err, ErrClosing) && a.removed.Load():
		a.WriteAnswer(w, http.StatusServiceUnavailable, 5*time.Second, "destination_unavailable",
			"the app was removed from rouse's configuration")
	case errors.Is(err, ErrClosing):
		a.WriteAnswer(w, http.StatusServiceUnavailable, 5*time.Second, "destination_unavailable",
			"rouse is shutting down")
	case rq.Context().Err() != nil:
		// The client went away (or half-closed) while its request was
		// held: no made-up answer, cut the connection.
		return false
	default:
		a.WriteAnswer(w, http.StatusServiceUnavailable, time.Second, "destination_unavailable", err.Error())
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

// WriteAnswer writes a response rouse makes itself: short, plain text,
// never cached, naming the app and the reason, with an RFC 9209
// Proxy-Status naming the error type.
func (a *App) WriteAnswer(w http.ResponseWriter, code int, retryAfter time.Duration, proxyError, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Proxy-Status", "rouse; error="+proxyError)
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(max(1, roundUp(retryAfter)/time.Second))))
	}
	a.CountAnswer(code)
	// (Not for the front's own rawResponse: it is written through
	// frontConn.Write, with its own deadline.)
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(a.config().sendTimeout()))
	w.WriteHeader(code)
	fmt.Fprintf(w, "%d %s: rouse: app %s: %s\n", code, http.StatusText(code), a.config().Name, msg)
}

// RetryQuietly is the quiet retry, on every path, of a request that a
// kept connection (reused) lost before any answer (not a malformed one,
// which is an answer): most likely the app closed it meanwhile (its
// keep-alive timeout, or a crash), and the other kept ones with it. As
// net/http's Transport does, it is sent once more on a new connection,
// not counted as a try or a failure, if it may be.
func (a *App) RetryQuietly(rq Request, res ExchangeResult, reused bool, attempt func() (ExchangeResult, bool)) ExchangeResult {
	if !reused || res.Err == nil || errors.Is(res.Err, ErrBadResponse) || res.Answered || res.Timeout ||
		rq.Context().Err() != nil || (res.Sent && !a.replayable(rq)) {
		return res
	}
	a.dropIdleConns()
	res, _ = attempt()
	return res
}

// CountAnswer counts a response rouse made itself, with status code.
func (a *App) CountAnswer(code int) { a.metrics.outcome("rouse_" + strconv.Itoa(code)) }

// The waiting page (start_page): a person who opens a cold app in a
// browser sees, after start_page_after, a small page saying the app is
// starting, which reloads itself every second; the reload is held like any
// request and gets the app's own answer once it is ready. Only a GET that
// accepts text/html gets it, on its first attempt; every other request
// (an API client, a HEAD, a retry) is held exactly as without it. The page
// is a 503 with Retry-After, never cached, so that nothing keeps it. The
// front renders it (Request.StartPage).

// StartPage is what the waiting page says.
type StartPage struct {
	Waited  time.Duration // held so far
	Retry   time.Duration // when the page reloads (its Retry-After)
	Failure *BackoffError // the start failed: the app is in back-off; nil while it starts
	LastOut string        // the app's last stderr line, when the start failed
}

// wantsStartPage reports whether rq is a browser's request that gets the
// waiting page instead of being held past start_page_after.
func (a *App) wantsStartPage(rq Request) bool {
	return a.config().StartPage && rq.Method() == http.MethodGet && strings.Contains(rq.Accept(), "text/html")
}

// holdForPage is acquire for a request that may get the waiting page: it
// waits until start_page_after at most, then answers with the page if the
// app is not ready yet (or failed to start); done reports that.
func (a *App) holdForPage(rq Request, start, deadline time.Time) (inst *instance, done bool, err error) {
	early := start.Add(a.config().StartPageAfter)
	if !early.Before(deadline) {
		inst, err = a.acquire(rq.Context(), deadline, false)
		return inst, false, err
	}
	inst, err = a.acquire(rq.Context(), early, false)
	var be *BackoffError
	switch {
	case err == nil:
		return inst, false, nil
	case errors.Is(err, ErrQueueTimeout):
		rq.StartPage(StartPage{Waited: a.now().Sub(start), Retry: time.Second})
		return nil, true, nil
	case errors.As(err, &be):
		p := StartPage{Waited: a.now().Sub(start), Failure: be, Retry: max(roundUp(be.Until.Sub(a.now())), time.Second)}
		a.mu.Lock()
		if n := len(a.lastTail); n > 0 {
			p.LastOut = a.lastTail[n-1]
		}
		a.mu.Unlock()
		rq.StartPage(p)
		return nil, true, nil
	}
	return nil, false, err
}
