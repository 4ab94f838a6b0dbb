package activator

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordLog is an Options.AccessLog that keeps copies of the records.
type recordLog struct {
	mu   sync.Mutex
	recs []loggedRecord
}

// loggedRecord is an AccessRecord with its borrowed slices copied.
type loggedRecord struct {
	AccessRecord
	method, target, proto, referer, userAgent string
}

func (l *recordLog) log(r AccessRecord) {
	lr := loggedRecord{AccessRecord: r, method: string(r.Method), target: string(r.Target), proto: string(r.Proto),
		referer: string(r.Referer), userAgent: string(r.UserAgent)}
	lr.Method, lr.Target, lr.Proto, lr.Referer, lr.UserAgent = nil, nil, nil, nil, nil
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, lr)
}

// wait returns the first n records, once there are n.
func (l *recordLog) wait(t testing.TB, n int) []loggedRecord {
	t.Helper()
	var got []loggedRecord
	waitFor(t, strconv.Itoa(n)+" access records", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		got = append([]loggedRecord(nil), l.recs...)
		return len(got) >= n
	})
	return got[:n]
}

var serverTimingRE = regexp.MustCompile(`(?m)^Server-Timing: rouse-start;dur=([0-9.]+)\r$`)

// serverTiming returns the rouse-start duration a response head carries,
// and whether it has one.
func serverTiming(t testing.TB, head string) (time.Duration, bool) {
	t.Helper()
	m := serverTimingRE.FindStringSubmatch(head)
	if m == nil {
		if strings.Contains(head, "Server-Timing") {
			t.Errorf("malformed Server-Timing in\n%s", head)
		}
		return 0, false
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(ms * float64(time.Millisecond)), true
}

// A response that waited for its app's start carries Server-Timing with
// how long, and its access record says it waited as long; a warm one
// has neither; on each path that can hold a request: the front's
// goroutine (after an event loop gave it up, or on a listener the loops
// do not take) and net/http's server (HTTP/1.0 here).
func TestServerTimingAndAccessRecordOfAColdStart(t *testing.T) {
	for _, tc := range []struct {
		name         string
		onGoroutines bool
		req          string
		proto        string
	}{
		{"event loop", false, "GET /?q=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/1\r\nReferer: http://r/\r\nConnection: close\r\n\r\n", "HTTP/1.1"},
		{"goroutines", true, "GET /?q=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/1\r\nReferer: http://r/\r\nConnection: close\r\n\r\n", "HTTP/1.1"},
		{"net/http", false, "GET /?q=1 HTTP/1.0\r\nHost: x\r\nUser-Agent: ua/1\r\nReferer: http://r/\r\n\r\n", "HTTP/1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log recordLog
			ta := newTestApps(t, Capacity{}, appSpec{
				args: []string{"-proto", "http", "-delay", "300ms"},
				edit: func(c *Config) {
					c.Mode, c.ServerTiming, c.AccessLog = ModeHTTP, true, true
				},
				onGoroutines: tc.onGoroutines,
				access:       log.log,
			})[0]
			cold, err := rawHTTP(t, ta.addr, tc.req)
			if err != nil || !strings.HasPrefix(cold, tc.proto[:5]) || !strings.Contains(cold, " 200 ") {
				t.Fatalf("cold request: %q, %v", cold, err)
			}
			dur, ok := serverTiming(t, cold)
			if !ok || dur < 250*time.Millisecond || dur > 20*time.Second {
				t.Errorf("cold response: Server-Timing %v (present %v), want about the start (over 300ms)\n%s", dur, ok, cold)
			}
			warm, err := rawHTTP(t, ta.addr, tc.req)
			if err != nil || !strings.Contains(warm, " 200 ") {
				t.Fatalf("warm request: %q, %v", warm, err)
			}
			if strings.Contains(warm, "Server-Timing") {
				t.Errorf("warm response carries Server-Timing:\n%s", warm)
			}
			recs := log.wait(t, 2)
			// Logged as each exchange ends, which need not be in order:
			// the cold one is the one that began first.
			slices.SortFunc(recs, func(a, b loggedRecord) int { return a.Time.Compare(b.Time) })
			for i, r := range recs {
				if r.App != "t" || r.Mode != ModeHTTP || r.Client != "127.0.0.1" || r.method != "GET" || r.target != "/?q=1" ||
					r.proto != tc.proto || r.referer != "http://r/" || r.userAgent != "ua/1" || r.Status != 200 ||
					r.Bytes <= 0 || r.Attempts != 1 || r.Time.IsZero() || r.Duration <= 0 {
					t.Errorf("record %d: %+v", i, r)
				}
			}
			if c := recs[0]; !c.Waited || c.Wait < 250*time.Millisecond || c.Duration < c.Wait || (c.Wait-dur).Abs() > 50*time.Millisecond {
				t.Errorf("cold record: waited %v for %v over %v, want about the Server-Timing's %v", c.Waited, c.Wait, c.Duration, dur)
			}
			if w := recs[1]; w.Waited || w.Wait != 0 {
				t.Errorf("warm record: waited %v for %v", w.Waited, w.Wait)
			}
		})
	}
}

