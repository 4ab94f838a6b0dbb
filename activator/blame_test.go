package activator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestBlame(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	emfile := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	full := &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EAGAIN)}
	for _, tc := range []struct {
		name       string
		err        error
		stage      Stage
		clientGone bool
		want       verdict
	}{
		{"dial refused", refused, StageDial, false, verdict{FailRefused, true}},
		{"dial timed out", fmt.Errorf("dial: %w", os.ErrDeadlineExceeded), StageDial, false, verdict{FailDialTimeout, true}},
		{"unix backlog full", full, StageDial, false, verdict{ErrKindBacklog, false}},
		{"rouse out of fds", emfile, StageDial, false, verdict{ErrKindLocal, false}},
		{"client gone while dialing", context.Canceled, StageDial, false, verdict{ErrKindClient, false}},
		{"client gone, any error", refused, StageDial, true, verdict{ErrKindClient, false}},
		{"app reset after accepting", reset, StageConnected, false, verdict{ErrKindAppClosed, false}},
		{"app closed before answering", io.EOF, StageConnected, false, verdict{ErrKindAppClosed, false}},
		{"app cut the body", io.ErrUnexpectedEOF, StageConnected, false, verdict{ErrKindAppClosed, false}},
		{"malformed response", ErrBadResponse, StageConnected, false, verdict{ErrKindBadResponse, false}},
		{"write to the client failed", WriteError{reset}, StageConnected, false, verdict{ErrKindClient, false}},
		{"response too slow", os.ErrDeadlineExceeded, StageConnected, false, verdict{ErrKindAppClosed, false}},
		{"transport refused the request", errors.New("http: no Host in request URL"), StageRejected, false, verdict{ErrKindUnforwardable, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := blame(tc.err, tc.stage, tc.clientGone); got != tc.want {
				t.Errorf("blame(%v, %d, %v) = %+v, want %+v", tc.err, tc.stage, tc.clientGone, got, tc.want)
			}
		})
	}
}

// newPyApp is an app whose process is examples/apps/pyapp.py (Python's
// own servers with their defaults: backlog 5, HTTP/1.0) run with args
// after its kind; mode http unless edit says otherwise.
func newPyApp(t testing.TB, kind string, args []string, edit func(*Config)) *testApp {
	t.Helper()
	script, err := filepath.Abs("../examples/apps/pyapp.py")
	if err != nil {
		t.Fatal(err)
	}
	return newTestApp(t, nil, func(c *Config) {
		_, port, _ := strings.Cut(c.UpstreamAddress, ":")
		c.Process.Argv = append([]string{python3(t), script, kind, "--port", port, "--starts", c.Process.Argv[2]}, args...)
		c.Process.Env = nil
		if kind == "http" {
			c.Mode = ModeHTTP
		}
		if edit != nil {
			edit(c)
		}
	})
}

// rawHTTP sends req on a new connection and returns the response head
// (or what came of it, and the error that ended the exchange).
func rawHTTP(t testing.TB, addr, req string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	var head strings.Builder
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil || line == "\r\n" {
			return head.String(), err
		}
	}
}

// onePid checks that the app ran exactly one process, and returns it.
func onePid(t testing.TB, ta *testApp) int {
	t.Helper()
	pids := ta.pids()
	if len(pids) != 1 {
		t.Fatalf("app ran %d processes (%v), want 1", len(pids), pids)
	}
	return pids[0]
}

// checkNoFailures fails t if anything was counted against the app.
func checkNoFailures(t testing.TB, ta *testApp) {
	t.Helper()
	if f := ta.Metrics().Failures; len(f) != 0 {
		t.Errorf("failures counted against the app: %v", f)
	}
	if st := ta.Status(); st.State != Ready || st.Failures != 0 {
		t.Errorf("app %s with %d failures, want ready with none (last error %q)", st.State, st.Failures, st.LastError)
	}
}

// A burst of first requests to a cold app with Python's backlog of 5 is
// released at the pace the app accepts: every one is served by the one
// process. Dialed all at once, the SYNs beyond the backlog are dropped and
// retransmitted by the kernel 1, 3, 7, 15 s later: the stragglers then
// outlast the client's timeout.
func TestHTTPColdBurstOnSmallBacklogAllServed(t *testing.T) {
	const n = 300
	ta := newPyApp(t, "http", []string{"--boot", "0.3"}, nil)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, DisableKeepAlives: true}, Timeout: 12 * time.Second}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			resp, err := client.Get("http://" + ta.addr + "/")
			if err != nil {
				errs <- err
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("%s: %s", resp.Status, body)
			}
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 5 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d first requests not served", failed, n)
	}
	onePid(t, ta)
	checkNoFailures(t, ta)
}

// A route whose handler drops the connection fails that request (502),
// never the app: the same process serves the other routes, whatever
// max_fails says.
func TestHTTPBrokenRouteNeverTakesTheAppDown(t *testing.T) {
	ta := newPyApp(t, "http", nil, func(c *Config) { c.MaxFails = 2 })
	client := newClient(t)
	if resp, _ := get(t, client, "http://"+ta.addr+"/"); resp.StatusCode != 200 {
		t.Fatalf("first request: %s", resp.Status)
	}
	for i := range 10 {
		resp, body := get(t, client, "http://"+ta.addr+"/drop")
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("broken route, request %d: %s %q, want 502", i, resp.Status, body)
		}
		if resp, body := get(t, client, "http://"+ta.addr+"/"); resp.StatusCode != 200 {
			t.Fatalf("healthy route after %d broken ones: %s %q", i+1, resp.Status, body)
		}
	}
	onePid(t, ta)
	checkNoFailures(t, ta)
	// GET is idempotent: each broken request was tried retry_tries times.
	if got := ta.Metrics().Errors[ErrKindAppClosed]; got < 10 {
		t.Errorf("app_closed errors counted: %d, want >= 10", got)
	}
}

