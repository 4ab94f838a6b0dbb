//go:build faults

// The fault suite of the activator: each test tries hard to lose a request
// or a process and ends by counting (sent == answered as expected). Run it
// with `make faults` (go test -race -tags faults ./...).

package activator

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/testbackend"
)

// hitCount is the shared helper, under the name this package gives it.
var hitCount = testbackend.HitCount

// tally counts outcomes by kind and keeps the first few examples of each.
type tally struct {
	mu       sync.Mutex
	n        map[string]int
	examples map[string][]string
}

func (t *tally) add(kind, example string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n, t.examples = make(map[string]int), make(map[string][]string)
	}
	t.n[kind]++
	if len(t.examples[kind]) < 5 && example != "" {
		t.examples[kind] = append(t.examples[kind], example)
	}
}

func (t *tally) get(kind string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n[kind]
}

func (t *tally) total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, v := range t.n {
		n += v
	}
	return n
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	kinds := make([]string, 0, len(t.n))
	for k := range t.n {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var b strings.Builder
	for _, k := range kinds {
		fmt.Fprintf(&b, "%s=%d %q; ", k, t.n[k], t.examples[k])
	}
	return b.String()
}

// Outcome kinds of an http request in the fault tests.
const (
	gotOK         = "200"
	gotBackoff503 = "503 in back-off" // rouse's own 503 + Retry-After: the app is in back-off
	gotNoRetry    = "503 in back-off without Retry-After"
	gotOther      = "other"
)

// classify sends req with client and sorts the answer: the app's 200 whose
// body starts with wantBody, rouse's 503 with Retry-After during a
// back-off, or anything else (an error, 502, a 503 of another kind...).
func classify(client *http.Client, req *http.Request, wantBody string) (kind, detail string) {
	resp, err := client.Do(req)
	if err != nil {
		return gotOther, err.Error()
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	detail = fmt.Sprintf("%s %s: %d %q", req.Method, req.URL.Path, resp.StatusCode, body)
	switch {
	case err != nil:
		return gotOther, detail + ": " + err.Error()
	case resp.StatusCode == 200 && strings.HasPrefix(string(body), wantBody):
		return gotOK, ""
	case resp.StatusCode == 503 && resp.Header.Get("Proxy-Status") == "rouse; error=destination_unavailable" &&
		strings.Contains(string(body), "back-off"):
		if resp.Header.Get("Retry-After") == "" {
			return gotNoRetry, detail
		}
		return gotBackoff503, detail
	}
	return gotOther, detail
}

// request is http.NewRequest for the well-formed URLs of these tests; it
// is called from client goroutines, where t.Fatal may not be.
func request(method, url string, body io.Reader) *http.Request {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		panic(err)
	}
	return req
}

// newHTTPTestApps is newTestApps in http mode: apps under one supervisor,
// so that its cleanup checks for leaks once all of them are closed.
func newHTTPTestApps(t testing.TB, specs ...appSpec) []*testApp {
	t.Helper()
	for i, spec := range specs {
		edit := spec.edit
		specs[i].args = append([]string{"-proto", "http"}, spec.args...)
		specs[i].edit = func(c *Config) {
			c.Mode = ModeHTTP
			c.RequestBuffer = 1 << 20
			c.ResponseTimeout = 30 * time.Second
			if edit != nil {
				edit(c)
			}
		}
	}
	return newTestApps(t, Capacity{}, specs...)
}

