package activator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// panicWatch is a log handler that remembers whether anything logged a
// panic: net/http recovers a panicking handler and only logs it.
type panicWatch struct {
	seen *atomic.Value // string: the first message that mentions a panic
}

func (h panicWatch) Enabled(context.Context, slog.Level) bool { return true }
func (h panicWatch) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		h.seen.CompareAndSwap(nil, r.Message)
	}
	return nil
}
func (h panicWatch) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h panicWatch) WithGroup(string) slog.Handler      { return h }

// statusLine is how every answer of an HTTP front must begin.
var statusLine = regexp.MustCompile(`^HTTP/1\.[01] [1-5][0-9][0-9] `)

// FuzzHTTPRequest writes arbitrary bytes on a real connection to an HTTP
// front and half-closes it. Whatever they are, the front answers with an
// HTTP status line or just closes, within a deadline, and never panics.
// The front routes by Host to an app that is up (one real process, started
// once per fuzzing process and never stopped), to one whose command does
// not exist (always in back-off: 503 at once) or to nothing (404), so each
// input costs one connection and no spawn.
func FuzzHTTPRequest(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: up.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: down.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: up.test\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: up.test\r\nContent-Length: 100\r\n\r\nshort",
		"POST / HTTP/1.1\r\nHost: up.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
		"PUT / HTTP/1.1\r\nHost: down.test\r\nContent-Length: 99999999999\r\n\r\nx",
		"GET /upgrade HTTP/1.1\r\nHost: up.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nline\n",
		"GET / HTTP/1.1\r\nHost: up.test\r\n\r\nGET / HTTP/1.1\r\nHost: down.test\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://up.test/abs HTTP/1.1\r\nHost: other\r\n\r\n",
		"CONNECT up.test:443 HTTP/1.1\r\nHost: up.test\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: up.test\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: up.test\r\nConnection: close, X-Forwarded-For\r\nX-Forwarded-For: 1.2.3.4\r\nTe: trailers\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: UP.TEST.:80\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: up.test\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n",
		"GET / HTTP/2.0\r\nHost: up.test\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", // a TLS ClientHello
		"GET / HTTP/1.1\r\nHost: up.test",
		"",
		"\r\n\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}

	addr, panicked := fuzzFront(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("the front is gone: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(data) // may fail once the front answered and closed
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("no answer and no close within 10s; got %q", got)
		}
		if len(got) > 0 && !statusLine.Match(got) {
			t.Fatalf("answer is not an HTTP response: %q", got[:min(len(got), 200)])
		}
		if msg := panicked.Load(); msg != nil {
			t.Fatalf("the front logged a panic: %s", msg)
		}
		// (net/http answers "OPTIONS *", about the server itself, on its own.)
		if head, _, _ := strings.Cut(string(got), "\r\n\r\n"); strings.HasPrefix(head, "HTTP/1.1 200 ") && !strings.Contains(head, "\r\nContent-Type: ") &&
			!strings.HasPrefix(string(data), "OPTIONS *") {
			// The app always answers with a body, so a 200 without a
			// Content-Type is made up by net/http after ServeHTTP gave up.
			t.Fatalf("a 200 the app never sent (see TestFaultHalfClosedClientGetsNoMadeUpAnswer): %q", got)
		}
	})
}

