package httpfront

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/leakcheck"
	"github.com/rouse-dev/rouse/internal/testbackend"
)

// pyPrelude is the start of every Python app of the tests: it notes its
// pid in the starts file (sys.argv[2]), as the Go backend does, so the
// leak check sees it; PORT is sys.argv[1].
const pyPrelude = `import os, sys, time
PORT = int(sys.argv[1])
with open(sys.argv[2], "a") as f:
    f.write("%d %d\n" % (os.getpid(), time.time_ns()))
`

// newPythonHTTPApp is an http app whose process is script (after
// pyPrelude) run by python3; onGoroutines as in appSpec.
func newPythonHTTPApp(t testing.TB, script string, onGoroutines bool, edit func(*activator.Config)) *testApp {
	t.Helper()
	py := testbackend.Python3(t)
	return newTestApps(t, appSpec{onGoroutines: onGoroutines, edit: func(c *activator.Config) {
		_, port, _ := net.SplitHostPort(c.UpstreamAddress)
		starts := c.Process.Argv[2]
		c.Process.Argv = []string{py, "-c", pyPrelude + script, port, starts, filepath.Dir(starts)}
		c.Mode = activator.ModeHTTP
		c.RequestBuffer = 1 << 20
		c.ResponseTimeout = 30 * time.Second
		if edit != nil {
			edit(c)
		}
	}})[0]
}

// pyHTTP10 is a plain http.server app as the standard library has it:
// HTTP/1.0, every response framed by closing the connection, with a
// cookie in the head. GET /n/SIZE answers SIZE bytes that say which
// request they are for.
const pyHTTP10 = `
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        _, _, n, size = self.path.split("/")
        line = ("%s " % n).encode()
        body = (line * (int(size) // len(line) + 1))[:int(size)]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Set-Cookie", "sid=%s; HttpOnly" % n)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", PORT), H).serve_forever()
`

// pyBody is what pyHTTP10 answers to /n/size.
func pyBody(n, size int) string {
	line := strconv.Itoa(n) + " "
	return strings.Repeat(line, size/len(line)+1)[:size]
}

// A response framed by the app's closing the connection reaches the
// client once, byte for byte, however the app's last bytes and its FIN
// are split across events.
func TestHTTPCloseFramedResponsesOnceEach(t *testing.T) {
	ta := newPythonHTTPApp(t, pyHTTP10, false, nil)
	for i := range 300 {
		size := []int{0, 1, 100, 5000, 20000, 70000}[i%6]
		rc := dialRaw(t, ta.addr)
		rc.send(fmt.Sprintf("GET /n/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", i, size))
		resp, body := rc.response("GET")
		if resp.StatusCode != 200 || body != pyBody(i, size) || resp.Header.Get("Set-Cookie") != fmt.Sprintf("sid=%d; HttpOnly", i) {
			t.Fatalf("request %d: %d, cookie %q, body %d bytes %.80q, want %d bytes",
				i, resp.StatusCode, resp.Header.Get("Set-Cookie"), len(body), body, size)
		}
		if !resp.Close {
			t.Fatalf("request %d: no Connection: close on a response framed by close", i)
		}
		if rest, _ := io.ReadAll(rc.br); len(rest) > 0 {
			t.Fatalf("request %d: %d bytes after the response: %.80q", i, len(rest), rest)
		}
		rc.c.Close()
	}
}