// 1. The idle-stop race: requests aimed at the moment an app with a tiny
// idle_timeout stops (before the timer fires, as it fires, while the
// process exits, after) must all be answered by the app, exactly once.
func TestFaultIdleStopRace(t *testing.T) {
	total, minStarts := 10000, 150
	if n, err := strconv.Atoi(os.Getenv("FAULTS_IDLE_REQUESTS")); err == nil {
		total, minStarts = n, n/50 // for a quick look at the log
	} else if faultsRace {
		// Every restart spawns the race-instrumented test binary, about
		// 3 times slower to start: fewer requests, as many boundaries hit.
		total, minStarts = 3000, 60
	}
	const idle = 10 * time.Millisecond
	ta, hits := newHTTPTestApp(t, nil, func(c *Config) { c.IdleTimeout = idle })
	keep := newClient(t) // idle keep-alive connections to rouse do not keep the app up
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	url := "http://" + ta.addr + "/"
	var res tally
	var sent, slowest, slow atomic.Int64
	do := func(client *http.Client) {
		sent.Add(1)
		began := time.Now()
		kind, detail := classify(client, request("GET", url, nil), "hello from backend")
		res.add(kind, detail)
		if time.Since(began) > 3*time.Second {
			slow.Add(1)
		}
		for took := int64(time.Since(began)); ; {
			s := slowest.Load()
			if took <= s || slowest.CompareAndSwap(s, took) {
				break
			}
		}
	}
	began := time.Now()
	for round := 0; sent.Load() < int64(total); round++ {
		var wg sync.WaitGroup
		for i := range 1 + round%4 { // 1 to 4 clients at a time
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(round), uint64(i)))
				client := keep
				if i%2 == 1 {
					client = fresh
				}
				for range 1 + r.IntN(4) {
					do(client)
				}
				// Pacing, not waiting for a condition: the next request
				// lands somewhere between half and twice the idle timeout
				// after the last one, around the moment the app stops.
				time.Sleep(idle/2 + time.Duration(r.Int64N(int64(idle*3/2))))
				do(client)
			})
		}
		wg.Wait()
	}
	took := time.Since(began)
	n := int(sent.Load())
	st := ta.Status()
	m := ta.Metrics()
	t.Logf("%d requests in %s: %s; %d starts, %d idle stops; slowest request %s, %d took over 3s",
		n, took.Round(time.Millisecond), &res, st.Starts, m.Stops["idle"], time.Duration(slowest.Load()).Round(time.Millisecond), slow.Load())
	if ok := res.get(gotOK); ok != n {
		t.Errorf("%d of %d requests answered 200 by the app: %s", ok, n, &res)
	}
	if got := hitCount(t, hits, "/"); got != n {
		t.Errorf("the app received %d requests for %d sent, want each exactly once", got, n)
	}
	if st.Starts < minStarts || int(m.Stops["idle"]) < minStarts-1 {
		t.Errorf("%d starts and %d idle stops, want at least %d: the requests missed the idle boundary", st.Starts, m.Stops["idle"], minStarts)
	}
	if st.Failures != 0 || len(m.Failures) != 0 {
		t.Errorf("idle stops counted as failures: %d, %v", st.Failures, m.Failures)
	}
	if n := slow.Load(); n > 0 {
		t.Errorf("BUG: nothing lost, but %d requests waited over 3s (slowest %s): some idle stops take 5s. "+
			"The app's http.Transport keeps connections it dialed but never used (a dial that lost the race "+
			"to an idle connection); a Go app's graceful Shutdown waits up to 5s for such new connections, and "+
			"requests that arrive meanwhile are held for the whole stop. Suggested fix: close the transport's "+
			"idle connections when the app is asked to stop (stopLocked), not only after it exited (finish)",
			n, time.Duration(slowest.Load()).Round(time.Millisecond))
	}
}

// killLoad runs GET load on app until stop is closed, tallying the
// outcomes: clients goroutines that each send one request after the other
// (closed loop), plus, when every is set, a new request every interval
// whatever happens to the others (open loop: users keep arriving). Paths
// are requested in turn.
func killLoad(t *testing.T, ta *testApp, clients int, every time.Duration, paths []string, res *tally, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	client := newClient(t)
	one := func(k int) {
		p := paths[k%len(paths)]
		want := "hello from backend"
		if strings.HasPrefix(p, "/sleep") {
			want = "slept"
		}
		kind, detail := classify(client, request("GET", "http://"+ta.addr+p, nil), want)
		res.add(kind, detail)
	}
	for i := range clients {
		wg.Go(func() {
			for k := i; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				one(k)
			}
		})
	}
	if every > 0 {
		wg.Go(func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			var open sync.WaitGroup
			defer open.Wait()
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				open.Go(func() { one(k) })
			}
		})
	}
	return &wg
}

// waitReadyPid waits until the app is ready with a process other than
// the ones in not, and returns its pid.
func waitReadyPid(t *testing.T, ta *testApp, not map[int]bool) int {
	t.Helper()
	var pid int
	waitFor(t, "the app ready with a new process", func() bool {
		st := ta.Status()
		pid = st.PID
		return st.State == Ready && pid != 0 && !not[pid]
	})
	return pid
}

// backoffGap is what the suite reports when the only requests lost are
// the 503s of a back-off after a crash of a healthy app.
const backoffGap = "BUG: requests that arrive during the back-off after an app that was ready is killed get 503 " +
	"(acquire refuses at once unless retrying); the issue wants 0 client errors under repeated SIGKILL. " +
	"Suggested fix: hold requests during a back-off that follows a crash of a ready app when it ends before " +
	"their queue deadline, and keep the immediate 503 for start failures (exit before ready, not ready, spawn error)"

