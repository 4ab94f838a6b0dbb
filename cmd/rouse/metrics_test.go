package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/rouse-dev/rouse/activator"
)

func TestCumulativeBuckets(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    activator.Histogram
		want map[float64]uint64
	}{
		{
			name: "empty",
			h:    activator.Histogram{Buckets: []float64{1, 2}, Counts: []uint64{0, 0, 0}},
			want: map[float64]uint64{1: 0, 2: 0},
		},
		{
			name: "each bucket adds the ones below",
			h:    activator.Histogram{Buckets: []float64{.1, 1, 10}, Counts: []uint64{2, 0, 3, 1}, Count: 6},
			want: map[float64]uint64{.1: 2, 1: 2, 10: 5},
		},
		{
			name: "only +Inf",
			h:    activator.Histogram{Buckets: []float64{1}, Counts: []uint64{0, 4}, Count: 4},
			want: map[float64]uint64{1: 0},
		},
		{
			name: "zero value",
			h:    activator.Histogram{Buckets: []float64{1, 2}},
			want: map[float64]uint64{1: 0, 2: 0},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := cumulativeBuckets(tc.h)
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for le, n := range tc.want {
				if got[le] != n {
					t.Errorf("bucket le=%g: got %d, want %d (all: %v)", le, got[le], n, got)
				}
			}
		})
	}
}

// TestCumulativeBucketsFromObservations checks the conversion against the
// activator's own histogram: every Prometheus bucket must count exactly the
// observations up to its bound.
func TestCumulativeBucketsFromObservations(t *testing.T) {
	obs := []float64{0.001, 0.005, 0.02, 0.3, 0.3, 7, 45, 100}
	h := activator.Histogram{Buckets: activator.ColdStartBuckets, Counts: make([]uint64, len(activator.ColdStartBuckets)+1)}
	for _, v := range obs {
		i, _ := slices.BinarySearch(h.Buckets, v)
		h.Counts[i]++
		h.Count++
		h.Sum += v
	}
	got := cumulativeBuckets(h)
	for _, le := range h.Buckets {
		var want uint64
		for _, v := range obs {
			if v <= le {
				want++
			}
		}
		if got[le] != want {
			t.Errorf("le=%g: got %d, want %d", le, got[le], want)
		}
	}
}

// TestMetrics runs a real daemon with an http app, a tcp app and a
// crash-looping app, drives each, and scrapes /metrics over TCP
// ([rouse].metrics) and over the control socket.
func TestMetrics(t *testing.T) {
	webPort, echoPort, crashPort, metricsPort := freePort(t), freePort(t), freePort(t), freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.web]
mode = "http"
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-name", "web", "-listen", "127.0.0.1:{port}"]

[apps.echo]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]

