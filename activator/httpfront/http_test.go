package httpfront

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/leakcheck"
	"github.com/rouse-dev/rouse/internal/testbackend"
)

func TestHTTPColdStartManyRequestsOneSpawn(t *testing.T) {
	ta, _ := newHTTPTestApp(t, []string{"-delay", "300ms"}, nil)
	client := testbackend.NewClient(t)
	const n = 300
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get("http://" + ta.addr + "/")
			if err != nil {
				errs <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "hello from backend") {
				errs <- fmt.Sprintf("%d %q", resp.StatusCode, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if pids := ta.pids(); len(pids) != 1 {
		t.Errorf("%d spawns for %d concurrent first requests, want 1", len(pids), n)
	}
}

// The seed regression: a route that answers 500 is the app's answer. It is
// passed through, never counted, never retried; the app keeps serving.
func TestHTTPAppErrorIsPassedThroughNotCounted(t *testing.T) {
	ta, hits := newHTTPTestApp(t, nil, func(c *activator.Config) { c.MaxFails = 1 })
	client := testbackend.NewClient(t)
	for range 20 {
		resp, body := testbackend.Get(t, client, "http://"+ta.addr+"/broken")
		if resp.StatusCode != 500 || !strings.Contains(body, "broken on purpose") {
			t.Fatalf("/broken: %d %q, want the app's own 500", resp.StatusCode, body)
		}
		if resp, _ := testbackend.Get(t, client, "http://"+ta.addr+"/"); resp.StatusCode != 200 {
			t.Fatalf("/ after /broken: %d", resp.StatusCode)
		}
	}
	if n := testbackend.HitCount(t, hits, "/broken"); n != 20 {
		t.Errorf("/broken reached the app %d times for 20 requests: retried?", n)
	}
	st := ta.Status()
	if st.Starts != 1 || st.Failures != 0 || st.State != activator.Ready {
		t.Errorf("status %+v, want 1 start, 0 failures, ready", st)
	}
	m := ta.Metrics()
	if m.Outcomes["5xx"] != 20 || m.Outcomes["2xx"] != 20 || len(m.Failures) != 0 || m.ColdStart.Count != 1 || m.Starts != 1 {
		t.Errorf("metrics %+v, want 20 5xx, 20 2xx, no failure, one cold start", m)
	}
}

func TestHTTPPostThatKillsTheAppIsSentOnceAnd502(t *testing.T) {
	ta, hits := newHTTPTestApp(t, nil, nil)
	client := testbackend.NewClient(t)
	resp, err := client.Post("http://"+ta.addr+"/crash", "text/plain", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("POST /crash: %d %q, want 502", resp.StatusCode, body)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", got)
	}
	if !strings.Contains(string(body), "app t") {
		t.Errorf("502 body %q should name the app", body)
	}
	if n := testbackend.HitCount(t, hits, "/crash"); n != 1 {
		t.Errorf("POST /crash delivered %d times, want exactly once", n)
	}
}

func TestHTTPGetInFlightWhenAppKilledIsAnsweredByTheRestart(t *testing.T) {
	ta, hits := newHTTPTestApp(t, nil, nil)
	client := testbackend.NewClient(t)
	testbackend.Get(t, client, "http://"+ta.addr+"/") // start it
	pid := ta.Status().PID
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := client.Get("http://" + ta.addr + "/sleep?d=300ms")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b), nil}
	}()
	leakcheck.WaitFor(t, "the GET to reach the app", func() bool { return testbackend.HitCount(t, hits, "/sleep") == 1 })
	syscall.Kill(pid, syscall.SIGKILL)
	r := <-done
	if r.err != nil || r.code != 200 || !strings.HasPrefix(r.body, "slept") {
		t.Fatalf("GET in flight during a crash: %d %q %v, want 200 from the restarted app", r.code, r.body, r.err)
	}
	if st := ta.Status(); st.Starts != 2 || st.PID == pid {
		t.Errorf("starts %d pid %d, want a second process", st.Starts, st.PID)
	}
}

func TestHTTPUpgradeIsPassedThroughAndCountsAsActivity(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.IdleTimeout = 100 * time.Millisecond })
	c, err := net.Dial("tcp", ta.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("upgrade answered %d %v", resp.StatusCode, resp.Header)
	}
	// Well past idle_timeout, the open upgraded connection keeps the app up.
	for i := range 5 {
		fmt.Fprintf(c, "line %d\n", i)
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("line %d\n", i) {
			t.Fatalf("echo over the upgraded connection: %q %v", line, err)
		}
		if st := ta.Status(); st.State != activator.Ready || st.Conns != 1 {
			t.Fatalf("with an upgraded connection open: %s, %d conns", st.State, st.Conns)
		}
		time.Sleep(60 * time.Millisecond) // letting idle_timeout pass, not waiting for a condition
	}
	c.Close()
	ta.waitState(t, activator.Idle)
}