// noRetryAfter is what the suite reports when a 503 of a back-off comes
// without Retry-After.
const noRetryAfter = "BUG: a request that arrives after backoffUntil but before the back-off timer has run " +
	"(acquire sees state backoff) gets 503 \"in back-off for 0s more\" with no Retry-After (writeError drops " +
	"a Retry-After <= 0), against DESIGN.md's 503 + Retry-After; and it is refused although the back-off is over. " +
	"Suggested fix: in acquire, a back-off whose time is up is over (go to idle and start, as backoffOver " +
	"does); and writeError never sends a 503 without Retry-After (at least 1)"

// skipBackoffGaps ends a test that found nothing worse than the two gaps
// above by skipping it with their description, so that the suite stays
// green until they are fixed. An app that only ever fails gets back-off
// 503s by design: crashed says whether it was ready before.
func skipBackoffGaps(t *testing.T, res *tally, crashed bool) {
	t.Helper()
	var bugs []string
	if n := res.get(gotBackoff503); n > 0 && crashed {
		bugs = append(bugs, fmt.Sprintf("%s; here: %d of %d GETs got a back-off 503", backoffGap, n, res.total()))
	}
	if n := res.get(gotNoRetry); n > 0 {
		bugs = append(bugs, fmt.Sprintf("%s; here: %d of %d GETs", noRetryAfter, n, res.total()))
	}
	if len(bugs) > 0 {
		t.Error(strings.Join(bugs, "\n"))
	}
}

// 2. An app SIGKILLed again and again under GET load: every GET in flight
// is replayed to the next process; no client sees an error.
func TestFaultAppSIGKILLedUnderGETLoad(t *testing.T) {
	const kills = 4
	ta, _ := newHTTPTestApp(t, nil, func(c *Config) {
		c.BackoffMax = time.Second // the smallest allowed: 1s after each kill
		c.RetryTimeout = 20 * time.Second
		c.QueueTimeout = 20 * time.Second
	})
	var res tally
	stop := make(chan struct{})
	wg := killLoad(t, ta, 4, 25*time.Millisecond, []string{"/", "/sleep?d=20ms", "/", "/sleep?d=50ms"}, &res, stop)
	killed := make(map[int]bool)
	for range kills {
		pid := waitReadyPid(t, ta, killed)
		time.Sleep(200 * time.Millisecond) // the load runs on this process for a while
		killed[pid] = true
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", pid, err)
		}
	}
	waitReadyPid(t, ta, killed)
	before := res.get(gotOK)
	waitFor(t, "the last process to serve", func() bool { return res.get(gotOK) > before+20 })
	close(stop)
	wg.Wait()
	for pid := range killed {
		if alive(pid) {
			t.Errorf("killed app process %d still alive", pid)
		}
	}
	st := ta.Status()
	t.Logf("%d GETs across %d kills: %s; %d starts", res.total(), kills, &res, st.Starts)
	if st.Starts != kills+1 {
		t.Errorf("%d starts for %d kills, want %d", st.Starts, kills, kills+1)
	}
	if n := res.get(gotOther); n > 0 {
		t.Errorf("%d GETs failed (not a 200, nor a 503 of a back-off): %s", n, &res)
	}
	skipBackoffGaps(t, &res, true)
}

