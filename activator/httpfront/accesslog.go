package httpfront

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// The access log and Server-Timing of requests: every path that ends a
// request hands one activator.AccessRecord to its app (App.LogAccess): the event
// loop (loopConn.logAccess), the goroutine path (frontConn.logAccess) and
// net/http's path (trackedWriter.done). What the record says of waiting
// comes from App.Proxy, which alone holds requests (activator.ProxyTrace).

var (
	proto11 = []byte("HTTP/1.1")
	proto10 = []byte("HTTP/1.0")
)

// appendServerTiming appends the value of the Server-Timing header a held
// response carries: how long it waited for the app, in milliseconds.
func appendServerTiming(b []byte, wait time.Duration) []byte {
	b = append(b, "rouse-start;dur="...)
	return strconv.AppendFloat(b, float64(wait.Microseconds())/1000, 'f', -1, 64)
}

func serverTimingValue(wait time.Duration) string { return string(appendServerTiming(nil, wait)) }

// trackedWriter is the ResponseWriter of a request net/http's server
// read, when its app logs access or sends Server-Timing: it notes the
// status and the body bytes, and adds Server-Timing to the head of a
// response that waited for the app.
type trackedWriter struct {
	http.ResponseWriter
	a      *activator.App
	r      *http.Request
	tr     *activator.ProxyTrace
	status int
	bytes  int64
}

func (w *trackedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *trackedWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
		w.addServerTiming(w.Header())
	}
	w.ResponseWriter.WriteHeader(code)
}

// addServerTiming adds Server-Timing to h, the head of the response, if
// the request was held for the app.
func (w *trackedWriter) addServerTiming(h http.Header) {
	if w.tr.ServerTiming(w.a.Config()) {
		h.Add("Server-Timing", serverTimingValue(w.tr.Waited(w.a.Now())))
	}
}

func (w *trackedWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Hijack is for a 101 Switching Protocols, which upgrade writes on the
// hijacked connection itself.
func (w *trackedWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// done logs the request, once its handler is done (it may be panicking
// to cut the connection).
func (w *trackedWriter) done(start time.Time) {
	if !w.a.LogsAccess() {
		return
	}
	r := w.r
	status := w.status
	if status == 0 {
		status = activator.StatusClientGone
	}
	proto := proto11
	if !r.ProtoAtLeast(1, 1) {
		proto = proto10
	}
	w.a.LogAccess(activator.AccessRecord{
		Client: activator.ClientIP(r.RemoteAddr), Time: start, Duration: w.a.Now().Sub(start),
		Method: []byte(r.Method), Target: []byte(r.RequestURI), Proto: proto,
		Referer: []byte(r.Header.Get("Referer")), UserAgent: []byte(r.Header.Get("User-Agent")),
		Status: status, Bytes: w.bytes, Waited: w.tr.WasHeld(), Wait: w.tr.Wait(), Attempts: w.tr.Attempts(),
	})
}