// fuzzFront serves the apps of FuzzHTTPRequest on one front until the end
// of f, and returns its address and the panic watch of its log.
func fuzzFront(f *testing.F) (string, *atomic.Value) {
	var panicked atomic.Value
	log := slog.New(panicWatch{&panicked})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	up := testConfig("fuzz", "127.0.0.1:"+strconv.Itoa(freePort(f)), os.DevNull)
	up.Name, up.Mode, up.Hosts = "up", ModeHTTP, []string{"up.test"}
	up.Process.Argv = append(up.Process.Argv, "-proto", "http", "-plain")
	up.IdleTimeout = 0 // started once, kept for the whole run
	up.RequestBuffer, up.ResponseTimeout = 64<<10, 5*time.Second
	down := testConfig("fuzz", "127.0.0.1:1", os.DevNull)
	down.Name, down.Mode, down.Hosts = "down", ModeHTTP, []string{"down.test"}
	down.Process.Argv = []string{"/nonexistent/rouse-fuzz-app"}
	down.RequestBuffer, down.ResponseTimeout = 64<<10, 5*time.Second
	var apps []*App
	for _, cfg := range []Config{up, down} {
		a, err := New(cfg, nil, Options{Logger: log})
		if err != nil {
			f.Fatal(err)
		}
		apps = append(apps, a)
	}
	front, err := NewHTTPFront(ln, apps, log)
	if err != nil {
		f.Fatal(err)
	}
	front.Serve()
	f.Cleanup(func() {
		front.Close()
		for _, a := range apps {
			a.Close(context.Background())
		}
	})
	if err := apps[0].Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	return ln.Addr().String(), &panicked
}

// FuzzH1Heads checks the front's own HTTP/1.1 parsing. A request head it
// accepts must reach the app as the same request, as net/http reads it
// (same method, target, Host and body length, nothing smuggled in); a
// response head from an app must never make it panic, and what it passes
// on must be a well-formed head.
func FuzzH1Heads(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x?y=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 3\r\nConnection: close\r\nTe: trailers\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nForwarded: for=x\r\nKeep-Alive: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
		"HTTP/1.0 204\nTransfer-Encoding: gzip, chunked\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		var r respHead
		if out, ok := appendResponseHead(nil, head, &r); ok {
			if !strings.HasPrefix(string(out), "HTTP/1.1 ") || !strings.HasSuffix(string(out), "\r\n") {
				t.Fatalf("response head %q passed on as %q", head, out)
			}
			for line := range strings.Lines(string(out)) {
				if !strings.HasSuffix(line, "\r\n") || strings.ContainsAny(strings.TrimSuffix(line, "\r\n"), "\r\n") {
					t.Fatalf("response head %q passed on with line %q", head, line)
				}
			}
		}
		n := headEnd(head, 0)
		if n < 0 {
			return
		}
		// A head net/http's server would read with Transfer-Encoding and
		// Content-Length, or Transfer-Encoding in HTTP/1.0, the front
		// rejects before it gets there.
		if req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head[:n]))); err == nil {
			tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head[:n])))
			tp.ReadLine()
			hdr, _ := tp.ReadMIMEHeader()
			_, te := hdr["Transfer-Encoding"]
			_, cl := hdr["Content-Length"]
			if te && (cl || !req.ProtoAtLeast(1, 1)) && !ambiguousFraming(head[:n]) {
				t.Fatalf("request %q: net/http reads Transfer-Encoding with Content-Length or in HTTP/1.0, the front does not", head[:n])
			}
		}
		var h reqHead
		if !parseRequestHead(head[:n], &h) {
			return
		}
		out := appendOutgoing(nil, head[:n], &h, "127.0.0.1")
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(out)))
		if err != nil {
			t.Fatalf("request %q accepted, sent as %q, which net/http rejects: %v", head[:n], out, err)
		}
		if req.Method != string(h.method) || req.RequestURI != string(h.target) || req.Host != string(h.host) ||
			req.ContentLength != h.contentLength || len(req.TransferEncoding) > 0 {
			t.Fatalf("request %q sent as %q: read back as %s %s host %q length %d %v", head[:n], out,
				req.Method, req.RequestURI, req.Host, req.ContentLength, req.TransferEncoding)
		}
		if got := req.Header.Values("X-Forwarded-For"); len(got) != 1 || got[0] != "127.0.0.1" {
			t.Fatalf("request %q sent as %q: X-Forwarded-For %q", head[:n], out, got)
		}
	})
}