func TestHTTPStreamedResponseIsFlushed(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	client := testbackend.NewClient(t)
	resp, err := client.Get("http://" + ta.addr + "/sse?n=1000") // 20 s in all
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: %d\n", i) {
			t.Fatalf("event %d: %q %v (a buffering proxy would hold it until the end)", i, line, err)
		}
		br.ReadString('\n')
	}
}

// TestHTTPHostRouting proves that apps sharing an address get the requests
// of their hosts (exact, wildcard, and the catch-all "*").
func TestHTTPHostRouting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Two apps behind one address; the test harness's own listener of
	// each is unused.
	a := newTestAppNoListen(t, "a", []string{"-name", "app-a"}, []string{"a.example.com"})
	b := newTestAppNoListen(t, "b", []string{"-name", "app-b"}, []string{"*.b.example.com"})
	f, err := NewHTTPFront(ln, []*activator.App{a, b}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Serve()
	defer f.Close()
	client := testbackend.NewClient(t)
	servedBy(t, client, ln.Addr().String(), map[string]string{
		"a.example.com":        "hello from app-a",
		"A.Example.Com:80":     "hello from app-a",
		"x.b.example.com":      "hello from app-b",
		"deep.x.b.example.com": "hello from app-b",
	})
	for _, host := range []string{"b.example.com", "unknown.example.com"} {
		if code, body := getHost(t, client, ln.Addr().String(), host); code != 404 || !strings.Contains(body, "no app for host") {
			t.Errorf("Host %s: %d %q, want 404 naming the host", host, code, body)
		}
	}

	// hosts = ["*"] takes what no other app claims; an address has one.
	all := newTestAppNoListen(t, "all", []string{"-name", "app-all"}, []string{"*"})
	if err := f.SetApps([]*activator.App{a, b, all, newTestAppNoListen(t, "plain", nil, nil)}); err == nil ||
		!strings.Contains(err.Error(), "both take every host") {
		t.Errorf("a catch-all next to an app without hosts: %v, want an error", err)
	}
	if err := f.SetApps([]*activator.App{a, b, all}); err != nil {
		t.Fatal(err)
	}
	servedBy(t, client, ln.Addr().String(), map[string]string{
		"a.example.com":       "hello from app-a",
		"b.example.com":       "hello from app-all",
		"unknown.example.org": "hello from app-all",
		"127.0.0.1":           "hello from app-all",
	})
}

// servedBy checks that a GET / to addr with each Host gets an answer
// starting with the app's greeting.
func servedBy(t *testing.T, client *http.Client, addr string, want map[string]string) {
	t.Helper()
	for host, greeting := range want {
		if code, body := getHost(t, client, addr, host); code != 200 || !strings.HasPrefix(body, greeting) {
			t.Errorf("Host %s: %d %q, want %q", host, code, body, greeting)
		}
	}
}

// getHost sends GET / with Host: host to addr and returns the answer.
func getHost(t *testing.T, client *http.Client, addr, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body)
}

// newTestAppNoListen is an http app for a front the test builds itself.
func newTestAppNoListen(t *testing.T, name string, args []string, hosts []string) *activator.App {
	t.Helper()
	port := freePort(t)
	cfg := testConfig("shared", "127.0.0.1:"+strconv.Itoa(port), os.DevNull)
	cfg.Name, cfg.Mode, cfg.Hosts = name, activator.ModeHTTP, hosts
	cfg.RequestBuffer, cfg.ResponseTimeout = 1<<20, 30*time.Second
	cfg.Process.Argv = append(cfg.Process.Argv, append([]string{"-proto", "http"}, args...)...)
	a, err := activator.New(cfg, nil, activator.Options{Logger: nil})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(t.Context()) })
	return a
}

// Two apps without hosts on one address are refused, by name.
func TestHTTPTwoAppsWithoutHostsNamed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	apps := []*activator.App{newTestAppNoListen(t, "blog", nil, nil), newTestAppNoListen(t, "shop", nil, nil)}
	_, err = NewHTTPFront(ln, apps, nil)
	if want := "apps blog and shop both take every host on " + ln.Addr().String() + ` (no hosts, or "*")`; err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
}

func TestHTTPBadRequestsFromClients(t *testing.T) {
	ta, hits := newHTTPTestApp(t, nil, nil)
	raw := func(req string) string {
		c, err := net.Dial("tcp", ta.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, req)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}
	if got := raw("GARBAGE\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Errorf("malformed request answered %q, want 400", got)
	}
	huge := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\n"
	if got := raw(huge); !strings.HasPrefix(got, "HTTP/1.1 431") {
		t.Errorf("200 KiB header answered %q, want 431", got)
	}
	if n := testbackend.HitCount(t, hits, "/"); n != 0 {
		t.Errorf("bad requests reached the app %d times", n)
	}
	if st := ta.Status(); st.Starts != 0 {
		t.Errorf("bad requests started the app")
	}
}

