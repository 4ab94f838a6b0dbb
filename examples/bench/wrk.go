package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// wrkScript is report.lua: a done() hook printing wrk's figures as JSON.
//
//go:embed report.lua
var wrkScript string

// wrkResult is one wrk run, as report.lua prints it.
type wrkResult struct {
	DurationUS    float64 `json:"duration_us"`
	Requests      int64   `json:"requests"`
	Bytes         int64   `json:"bytes"`
	ConnectErrors int64   `json:"connect_errors"`
	ReadErrors    int64   `json:"read_errors"`
	WriteErrors   int64   `json:"write_errors"`
	StatusErrors  int64   `json:"status_errors"` // responses >= 400
	Timeouts      int64   `json:"timeouts"`
	LatMeanUS     float64 `json:"lat_mean_us"`
	LatMaxUS      float64 `json:"lat_max_us"`
	P50US         float64 `json:"p50_us"`
	P90US         float64 `json:"p90_us"`
	P99US         float64 `json:"p99_us"`

	ProxyCPU time.Duration `json:"-"` // CPU the proxy's processes used during the run, if measured
}

func (r wrkResult) rps() float64 { return float64(r.Requests) / (r.DurationUS / 1e6) }

func (r wrkResult) mbps() float64 { return float64(r.Bytes) / (r.DurationUS / 1e6) / (1 << 20) }

func (r wrkResult) errors() int64 {
	return r.ConnectErrors + r.ReadErrors + r.WriteErrors + r.StatusErrors + r.Timeouts
}

// cpuPerRequest is the proxy's CPU time per request in microseconds.
func (r wrkResult) cpuPerRequest() float64 {
	if r.Requests == 0 {
		return 0
	}
	return float64(r.ProxyCPU.Microseconds()) / float64(r.Requests)
}

// wrkRun is one invocation of wrk.
type wrkRun struct {
	wrk      string
	script   string // path of report.lua written to disk
	threads  int
	conns    int
	duration time.Duration
	headers  []string
	url      string
}

func (w wrkRun) argv() []string {
	argv := []string{w.wrk,
		"-t" + strconv.Itoa(w.threads), "-c" + strconv.Itoa(w.conns),
		"-d" + strconv.Itoa(int(w.duration/time.Second)) + "s",
		"--timeout", "5s", "--latency", "-s", w.script}
	for _, h := range w.headers {
		argv = append(argv, "-H", h)
	}
	return append(argv, w.url)
}

// run runs wrk and parses its result.
func (w wrkRun) run(ctx context.Context) (wrkResult, error) {
	ctx, cancel := context.WithTimeout(ctx, w.duration+30*time.Second)
	defer cancel()
	out, err := command(ctx, w.argv())
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk %s: %w\n%s", w.url, err, out)
	}
	return parseWrk(out)
}

// parseWrk finds report.lua's line in wrk's output.
func parseWrk(out string) (wrkResult, error) {
	for line := range strings.SplitSeq(out, "\n") {
		if js, ok := strings.CutPrefix(strings.TrimSpace(line), "WRKJSON "); ok {
			var r wrkResult
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				return wrkResult{}, fmt.Errorf("wrk result %q: %w", js, err)
			}
			if r.DurationUS <= 0 {
				return wrkResult{}, fmt.Errorf("wrk result %q: no duration", js)
			}
			return r, nil
		}
	}
	return wrkResult{}, fmt.Errorf("wrk printed no WRKJSON line (is report.lua loaded?):\n%s", out)
}