// 3. POSTs that kill the app, under concurrent GET load: each POST reaches
// the app at most once (never replayed: 502), GETs are answered by the app.
func TestFaultCrashingPOSTsUnderGETLoad(t *testing.T) {
	const posts = 5
	ta, hits := newHTTPTestApp(t, nil, func(c *Config) {
		c.BackoffMax = time.Second
		c.RetryTimeout = 20 * time.Second
		c.QueueTimeout = 20 * time.Second
		// The crashes are spaced (see below), but on a loaded machine a
		// GET may still live through two of them: two more tries than
		// the default 3.
		c.RetryTries = 5
	})
	var res tally
	stop := make(chan struct{})
	wg := killLoad(t, ta, 3, 25*time.Millisecond, []string{"/", "/sleep?d=20ms"}, &res, stop)
	client := newClient(t)
	codes := make(map[int]int) // POST id -> status
	seen := make(map[int]bool)
	for id := range posts {
		seen[waitReadyPid(t, ta, seen)] = true
		// Let the GETs held during the back-off (the ticker's, one per
		// 25ms, half of them /sleep?d=20ms) be served by this process
		// before the next crash: they all go at once when it is ready, and
		// a crash among them would catch them again, crash after crash.
		before, ready := res.get(gotOK), time.Now()
		waitFor(t, "GETs held during the back-off to be served", func() bool {
			return res.get(gotOK) >= before+10 && time.Since(ready) > 200*time.Millisecond
		})
		resp, err := client.Post(fmt.Sprintf("http://%s/crash/%d", ta.addr, id), "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatalf("POST %d: %v", id, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		codes[id] = resp.StatusCode
		if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("POST /crash/%d: %d %q, want 502 (or 503 if it never reached the app)", id, resp.StatusCode, body)
		}
	}
	waitReadyPid(t, ta, seen)
	before := res.get(gotOK)
	waitFor(t, "the last process to serve", func() bool { return res.get(gotOK) > before+20 })
	close(stop)
	wg.Wait()
	for id, code := range codes {
		n := hitCount(t, hits, fmt.Sprintf("/crash/%d", id))
		switch {
		case n > 1:
			t.Errorf("POST /crash/%d reached the app %d times, want at most once", id, n)
		case code == http.StatusBadGateway && n != 1:
			t.Errorf("POST /crash/%d answered 502 but reached the app %d times", id, n)
		case code == http.StatusServiceUnavailable && n != 0:
			t.Errorf("POST /crash/%d answered 503 (not sent) but reached the app %d times", id, n)
		}
	}
	t.Logf("POSTs: %v; GETs: %s", codes, &res)
	if n := res.get(gotOther); n > 0 {
		t.Errorf("%d GETs failed (not a 200, nor a 503 of a back-off): %s", n, &res)
	}
	skipBackoffGaps(t, &res, true)
}

// 4. A crash-looping app recovers by itself once it is fixed: the first
// start attempt after the back-off succeeds, without anyone calling Start;
// a neighbour app serves all along.
func TestFaultCrashLoopRecoversAloneWhenFixed(t *testing.T) {
	fixed := filepath.Join(t.TempDir(), "fixed")
	apps := newHTTPTestApps(t, appSpec{edit: func(c *Config) {
		// Fails until the file exists; then it is the backend.
		c.Process.Argv = append([]string{"/bin/sh", "-c", `test -f "$0" || exit 1; exec "$@"`, fixed}, c.Process.Argv...)
	}}, appSpec{})
	broken, neighbour := apps[0], apps[1]
	client := newClient(t)

	// The neighbour is asked all along; each answer must come fast.
	var nres tally
	var slowest atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			kind, detail := classify(client, request("GET", "http://"+neighbour.addr+"/", nil), "hello from backend")
			took := time.Since(start)
			if took > 2*time.Second {
				kind, detail = "slow", took.String()
			}
			nres.add(kind, detail)
			if int64(took) > slowest.Load() {
				slowest.Store(int64(took))
			}
			time.Sleep(20 * time.Millisecond) // pacing of the neighbour's client
		}
	})

	type answer struct {
		at   time.Time
		kind string
	}
	var answers []answer
	var fixedAt, backoffUntil time.Time
	deadline := time.Now().Add(60 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("no 200 from the fixed app within 60s: %v", answers)
		}
		kind, detail := classify(client, request("GET", "http://"+broken.addr+"/", nil), "hello from backend")
		answers = append(answers, answer{time.Now(), kind})
		if kind == gotOK {
			break
		}
		if kind != gotBackoff503 {
			t.Fatalf("request to the broken app: %s, want a back-off 503", detail)
		}
		// After the second failure, during its 2s back-off, fix the app.
		if st := broken.Status(); fixedAt.IsZero() && st.Failures >= 2 && st.State == Backoff {
			if err := os.WriteFile(fixed, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			fixedAt, backoffUntil = time.Now(), *st.BackoffUntil
		}
		time.Sleep(50 * time.Millisecond) // pacing of a client that keeps asking
	}
	recovered := answers[len(answers)-1].at
	// Requests after the recovery are answered by the app, as usual.
	for range 20 {
		if kind, detail := classify(client, request("GET", "http://"+broken.addr+"/", nil), "hello from backend"); kind != gotOK {
			t.Errorf("after recovery: %s", detail)
		}
	}
	close(stop)
	wg.Wait()

	st := broken.Status()
	t.Logf("fixed %s before the back-off ended; first 200 %s after the fix; %d answers before it; neighbour: %s (slowest %s)",
		backoffUntil.Sub(fixedAt).Round(time.Millisecond), recovered.Sub(fixedAt).Round(time.Millisecond),
		len(answers)-1, &nres, time.Duration(slowest.Load()).Round(time.Millisecond))
	if fixedAt.IsZero() {
		t.Fatal("the app was never seen in its second back-off")
	}
	if recovered.Before(backoffUntil) {
		t.Errorf("answered 200 at %s, before the back-off ended at %s", recovered, backoffUntil)
	}
	if late := recovered.Sub(backoffUntil); late > 10*time.Second {
		t.Errorf("first 200 came %s after the back-off ended, want the next attempt to succeed", late)
	}
	if st.Starts != 3 || st.Failures != 2 || st.State != Ready {
		t.Errorf("broken app: %d starts, %d failures, %s; want 3 starts (two failed, one per back-off period), 2 failures, ready", st.Starts, st.Failures, st.State)
	}
	if n := nres.get(gotOK); n == 0 || n != nres.total() {
		t.Errorf("neighbour: %s, want every request answered 200 within 2s", &nres)
	}
	if st := neighbour.Status(); st.Starts != 1 || st.Failures != 0 {
		t.Errorf("neighbour: %d starts, %d failures; want 1 and 0", st.Starts, st.Failures)
	}
}