func TestHTTPBodies(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.RequestBuffer = 64 << 10 })
	client := testbackend.NewClient(t)
	for _, size := range []int{0, 1, 64 << 10, 64<<10 + 1, 5 << 20} {
		body := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		resp, err := client.Post("http://"+ta.addr+"/echo", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST %d bytes: %v", size, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Errorf("POST %d bytes (request_buffer 64 KiB): %d, %d bytes back", size, resp.StatusCode, len(got))
		}
	}
}

func TestHTTPExpectContinueAnsweredWhenReady(t *testing.T) {
	ta, _ := newHTTPTestApp(t, []string{"-delay", "300ms"}, nil)
	c, err := net.Dial("tcp", ta.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("first line %q %v, want 100 Continue", line, err)
	}
	if st := ta.Status(); st.State != activator.Ready {
		t.Errorf("100 Continue sent while the app was %s", st.State)
	}
	br.ReadString('\n')
	io.WriteString(c, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "hello" {
		t.Errorf("after 100-continue: %d %q", resp.StatusCode, b)
	}
}

func TestHTTPForwardedHeadersAreReplaced(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	client := testbackend.NewClient(t)
	req, _ := http.NewRequest("GET", "http://"+ta.addr+"/headers", nil)
	req.Host = "blog.example.com"
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Forwarded-Host", "evil.example.com")
	req.Header.Set("Connection", "keep-alive, X-Hop")
	req.Header.Set("X-Hop", "drop me")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	h, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\n" + string(b) + "\r\n")))
	if err != nil {
		t.Fatalf("parsing the headers the app saw: %v\n%s", err, b)
	}
	for k, want := range map[string]string{
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Host":  "blog.example.com",
		"X-Forwarded-Proto": "http",
		"X-Hop":             "",
	} {
		if got := h.Header.Get(k); got != want {
			t.Errorf("app saw %s: %q, want %q", k, got, want)
		}
	}
}

func TestHTTPIdleKeepAliveDoesNotKeepTheAppUp(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.IdleTimeout = 100 * time.Millisecond })
	client := testbackend.NewClient(t)
	_, body1 := testbackend.Get(t, client, "http://"+ta.addr+"/pid")
	// The client keeps its connection to rouse open and idle, as nginx's
	// upstream keepalive pool does; the app still stops.
	ta.waitState(t, activator.Idle)
	_, body2 := testbackend.Get(t, client, "http://"+ta.addr+"/pid")
	if body1 == body2 {
		t.Errorf("same pid %s after an idle stop", body1)
	}
	if st := ta.Status(); st.Starts != 2 {
		t.Errorf("starts = %d, want 2", st.Starts)
	}
}

func TestHTTPCrashLoopAnswers503FastAndSparesOtherApps(t *testing.T) {
	broken, _ := newHTTPTestApp(t, []string{"-exit", "1"}, nil)
	healthy, _ := newHTTPTestApp(t, nil, nil)
	client := testbackend.NewClient(t)
	resp, body := testbackend.Get(t, client, "http://"+broken.addr+"/")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("first request to a crashing app: %d %q %v, want 503 with Retry-After", resp.StatusCode, body, resp.Header)
	}
	// Within the first back-off second (1 s from the failure, which came
	// after the first 503 was sent): no second spawn, every answer fast.
	first := time.Now()
	for time.Since(first) < 700*time.Millisecond {
		start := time.Now()
		resp, body := testbackend.Get(t, client, "http://"+broken.addr+"/")
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Errorf("503 during back-off took %s, want at once", took)
		}
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != 503 || ra < 1 || !strings.Contains(body, "back-off") {
			t.Errorf("during back-off: %d Retry-After %q %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if resp, _ := testbackend.Get(t, client, "http://"+healthy.addr+"/"); resp.StatusCode != 200 {
			t.Errorf("neighbour app answered %d", resp.StatusCode)
		}
	}
	if n := len(broken.pids()); n != 1 {
		t.Errorf("%d spawns during the first back-off second, want 1", n)
	}
}

// A request with Expect: 100-continue to an app that cannot start gets
// rouse's 503 at once, without having to send its body (it never got the
// go-ahead): the unread body must not hold the answer back, and the
// connection closes after it (what follows on it would be that body).
func TestHTTPExpectContinueToABrokenAppAnsweredWithoutTheBody(t *testing.T) {
	broken, _ := newHTTPTestApp(t, []string{"-exit", "1"}, nil)
	rc := dialRaw(t, broken.addr)
	rc.c.SetDeadline(time.Now().Add(20 * time.Second))
	rc.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
	resp, body := rc.response("POST")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%d %q %v, want 503 with Retry-After", resp.StatusCode, body, resp.Header)
	}
	if n, err := rc.br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("after the answer: %d bytes, %v; want the connection closed", n, err)
	}
}
