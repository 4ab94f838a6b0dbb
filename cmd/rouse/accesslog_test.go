package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/testbackend"
)

// combinedRE reads back a line of the combined format with rouse's fields.
var combinedRE = regexp.MustCompile(`^(\S+) - - \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)" app=(\S+) mode=(\S+) rt=([0-9.]+) wait=([0-9.]+|-) tries=(\d+)$`)

// accessLine is a line of either format, read back.
type accessLine struct {
	Time       string  `json:"time"`
	App        string  `json:"app"`
	Mode       string  `json:"mode"`
	Client     string  `json:"client"`
	Method     string  `json:"method"`
	Path       string  `json:"path"`
	Proto      string  `json:"proto"`
	Status     int     `json:"status"`
	Bytes      int64   `json:"bytes"`
	DurationMS float64 `json:"duration_ms"`
	Waited     bool    `json:"waited"`
	WaitMS     float64 `json:"wait_ms"`
	Attempts   int     `json:"attempts"`
	Referer    string  `json:"referer"`
	UserAgent  string  `json:"user_agent"`
}

func parseCombined(t *testing.T, line string) accessLine {
	t.Helper()
	m := combinedRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("not a combined line: %q", line)
	}
	if _, err := time.Parse("02/Jan/2006:15:04:05 -0700", m[2]); err != nil {
		t.Errorf("time of %q: %v", line, err)
	}
	l := accessLine{Time: m[2], Client: m[1], App: m[8], Mode: m[9]}
	if m[3] != "-" {
		parts := strings.Split(m[3], " ")
		if len(parts) != 3 {
			t.Fatalf("request %q of %q", m[3], line)
		}
		l.Method, l.Path, l.Proto = parts[0], parts[1], parts[2]
	}
	l.Status, _ = strconv.Atoi(m[4])
	l.Bytes, _ = strconv.ParseInt(m[5], 10, 64)
	l.Referer, l.UserAgent = strings.Trim(m[6], "-"), strings.Trim(m[7], "-")
	rt, _ := strconv.ParseFloat(m[10], 64)
	l.DurationMS = rt * 1000
	if m[11] != "-" {
		w, _ := strconv.ParseFloat(m[11], 64)
		l.Waited, l.WaitMS = true, w*1000
	}
	l.Attempts, _ = strconv.Atoi(m[12])
	return l
}

func parseJSONLine(t *testing.T, line string) accessLine {
	t.Helper()
	var l accessLine
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		t.Fatalf("not a JSON line: %q: %v", line, err)
	}
	if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil {
		t.Errorf("time of %q: %v", line, err)
	}
	return l
}

// readLines waits until file has n lines and returns them.
func readLines(t *testing.T, file string, n int) []string {
	t.Helper()
	var lines []string
	waitFor(t, fmt.Sprintf("%d lines in %s", n, file), func() bool {
		b, _ := os.ReadFile(file)
		lines = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		return len(b) > 0 && len(lines) >= n
	})
	return lines
}

// get sends a GET with a user agent and a referer, and returns the
// response with its body read.
func get(t *testing.T, url string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("User-Agent", `test "agent"/1`)
	req.Header.Set("Referer", "http://example.com/from")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// A real rouse with real requests writes the access log each app asks
// for, and it reads back: combined for the Go app (a cold start that
// waited, a warm request, Server-Timing on the first only), for an app
// that cannot start (rouse's 503) and for a tcp connection; JSON for a
// Python app, whose /drop route drops the connection (502 after the
// retries); an inetd app's connection goes to rouse's stderr. After the
// file is moved away and rouse gets SIGHUP (as
// logrotate does), lines go to a new file.
func TestAccessLogOfARealRun(t *testing.T) {
	script, err := filepath.Abs("../../examples/apps/pyapp.py")
	if err != nil {
		t.Fatal(err)
	}
	web, broken, py, echo, inetd := freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.web]
mode = "http"
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "http", "-delay", "300ms", "-listen", "127.0.0.1:{port}"]

[apps.broken]
mode = "http"
listen = ["127.0.0.1:%d"]
command = "exit 3"

[apps.py]
mode = "http"
listen = ["127.0.0.1:%d"]
command = [%q, %q, "http", "--port", "{port}"]
access_log = "@DIR@/py.json"
access_log_format = "json"

[apps.echo]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]

