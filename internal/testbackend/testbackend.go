// Package testbackend is how the tests of activator and httpfront run
// apps: the test binary re-executed as the example backend
// (examples/backend), or a Python script; and how they read what those
// apps note (each start in a starts file, each request in a hits file)
// and talk to them over HTTP.
package testbackend

import (
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/examples/backend"
	"github.com/rouse-dev/rouse/procman"
)

// GuardVerb is the first argument that makes the test binary rouse's
// guard process (procman.GuardMain), as rouse's own hidden verb does.
const GuardVerb = "__guard"

// Main runs what a child the tests started asks for, and reports whether
// it did: the guard (GuardVerb), or the backend (ROUSE_TEST_BACKEND=1,
// which Spec sets). A TestMain calls it first and exits with code when ran.
func Main() (code int, ran bool) {
	if len(os.Args) > 1 && os.Args[1] == GuardVerb {
		return procman.GuardMain(os.Stdin), true
	}
	if os.Getenv("ROUSE_TEST_BACKEND") == "1" {
		return backend.Main(os.Args[1:], os.Stdout, os.Stderr), true
	}
	return 0, false
}

// Spec is the process of an app that is this test binary running the
// backend, listening on upstream and noting its starts in starts.
func Spec(starts, upstream string) procman.Spec {
	s := procman.Spec{
		Argv: []string{os.Args[0], "-starts", starts, "-listen", upstream},
		// A race-built child sleeps 1 s at exit by default: that would
		// hide how fast exits are noticed, and slow the suite.
		Env:         []string{"ROUSE_TEST_BACKEND=1", "GORACE=atexit_sleep_ms=0"},
		StopTimeout: 5 * time.Second,
	}
	if os.Geteuid() == 0 {
		s.User = "root" // CI runs as root; apps need an explicit user then
	}
	return s
}

// Start is one line of a starts file: a process and when it began.
type Start struct {
	Pid int
	At  time.Time
}

// Starts reads a starts file ("PID UNIXNANO" per line, from the backend
// and the Python apps alike).
func Starts(path string) []Start {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []Start
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		pid, _ := strconv.Atoi(f[0])
		ns, _ := strconv.ParseInt(f[1], 10, 64)
		out = append(out, Start{pid, time.Unix(0, ns)})
	}
	return out
}

// Pids are the processes noted in the starts files, in order.
func Pids(starts ...string) []int {
	var pids []int
	for _, f := range starts {
		for _, s := range Starts(f) {
			pids = append(pids, s.Pid)
		}
	}
	return pids
}

// HitCount counts the requests for path that the backend, run with
// -hits, noted in hits.
func HitCount(t testing.TB, hits, path string) int {
	t.Helper()
	b, err := os.ReadFile(hits)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 2 && f[1] == path {
			n++
		}
	}
	return n
}

// Python3 returns the Python interpreter the tests run apps with:
// Debian's when there is one (CI has only that), else the one on PATH.
func Python3(t testing.TB) string {
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

// Logger logs to t: everything in a test, warnings and errors in a
// benchmark.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Get GETs url and returns the response with its body read.
func Get(t testing.TB, client *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s body: %v", url, err)
	}
	return resp, string(b)
}

// NewClient is an HTTP client for many requests at once, closed with t.
func NewClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 500}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
