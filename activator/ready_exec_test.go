package activator

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ready = "exec CMD": the app is ready when CMD exits 0, here a python
// script that connects to the app's port.
func TestExecReady(t *testing.T) {
	py := python3(t)
	ta := newTestApp(t, []string{"-proto", "echo"}, func(c *Config) {
		c.Ready = Readiness{Kind: "exec", Command: py + ` -c "import socket,os; socket.create_connection(('127.0.0.1', int(os.environ['UPSTREAM_PORT'])), 1)"`}
		_, port, _ := strings.Cut(c.UpstreamAddress, ":")
		c.Process.Env = append(c.Process.Env, "UPSTREAM_PORT="+port)
	})
	if got, err := echo(t, ta.addr, "hi"); got != "hi" {
		t.Fatalf("echo through an exec-probed app = %q, %v", got, err)
	}
	if st := ta.Status(); st.State != Ready || st.Starts != 1 || st.Failures != 0 {
		t.Errorf("status %+v, want ready after one start", st)
	}
}

// A probe that never succeeds is a start failure at start_timeout: the
// process is killed and the app backs off, its output in last_error.
func TestExecReadyNeverSucceeds(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo"}, func(c *Config) {
		c.Ready = Readiness{Kind: "exec", Command: "echo database is starting up; exit 1"}
		c.StartTimeout = 500 * time.Millisecond
	})
	began := time.Now()
	if got, _ := echo(t, ta.addr, "x"); got != "" {
		t.Fatalf("got %q from an app that never became ready", got)
	}
	st := ta.waitState(t, Backoff)
	if took := time.Since(began); took < 500*time.Millisecond {
		t.Errorf("gave up after %s, before start_timeout", took)
	}
	if !strings.Contains(st.LastError, "not ready") || !strings.Contains(st.LastError, "database is starting up") || st.Failures != 1 {
		t.Errorf("status %+v, want one readiness failure saying what the probe printed", st)
	}
	for _, pid := range ta.pids() {
		waitFor(t, "the unready process to be killed", func() bool { return !alive(pid) })
	}
}

// A probe that hangs is killed after each attempt; the start fails at
// start_timeout and no probe process is left.
func TestExecReadyHangingProbe(t *testing.T) {
	marker := fmt.Sprintf("%d.%d", os.Getpid(), time.Now().UnixNano()%1000) // sleep's argument, to find it
	ta := newTestApp(t, []string{"-proto", "echo"}, func(c *Config) {
		c.Ready = Readiness{Kind: "exec", Command: "sleep " + marker}
		c.StartTimeout = 1500 * time.Millisecond
	})
	if got, _ := echo(t, ta.addr, "x"); got != "" {
		t.Fatalf("got %q from an app that never became ready", got)
	}
	st := ta.waitState(t, Backoff)
	if !strings.Contains(st.LastError, "killed after") {
		t.Errorf("last_error = %q, want the hanging probe killed", st.LastError)
	}
	waitFor(t, "no probe left", func() bool { return len(processesWithArg("sleep", marker)) == 0 })
}

// processesWithArg lists the pids whose command line is prog arg.
func processesWithArg(prog, arg string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if bytes.Equal(cmdline, []byte(prog+"\x00"+arg+"\x00")) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
