package httpfront

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/leakcheck"
	"github.com/rouse-dev/rouse/internal/testbackend"
)

// rawClient is one client connection written to byte for byte.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *rawClient) send(req string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, req); err != nil {
		rc.t.Fatal(err)
	}
}

// response reads one response to a request with method.
func (rc *rawClient) response(method string) (*http.Response, string) {
	rc.t.Helper()
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		rc.t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

func TestFrontServesPlainRequestsAndHandsOffTheRest(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := dialRaw(t, ta.addr)
	for i := range 3 {
		rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := rc.response("GET"); resp.StatusCode != 200 || !strings.Contains(body, "hello from") {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
	}
	rc.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	if resp, body := rc.response("POST"); resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("POST with a body: %d %q", resp.StatusCode, body)
	}
	if n := ta.front.handedOff.Load(); n != 0 {
		t.Fatalf("%d connections handed to net/http, want 0 for plain requests", n)
	}
	// A chunked body is net/http's to read: the connection goes there,
	// with the request, and goes on working.
	rc.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Other\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	if resp, body := rc.response("POST"); resp.StatusCode != 200 || body != "abc" || !resp.Close {
		t.Fatalf("chunked POST: %d %q, close %v (want a close after a chunked request)", resp.StatusCode, body, resp.Close)
	}
	if n := ta.front.handedOff.Load(); n != 1 {
		t.Fatalf("%d connections handed to net/http, want 1", n)
	}
	rc = dialRaw(t, ta.addr)
	rc.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Other\r\n\r\n")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET handed off: %d", resp.StatusCode)
	}
	rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET after the hand-off: %d", resp.StatusCode)
	}
	// What the front leaves to net/http: each on a connection of its own.
	for _, req := range []string{
		"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Other\r\n\r\n",
		"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", frontReadBuffer) + "\r\n\r\n",
	} {
		rc := dialRaw(t, ta.addr)
		before := ta.front.handedOff.Load()
		rc.send(req)
		if resp, body := rc.response("GET"); resp.StatusCode != 200 {
			t.Errorf("%.60q: %d %q, want 200 from net/http's side", req, resp.StatusCode, body)
		}
		if ta.front.handedOff.Load() != before+1 {
			t.Errorf("%.60q was not handed off", req)
		}
	}
}

func TestFrontPipelinedRequestsAreAnsweredInOrder(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := dialRaw(t, ta.addr)
	rc.send("GET /pid HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none" +
		"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntwo")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	if _, body := rc.response("POST"); body != "one" {
		t.Fatalf("second: %q", body)
	}
	if resp, body := rc.response("HEAD"); resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
	resp, body := rc.response("POST")
	if body != "two" || !resp.Close {
		t.Fatalf("last: %q, Connection: close %v", body, resp.Close)
	}
	if _, err := rc.br.ReadByte(); err != io.EOF {
		t.Fatalf("after Connection: close: %v, want EOF", err)
	}
}

func TestFrontPassesResponsesOnAsFramed(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	raw := func(r string) string { return "/raw?r=" + url.QueryEscape(r) }
	for _, tc := range []struct {
		name, path, method string
		code               int
		body               string
		close              bool // the client's connection closes after it
		header             map[string]string
	}{
		{name: "read to the end", path: raw("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil close"),
			code: 200, body: "until close", close: true, header: map[string]string{"X-A": "1"}},
		{name: "HTTP/1.0", path: raw("HTTP/1.0 201 Created\r\nContent-Length: 3\r\n\r\nabc"), code: 201, body: "abc"},
		{name: "interim responses dropped", path: raw("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
			code: 200, body: "ok"},
		{name: "bare LF", path: raw("HTTP/1.1 202 Accepted\nContent-Length: 2\nX-B: 2\n\nok"),
			code: 202, body: "ok", header: map[string]string{"X-B": "2"}},
		{name: "hop-by-hop dropped", path: raw("HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nX-Kept: k\r\nContent-Length: 1\r\n\r\n."),
			code: 200, body: ".", header: map[string]string{"X-Secret": "", "Keep-Alive": "", "X-Kept": "k"}},
		{name: "chunked with extensions", path: raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
			code: 200, body: "abcde"},
		{name: "204", path: raw("HTTP/1.1 204 No Content\r\n\r\n"), code: 204},
		{name: "HEAD", path: "/bytes?n=5000", method: "HEAD", code: 200, header: map[string]string{"Content-Length": "5000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = "GET"
			}
			rc := dialRaw(t, ta.addr)
			rc.send(method + " " + tc.path + " HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, body := rc.response(method)
			if resp.StatusCode != tc.code || body != tc.body || resp.Close != tc.close {
				t.Errorf("%d %q close=%v, want %d %q close=%v", resp.StatusCode, body, resp.Close, tc.code, tc.body, tc.close)
			}
			for k, v := range tc.header {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s: %q, want %q", k, got, v)
				}
			}
			if !tc.close {
				rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
				if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
					t.Errorf("next request on the connection: %d", resp.StatusCode)
				}
			}
		})
	}
	if n := ta.front.handedOff.Load(); n != 0 {
		t.Errorf("%d connections handed off, want 0", n)
	}
}