[apps.crash]
mode = "http"
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-exit", "1"]
`, webPort, echoPort, crashPort))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort)
	setRouseKeys(t, file, fmt.Sprintf("metrics = %q\nmemory_budget = \"1GiB\"", metricsAddr))
	r := startRouse(t, file, control)

	get := func(port int, path string) int {
		t.Helper()
		c := &http.Client{Timeout: 20 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			t.Fatalf("GET %s on %d: %v", path, port, err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if code := get(webPort, "/"); code != 200 {
		t.Fatalf("cold start GET / = %d, want 200", code)
	}
	if code := get(webPort, "/broken"); code != 500 {
		t.Fatalf("GET /broken = %d, want the app's 500", code)
	}
	for _, msg := range []string{"one", "two"} {
		if got := echoOnce(t, echoPort, msg); got != msg {
			t.Fatalf("echo %q: got %q", msg, got)
		}
	}
	if code := get(crashPort, "/"); code != 503 {
		t.Fatalf("GET on a crashing app = %d, want rouse's 503", code)
	}

	overTCP := func() (string, error) {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return "", err
		}
		return readScrape(resp)
	}
	overControl := func() (string, error) {
		ctl := newControlClient(control)
		resp, err := ctl.http.Get("http://rouse/metrics")
		if err != nil {
			return "", err
		}
		return readScrape(resp)
	}

	// The tcp app's bytes are counted when its connections end, which may be
	// a moment after the client saw EOF.
	var fams map[string]*dto.MetricFamily
	waitFor(t, "the echo app's connections and the budget's sample to be counted", func() bool {
		text, err := overTCP()
		if err != nil {
			t.Fatalf("scrape over TCP: %v", err)
		}
		fams = parseScrape(t, text)
		return value(fams, "rouse_app_requests_total", "app", "echo", "outcome", "served") == 2 &&
			value(fams, "rouse_app_bytes_total", "app", "echo", "direction", "out") > 0 &&
			value(fams, "rouse_memory_counted_bytes") > 0 // sampled by the budget's check
	})

	checks := []struct {
		metric string
		labels []string
		want   float64
	}{
		{"rouse_apps", nil, 3},
		{"rouse_apps_running", nil, 2}, // web and echo; crash is in back-off or idle
		{"rouse_memory_budget_bytes", nil, 1 << 30},
		{"rouse_lru_stops_total", nil, 0},
		{"rouse_memory_over_budget_bytes", nil, 0},
		{"rouse_memory_budget_exceeded_total", nil, 0},
		{"rouse_app_starts_total", []string{"app", "web"}, 1},
		{"rouse_app_starts_total", []string{"app", "echo"}, 1},
		{"rouse_app_starts_total", []string{"app", "crash"}, 1},
		{"rouse_app_failures_total", []string{"app", "crash", "kind", "exit_before_ready"}, 1},
		{"rouse_app_failures_total", []string{"app", "web", "kind", "exit_before_ready"}, 0},
		{"rouse_app_failures_total", []string{"app", "web", "kind", "refused"}, 0},
		{"rouse_app_requests_total", []string{"app", "web", "outcome", "2xx"}, 1},
		{"rouse_app_requests_total", []string{"app", "web", "outcome", "5xx"}, 1},
		{"rouse_app_requests_total", []string{"app", "web", "outcome", "rouse_503"}, 0},
		{"rouse_app_requests_total", []string{"app", "crash", "outcome", "rouse_503"}, 1},
		{"rouse_app_requests_total", []string{"app", "echo", "outcome", "served"}, 2},
		{"rouse_app_requests_total", []string{"app", "echo", "outcome", "refused"}, 0},
		{"rouse_app_state", []string{"app", "web", "state", "ready"}, 1},
		{"rouse_app_state", []string{"app", "echo", "state", "ready"}, 1},
		{"rouse_app_stops_total", []string{"app", "web", "reason", "idle"}, 0},
		{"rouse_app_connections", []string{"app", "web"}, 0},
		{"rouse_app_queued", []string{"app", "web"}, 0},
	}
	for _, c := range checks {
		if got := value(fams, c.metric, c.labels...); got != c.want {
			t.Errorf("%s%v = %g, want %g", c.metric, c.labels, got, c.want)
		}
	}
	if ms := metricsOf(fams, "rouse_app_bytes_total", "app", "web"); len(ms) != 0 {
		t.Errorf("rouse_app_bytes_total for an http app, which rouse does not count: %v", ms)
	}
	for _, dir := range []string{"in", "out"} {
		if got := value(fams, "rouse_app_bytes_total", "app", "echo", "direction", dir); got < float64(len("one")+len("two")) {
			t.Errorf("echo bytes %s = %g, want at least 6", dir, got)
		}
	}

	// Exactly one state per app.
	for _, app := range []string{"web", "echo", "crash"} {
		var sum float64
		for _, m := range metricsOf(fams, "rouse_app_state", "app", app) {
			sum += m.GetGauge().GetValue()
		}
		if sum != 1 {
			t.Errorf("rouse_app_state{app=%q} sums to %g, want 1", app, sum)
		}
		if n := len(metricsOf(fams, "rouse_app_state", "app", app)); n != 6 {
			t.Errorf("rouse_app_state{app=%q} has %d series, want one per state (6)", app, n)
		}
	}

	// Histograms: one cold start each for the apps that became ready, and
	// cumulative buckets that end at the count.
	for _, tc := range []struct {
		metric, app string
		count       uint64
	}{
		{"rouse_app_cold_start_seconds", "web", 1},
		{"rouse_app_cold_start_seconds", "echo", 1},
		{"rouse_app_cold_start_seconds", "crash", 0},
		{"rouse_app_queue_wait_seconds", "web", 1}, // the request that woke it; /broken found it ready
	} {
		ms := metricsOf(fams, tc.metric, "app", tc.app)
		if len(ms) != 1 || ms[0].GetHistogram() == nil {
			t.Errorf("%s{app=%q}: %d series, want one histogram", tc.metric, tc.app, len(ms))
			continue
		}
		h := ms[0].GetHistogram()
		if h.GetSampleCount() != tc.count {
			t.Errorf("%s{app=%q} count = %d, want %d", tc.metric, tc.app, h.GetSampleCount(), tc.count)
		}
		var prev uint64
		for _, b := range h.GetBucket() {
			if b.GetCumulativeCount() < prev {
				t.Errorf("%s{app=%q}: buckets not cumulative: %v", tc.metric, tc.app, h.GetBucket())
			}
			prev = b.GetCumulativeCount()
		}
		if last := h.GetBucket()[len(h.GetBucket())-1]; !math.IsInf(last.GetUpperBound(), 1) || last.GetCumulativeCount() != tc.count {
			t.Errorf("%s{app=%q}: last bucket %v, want +Inf with the count", tc.metric, tc.app, last)
		}
		if tc.count > 0 && (h.GetSampleSum() <= 0 || h.GetSampleSum() > 20) {
			t.Errorf("%s{app=%q} sum = %gs, want a plausible duration", tc.metric, tc.app, h.GetSampleSum())
		}
	}

	// Memory: running apps have an RSS, and the total is their sum.
	webRSS, echoRSS := value(fams, "rouse_app_rss_bytes", "app", "web"), value(fams, "rouse_app_rss_bytes", "app", "echo")
	if webRSS <= 0 || echoRSS <= 0 {
		t.Errorf("rss of running apps: web %g, echo %g, want > 0", webRSS, echoRSS)
	}
	if used := value(fams, "rouse_memory_used_bytes"); used != webRSS+echoRSS+value(fams, "rouse_app_rss_bytes", "app", "crash") {
		t.Errorf("rouse_memory_used_bytes = %g, want the apps' sum %g", used, webRSS+echoRSS)
	}
	// What they count against the budget is at least what they hold (a
	// start's reservation may hold for more), and status --json says it.
	if counted := value(fams, "rouse_memory_counted_bytes"); counted < webRSS+echoRSS/2 {
		t.Errorf("rouse_memory_counted_bytes = %g, want about what the apps hold (%g) or more", counted, webRSS+echoRSS)
	}
	resp, err := newControlClient(control).http.Get("http://rouse/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var status statusReply
	err = json.NewDecoder(resp.Body).Decode(&status)
	resp.Body.Close()
	if err != nil || status.Budget == nil || status.Budget.Budget != 1<<30 || status.Budget.Counted == 0 || status.Budget.Over != 0 {
		t.Errorf("status budget %+v (%v), want 1 GiB, something counted, nothing over", status.Budget, err)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "rouse_app_cpu_percent"} {
		if fams[name] == nil {
			t.Errorf("no %s in the scrape", name)
		}
	}

	// The control socket serves the same metrics, and its API still works.
	text, err := overControl()
	if err != nil {
		t.Fatalf("scrape over the control socket: %v", err)
	}
	viaControl := parseScrape(t, text)
	for name := range fams {
		if viaControl[name] == nil {
			t.Errorf("%s is served over TCP but not on the control socket", name)
		}
	}
	if got := value(viaControl, "rouse_app_starts_total", "app", "web"); got != 1 {
		t.Errorf("starts of web over the control socket = %g, want 1", got)
	}
	if st := r.app(t, "web"); st.state != "ready" {
		t.Errorf("control API after adding /metrics: web is %q", st.state)
	}

	// It also serves the status page (TestStatusPageInChromium loads it in
	// a browser) ...
	resp, err = http.Get("http://" + metricsAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/html; charset=utf-8" ||
		!strings.Contains(string(page), `id="app-web"`) || !strings.Contains(string(page), `id="app-crash"`) {
		t.Errorf("GET / on the metrics address: %d %s, want the status page naming every app:\n%s", resp.StatusCode, ct, page)
	}
	// ... and never the control API.
	resp, err = http.Get("http://" + metricsAddr + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v1/status on the metrics address = %d, want 404", resp.StatusCode)
	}
}

// TestMetricsAddressInUse: a metrics address rouse cannot bind is a
// startup error that names it.
func TestMetricsAddressInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := freePort(t)
	file, _ := writeConfig(t, fmt.Sprintf(`