[apps.perconn]
mode = "inetd"
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-name", "perconn", "-inetd"]
access_log = "stderr"
`, web, broken, py, testbackend.Python3(t), script, echo, inetd))
	dir := filepath.Dir(file)
	text, _ := os.ReadFile(file) // [rouse] is writeConfig's: the rouse-wide access log goes in it
	text = []byte(strings.Replace(string(text), "[rouse]\n", "[rouse]\naccess_log = \"access.log\"\n", 1))
	if err := os.WriteFile(file, text, 0o644); err != nil {
		t.Fatal(err)
	}
	r := startRouse(t, file, control)

	cold := get(t, fmt.Sprintf("http://127.0.0.1:%d/hello?x=1", web))
	warm := get(t, fmt.Sprintf("http://127.0.0.1:%d/hello?x=1", web))
	if cold.StatusCode != 200 || warm.StatusCode != 200 {
		t.Fatalf("web: %s then %s", cold.Status, warm.Status)
	}
	st := cold.Header.Get("Server-Timing")
	ms, ok := strings.CutPrefix(st, "rouse-start;dur=")
	if d, err := strconv.ParseFloat(ms, 64); !ok || err != nil || d < 300 {
		t.Errorf("cold response: Server-Timing %q, want rouse-start;dur= over 300 (ms)", st)
	}
	if st := warm.Header.Get("Server-Timing"); st != "" {
		t.Errorf("warm response: Server-Timing %q", st)
	}
	if resp := get(t, fmt.Sprintf("http://127.0.0.1:%d/", broken)); resp.StatusCode != 503 {
		t.Errorf("app that cannot start: %s, want 503", resp.Status)
	}
	if got := echoOnce(t, echo, "ping"); got != "ping" {
		t.Errorf("echo: %q", got)
	}
	if got := echoOnce(t, inetd, "hi\n"); !strings.HasPrefix(got, "perconn 127.0.0.1 ") {
		t.Errorf("inetd: %q", got)
	}
	if resp := get(t, fmt.Sprintf("http://127.0.0.1:%d/", py)); resp.StatusCode != 200 {
		t.Errorf("py: %s", resp.Status)
	}
	if resp := get(t, fmt.Sprintf("http://127.0.0.1:%d/drop", py)); resp.StatusCode != 502 {
		t.Errorf("py /drop: %s, want 502", resp.Status)
	}

	byApp := map[string][]accessLine{}
	t.Logf("access.log:\n%s\npy.json:\n%s", strings.Join(readLines(t, filepath.Join(dir, "access.log"), 4), "\n"), strings.Join(readLines(t, filepath.Join(dir, "py.json"), 2), "\n"))
	for _, line := range readLines(t, filepath.Join(dir, "access.log"), 4) {
		l := parseCombined(t, line)
		byApp[l.App] = append(byApp[l.App], l)
	}
	for _, line := range readLines(t, filepath.Join(dir, "py.json"), 2) {
		l := parseJSONLine(t, line)
		byApp[l.App] = append(byApp[l.App], l)
	}
	var stderrLine string
	waitFor(t, "the inetd app's line on rouse's stderr", func() bool {
		for line := range strings.SplitSeq(r.log.String(), "\n") {
			if strings.Contains(line, " app=perconn ") {
				stderrLine = line
				return true
			}
		}
		return false
	})
	l := parseCombined(t, stderrLine)
	byApp[l.App] = append(byApp[l.App], l)
	check := func(app string, i int, ok func(l accessLine) bool) {
		t.Helper()
		if len(byApp[app]) <= i {
			t.Errorf("%s: %d lines, want line %d", app, len(byApp[app]), i+1)
			return
		}
		if l := byApp[app][i]; !ok(l) {
			t.Errorf("%s line %d: %+v", app, i+1, l)
		}
	}
	http1 := func(l accessLine, path string, status int) bool {
		return l.Client == "127.0.0.1" && l.Mode == "http" && l.Method == "GET" && l.Path == path && l.Proto == "HTTP/1.1" &&
			l.Status == status && l.Referer == "http://example.com/from" && l.DurationMS >= 0
	}
	combinedUA := `test \x22agent\x22/1` // escaped as nginx does
	check("web", 0, func(l accessLine) bool {
		return http1(l, "/hello?x=1", 200) && l.UserAgent == combinedUA && l.Bytes > 0 && l.Waited && l.WaitMS >= 300 &&
			l.DurationMS >= l.WaitMS && l.Attempts == 1
	})
	check("web", 1, func(l accessLine) bool { return http1(l, "/hello?x=1", 200) && !l.Waited && l.Attempts == 1 })
	check("broken", 0, func(l accessLine) bool { return http1(l, "/", 503) && l.Waited && l.Attempts == 0 && l.Bytes > 0 })
	check("echo", 0, func(l accessLine) bool {
		return l.Mode == "tcp" && l.Method == "" && l.Status == 200 && l.Bytes == 4 && l.Waited && l.Attempts == 1
	})
	check("perconn", 0, func(l accessLine) bool {
		return l.Mode == "inetd" && l.Client == "127.0.0.1" && l.Method == "" && l.Status == 200 && l.Bytes == 0 && l.Attempts == 1
	})
	check("py", 0, func(l accessLine) bool {
		return http1(l, "/", 200) && l.UserAgent == `test "agent"/1` && l.Waited && l.Attempts == 1
	})
	check("py", 1, func(l accessLine) bool { return http1(l, "/drop", 502) && !l.Waited && l.Attempts == 3 })

	// logrotate: move the file, SIGHUP; rouse writes a new one.
	if err := os.Rename(filepath.Join(dir, "access.log"), filepath.Join(dir, "access.log.1")); err != nil {
		t.Fatal(err)
	}
	r.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload after SIGHUP", func() bool { return strings.Contains(r.log.String(), "msg=reloaded") })
	get(t, fmt.Sprintf("http://127.0.0.1:%d/after", web))
	if l := parseCombined(t, readLines(t, filepath.Join(dir, "access.log"), 1)[0]); l.Path != "/after" {
		t.Errorf("after SIGHUP, the new file begins with %+v", l)
	}
	if n := len(readLines(t, filepath.Join(dir, "access.log.1"), 4)); n != 4 {
		t.Errorf("the moved file has %d lines, want the 4 from before", n)
	}
}

// An access record, any bytes in it, reads back from either format.
// Requests the http front answers itself, for no app, are in
// [rouse].access_log with app "-": a Host no app takes (404), an invalid
// Host (400), a request with both Content-Length and Transfer-Encoding
// (400); none of them starts the app (a Python server that takes one
// Host), and its own requests are logged as before.
func TestAccessLogOfFrontOwnAnswers(t *testing.T) {
	script, err := filepath.Abs("../../examples/apps/pyapp.py")
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.py]
mode = "http"
listen = ["127.0.0.1:%d"]
hosts = ["py.test"]
command = [%q, %q, "http", "--port", "{port}"]
`, port, testbackend.Python3(t), script))
	text, _ := os.ReadFile(file)
	text = []byte(strings.Replace(string(text), "[rouse]\n", "[rouse]\naccess_log = \"access.log\"\n", 1))
	if err := os.WriteFile(file, text, 0o644); err != nil {
		t.Fatal(err)
	}
	r := startRouse(t, file, control)
	raw := func(req string) string {
		t.Helper()
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, req)
		b, _ := io.ReadAll(c)
		line, _, _ := strings.Cut(string(b), "\r\n")
		return line
	}
	ua := "User-Agent: probe/1\r\nConnection: close\r\n"
	for _, c := range []struct{ req, want string }{
		{"GET /nobody HTTP/1.1\r\nHost: other.test\r\n" + ua + "\r\n", "HTTP/1.1 404 Not Found"},
		// (net/http rejects such a Host header itself, not an absolute
		// target's host.)
		{"GET http://a\"b/bad HTTP/1.1\r\nHost: py.test\r\n" + ua + "\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST /both HTTP/1.1\r\nHost: py.test\r\n" + ua + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"GET /hi HTTP/1.1\r\nHost: py.test\r\n" + ua + "\r\n", "HTTP/1.1 200 OK"},
	} {
		if got := raw(c.req); got != c.want {
			t.Errorf("%q: %q, want %q", c.req, got, c.want)
		}
	}
	lines := readLines(t, filepath.Join(filepath.Dir(file), "access.log"), 4)
	t.Logf("access.log:\n%s", strings.Join(lines, "\n"))
	want := map[string]accessLine{
		"GET 404":  {App: "-", Path: "/nobody"},
		"GET 400":  {App: "-", Path: `http://a\x22b/bad`},
		"POST 400": {App: "-", Path: "/both"},
		"GET 200":  {App: "py", Path: "/hi"},
	}
	for _, line := range lines {
		l := parseCombined(t, line)
		key := fmt.Sprintf("%s %d", l.Method, l.Status)
		w, ok := want[key]
		if !ok || l.App != w.App || l.Path != w.Path || l.Mode != "http" ||
			l.Client != "127.0.0.1" || l.UserAgent != "probe/1" || l.Proto != "HTTP/1.1" || l.Bytes <= 0 {
			t.Errorf("unexpected line %+v", l)
		}
		delete(want, key)
	}
	if len(want) > 0 {
		t.Errorf("not logged: %v", want)
	}
	if a := r.app(t, "py"); a.starts != 1 {
		t.Errorf("py started %d times, want once (for /hi only)", a.starts)
	}
}

