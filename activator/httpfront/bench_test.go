package httpfront

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// BenchmarkHTTPKeepAlive sends small GETs over one keep-alive connection
// through rouse's http front and one directly to the app, alternating, and
// reports both latencies and their ratio. allocs/op counts the whole test
// process, rouse included (the client side here allocates nothing), so it
// is what rouse allocates per proxied request.
func BenchmarkHTTPKeepAlive(b *testing.B) { benchKeepAlive(b, nil) }

// BenchmarkHTTPKeepAliveAccessLog is BenchmarkHTTPKeepAlive with the
// access log on, into a sink that copies the record's bytes as
// cmd/rouse's does: the record costs the event loop no allocation.
func BenchmarkHTTPKeepAliveAccessLog(b *testing.B) {
	var sink copySink
	benchKeepAlive(b, sink.log)
	if sink.n.Load() < int64(b.N) {
		b.Errorf("%d access records for %d requests", sink.n.Load(), b.N)
	}
}

// copySink copies each record's request line into a buffer of its own.
type copySink struct {
	mu  sync.Mutex
	buf [512]byte
	n   atomic.Int64
}

func (s *copySink) log(r activator.AccessRecord) {
	s.mu.Lock()
	k := copy(s.buf[:], r.Method)
	k += copy(s.buf[k:], r.Target)
	copy(s.buf[k:], r.UserAgent)
	s.mu.Unlock()
	s.n.Add(1)
}

func benchKeepAlive(b *testing.B, access func(activator.AccessRecord)) {
	ta := newTestApps(b, appSpec{
		args:   []string{"-proto", "http", "-plain"},
		edit:   func(c *activator.Config) { c.Mode, c.AccessLog = activator.ModeHTTP, access != nil },
		access: access,
	})[0]
	via := dialHTTP(b, ta.addr)
	via.get(b) // starts the app
	direct := dialHTTP(b, ta.Config().UpstreamAddress)
	var viaRouse, viaDirect time.Duration
	b.ReportAllocs()
	for b.Loop() {
		viaRouse += via.get(b)
		viaDirect += direct.get(b)
	}
	n := float64(b.N)
	b.ReportMetric(float64(viaRouse.Microseconds())/n, "rouse-µs/req")
	b.ReportMetric(float64(viaDirect.Microseconds())/n, "direct-µs/req")
	b.ReportMetric(viaDirect.Seconds()/viaRouse.Seconds(), "ratio")
}

// BenchmarkHTTPNewConnection is a request per connection (Connection:
// close), through rouse and straight to the app: what accepting, and
// closing, cost on top of a request.
func BenchmarkHTTPNewConnection(b *testing.B) {
	ta := newTestApp(b, []string{"-proto", "http", "-plain"}, func(c *activator.Config) { c.Mode = activator.ModeHTTP })
	direct := ta.Config().UpstreamAddress
	oneRequest(b, ta.addr) // starts the app
	var viaRouse, viaDirect time.Duration
	for b.Loop() {
		viaRouse += oneRequest(b, ta.addr)
		viaDirect += oneRequest(b, direct)
	}
	n := float64(b.N)
	b.ReportMetric(float64(viaRouse.Microseconds())/n, "rouse-µs/req")
	b.ReportMetric(float64(viaDirect.Microseconds())/n, "direct-µs/req")
	b.ReportMetric(viaDirect.Seconds()/viaRouse.Seconds(), "ratio")
}

// oneRequest connects, sends GET / with Connection: close and reads the
// response to the end; it returns how long that took.
func oneRequest(b *testing.B, addr string) time.Duration {
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		b.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(got, []byte("HTTP/1.1 200 ")) {
		b.Fatalf("response %q, %v", got, err)
	}
	return time.Since(start)
}

// httpConn is a minimal keep-alive client for GET /, allocation-free.
type httpConn struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
}

func dialHTTP(b *testing.B, addr string) *httpConn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &httpConn{c: c, br: bufio.NewReader(c), req: []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")}
}

// get sends one request and reads the response; it returns how long that took.
func (h *httpConn) get(b *testing.B) time.Duration {
	start := time.Now()
	if _, err := h.c.Write(h.req); err != nil {
		b.Fatal(err)
	}
	length := -1
	for {
		line, err := h.br.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			length = 0
			for _, c := range bytes.TrimSpace(v) {
				length = length*10 + int(c-'0')
			}
		}
	}
	if length < 0 {
		b.Fatal("response without Content-Length")
	}
	if _, err := h.br.Discard(length); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