// Requests hammering the end of a back-off, again and again: each gets a
// 503 with Retry-After (DESIGN.md), never one without.
func TestFaultBackoffEndKeepsRetryAfter(t *testing.T) {
	const periods, clients = 5, 4
	ta, _ := newHTTPTestApp(t, []string{"-exit", "1"}, func(c *Config) { c.BackoffMax = time.Second })
	client := newClient(t)
	var res tally
	url := "http://" + ta.addr + "/"
	for range periods {
		classify(client, request("GET", url, nil), "") // a start attempt, which fails
		st := ta.waitState(t, Backoff)
		// Pacing to the end of the back-off, then a burst across it.
		time.Sleep(time.Until(st.BackoffUntil.Add(-20 * time.Millisecond)))
		end := st.BackoffUntil.Add(50 * time.Millisecond)
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				for time.Now().Before(end) {
					res.add(classify(client, request("GET", url, nil), ""))
				}
			})
		}
		wg.Wait()
		ta.waitState(t, Backoff) // the attempt the burst started failed too
	}
	t.Logf("%d back-off ends: %s", periods, &res)
	if n := res.get(gotOK) + res.get(gotOther); n > 0 {
		t.Errorf("%d requests to an app that always fails got neither a 503 nor a 503 of a back-off: %s", n, &res)
	}
	skipBackoffGaps(t, &res, false)
}

// garbage is the i-th of the bad requests of TestFaultGarbageConnections;
// none of them is a request the app may see.
func garbage(r *rand.Rand, i int) []byte {
	switch i % 6 {
	case 0: // random bytes, starting with a byte no method has
		b := make([]byte, 1+r.IntN(2048))
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		b[0] = 0x01
		return append(b, "\r\n\r\n"...)
	case 1: // a request line cut short
		line := "GET /some/path?q=1 HTTP/1.1\r\nHost: x\r\n"
		return []byte(line[:r.IntN(len(line))])
	case 2: // one huge header (MaxHeaderBytes is 64 KiB)
		return []byte("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n")
	case 3: // many small headers
		return []byte("GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Many: b\r\n", 8000) + "\r\n")
	case 4: // malformed headers and lines
		bad := []string{
			"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
			"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
			"GET / HTTP/1.1\r\n\r\n", // no Host
			"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
			"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
			"G\x7fT / HTTP/1.1\r\nHost: x\r\n\r\n",
			"GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n",
			" / HTTP/1.1\r\nHost: x\r\n\r\n",
		}
		return []byte(bad[r.IntN(len(bad))])
	default: // a valid start, then binary junk in a header
		b := []byte("GET / HTTP/1.1\r\nHost: x\r\nX-Junk: ")
		for range 1 + r.IntN(512) {
			// Control characters, but no CR, LF or tab: those would end the
			// header (or be allowed in it) and make a valid request.
			c := byte(r.UintN(32))
			if c == '\r' || c == '\n' || c == '\t' {
				c = 0x7f
			}
			b = append(b, c)
		}
		return append(b, "\r\n\r\n"...)
	}
}