func TestAccessLogFormats(t *testing.T) {
	r := activator.AccessRecord{
		App: "blog", Mode: activator.ModeHTTP, Client: "::1",
		Time: time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC), Duration: 1500 * time.Millisecond,
		Method: []byte("GET"), Target: []byte("/a\"b\\c\x01é\xff"), Proto: []byte("HTTP/1.1"),
		UserAgent: []byte("x \"y\"\n"), Status: 200, Bytes: 12, Waited: true, Wait: 1200 * time.Millisecond, Attempts: 2,
	}
	line := string(appendCombined(nil, &r))
	want := `::1 - - [07/Dec/2026:02:00:01 +0000] "GET /a\x22b\x5Cc\x01\xC3\xA9\xFF HTTP/1.1" 200 12 "-" "x \x22y\x22\x0A" app=blog mode=http rt=1.500 wait=1.200 tries=2`
	if line != want {
		t.Errorf("combined:\n got %s\nwant %s", line, want)
	}
	l := parseJSONLine(t, string(appendAccessJSON(nil, &r)))
	wantJSON := accessLine{Time: "2026-12-07T02:00:01.500Z", App: "blog", Mode: "http", Client: "::1", Method: "GET",
		Path: "/a\"b\\c\x01é\ufffd", Proto: "HTTP/1.1", Status: 200, Bytes: 12, DurationMS: 1500, Waited: true, WaitMS: 1200,
		Attempts: 2, UserAgent: "x \"y\"\n"}
	if l != wantJSON {
		t.Errorf("json:\n got %+v\nwant %+v", l, wantJSON)
	}
	tcp := activator.AccessRecord{App: "pg", Mode: activator.ModeTCP, Time: r.Time, Status: 503}
	if got := string(appendCombined(nil, &tcp)); got != `- - - [07/Dec/2026:02:00:00 +0000] "-" 503 0 "-" "-" app=pg mode=tcp rt=0.000 wait=- tries=0` {
		t.Errorf("tcp combined: %s", got)
	}
}

