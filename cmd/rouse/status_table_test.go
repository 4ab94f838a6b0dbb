package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

var updateGolden = flag.Bool("update-status", false, "rewrite testdata/status/*.golden")

func TestStatusGolden(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	until := now.Add(37 * time.Second)
	apps := []activator.Status{
		{Name: "blog", State: activator.Ready, PID: 4242, Mode: activator.ModeHTTP, Listen: []string{"127.0.0.1:8080"},
			UptimeS: 3*3600 + 125, RSSBytes: 57 << 20, CPUPercent: 1.25, Conns: 3, Queued: 0, Starts: 4, Failures: 0,
			LastStartMS: 412.5, Upstream: "tcp:127.0.0.1:41000", Command: []string{"/srv/blog/server", "--port", "41000"}},
		{Name: "redis", State: activator.Idle, Mode: activator.ModeTCP, Listen: []string{"127.0.0.1:6379", "unix:/run/rouse/redis.sock"},
			Starts: 1, Upstream: "tcp:127.0.0.1:41001", Command: []string{"redis-server"}},
		{Name: "wiki", State: activator.Backoff, Mode: activator.ModeHTTP, Listen: []string{"127.0.0.1:8080"}, Starts: 3, Failures: 3,
			LastError:    "start: ready wiki pid 977: process exited: exit status 1 (stderr: \"config.yml: no such file or directory\")",
			BackoffUntil: &until, Upstream: "tcp:127.0.0.1:41002", Command: []string{"/bin/sh", "-c", "exec wiki"},
			StderrTail: []string{"loading config", "config.yml: no such file or directory"}},
	}
	var table, detail bytes.Buffer
	writeStatusTable(&table, apps, now)
	writeBudget(&table, activator.BudgetStatus{Budget: 1 << 30, Used: 600 << 20, Counted: 700 << 20})
	writeBudget(&table, activator.BudgetStatus{Budget: 1 << 30, Used: 1100 << 20, Counted: 1100 << 20, Over: 76 << 20, Exceeded: 2,
		Reason: "blog holds 300 MiB, 120 MiB more than its start reserved; nothing can be stopped: the other apps serve, start or are keep_warm"})
	writeBudget(&table, activator.BudgetStatus{Budget: 1 << 30, Used: 900 << 20, Counted: 950 << 20, Exceeded: 2,
		Reason: "blog holds 300 MiB, 120 MiB more than its start reserved; stopping wiki to make room"})
	writeStatusDetail(&detail, apps[2], now)
	writeStatusDetail(&detail, apps[0], now)
	golden(t, "table.golden", table.Bytes())
	golden(t, "detail.golden", detail.Bytes())
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "status", name)
	if *updateGolden {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-status to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n got:\n%s\nwant:\n%s", name, got, want)
	}
}