// sendGarbage writes b on a new connection, half-closes it and reads what
// comes back: the first line of a response, or "" when rouse just closed.
func sendGarbage(addr string, b []byte) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write(b) // may fail once rouse answered and closed: the answer is what counts
	c.(*net.TCPConn).CloseWrite()
	line, err := bufio.NewReader(c).ReadString('\n')
	switch {
	case line != "":
		return strings.TrimSpace(line), nil
	case err == io.EOF || errors.Is(err, syscall.ECONNRESET):
		return "", nil // closed without an answer
	}
	return "", err
}

// 8. 10k garbage connections: each gets a 400 or 431, or is closed; none
// reaches the app; the front stays up with no goroutine or fd left over.
func TestFaultGarbageConnections(t *testing.T) {
	const total, workers = 10000, 16
	ta, hits := newHTTPTestApp(t, nil, nil)
	goroutines, fds := runtime.NumGoroutine(), countFDs(t)
	var res tally
	var next atomic.Int64
	var wg sync.WaitGroup
	began := time.Now()
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				line, err := sendGarbage(ta.addr, garbage(r, i))
				switch {
				case err != nil:
					res.add("error", fmt.Sprintf("#%d: %v", i, err))
				case line == "":
					res.add("closed", "")
				case strings.HasPrefix(line, "HTTP/1.1 400 "), strings.HasPrefix(line, "HTTP/1.1 431 "):
					res.add(line[:12], "")
				default:
					res.add("unexpected", fmt.Sprintf("#%d (kind %d): %q", i, i%6, line))
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d garbage connections in %s: %s", total, time.Since(began).Round(time.Millisecond), &res)
	if n := res.get("HTTP/1.1 400") + res.get("HTTP/1.1 431") + res.get("closed"); n != total {
		t.Errorf("%d of %d garbage connections got a 400, a 431 or a close: %s", n, total, &res)
	}
	if res.get("HTTP/1.1 400") == 0 || res.get("HTTP/1.1 431") == 0 {
		t.Errorf("want both 400s and 431s among the answers: %s", &res)
	}
	if st := ta.Status(); st.Starts != 0 || hitCount(t, hits, "/") != 0 {
		t.Errorf("garbage started the app (%d starts) or reached it", st.Starts)
	}
	// With the front still serving, everything the garbage took is back.
	waitFor(t, "goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= goroutines })
	waitFor(t, "fds back to where they were", func() bool {
		runtime.GC()
		return countFDs(t) <= fds
	})
	client := newClient(t)
	if resp, body := get(t, client, "http://"+ta.addr+"/"); resp.StatusCode != 200 || !strings.HasPrefix(body, "hello from") {
		t.Errorf("a normal request after the garbage: %d %q", resp.StatusCode, body)
	}
}

// halfClosedGet sends a GET on a new connection and half-closes it at
// once, as `printf 'GET ...' | ncat HOST PORT` does, then reads the answer.
func halfClosedGet(addr, path string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	return string(b), err
}

// A client that half-closes after its request (ncat, nc -N, some health
// checkers) is still there to read the answer. net/http cancels the
// request's context when it reads EOF from the client, and rouse must not
// answer that with a 200 the app never sent: the client gets the app's
// answer, or at worst a cut connection.
func TestFaultHalfClosedClientGetsNoMadeUpAnswer(t *testing.T) {
	const warm = 20
	ta, hits := newHTTPTestApp(t, []string{"-delay", "300ms"}, nil)
	var res tally
	check := func(when string) {
		got, err := halfClosedGet(ta.addr, "/")
		switch {
		case err != nil:
			res.add("error", when+": "+err.Error())
		case strings.HasPrefix(got, "HTTP/1.1 200 ") && strings.Contains(got, "hello from backend"):
			res.add("app's answer", "")
		case got == "":
			res.add("cut", "")
		case strings.HasPrefix(got, "HTTP/1.1 200 "):
			res.add("made-up 200", when+": "+got)
		default:
			res.add("other", when+": "+got)
		}
	}
	check("cold start")
	ta.waitState(t, Ready)
	for range warm {
		check("ready")
	}
	stopBegan := time.Now()
	if err := ta.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	stopTook := time.Since(stopBegan)
	t.Logf("%d half-closed GETs: %s; the app received %d; then stopping it took %s", warm+1, &res, hitCount(t, hits, "/"), stopTook.Round(time.Millisecond))
	if n := res.get("error") + res.get("other"); n > 0 {
		t.Errorf("%d half-closed GETs failed: %s", n, &res)
	}
	if n := res.get("made-up 200"); n > 0 {
		t.Errorf("BUG: %d of %d half-closed GETs got an empty 200 that the app never sent: the client's EOF cancels "+
			"the request context, ServeHTTP returns without writing (ctx.Err() != nil, and refuse() for a held request), "+
			"and net/http then sends 200 with no body. Suggested fix: never return from ServeHTTP without an answer "+
			"(panic(http.ErrAbortHandler) when giving up on a gone client), and better, wait and proxy with "+
			"context.WithoutCancel(r.Context()) bounded by queue/response timeouts so that half-closed clients get the "+
			"app's answer; %s", n, warm+1, &res)
	}
}

// 10a. An app that ignores SIGTERM is SIGKILLed after stop_timeout, both
// when asked to stop and when it stops for idleness; a request arriving
// while it is being killed is held and served by the next process.
func TestFaultAppIgnoringSIGTERM(t *testing.T) {
	const stopTimeout = time.Second
	t.Run("stop", func(t *testing.T) {
		ta, _ := newHTTPTestApp(t, []string{"-ignore-term"}, func(c *Config) { c.Process.StopTimeout = stopTimeout })
		client := newClient(t)
		get(t, client, "http://"+ta.addr+"/")
		pid := ta.Status().PID
		began := time.Now()
		if err := ta.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		took := time.Since(began)
		if took < stopTimeout || took > stopTimeout+3*time.Second {
			t.Errorf("stopping an app that ignores SIGTERM took %s, want about stop_timeout (%s)", took, stopTimeout)
		}
		if alive(pid) {
			t.Errorf("pid %d alive after Stop", pid)
		}
		if st := ta.Status(); st.State != Idle || st.Failures != 0 {
			t.Errorf("after Stop: %s, %d failures; want idle, 0", st.State, st.Failures)
		}
	})
	t.Run("idle", func(t *testing.T) {
		ta, _ := newHTTPTestApp(t, []string{"-ignore-term"}, func(c *Config) {
			c.Process.StopTimeout = stopTimeout
			c.IdleTimeout = 50 * time.Millisecond
		})
		client := newClient(t)
		_, first := get(t, client, "http://"+ta.addr+"/pid")
		ta.waitState(t, Stopping)
		stopping := time.Now()
		resp, second := get(t, client, "http://"+ta.addr+"/pid")
		waited := time.Since(stopping)
		if resp.StatusCode != 200 || second == first {
			t.Errorf("request during the stop: %d %q (first process %q), want 200 from a new process", resp.StatusCode, second, first)
		}
		if waited > stopTimeout+5*time.Second {
			t.Errorf("request during the stop waited %s", waited)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(first))
		if alive(pid) {
			t.Errorf("first process %d alive", pid)
		}
		if m := ta.Metrics(); m.Stops["idle"] != 1 || len(m.Failures) != 0 {
			t.Errorf("metrics: stops %v failures %v, want one idle stop and no failure", m.Stops, m.Failures)
		}
	})
}

// groupGoneWithin polls until no pid of pids runs.
func groupGoneWithin(t *testing.T, what string, pids ...int) {
	t.Helper()
	waitFor(t, what, func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
}

// outputPid returns an Output function that sends the pid of a line
// "PREFIX PID" on the channel it returns.
func outputPid(prefix string) (func(stream, line string), <-chan int) {
	ch := make(chan int, 16)
	return func(_, line string) {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			if pid, err := strconv.Atoi(strings.TrimSpace(rest)); err == nil {
				select {
				case ch <- pid:
				default:
				}
			}
		}
	}, ch
}

func recvPid(t *testing.T, ch <-chan int, what string) int {
	t.Helper()
	select {
	case pid := <-ch:
		return pid
	case <-time.After(15 * time.Second):
		t.Fatalf("no pid of %s in the app's output", what)
		return 0
	}
}

// 10b. An app that forks a daemon and exits: the whole process group is
// cleaned up, whether the leader exits before ready (a failure) or after
// (an app that exits by itself once idle, not a failure).
func TestFaultForkingAppGroupCleanedUp(t *testing.T) {
	t.Run("exits before ready", func(t *testing.T) {
		output, pids := outputPid("grandchild ")
		ta := newTestApp(t, []string{"-proto", "echo", "-grandchild", "-exit", "0"}, func(c *Config) { c.Process.Output = output })
		if got, err := echo(t, ta.addr, "x"); got != "" && err == nil {
			t.Errorf("an app that exits before ready echoed %q", got)
		}
		daemon := recvPid(t, pids, "the grandchild")
		groupGoneWithin(t, "the forked daemon to be killed with its group", daemon)
		if st := ta.waitState(t, Backoff); st.Failures != 1 {
			t.Errorf("%d failures, want 1 (exit before ready)", st.Failures)
		}
	})
	t.Run("exits once ready", func(t *testing.T) {
		output, pids := outputPid("grandchild ")
		dir := t.TempDir()
		ready := filepath.Join(dir, "ready")
		ta := newTestApp(t, nil, func(c *Config) {
			// The leader (sh) starts the server in the background, like a
			// daemon that forks, waits until it listens, and exits a moment
			// later; the server and its own child stay in the group.
			argv := append(c.Process.Argv, "-proto", "echo", "-grandchild", "-ready-file", ready)
			c.Process.Argv = append([]string{"/bin/sh", "-c", `"$@" & while [ ! -s "$0" ]; do sleep 0.01; done; sleep 0.5; exit 0`, ready}, argv...)
			c.Process.Output = output
		})
		if err := ta.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		leader := ta.Status().PID
		daemon := recvPid(t, pids, "the grandchild")
		server := ta.pids()[0]
		groupGoneWithin(t, "the leader, the server and its child to be gone", leader, server, daemon)
		if st := ta.waitState(t, Idle); st.Failures != 0 {
			t.Errorf("%d failures, want 0: the app exited by itself while idle", st.Failures)
		}
		os.Remove(ready)
		if got, err := echo(t, ta.addr, "again"); err != nil || got != "again" {
			t.Errorf("after the group was cleaned up, a new connection: %q %v", got, err)
		}
		if st := ta.Status(); st.Starts != 2 {
			t.Errorf("%d starts, want 2", st.Starts)
		}
	})
}

// Hostile and clumsy clients never take a healthy app down: requests rouse
// cannot forward, clients that reset mid-request or mid-response, and a
// route that drops its connection, all at once against a Python app with
// max_fails = 1, while a bystander's GETs are all served by the same
// process from start to end.
func TestFaultHostileClientsSameProcess(t *testing.T) {
	const rounds, workers = 150, 6
	ta := newPyApp(t, "http", nil, func(c *Config) { c.MaxFails = 1 })
	client := newClient(t)
	if resp, body := get(t, client, "http://"+ta.addr+"/"); resp.StatusCode != 200 {
		t.Fatalf("first request: %s %q", resp.Status, body)
	}
	first := onePid(t, ta)
	hostile := []func() error{
		func() error { _, err := rawHTTP(t, ta.addr, "GET / HTTP/1.0\r\n\r\n"); return err },
		func() error { _, err := rawHTTP(t, ta.addr, "GET / HTTP/1.1\r\nHost:\r\n\r\n"); return err },
		func() error { _, err := rawHTTP(t, ta.addr, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); return err },
		func() error {
			_, err := rawHTTP(t, ta.addr, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 9\r\n\r\n")
			return err
		},
		func() error { _, err := rawHTTP(t, ta.addr, "GET /drop HTTP/1.1\r\nHost: x\r\n\r\n"); return err },
		func() error { // a reset right after the request
			c, err := net.Dial("tcp", ta.addr)
			if err != nil {
				return err
			}
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			c.(*net.TCPConn).SetLinger(0)
			return c.Close()
		},
		func() error { // a reset halfway through a request head
			c, err := net.Dial("tcp", ta.addr)
			if err != nil {
				return err
			}
			io.WriteString(c, "GET / HTTP/1.1\r\nHo")
			c.(*net.TCPConn).SetLinger(0)
			return c.Close()
		},
	}
	var res tally
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				if err := hostile[(w+i)%len(hostile)](); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
					res.add("hostile error", err.Error())
				}
			}
		})
	}
	wg.Go(func() {
		for range rounds {
			resp, err := client.Get("http://" + ta.addr + "/")
			if err != nil {
				res.add("bystander error", err.Error())
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if pid, _ := strconv.Atoi(strings.TrimSpace(string(body))); resp.StatusCode != 200 || pid != first {
				res.add("bystander not served by the first process", fmt.Sprintf("%s %q", resp.Status, body))
				continue
			}
			res.add("bystander served", "")
		}
	})
	wg.Wait()
	t.Logf("%s", &res)
	if got := res.get("bystander served"); got != rounds {
		t.Errorf("bystander served %d of %d: %s", got, rounds, &res)
	}
	if res.get("hostile error") > 0 {
		t.Errorf("hostile clients saw errors: %s", &res)
	}
	onePid(t, ta)
	checkNoFailures(t, ta)
	t.Logf("request errors by kind: %v", ta.Metrics().Errors)
}