// pyExtraBytes is a raw-socket app that misbehaves on purpose: after a
// complete response it sends more (a body to a HEAD, a body to a 204, a
// late second response), then creates the file DIR/sent-N (DIR is
// sys.argv[3]) so the test knows the bytes are on their way. GET /good/N
// is answered properly, with "good N". GET /pause/N stops its response
// after an exact multiple of the loop's buffer until the test creates
// DIR/go-N (a pause after a full read: TestLoopRelayPushesWhatCameBeforeAPause).
const pyExtraBytes = `
import socket, socketserver, threading
DIR = sys.argv[3]
PAUSE_TOTAL = 100000
PAUSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % PAUSE_TOTAL
PAUSE_FIRST = 3 * 16384 - len(PAUSE_HEAD)
class H(socketserver.BaseRequestHandler):
    def handle(self):
        # Each write goes at once: the test knows when bytes are sent.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = self.request.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            method, target = head.split(b" ")[:2]
            parts = target.decode().split("/")
            kind, n = parts[1], parts[2]
            s = self.request
            if kind == "good":
                body = ("good %s" % n).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                continue
            if kind == "pause":
                s.sendall(PAUSE_HEAD + b"a" * PAUSE_FIRST)
                while not os.path.exists(os.path.join(DIR, "go-" + n)):
                    time.sleep(0.005)
                s.sendall(b"b" * (PAUSE_TOTAL - PAUSE_FIRST))
                continue
            if kind == "headbody":
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
                extra = b"EVIL-HEAD-1"
            elif kind == "nocontent":
                s.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
                extra = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nEVIL-2"
            else:
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                extra = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nEVIL-3"
            time.sleep(0.02)
            s.sendall(extra)
            open(os.path.join(DIR, "sent-" + n), "w").close()
class S(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", PORT), H).serve_forever()
`

// Bytes an app sends after a complete response never reach another
// client: a kept connection to the app with anything unread is closed, not
// reused, on every path (net/http's server too).
func TestHTTPBytesAfterAResponseReachNoOtherClient(t *testing.T) {
	same := func(req string) string { return req }
	for _, path := range []struct {
		name         string
		onGoroutines bool
		shape        func(string) string
	}{{"loop", false, same}, {"goroutine", true, same}, {"net/http", false, netHTTPShape}} {
		t.Run(path.name, func(t *testing.T) {
			ta := newPythonHTTPApp(t, pyExtraBytes, path.onGoroutines, nil)
			a := dialRaw(t, ta.addr)
			n := 0
			good := func(rc *rawClient) {
				t.Helper()
				n++
				rc.send(path.shape(fmt.Sprintf("GET /good/%d HTTP/1.1\r\nHost: x\r\n\r\n", n)))
				if resp, body := rc.response("GET"); resp.StatusCode != 200 || body != fmt.Sprintf("good %d", n) {
					t.Fatalf("GET /good/%d: %d %q", n, resp.StatusCode, body)
				}
			}
			good(a)
			for i, tc := range []struct{ method, kind, body string }{
				{"HEAD", "headbody", ""},
				{"GET", "nocontent", ""},
				{"GET", "late", "ok"},
			} {
				a.send(path.shape(fmt.Sprintf("%s /%s/%d HTTP/1.1\r\nHost: x\r\n\r\n", tc.method, tc.kind, i)))
				if resp, body := a.response(tc.method); body != tc.body {
					t.Fatalf("%s /%s: %d %q, want %q", tc.method, tc.kind, resp.StatusCode, body, tc.body)
				}
				leakcheck.WaitFor(t, "the app's extra bytes sent", func() bool {
					_, err := os.Stat(filepath.Join(ta.dir, fmt.Sprintf("sent-%d", i)))
					return err == nil
				})
				good(a)
				good(dialRaw(t, ta.addr))
				good(a)
			}
		})
	}
}

// pyWSGI is an app of the CGI convention (wsgiref): request headers reach
// it as HTTP_* variables, '-' and '_' alike. It answers the forwarding
// variables it got, one per line.
const pyWSGI = `
from wsgiref.simple_server import make_server, WSGIRequestHandler
def app(environ, start_response):
    body = "".join("%s=%s\n" % (k, environ.get(k, "")) for k in
        ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_FORWARDED")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
class Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass
make_server("127.0.0.1", PORT, app, handler_class=Quiet).serve_forever()
`