// Requests rouse cannot forward are the client's: 400 (or an answer of
// net/http's server), no attempt, nothing counted against the app.
func TestHTTPUnforwardableRequestsAreNotTheAppsFault(t *testing.T) {
	ta := newPyApp(t, "http", nil, func(c *Config) { c.MaxFails = 1 })
	if head, err := rawHTTP(t, ta.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil || !strings.Contains(head, " 200 ") {
		t.Fatalf("first request: %q %v", head, err)
	}
	for _, req := range []string{
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost:\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 9\r\n\r\n",
		"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		for range 3 {
			head, err := rawHTTP(t, ta.addr, req)
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("%q: %v", req, err)
			}
			// The app's own answers (Python's 501 to a POST) pass; a 5xx
			// of rouse's says it blamed the app.
			if strings.HasPrefix(head, "HTTP/1.1 5") && strings.Contains(head, "Proxy-Status: rouse") {
				t.Errorf("%q: %q: rouse blamed the app for a request it could not forward", req, head)
			}
		}
	}
	if head, err := rawHTTP(t, ta.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil || !strings.Contains(head, " 200 ") {
		t.Fatalf("request after the bad ones: %q %v", head, err)
	}
	onePid(t, ta)
	checkNoFailures(t, ta)
}

// Clients of a tcp app that read a little of a large download and go
// away, half of them with a reset, are their own business: the app keeps
// its process and serves a bystander throughout.
func TestTCPClientResetsAreNotTheAppsFault(t *testing.T) {
	ta := newPyApp(t, "stream", []string{"--size", strconv.Itoa(16 << 20)}, func(c *Config) { c.MaxFails = 2 })
	read := func(n int, reset bool) error {
		c, err := net.DialTimeout("tcp", ta.addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
			return err
		}
		if reset {
			c.(*net.TCPConn).SetLinger(0) // close sends RST
		}
		return nil
	}
	if err := read(1, false); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			if err := read(64<<10, i%2 == 0); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// A bystander reads a whole download meanwhile.
	c, err := net.DialTimeout("tcp", ta.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, c)
	c.Close()
	if err != nil || n != 16<<20 {
		t.Fatalf("bystander got %d bytes, %v", n, err)
	}
	onePid(t, ta)
	checkNoFailures(t, ta)
}

// An app that exits with status 0 right after it is ready, while a client
// waits for it, failed that start: back-off, not a respawn per request.
func TestExitZeroWithAClientWaitingIsAFailure(t *testing.T) {
	ta := newPyApp(t, "http", []string{"--exit-after-ready", "0"}, func(c *Config) {
		c.QueueTimeout, c.RetryTimeout = 3*time.Second, 3*time.Second
	})
	client := newClient(t)
	start := time.Now()
	resp, body := get(t, client, "http://"+ta.addr+"/")
	if resp.StatusCode == 200 {
		t.Skipf("the app served before it exited (%q): nothing to test on this run", body)
	}
	if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("got %s %q, want 503 or 502", resp.Status, body)
	}
	// Back-off 1 s, 2 s: at most 3 starts in the 3 s the request waited.
	if took, n := time.Since(start), len(ta.pids()); n > 3+int(took/(4*time.Second)) {
		t.Errorf("%d starts in %s for one request: no back-off", n, took)
	}
	st := ta.Status()
	if st.Failures == 0 {
		t.Errorf("no failure counted (state %s, last error %q)", st.State, st.LastError)
	}
}

// An app that closes its listening socket while its process lives is
// restarted by max_fails, and a request that arrives meanwhile is held for
// the new process, not answered 503 after three tries in a few ms.
func TestHTTPClosedListenerIsServedByTheRestart(t *testing.T) {
	ta := newPyApp(t, "http", nil, func(c *Config) { c.MaxFails = 3 })
	client := newClient(t)
	if resp, _ := get(t, client, "http://"+ta.addr+"/close-listener"); resp.StatusCode != 200 {
		t.Fatalf("close-listener: %s", resp.Status)
	}
	first := onePid(t, ta)
	waitFor(t, "the app's listener closed", func() bool {
		c, err := net.Dial("tcp", ta.config().UpstreamAddress)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	resp, body := get(t, client, "http://"+ta.addr+"/")
	if resp.StatusCode != 200 {
		t.Fatalf("after the listener closed: %s %q, want 200 from a new process", resp.Status, body)
	}
	if pid, _ := strconv.Atoi(strings.TrimSpace(body)); pid == first || pid == 0 {
		t.Errorf("served by pid %q, want a new process (the first was %d)", body, first)
	}
	if got := ta.Metrics().Failures[FailRefused]; got < 3 {
		t.Errorf("refused dials counted: %d, want >= 3 (max_fails)", got)
	}
}