// Log copies a record without allocating, and drops it, counted, when the
// batch is full.
func TestAccessLogCopiesAndDrops(t *testing.T) {
	l := &accessLog{cur: newAccessBatch(), wake: make(chan struct{}, 1)} // no writer: nothing empties the batch
	l.routes.Store(&accessRoutes{apps: map[string]accessRoute{"a": {target: accessStderr}}})
	target := []byte("/path")
	// A record with nowhere to go (an app with its log off, a front's own
	// answer with [rouse].access_log off) is neither copied nor counted.
	l.Log(activator.AccessRecord{App: noApp, Target: target})
	if len(l.cur.recs) != 0 || l.Dropped() != 0 {
		t.Fatalf("a record with no route: %d kept, %d dropped", len(l.cur.recs), l.Dropped())
	}
	r := activator.AccessRecord{App: "a", Method: []byte("GET"), Target: target, Proto: []byte("HTTP/1.1"), UserAgent: []byte("ua")}
	if n := testing.AllocsPerRun(100, func() { l.Log(r) }); n != 0 {
		t.Errorf("Log allocates %v times per record", n)
	}
	copy(target, "/xxxx") // borrowed: the batch has its own copy
	if got := string(l.cur.recs[0].Target); got != "/path" {
		t.Errorf("kept target %q", got)
	}
	for len(l.cur.recs) < accessBatchRecords {
		l.Log(r)
	}
	l.Log(r)
	if l.Dropped() != 1 {
		t.Errorf("dropped %d, want 1 once the batch is full", l.Dropped())
	}
}

// Whatever bytes a client sends, a JSON line is one valid object that
// gives them back (invalid UTF-8 as U+FFFD), and a combined line is one
// line whose quoted fields hold no quote.
func FuzzAccessLine(f *testing.F) {
	f.Add([]byte("/a?b=c"), []byte("curl/8"))
	f.Add([]byte("/\"\\\x00\xff"), []byte("\n\r\té"))
	f.Fuzz(func(t *testing.T, target, ua []byte) {
		r := activator.AccessRecord{App: "a", Mode: activator.ModeHTTP, Method: []byte("GET"), Target: target,
			Proto: []byte("HTTP/1.1"), UserAgent: ua, Status: 200}
		var l accessLine
		js := appendAccessJSON(nil, &r)
		if bytes.ContainsAny(js, "\n\r") || json.Unmarshal(js, &l) != nil {
			t.Fatalf("not one JSON line: %q", js)
		}
		if l.Path != viaJSON(target) || l.UserAgent != viaJSON(ua) {
			t.Errorf("read back %q %q from %q %q", l.Path, l.UserAgent, target, ua)
		}
		line := appendCombined(nil, &r)
		if bytes.ContainsAny(line, "\n\r") || bytes.Count(line, []byte(`"`)) != 6 {
			t.Fatalf("not one combined line with three quoted fields: %q", line)
		}
	})
}

// viaJSON is what encoding/json makes of p: each invalid byte U+FFFD.
func viaJSON(p []byte) string {
	b, _ := json.Marshal(string(p))
	var s string
	json.Unmarshal(b, &s)
	return s
}
