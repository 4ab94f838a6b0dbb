package procman

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The exec probe runs as the app's user, in its dir, with its env but not
// the LISTEN_* meant for the app alone; what it prints goes to output.
func TestExecProbeRunsAsTheApp(t *testing.T) {
	t.Parallel()
	name := currentUser()
	if os.Geteuid() == 0 {
		name = "nobody"
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, Spec{Name: "app", Shell: "exec sleep 60", User: name, Dir: "/", Env: []string{"PROBE_ENV=yes", "LISTEN_FDS=1"}})
	var mu sync.Mutex
	var out []string
	probe := ExecProbe(p, `echo "uid=$(id -u) env=$PROBE_ENV listen=$LISTEN_FDS pwd=$PWD"; test "$(id -u)" = `+u.Uid+` && test "$PROBE_ENV" = yes && test -z "$LISTEN_FDS" && test "$PWD" = /`,
		func(line string) {
			mu.Lock()
			defer mu.Unlock()
			out = append(out, line)
		})
	if err := WaitReady(testContext(t), p, probe, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "uid=" + u.Uid + " env=yes listen= pwd=/"; len(out) == 0 || out[len(out)-1] != want {
		t.Errorf("probe printed %q, want %q last", out, want)
	}
}

// The probe is polled until the app is ready: here, until it made a file
// 300 ms after it started.
func TestExecProbeWaitsForTheApp(t *testing.T) {
	t.Parallel()
	mark := filepath.Join(t.TempDir(), "ready")
	p := start(t, Spec{Name: "app", Shell: `sleep 0.3; touch "$MARK"; exec sleep 60`, User: currentUser(), Env: []string{"MARK=" + mark}})
	began := time.Now()
	if err := WaitReady(testContext(t), p, ExecProbe(p, `test -f "$MARK"`, nil), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Errorf("ready after %s, before the app made its file", took)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("ready but %v", err)
	}
}

// A probe that hangs is killed at the end of each attempt, with what it
// started, and the wait ends with ErrNotReady at the timeout; one that
// keeps failing says why.
func TestExecProbeHangsAndFailures(t *testing.T) {
	t.Parallel()
	pids := filepath.Join(t.TempDir(), "pids")
	p := start(t, Spec{Name: "app", Shell: "exec sleep 60", User: currentUser()})
	began := time.Now()
	err := WaitReady(testContext(t), p, ExecProbe(p, `echo $$ >> `+pids+`; sleep 61.5 & wait`, nil), 2500*time.Millisecond)
	took := time.Since(began)
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "killed after") {
		t.Fatalf("hanging probe: %v, want ErrNotReady and killed", err)
	}
	if took > 4*time.Second {
		t.Errorf("WaitReady returned %s after its 2.5s timeout", took-2500*time.Millisecond)
	}
	data, _ := os.ReadFile(pids)
	attempts := strings.Fields(string(data))
	if len(attempts) < 2 {
		t.Errorf("%d attempts in 2.5s, want one per %s at least", len(attempts), probeAttemptLimit)
	}
	for _, s := range attempts {
		pid, _ := strconv.Atoi(s)
		groupGone(t, pid, pid)
	}

	err = WaitReady(testContext(t), p, ExecProbe(p, `echo "no response"; exit 2`, nil), 300*time.Millisecond)
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "exit status 2: no response") {
		t.Fatalf("failing probe: %v, want ErrNotReady with its status and output", err)
	}
}
