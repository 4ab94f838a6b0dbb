package httpfront

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/testbackend"
)

// The conformance table: raw requests and raw responses, run through rouse
// in front of a recording app, on every path. For each, what the client
// got and exactly which requests the app read (as net/http's server reads
// them, normalized so that the paths, which order and spell headers their
// own way, compare equal).

// recApp is an app written to misbehave on demand: it reads requests as
// net/http's server does, records them, and answers each with resp (GET
// /after aside, which it answers "after" and does not record), after
// delay.
type recApp struct {
	ln    net.Listener
	delay time.Duration

	mu        sync.Mutex
	got       []string
	resp      []byte
	closeResp bool   // close the connection after resp
	late      []byte // sent a moment after resp, then lateSent
	lateSent  chan struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

func newRecApp(t *testing.T, delay time.Duration) *recApp {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ra := &recApp{ln: ln, delay: delay, conns: make(map[net.Conn]struct{}), lateSent: make(chan struct{}, 1)}
	ra.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ra.mu.Lock()
			ra.conns[c] = struct{}{}
			ra.mu.Unlock()
			ra.wg.Go(func() { ra.serve(c) })
		}
	})
	return ra
}

func (ra *recApp) close() {
	ra.ln.Close()
	ra.mu.Lock()
	for c := range ra.conns {
		c.Close()
	}
	ra.mu.Unlock()
	ra.wg.Wait()
}

func (ra *recApp) serve(c net.Conn) {
	defer func() {
		c.Close()
		ra.mu.Lock()
		delete(ra.conns, c)
		ra.mu.Unlock()
	}()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			// (A reset: rouse closed a connection with the app's
			// unasked bytes unread, as it should.)
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) {
				ra.record("app: bad request: " + err.Error())
			}
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			ra.record("app: bad body: " + err.Error())
			return
		}
		if req.RequestURI == "/after" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter")
			continue
		}
		ra.record(normRequest(req, body))
		time.Sleep(ra.delay) // a slow app: the point of the path
		ra.mu.Lock()
		resp, closeResp, late := ra.resp, ra.closeResp, ra.late
		ra.mu.Unlock()
		c.Write(resp)
		if late != nil {
			time.Sleep(20 * time.Millisecond) // the app misbehaving: a late duplicate
			c.Write(late)
			ra.lateSent <- struct{}{}
		}
		if closeResp {
			return
		}
	}
}

func (ra *recApp) record(s string) {
	ra.mu.Lock()
	ra.got = append(ra.got, s)
	ra.mu.Unlock()
}

// take sets the answer to the next requests (and the bytes sent a moment
// after it, if late is not empty) and returns those recorded since the
// last call.
func (ra *recApp) take(resp string, closeResp bool, late string) []string {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	got := ra.got
	ra.got, ra.resp, ra.closeResp, ra.late = nil, []byte(resp), closeResp, nil
	if late != "" {
		ra.late = []byte(late)
	}
	return got
}

// normRequest is what the app read: request line, Host, headers sorted,
// lower case, one a line, then the body (de-chunked). Connection: close
// is left out: when the app's connection ends is each path's own.
func normRequest(r *http.Request, body []byte) string {
	var lines []string
	for k, vv := range r.Header {
		for _, v := range vv {
			if k == "Connection" && v == "close" {
				continue
			}
			lines = append(lines, strings.ToLower(k)+": "+v)
		}
	}
	if len(r.TransferEncoding) > 0 {
		lines = append(lines, "transfer-encoding: "+strings.Join(r.TransferEncoding, ","))
	}
	slices.Sort(lines)
	return fmt.Sprintf("%s %s %s\nhost: %s\n%s\n%s", r.Method, r.RequestURI, r.Proto, r.Host, strings.Join(lines, "\n"), body)
}