// A client cannot pass its own X-Forwarded-* for rouse's by spelling them
// with '_', on any path: the loop, a goroutine, net/http's server.
func TestHTTPForwardedHeadersCannotBeSpoofedWithUnderscores(t *testing.T) {
	const spoof = "X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\nx_forwarded_host: evil.example\r\nX-Forwarded-For: 7.7.7.7\r\nForwarded: for=6.6.6.6\r\n"
	const want = "HTTP_X_FORWARDED_FOR=127.0.0.1\nHTTP_X_FORWARDED_PROTO=http\nHTTP_X_FORWARDED_HOST=x\nHTTP_FORWARDED=\n"
	for _, onGoroutines := range []bool{false, true} {
		ta := newPythonHTTPApp(t, pyWSGI, onGoroutines, nil)
		for _, req := range []string{
			"GET / HTTP/1.1\r\nHost: x\r\n" + spoof + "\r\n",                                         // the loop, or a goroutine
			"GET / HTTP/1.0\r\nHost: x\r\n" + spoof + "\r\n",                                         // net/http
			"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + spoof + "\r\n0\r\n\r\n", // net/http
		} {
			for range 2 { // the first starts the app
				rc := dialRaw(t, ta.addr)
				rc.send(req)
				if resp, body := rc.response("GET"); resp.StatusCode != 200 || body != want {
					t.Errorf("goroutines %v, %.40q: %d\n%s\nwant\n%s", onGoroutines, req, resp.StatusCode, body, want)
				}
			}
		}
	}
}

// pyEarlyAnswer answers 413 as soon as it has a request's head, and then
// reads nothing more of that connection (as an app refusing an upload
// does), keeping it open.
const pyEarlyAnswer = `
import socket, socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = self.request.recv(65536)
            if not d:
                return
            buf += d
        self.request.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
        time.sleep(60)
class S(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", PORT), H).serve_forever()
`

// An app that answers a large upload before reading it has its answer
// passed on at once, on the net/http path (which streams such bodies):
// not when the client sends its next bytes, nor body_timeout later.
func TestHTTPEarlyAnswerToAStreamedBody(t *testing.T) {
	ta := newPythonHTTPApp(t, pyEarlyAnswer, false, func(c *activator.Config) {
		c.RequestBuffer = 1 << 10
		c.BodyTimeout = time.Minute
	})
	for _, framing := range []string{"Content-Length: 1000000\r\n", "Transfer-Encoding: chunked\r\n"} {
		rc := dialRaw(t, ta.addr)
		part := strings.Repeat("x", 4<<10)
		if strings.HasPrefix(framing, "Transfer") {
			part = fmt.Sprintf("%x\r\n%s\r\n", len(part), part)
		}
		// More than request_buffer, then the client waits.
		rc.send("POST /upload HTTP/1.1\r\nHost: x\r\n" + framing + "\r\n" + part)
		rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if resp, body := rc.response("POST"); resp.StatusCode != 413 || body != "big!" {
			t.Errorf("%q: %d %q", framing, resp.StatusCode, body)
		}
	}
}

// pyDuplexEcho answers a POST with its body as it reads it: the head goes
// out first, then each piece of the body as it comes (an upload progress
// or transcoding app works so).
const pyDuplexEcho = `
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(5)
while True:
    c, _ = s.accept()
    f = c.makefile("rb")
    while True:
        n = -1
        line = f.readline()
        if not line:
            break
        while line not in (b"\r\n", b"\n", b""):
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
            line = f.readline()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        while n > 0:
            b = f.read1(min(n, 65536))
            if not b:
                break
            c.sendall(b)
            n -= len(b)
    c.close()
`

// An app that streams its answer while it reads a large request body gets
// the whole body, every byte in order, and the client gets it back: the
// front must not read any of that body itself (as net/http's server does
// when a response begins before the body was read).
func TestHTTPDuplexAppGetsTheWholeBody(t *testing.T) {
	ta := newPythonHTTPApp(t, pyDuplexEcho, false, func(c *activator.Config) { c.RequestBuffer = 1 << 10 })
	rc := dialRaw(t, ta.addr)
	for i := range 3 {
		body := make([]byte, 1<<20)
		for j := range body {
			body[j] = byte(j*7 + j>>8 + i)
		}
		sent := make(chan error, 1)
		go func() {
			_, err := io.WriteString(rc.c, fmt.Sprintf("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
			sent <- err
		}()
		resp, got := rc.response("POST")
		if err := <-sent; err != nil {
			t.Fatalf("request %d: sending: %v", i, err)
		}
		if resp.StatusCode != 200 || got != string(body) {
			t.Fatalf("request %d: %d, %d bytes back of %d, same: %v", i, resp.StatusCode, len(got), len(body), got == string(body))
		}
	}
}