func TestFrontTrailersAndCutResponses(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	client := testbackend.NewClient(t)
	resp, err := client.Get("http://" + ta.addr + "/trailer")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "part one, part two" || resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("chunked with a trailer: %q, trailer %v", b, resp.Trailer)
	}
	// A body shorter than announced, a malformed chunk: the client sees a
	// cut connection, not a complete-looking response.
	for _, r := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	} {
		rc := dialRaw(t, ta.addr)
		rc.send("GET /raw?r=" + url.QueryEscape(r) + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			continue // cut before the head: as good
		}
		if b, err := io.ReadAll(resp.Body); err == nil {
			t.Errorf("%q: read %q without an error", r, b)
		}
	}
	// A malformed head is the app breaking the exchange: a GET is retried,
	// then answered 502.
	rc := dialRaw(t, ta.addr)
	rc.send("GET /raw?r=" + url.QueryEscape("HTTP/9 x\r\n\r\n") + " HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("GET"); resp.StatusCode != 502 || !strings.Contains(body, "rouse: app t") {
		t.Errorf("malformed response head: %d %q, want 502", resp.StatusCode, body)
	}
}

// The front notices a client that goes away while the app takes its time,
// and stops the exchange: the app's request ends, the slot is free.
func TestFrontClientGoneEndsTheExchange(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := dialRaw(t, ta.addr)
	rc.send("GET /sleep?d=60s HTTP/1.1\r\nHost: x\r\n\r\n")
	leakcheck.WaitFor(t, "the request to reach the app", func() bool { return ta.Status().Conns == 1 })
	rc.c.Close()
	start := time.Now()
	leakcheck.WaitFor(t, "the slot to be freed", func() bool { return ta.Status().Conns == 0 })
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("slot freed %s after the client left", took)
	}
}

