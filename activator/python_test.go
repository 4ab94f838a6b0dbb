package activator

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// python3 returns the Python interpreter the tests run apps with:
// Debian's when there is one (CI has only that), else the one on PATH.
func python3(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed (.ci/deps): %v", err)
	}
	return p
}

// pyPrelude is the start of every Python app of the tests: it notes its
// pid in the starts file (sys.argv[2]), as the Go backend does, so the
// leak check sees it; PORT is sys.argv[1].
const pyPrelude = `import os, sys, time
PORT = int(sys.argv[1])
with open(sys.argv[2], "a") as f:
    f.write("%d %d\n" % (os.getpid(), time.time_ns()))
`

// newPythonHTTPApp is an http app whose process is script (after
// pyPrelude) run by python3.
func newPythonHTTPApp(t testing.TB, script string, edit func(*Config)) *testApp {
	t.Helper()
	py := python3(t)
	return newTestApp(t, nil, func(c *Config) {
		_, port, _ := net.SplitHostPort(c.UpstreamAddress)
		c.Process.Argv = []string{py, "-c", pyPrelude + script, port, c.Process.Argv[2]}
		c.Mode = ModeHTTP
		c.RequestBuffer = 1 << 20
		c.ResponseTimeout = 30 * time.Second
		if edit != nil {
			edit(c)
		}
	})
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
	ta := newPythonHTTPApp(t, pyHTTP10, nil)
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
