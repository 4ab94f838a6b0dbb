package httpfront

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
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
	up.Name, up.Mode, up.Hosts = "up", activator.ModeHTTP, []string{"up.test"}
	up.Process.Argv = append(up.Process.Argv, "-proto", "http", "-plain")
	up.IdleTimeout = 0 // started once, kept for the whole run
	up.RequestBuffer, up.ResponseTimeout = 64<<10, 5*time.Second
	down := testConfig("fuzz", "127.0.0.1:1", os.DevNull)
	down.Name, down.Mode, down.Hosts = "down", activator.ModeHTTP, []string{"down.test"}
	down.Process.Argv = []string{"/nonexistent/rouse-fuzz-app"}
	down.RequestBuffer, down.ResponseTimeout = 64<<10, 5*time.Second
	var apps []*activator.App
	for _, cfg := range []activator.Config{up, down} {
		a, err := activator.New(cfg, nil, activator.Options{Logger: log})
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
