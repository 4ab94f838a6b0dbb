package httpfront

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/leakcheck"
)

// Clients that stall their request bodies cannot hold an app's slots
// beyond body_timeout, whichever path reads the body: net/http's server
// (behind Expect: 100-continue, a body streamed past request_buffer, a
// chunked one) and a goroutine of the front (a Content-Length body not
// all there). Each gets 408, its connection closes, the slots are freed.
func TestBodyTimeoutFreesTheSlots(t *testing.T) {
	const timeout = 400 * time.Millisecond
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) {
		c.MaxConns = 2
		c.BodyTimeout = timeout
		c.RequestBuffer = 1 << 10
	})
	rc := dialRaw(t, ta.addr)
	rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n") // the app is ready: a stall below holds a slot at once
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	stalls := []string{
		// These two hold a slot while they stall: both of max_conns.
		"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("b", 70000),
		"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
		"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
	}
	start := time.Now()
	done := make(chan string, len(stalls))
	for _, req := range stalls {
		rc := dialRaw(t, ta.addr)
		rc.send(req)
		go func() {
			resp, err := http.ReadResponse(rc.br, nil)
			for err == nil && resp.StatusCode == http.StatusContinue {
				resp, err = http.ReadResponse(rc.br, nil)
			}
			if err != nil {
				done <- err.Error()
				return
			}
			io.Copy(io.Discard, resp.Body)
			_, eof := rc.br.ReadByte()
			done <- resp.Status + " " + closeText(resp.Close) + " " + eofText(eof)
		}()
	}
	leakcheck.WaitFor(t, "both slots taken by stalled bodies", func() bool { return ta.Status().Conns == 2 })
	for range stalls {
		if got := <-done; got != "408 Request Timeout Connection: close EOF" {
			t.Errorf("a stalled body: %q, want 408, Connection: close, then EOF", got)
		}
	}
	if took := time.Since(start); took < timeout {
		t.Errorf("answered after %s, before body_timeout", took)
	}
	leakcheck.WaitFor(t, "the slots freed", func() bool { return ta.Status().Conns == 0 })
	rc.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
	if resp, body := rc.response("POST"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("POST after the stalls: %d %q", resp.StatusCode, body)
	}
}

func closeText(close bool) string {
	if close {
		return "Connection: close"
	}
	return "no Connection: close"
}

func eofText(err error) string {
	if err == io.EOF {
		return "EOF"
	}
	return "no EOF"
}

// A request head has header_timeout from the connection, however it
// moves: one that comes in parts and grows past the loop's buffer goes to
// a goroutine, then to net/http's server, and neither starts the clock
// again.
func TestHeaderTimeoutCoversAHeadHandedOn(t *testing.T) {
	const timeout = 600 * time.Millisecond
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.HeaderTimeout = timeout })
	start := time.Now() // (before the connection, whose clock starts at its accept)
	rc := dialRaw(t, ta.addr)
	rc.send("GET / HTTP/1.1\r\nHost: x\r\nX-A: " + strings.Repeat("a", 4000) + "\r\n")
	time.Sleep(timeout * 2 / 3) // a head in parts: the point of the test
	rc.send("X-B: " + strings.Repeat("b", frontReadBuffer) + "\r\n")
	n, err := rc.br.Read(make([]byte, 1))
	took := time.Since(start)
	if n != 0 || err != io.EOF {
		t.Errorf("read %d bytes, %v; want the connection closed", n, err)
	}
	if took < timeout || took > timeout*4/3 {
		t.Errorf("closed after %s, want header_timeout (%s) from the connection", took, timeout)
	}
	if ta.front.handedOff.Load() != 1 {
		t.Errorf("the head was not handed to net/http")
	}
}

// An HTTP/1.0 GET (served by net/http's server) whose client stops
// reading is cut at send_timeout, and the app's slot freed.
func TestSendTimeoutOnTheNetHTTPPath(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.SendTimeout = timeout })
	rc := dialSmallWindow(t, ta.addr)
	rc.send("GET /bytes?n=50000000 HTTP/1.0\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	leakcheck.WaitFor(t, "the app's slot taken", func() bool { return ta.Status().Conns == 1 })
	start := time.Now()
	leakcheck.WaitFor(t, "the client cut and the slot freed", func() bool { return ta.Status().Conns == 0 })
	if took := time.Since(start); took < timeout/2 {
		t.Errorf("cut after %s, before the send timeout", took)
	}
	if n, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Errorf("read %d bytes and a clean end", n)
	}
	if ta.front.handedOff.Load() != 1 {
		t.Errorf("the request was not served by net/http")
	}
}