// server_timing = false: a cold response carries no Server-Timing.
func TestServerTimingOff(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "http", "-delay", "100ms"}, func(c *Config) { c.Mode = ModeHTTP })
	head, err := rawHTTP(t, ta.addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if err != nil || !strings.Contains(head, " 200 ") {
		t.Fatalf("cold request: %q, %v", head, err)
	}
	if strings.Contains(head, "Server-Timing") {
		t.Errorf("Server-Timing with server_timing off:\n%s", head)
	}
}

// rouse's own answers are logged too: a 503 while the app cannot start
// (with Server-Timing: it waited), and a 502 when the app dropped the
// connection without an answer; a client that goes away is 499.
func TestAccessRecordsOfRouseAnswers(t *testing.T) {
	var log recordLog
	ta := newTestApps(t, Capacity{}, appSpec{
		edit: func(c *Config) {
			c.Mode, c.ServerTiming, c.AccessLog = ModeHTTP, true, true
			c.Process.Argv = nil
			c.Process.Shell = "exit 3"
		},
		access: log.log,
	})[0]
	head, err := rawHTTP(t, ta.addr, "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if err != nil || !strings.Contains(head, " 503 ") {
		t.Fatalf("request to an app that cannot start: %q, %v", head, err)
	}
	if _, ok := serverTiming(t, head); !ok {
		t.Errorf("rouse's 503 after a wait lacks Server-Timing:\n%s", head)
	}
	r := log.wait(t, 1)[0]
	if r.Status != 503 || r.Attempts != 0 || !r.Waited || r.target != "/x" || r.Bytes <= 0 {
		t.Errorf("record of rouse's 503: %+v", r)
	}
}

func TestAccessRecordOfADroppedRequest(t *testing.T) {
	var log recordLog
	ta := newTestApps(t, Capacity{}, appSpec{
		args:   []string{"-proto", "http"},
		edit:   func(c *Config) { c.Mode, c.AccessLog = ModeHTTP, true },
		access: log.log,
	})[0]
	if head, err := rawHTTP(t, ta.addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil || !strings.Contains(head, " 200 ") {
		t.Fatalf("first request: %q, %v", head, err)
	}
	// /crash: the backend exits without answering; POST is not replayed.
	head, err := rawHTTP(t, ta.addr, "POST /crash HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	if err != nil || !strings.Contains(head, " 502 ") {
		t.Fatalf("request the app dropped: %q, %v", head, err)
	}
	recs := log.wait(t, 2)
	if r := recs[1]; r.Status != 502 || r.method != "POST" || r.target != "/crash" || r.Attempts != 1 || r.Waited {
		t.Errorf("record of the dropped request: %+v", r)
	}
}

// A tcp connection gets one record: bytes to the client, the wait for the
// start, one dial.
func TestAccessRecordOfATCPConnection(t *testing.T) {
	var log recordLog
	ta := newTestApps(t, Capacity{}, appSpec{
		args:   []string{"-proto", "echo", "-delay", "100ms"},
		edit:   func(c *Config) { c.AccessLog = true },
		access: log.log,
	})[0]
	c, err := net.Dial("tcp", ta.addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "hello")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hello" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	r := log.wait(t, 1)[0]
	if r.Mode != ModeTCP || r.Status != http.StatusOK || r.Bytes != 5 || !r.Waited || r.Wait < 100*time.Millisecond ||
		r.Attempts != 1 || r.Client != "127.0.0.1" || r.method != "" {
		t.Errorf("record: %+v", r)
	}
}

// An upgraded connection (net/http's path, through the access log's
// ResponseWriter) that waited for the start carries Server-Timing in its
// 101, and is logged once it ends.
func TestAccessRecordOfAnUpgrade(t *testing.T) {
	var log recordLog
	ta := newTestApps(t, Capacity{}, appSpec{
		args:   []string{"-proto", "http"},
		edit:   func(c *Config) { c.Mode, c.AccessLog, c.ServerTiming = ModeHTTP, true, true },
		access: log.log,
	})[0]
	c, err := net.Dial("tcp", ta.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if st := resp.Header.Get("Server-Timing"); !strings.HasPrefix(st, "rouse-start;dur=") {
		t.Errorf("the 101 of a cold app: Server-Timing %q", st)
	}
	io.WriteString(c, "line\n")
	if line, err := br.ReadString('\n'); err != nil || line != "line\n" {
		t.Fatalf("echo over the upgraded connection: %q %v", line, err)
	}
	c.Close()
	if r := log.wait(t, 1)[0]; r.Status != 101 || r.target != "/upgrade" || !r.Waited || r.Attempts != 1 {
		t.Errorf("record of the upgrade: %+v", r)
	}
}