[apps.echo]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
`, port))
	setRouseKeys(t, file, fmt.Sprintf("metrics = %q", busy.Addr().String()))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "run", "-c", file)
	cmd.Env = append(os.Environ(), "ROUSE_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("rouse run with a busy metrics address: %v, want exit 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "metrics on "+busy.Addr().String()) || !strings.Contains(string(out), "address already in use") {
		t.Errorf("the error does not name the metrics address:\n%s", out)
	}
}

// setRouseKeys adds lines to the [rouse] table of a file from writeConfig.
func setRouseKeys(t *testing.T, file, lines string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text, ok := strings.CutPrefix(string(b), "[rouse]\n")
	if !ok {
		t.Fatalf("%s does not start with [rouse]", file)
	}
	if err := os.WriteFile(file, []byte("[rouse]\n"+lines+"\n"+text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readScrape(resp *http.Response) (string, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("/metrics answered %s: %s", resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return "", fmt.Errorf("/metrics Content-Type %q, want the text format", ct)
	}
	return string(b), nil
}

// parseScrape parses the text format with Prometheus's own parser and
// lints rouse's metrics (names, help, units) with promlint.
func parseScrape(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, text)
	}
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("lint /metrics: %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "rouse_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	return fams
}

// metricsOf returns the series of family name whose labels include the
// given name/value pairs.
func metricsOf(fams map[string]*dto.MetricFamily, name string, labels ...string) []*dto.Metric {
	var out []*dto.Metric
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// value is the value of the one counter or gauge series that matches, or
// NaN when there is not exactly one.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	ms := metricsOf(fams, name, labels...)
	if len(ms) != 1 {
		return math.NaN()
	}
	switch {
	case ms[0].GetCounter() != nil:
		return ms[0].GetCounter().GetValue()
	case ms[0].GetGauge() != nil:
		return ms[0].GetGauge().GetValue()
	}
	return math.NaN()
}