// appReq is normRequest's form of a request from the test's client:
// rouse adds X-Forwarded-*, and sends HTTP/1.1.
func appReq(line, host, body string, headers ...string) string {
	headers = append(headers, "x-forwarded-for: 127.0.0.1", "x-forwarded-host: "+host, "x-forwarded-proto: http")
	slices.Sort(headers)
	return fmt.Sprintf("%s HTTP/1.1\nhost: %s\n%s\n%s", line, host, strings.Join(headers, "\n"), body)
}

const okResp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

type confCase struct {
	name      string
	req       string   // what the client sends
	resp      string   // what the app answers (okResp if empty)
	appCloses bool     // the app closes its connection after resp
	late      string   // what the app sends a moment after resp
	client    []string // the responses: "STATUS" or "STATUS BODY", or "cut" (the body broke off)
	closed    bool     // the client's connection is closed after them; else it serves GET /after
	app       []string // the requests the app read
	// headCount says how often a header must appear in the client's raw
	// response heads (in all of them).
	headCount map[string]int
}

var getA = appReq("GET /a", "x", "")

var confCases = []confCase{
	{name: "plain", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", client: []string{"200 ok"}, app: []string{getA}},
	{name: "body", req: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		client: []string{"200 ok"}, app: []string{appReq("POST /a", "x", "hello", "content-length: 5")}},
	// Request smuggling classics: never two requests out of one.
	{name: "CL.TE", req: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
		client: []string{"400"}, closed: true},
	{name: "TE.CL", req: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
		client: []string{"400"}, closed: true},
	{name: "TE.TE twice", req: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
		client: []string{"501"}, closed: true},
	{name: "TE.TE unknown", req: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
		client: []string{"501"}, closed: true},
	{name: "TE.TE space before colon", req: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
		client: []string{"400"}, closed: true},
	// obs-fold is read as a space (RFC 9112 5.2), and then it is chunked.
	{name: "TE.TE folded", req: "POST /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
		client: []string{"200 ok"}, closed: true, app: []string{appReq("POST /a", "x", "", "content-length: 0", "x-a: 1")}},
	{name: "HTTP/1.0 with TE", req: "POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
		client: []string{"400"}, closed: true},
	{name: "chunked, closed after", req: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		client: []string{"200 ok"}, closed: true, app: []string{appReq("POST /a", "x", "abc", "content-length: 3")}},
	{name: "huge chunk size", req: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
		client: []string{"400"}, closed: true},
	{name: "obs-fold", req: "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
		client: []string{"200 ok"}, app: []string{appReq("GET /a", "x", "", "x-a: a b")}},
	{name: "bare LF", req: "GET /a HTTP/1.1\nHost: x\n\n", client: []string{"200 ok"}, app: []string{getA}},
	{name: "bare CR", req: "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", client: []string{"400"}, closed: true},
	{name: "NUL", req: "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", client: []string{"400"}, closed: true},
	{name: "spoofed forwarding", req: "GET /a HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n\r\n",
		client: []string{"200 ok"}, app: []string{getA}},
	{name: "absolute form", req: "GET http://a.example/p?q HTTP/1.1\r\nHost: x\r\n\r\n",
		client: []string{"200 ok"}, app: []string{appReq("GET /p?q", "a.example", "")}},
	{name: "absolute form, bad host", req: "GET http://a\"<b/ HTTP/1.1\r\nHost: x\r\n\r\n", client: []string{"400"}, closed: true},
	{name: "authority target", req: "GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n", client: []string{"200 ok"}, app: []string{appReq("GET x:80", "x", "")}},
	{name: "CONNECT", req: "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", client: []string{"400"}},
	{name: "OPTIONS *", req: "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", client: []string{"200 ok"}, app: []string{appReq("OPTIONS *", "x", "")}},
	{name: "upgrade without 101", req: "GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		client: []string{"200 ok"}, app: []string{appReq("GET /a", "x", "", "connection: Upgrade", "upgrade: websocket")}},
	{name: "pipelined", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
		client: []string{"200 ok", "200 ok"}, app: []string{getA, getA}},

	// What the app answers.
	{name: "unasked 101", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n",
		appCloses: true, client: []string{"502"}, app: []string{getA}},
	{name: "duplicate Content-Length", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
		client: []string{"200 ok"}, app: []string{getA}, headCount: map[string]int{"Content-Length": 1}},
	{name: "204 with Content-Length", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
		client: []string{"204 "}, app: []string{getA}, headCount: map[string]int{"Content-Length": 0}},
	{name: "304 with Transfer-Encoding", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
		client: []string{"304 "}, app: []string{getA}, headCount: map[string]int{"Transfer-Encoding": 0, "Content-Length": 0}},
	{name: "HEAD answered with a body", req: "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		client: []string{"200 "}, app: []string{appReq("HEAD /a", "x", "")}, headCount: map[string]int{"Content-Length": 1}},
	{name: "HEAD answered chunked", req: "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		client: []string{"200 "}, app: []string{appReq("HEAD /a", "x", "")}},
	// A client that asks to close: its last response goes with the FIN,
	// whole, from the loop's buffer or passed on through it.
	{name: "client asks to close", req: "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		client: []string{"200 ok"}, closed: true, app: []string{getA}},
	{name: "client asks to close, long response", req: "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		resp:   "HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n" + strings.Repeat("z", 50000),
		client: []string{"200 " + strings.Repeat("z", 50000)}, closed: true, app: []string{getA}},
	{name: "body until close", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.0 200 OK\r\nSet-Cookie: s=1\r\n\r\nall of it", appCloses: true,
		client: []string{"200 all of it"}, closed: true, app: []string{getA}, headCount: map[string]int{"Set-Cookie": 1}},
	{name: "response CL and TE", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		appCloses: true, client: []string{"502"}, app: []string{getA}},
	{name: "response TE not chunked", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
		appCloses: true, client: []string{"502"}, app: []string{getA}},
	{name: "response bare CR in a chunk line", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\rx\r\nok\r\n0\r\n\r\n",
		appCloses: true, client: []string{"cut"}, closed: true, app: []string{getA}},
	{name: "response CR-only trailer line", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\r\n",
		appCloses: true, client: []string{"cut"}, closed: true, app: []string{getA}},
	// Bytes after a complete response are the app's error: the next
	// request on that app connection would get them. It is not reused.
	{name: "204 with a body", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
		client: []string{"204 "}, app: []string{getA}},
	{name: "late bytes", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", late: "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
		client: []string{"200 ok"}, app: []string{getA}},
	{name: "HEAD answered with a late body", req: "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n", resp: "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", late: "EVIL",
		client: []string{"200 "}, app: []string{appReq("HEAD /a", "x", "")}},
}

// netHTTPShape turns plain requests into ones the front leaves to
// net/http's server (a Connection option it does not know), which must
// come to the same.
func netHTTPShape(req string) string {
	return strings.ReplaceAll(req, " HTTP/1.1\r\n", " HTTP/1.1\r\nConnection: keep-alive, X-Hop\r\n")
}

func TestConformance(t *testing.T) {
	py := testbackend.Python3(t)
	for _, path := range []struct {
		name         string
		onGoroutines bool
		delay        time.Duration
	}{
		{"loop", false, 0},
		{"goroutine", true, 0},
		{"loop then goroutine (slow app)", false, watchAfter + 30*time.Millisecond},
	} {
		t.Run(path.name, func(t *testing.T) {
			ra := newRecApp(t, path.delay)
			ta := newTestApps(t, appSpec{onGoroutines: path.onGoroutines, edit: func(c *activator.Config) {
				c.Mode = activator.ModeHTTP
				c.Process.Argv = []string{py, "-c", pyPrelude + "time.sleep(1e6)\n", "0", c.Process.Argv[2]}
				c.UpstreamAddress = ra.ln.Addr().String()
				c.RetryTries, c.MaxFails = 1, 0 // one request per case, whatever the app does
				c.RequestBuffer = 1 << 20
			}})[0]
			t.Cleanup(ra.close) // before newTestApps' leak check
			ra.take(okResp, false, "")
			rc := dialRaw(t, ta.addr)
			rc.send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n") // starts the app
			if _, body := rc.response("GET"); body != "after" {
				t.Fatalf("first request: %q", body)
			}
			for _, tc := range confCases {
				runConfCase(t, ta, ra, tc.name, tc.req, tc)
				// (Those of another shape go to net/http's server already,
				// or are answered before.)
				if shaped := netHTTPShape(tc.req); shaped != tc.req && !strings.Contains(tc.req, "HTTP/1.0") {
					runConfCase(t, ta, ra, tc.name+" (net/http)", shaped, tc)
				}
			}
			if path.delay > 0 {
				return // (the split is the front's to read: the same on this path as on the loop)
			}
			// Pipelined requests split at every byte.
			two := "GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
			tc := confCase{client: []string{"200 ok", "200 ok"}, app: []string{getA, appReq("POST /a", "x", "hi", "content-length: 2")}}
			for name, req := range map[string]string{"": two, " (net/http)": netHTTPShape(two)} {
				for i := 1; i < len(req); i++ {
					tc.req = req[:i] + "\x00split\x00" + req[i:]
					runConfCase(t, ta, ra, fmt.Sprintf("pipelined, split at %d%s", i, name), tc.req, tc)
				}
			}
		})
	}
}

// runConfCase runs one case on a new connection; a "\x00split\x00" in req
// is where it is sent in two writes.
func runConfCase(t *testing.T, ta *testApp, ra *recApp, name, req string, tc confCase) {
	t.Helper()
	resp := tc.resp
	if resp == "" {
		resp = okResp
	}
	ra.take(resp, tc.appCloses, tc.late)
	c, err := net.Dial("tcp", ta.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	for part := range strings.SplitSeq(req, "\x00split\x00") {
		io.WriteString(c, part)
	}
	method, _, _ := strings.Cut(req, " ")
	var got []string
	for range tc.client {
		r, err := http.ReadResponse(br, &http.Request{Method: method})
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			got = append(got, "cut") // nothing of the response went yet
			break
		}
		if err != nil {
			got = append(got, "no response: "+err.Error())
			break
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			got = append(got, "cut")
			break
		}
		got = append(got, fmt.Sprintf("%d %s", r.StatusCode, body))
	}
	for i, want := range tc.client {
		switch {
		case i >= len(got):
		case strings.Contains(want, " ") || want == "cut":
			if got[i] != want {
				t.Errorf("%s: response %d: %q, want %q", name, i, got[i], want)
			}
		case !strings.HasPrefix(got[i], want+" "):
			t.Errorf("%s: response %d: %q, want status %s", name, i, got[i], want)
		}
	}
	if len(got) < len(tc.client) {
		t.Errorf("%s: %d responses, want %d: %q", name, len(got), len(tc.client), got)
	}
	for h, n := range tc.headCount {
		if k := strings.Count(strings.ToLower(raw.String()), "\n"+strings.ToLower(h)+":"); k != n {
			t.Errorf("%s: %s %d times in the response heads, want %d:\n%s", name, h, k, n, raw.String())
		}
	}
	if tc.closed {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: %q, %v after the responses, want the connection closed", name, b, err)
		}
	} else {
		if tc.late != "" {
			select {
			case <-ra.lateSent:
			case <-time.After(10 * time.Second):
				t.Errorf("%s: the app sent no late bytes", name)
			}
		}
		io.WriteString(c, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Errorf("%s: GET /after on the same connection: %v", name, err)
		} else if body, _ := io.ReadAll(r.Body); string(body) != "after" {
			t.Errorf("%s: GET /after on the same connection: %d %q", name, r.StatusCode, body)
		}
	}
	if app := ra.take(okResp, false, ""); !slices.Equal(app, tc.app) {
		t.Errorf("%s: the app read\n%q\nwant\n%q", name, app, tc.app)
	}
}