// FuzzChunkScanner checks the loop's chunked-body follower: fed all at
// once or in pieces it finds the same end; and every chunked body that
// net/http's reader reads whole, followed by an empty trailer section, it
// follows to exactly that end (it may accept more: bare LF after a chunk's
// data, longer lines).
func FuzzChunkScanner(f *testing.F) {
	for _, seed := range []string{
		"3\r\nabc\r\n0\r\n\r\n",
		"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nnext",
		"A\nabcdefghij\n0\n\n",
		"0000000000000003\r\nabc\r\n0\r\n\r\n",
		"3 \t;ext\r\nabc\r\n0\r\n\r\n",
		"zz\r\n",
		"3\r\nabcX",
		"ffffffffffffffff\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		whole := feedPieces(p, len(p)+1)
		for _, size := range []int{1, 3, 16} {
			if got := feedPieces(p, size); got != whole {
				t.Fatalf("%q in pieces of %d: %+v; whole: %+v", p, size, got, whole)
			}
		}
		if whole.n > len(p) || (whole.done && whole.failed) {
			t.Fatalf("%q: %+v", p, whole)
		}
		rd := bytes.NewReader(p)
		br := bufio.NewReader(rd)
		if _, err := io.Copy(io.Discard, httputil.NewChunkedReader(br)); err != nil {
			return
		}
		end := len(p) - rd.Len() - br.Buffered() // past the last chunk's size line
		if !bytes.HasPrefix(p[end:], []byte("\r\n")) {
			return // trailers, or the body is not over: not compared
		}
		if !whole.done || whole.n != end+2 {
			t.Fatalf("%q: net/http reads a body of %d bytes, the scanner %+v", p, end+2, whole)
		}
	})
}

type scanResult struct {
	n            int
	done, failed bool
}

// feedPieces feeds p to a chunkScanner size bytes at a time.
func feedPieces(p []byte, size int) scanResult {
	var s chunkScanner
	var r scanResult
	for len(p) > 0 {
		k := min(size, len(p))
		n, done, err := s.feed(p[:k])
		r.n += n
		if err != nil {
			r.failed = true
			return r
		}
		if done {
			r.done = true
			return r
		}
		p = p[k:]
	}
	return r
}

func TestChunkScanner(t *testing.T) {
	for _, tc := range []struct {
		body string
		n    int // where the body ends, or fails; -1: not over
		ok   bool
	}{
		{"3\r\nabc\r\n0\r\n\r\n", 13, true},
		{"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK", 13, true}, // what follows is not the body's
		{"3;name=\"v;x\"\r\nabc\r\n0\r\nX-Sum: 42\r\nX-B: 1\r\n\r\n", 43, true},
		{"A\nabcdefghij\n0\n\n", 16, true},
		{"0000000000000003\r\nabc\r\n0\r\n\r\n", 28, true},
		{"3\r\nabc\r\n0\r\nX-Sum: 4", -1, true},
		{"3\r\nab", -1, true},
		{"", -1, true},
		{"zz\r\n", 0, false},
		{"3x\r\nabc\r\n", 1, false},
		{"3\r\nabcX", 6, false},
		{"00000000000000003\r\n", 16, false}, // 17 digits
		{"3\r\nabc\r\n0\r\n" + strings.Repeat("X: y\r\n", maxChunkLine/6+1) + "\r\n", -2, false},
		// A CR is a line's end or an error, never passed on alone.
		{"3\rx\r\nabc\r\n0\r\n\r\n", 2, false},
		{"3;a\rb\r\nabc\r\n0\r\n\r\n", 4, false},
		{"3\r\r\nabc\r\n0\r\n\r\n", 2, false},
		{"3\r\nabc\r\n0\r\n\r\r\n", 12, false},
		{"3\r\nabc\r\n0\r\nX: \x00\r\n\r\n", 14, false},
		{"3;a=\x01\r\nabc\r\n0\r\n\r\n", 4, false},
	} {
		got := feedPieces([]byte(tc.body), len(tc.body)+1)
		switch {
		case !tc.ok && !got.failed, tc.ok && got.failed:
			t.Errorf("%.40q: %+v, want ok %v", tc.body, got, tc.ok)
		case tc.n >= 0 && got.n != tc.n:
			t.Errorf("%.40q: %+v, want n %d", tc.body, got, tc.n)
		case tc.ok && got.done != (tc.n >= 0):
			t.Errorf("%.40q: %+v, want done %v", tc.body, got, tc.n >= 0)
		}
	}
}
