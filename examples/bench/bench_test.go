package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	out := `Running 5s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Latency Distribution
     50%  600.00us
     99%    2.10ms
  120000 requests in 5.00s, 14.00MB read
Requests/sec:  24000.00
Transfer/sec:      2.80MB
WRKJSON {"duration_us":5000000,"requests":120000,"bytes":14680064,"connect_errors":0,"read_errors":2,"write_errors":0,"status_errors":1,"timeouts":0,"lat_mean_us":650.5,"lat_max_us":9000,"p50_us":600,"p90_us":1200,"p99_us":2100}
`
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.rps(), 24000.0; got != want {
		t.Errorf("rps = %v, want %v", got, want)
	}
	if got, want := r.errors(), int64(3); got != want {
		t.Errorf("errors = %v, want %v", got, want)
	}
	if r.P99US != 2100 || r.P50US != 600 {
		t.Errorf("percentiles = %v/%v, want 600/2100", r.P50US, r.P99US)
	}
	for _, bad := range []string{"", "Requests/sec: 1\n", "WRKJSON {\n", `WRKJSON {"requests":1}` + "\n"} {
		if _, err := parseWrk(bad); err == nil {
			t.Errorf("parseWrk(%q) did not fail", bad)
		}
	}
}

func TestWrkArgv(t *testing.T) {
	w := wrkRun{wrk: "wrk", script: "r.lua", threads: 1, conns: 32, duration: 5 * time.Second,
		headers: []string{"Connection: close"}, url: "http://127.0.0.1:1/"}
	got := strings.Join(w.argv(), " ")
	want := "wrk -t1 -c32 -d5s --timeout 5s --latency -s r.lua -H Connection: close http://127.0.0.1:1/"
	if got != want {
		t.Errorf("argv = %q\nwant   %q", got, want)
	}
}

func TestStats(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
	}
	ds := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {0, 1}} {
		if got := percentile(ds, tt.p); got != tt.want {
			t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := freePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p < 1024 {
			t.Errorf("bad or repeated port %d in %v", p, ports)
		}
		seen[p] = true
	}
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"nginx", "-c", "a b", "it's", ""})
	want := `nginx -c 'a b' 'it'\''s' ''`
	if got != want {
		t.Errorf("shellJoin = %s, want %s", got, want)
	}
}

// TestCPUTime checks the /proc readers on this process while it spins
// until schedstat has seen 100ms on a CPU (the box may be busy, so wall
// time says little).
func TestCPUTime(t *testing.T) {
	pid := os.Getpid()
	ticks0, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	sched0 := runTime(pid)
	deadline := time.Now().Add(10 * time.Second)
	for runTime(pid)-sched0 < 100*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("schedstat: %v on CPU after spinning 10s", runTime(pid)-sched0)
		}
	}
	ticks1, err := cpuTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if d := ticks1 - ticks0; d < 50*time.Millisecond {
		t.Errorf("utime+stime: %v while schedstat saw 100ms", d)
	}
	if rssBytes(pid) <= 0 {
		t.Error("no VmRSS")
	}
}

// TestIdleConnMemory holds keep-alive connections to an in-process server
// (the "proxy" is this process) and checks that each was answered and
// held; a server that closes after its answer is an error, not a figure.
func TestIdleConnMemory(t *testing.T) {
	var held atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateIdle {
			held.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	self := func() []int { return []int{os.Getpid()} }
	c := &contender{name: "test", url: srv.URL, cpu: self}
	res, err := idleConnMemory(t.Context(), c, 50)
	if err != nil {
		t.Fatal(err)
	}
	if res.n != 50 || res.before <= 0 || res.after <= 0 {
		t.Errorf("result %+v", res)
	}
	// The server marks a connection idle just after its answer is out.
	for deadline := time.Now().Add(10 * time.Second); held.Load() != 50; {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections went idle on the server, want 50", held.Load())
		}
		time.Sleep(time.Millisecond) // polling interval, bounded by deadline
	}
	closing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	}))
	defer closing.Close()
	if _, err := idleConnMemory(t.Context(), &contender{name: "closing", url: closing.URL, cpu: self}, 3); err == nil {
		t.Error("a server that closes its connections: no error")
	}
}