// An app that closes its idle keep-alive connections (here after 50ms)
// does not cost a POST a 502: a connection idle long enough is checked
// before it is used.
func TestFrontStaleKeepAliveToTheApp(t *testing.T) {
	ta, hits := newHTTPTestApp(t, []string{"-keepalive", "50ms"}, func(c *activator.Config) { c.IdleTimeout = time.Minute })
	rc := dialRaw(t, ta.addr)
	for i := range 3 {
		rc.send(fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n%02d", i))
		if resp, body := rc.response("POST"); resp.StatusCode != 200 || body != fmt.Sprintf("%02d", i) {
			t.Fatalf("POST %d: %d %q", i, resp.StatusCode, body)
		}
		// Past the app's keep-alive timeout.
		time.Sleep(150 * time.Millisecond) // the idle time is the point of the test
	}
	if n := testbackend.HitCount(t, hits, "/echo"); n != 3 {
		t.Errorf("app saw %d POSTs, want 3", n)
	}
}

// A graceful shutdown answers what it accepted: a connection that sends
// its request after Shutdown began is served, with Connection: close; an
// idle keep-alive connection is closed.
func TestFrontShutdownAnswersAcceptedConnections(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	idle := dialRaw(t, ta.addr)
	idle.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	idle.response("GET")
	fresh := dialRaw(t, ta.addr)
	leakcheck.WaitFor(t, "both connections accepted", func() bool { return ta.front.connCount() == 2 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ta.front.Shutdown(ctx)
	}()
	if _, err := idle.br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: %v, want EOF", err)
	}
	fresh.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, body := fresh.response("GET")
	if resp.StatusCode != 200 || !resp.Close {
		t.Errorf("request after Shutdown began: %d %q close=%v, want 200 and Connection: close", resp.StatusCode, body, resp.Close)
	}
	<-done
}

// A large body goes from socket to socket (splice); the connection stays
// usable after it.
func TestFrontLargeBodies(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := dialRaw(t, ta.addr)
	for _, n := range []int{spliceMin - 1, spliceMin, 3<<20 + 7} {
		rc.send(fmt.Sprintf("GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n", n))
		if resp, body := rc.response("GET"); resp.StatusCode != 200 || len(body) != n {
			t.Fatalf("%d bytes asked: %d, %d bytes", n, resp.StatusCode, len(body))
		}
	}
	if n := ta.front.handedOff.Load(); n != 0 {
		t.Errorf("%d connections handed off, want 0", n)
	}
}

// When a kept connection to the app fails before any answer (the app
// dropped its idle connections, or crashed), the request goes once more on
// a new connection, as net/http's Transport does, and the other kept ones
// are dropped: it costs no try (retry_tries = 1 here) and no failure.
func TestFrontDropsKeptConnectionsAfterOneFails(t *testing.T) {
	ta, _ := newHTTPTestApp(t, []string{"-keepalive", "20ms"}, func(c *activator.Config) { c.RetryTries = 1 })
	// Four requests at once: four connections to the app, then kept.
	var wg sync.WaitGroup
	for range 4 {
		rc := dialRaw(t, ta.addr)
		wg.Go(func() {
			rc.send("GET /sleep?d=30ms HTTP/1.1\r\nHost: x\r\n\r\n")
			rc.response("GET")
		})
	}
	wg.Wait()
	// The app closes them after 20ms: the front must notice, or retry
	// quietly on a new connection.
	time.Sleep(60 * time.Millisecond) // the point of the test: after the app closed them
	rc := dialRaw(t, ta.addr)
	rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("GET"); resp.StatusCode != 200 {
		t.Errorf("GET after the app dropped its connections: %d %q, want 200", resp.StatusCode, body)
	}
	if n := ta.Metrics().Failures[activator.FailRefused]; n != 0 {
		t.Errorf("%d failures counted against the app, want 0: the app did nothing wrong", n)
	}
}

// A chunked response on the goroutine path (here: to the request that
// starts the app, held there) passes unchanged, as in the loop, its large
// chunks spliced; one the app cuts halfway cuts the client's connection.
func TestFrontChunkedResponsesOnAGoroutine(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	for _, tc := range []struct {
		path, body, trailer string
		n                   int
		cut                 bool
	}{
		{path: "/bytes?n=600000&chunked=1&write=262144", n: 600000}, // chunks long enough to splice
		{path: "/trailer", body: "part one, part two", trailer: "42"},
		{path: "/bytes?n=300000&chunked=1&cut=100000", n: 100000, cut: true},
	} {
		if err := ta.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		moved := movedFromLoops(t, ta.front)
		rc := dialRaw(t, ta.addr)
		rc.send("GET " + tc.path + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		b, err := io.ReadAll(resp.Body)
		switch {
		case tc.cut && err == nil, !tc.cut && err != nil:
			t.Errorf("%s: read %d bytes, %v; want a cut: %v", tc.path, len(b), err, tc.cut)
		case resp.ContentLength >= 0:
			t.Errorf("%s: Content-Length %d, want chunked", tc.path, resp.ContentLength)
		case tc.body != "" && string(b) != tc.body, tc.n > 0 && len(b) != tc.n:
			t.Errorf("%s: %d bytes %.40q", tc.path, len(b), b)
		case resp.Trailer.Get("X-Sum") != tc.trailer:
			t.Errorf("%s: trailer %v", tc.path, resp.Trailer)
		}
		moved(1) // the held request
	}
}

// A request pipelined while the one before waits for a slow app lands in
// the client's read buffer, where the first request's head was: the front
// must still know the first by its own method. Here a non-idempotent
// method of three letters, dropped by the app, followed by a GET: read
// from the refilled buffer it would look like a GET and be replayed.
func TestFrontPipelinedRequestKeepsTheFirstOnesMethod(t *testing.T) {
	hits := filepath.Join(t.TempDir(), "hits")
	ta := newTestApps(t, appSpec{onGoroutines: true, args: []string{"-proto", "http", "-hits", hits},
		edit: func(c *activator.Config) { c.Mode = activator.ModeHTTP }})[0]
	if resp, _ := testbackend.Get(t, testbackend.NewClient(t), "http://"+ta.addr+"/pid"); resp.StatusCode != 200 { // started, warm
		t.Fatal(resp.Status)
	}
	rc := dialRaw(t, ta.addr)
	rc.send("ABC /raw?after=400ms HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	// Once the front watches the client (the app took 50 ms), its Peek
	// reads the GET into the buffer over the first head, whether the GET
	// came before the watch began or after.
	leakcheck.WaitFor(t, "the app to have the request", func() bool { return testbackend.HitCount(t, hits, "/raw") == 1 })
	rc.send("GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("ABC"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("dropped ABC: %s %q, want 502 (not replayed)", resp.Status, body)
	}
	if n := testbackend.HitCount(t, hits, "/raw"); n != 1 {
		t.Errorf("the app got the ABC request %d times, want once", n)
	}
}

// The net/http path (a request the front leaves to net/http's server)
// passes the same responses as the front's own paths, over the front's own
// connections to the app: chunked ones with their trailers, large chunks,
// and a cut where the app broke off; and it streams request bodies larger
// than request_buffer, chunked or of a known length.
func TestNetHTTPPathResponsesAndBodies(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.RequestBuffer = 64 << 10 })
	for _, tc := range []struct {
		path, body, trailer string
		n                   int
		cut                 bool
	}{
		{path: "/trailer", body: "part one, part two", trailer: "42"},
		{path: "/bytes?n=600000&chunked=1&write=262144", n: 600000},
		{path: "/bytes?n=300000&chunked=1&cut=100000", n: 100000, cut: true},
		{path: "/bytes?n=300000", n: 300000},
		{path: "/raw?r=" + url.QueryEscape("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"), n: 5, cut: true},
	} {
		rc := dialRaw(t, ta.addr)
		rc.send(netHTTPShape("GET " + tc.path + " HTTP/1.1\r\nHost: x\r\nTe: trailers\r\n\r\n"))
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			if !tc.cut {
				t.Errorf("%s: %v", tc.path, err)
			}
			continue
		}
		b, err := io.ReadAll(resp.Body)
		switch {
		case tc.cut && err == nil, !tc.cut && err != nil:
			t.Errorf("%s: read %d bytes, %v; want a cut: %v", tc.path, len(b), err, tc.cut)
		case tc.body != "" && string(b) != tc.body, tc.n > 0 && !tc.cut && len(b) != tc.n:
			t.Errorf("%s: %d bytes %.40q", tc.path, len(b), b)
		case resp.Trailer.Get("X-Sum") != tc.trailer:
			t.Errorf("%s: trailer %v", tc.path, resp.Trailer)
		}
	}
	client := testbackend.NewClient(t)
	for _, size := range []int{1 << 20, 3<<20 + 5} {
		body := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		for _, chunked := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(body)
			if chunked {
				r = io.MultiReader(r) // no length known: sent chunked
			}
			resp, err := client.Post("http://"+ta.addr+"/echo", "application/octet-stream", r)
			if err != nil {
				t.Fatalf("POST %d bytes, chunked %v: %v", size, chunked, err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Equal(got, body) {
				t.Errorf("POST %d bytes, chunked %v (request_buffer 64 KiB): %d, %d bytes back %.80q", size, chunked, resp.StatusCode, len(got), got)
			}
		}
	}
	if st := ta.Status(); st.Failures != 0 || len(ta.Metrics().Failures) != 0 {
		t.Errorf("failures counted against the app: %d (last error %q)", st.Failures, st.LastError)
	}
}

// A client that does not speak HTTP (redis-cli, an SMTP or SSH client
// pointed at an http app) gets a 400 as soon as its first line is in,
// not after header_timeout, and the app is not started for it.
func TestFrontAnswersANonHTTPClientAtOnce(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.HeaderTimeout = time.Minute })
	for _, first := range []string{"PING\r\n", "*1\r\n$4\r\nPING\r\n", "EHLO mail.example\r\n", "SSH-2.0-OpenSSH_9.2\r\n"} {
		rc := dialRaw(t, ta.addr)
		rc.c.SetDeadline(time.Now().Add(10 * time.Second)) // far below header_timeout
		rc.send(first)
		resp, err := http.ReadResponse(rc.br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("%q: %v, want a 400 at once", first, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: %s, want 400", first, resp.Status)
		}
	}
	if st := ta.Status(); st.Starts != 0 {
		t.Errorf("the app was started %d times for clients that sent no request", st.Starts)
	}
}
