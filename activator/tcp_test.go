package activator

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestColdStartDeliversBytesSentBeforeReady(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo", "-delay", "300ms"}, nil)
	c, err := net.Dial("tcp", ta.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Everything is written (and the write side closed) while the app is
	// still starting.
	msg := strings.Repeat("early bytes ", 1000)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	// The app sleeps 300 ms before it listens: rouse has accepted the
	// connection and is starting it, the bytes wait in the kernel.
	ta.waitState(t, Starting)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Errorf("echo returned %d bytes, want the %d sent before ready", len(got), len(msg))
	}
	st := ta.Status()
	if st.Starts != 1 || st.State != Ready || st.Failures != 0 {
		t.Errorf("status = %+v, want 1 start, ready, no failure", st)
	}
	if st.LastStartMS < 300 {
		t.Errorf("last_start_ms = %v, want >= the 300ms the app took", st.LastStartMS)
	}
}

func TestConcurrentFirstConnectionsSpawnOnce(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo", "-delay", "200ms"}, nil)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := strings.Repeat("x", i+1)
			got, err := echo(t, ta.addr, msg)
			if err == nil && got != msg {
				err = errors.New("echo mismatch: " + got)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if pids := ta.pids(); len(pids) != 1 {
		t.Errorf("%d spawns for %d concurrent first connections, want 1", len(pids), n)
	}
	if st := ta.Status(); st.Starts != 1 {
		t.Errorf("status starts = %d, want 1", st.Starts)
	}
}

func TestIdleStopThenStartAgain(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo", "-banner"}, func(c *Config) {
		c.IdleTimeout = 150 * time.Millisecond
	})
	c, pid1 := bannerConn(t, ta.addr)
	// An open connection keeps the app up past idle_timeout.
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		if st := ta.Status(); st.State != Ready || st.Conns != 1 {
			t.Fatalf("with an open connection: state %s conns %d, want ready 1", st.State, st.Conns)
		}
		time.Sleep(20 * time.Millisecond) // sampling during a period, not waiting for a condition
	}
	c.Close()
	ta.waitState(t, Idle)
	if alive(pid1) {
		t.Errorf("process %d alive after idle stop", pid1)
	}
	c2, pid2 := bannerConn(t, ta.addr)
	c2.Close()
	if pid2 == pid1 || pid2 == 0 {
		t.Errorf("second connection served by pid %d, want a new process (first was %d)", pid2, pid1)
	}
	if st := ta.Status(); st.Starts != 2 || st.Failures != 0 {
		t.Errorf("starts %d failures %d, want 2 and 0", st.Starts, st.Failures)
	}
}

func TestConnectionDuringStoppingIsServed(t *testing.T) {
	// The app ignores SIGTERM, so stopping lasts stop_timeout: a window
	// wide enough to connect in.
	ta := newTestApp(t, []string{"-proto", "echo", "-banner", "-ignore-term"}, func(c *Config) {
		c.IdleTimeout = 50 * time.Millisecond
		c.Process.StopTimeout = 700 * time.Millisecond
	})
	c, pid1 := bannerConn(t, ta.addr)
	c.Close()
	ta.waitState(t, Stopping)
	c2, pid2 := bannerConn(t, ta.addr)
	defer c2.Close()
	if pid2 == pid1 {
		t.Fatalf("served by the stopping process %d", pid1)
	}
	if alive(pid1) {
		t.Errorf("old process %d still alive", pid1)
	}
	if _, err := io.WriteString(c2, "still works\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("still works\n"))
	if _, err := io.ReadFull(c2, buf); err != nil || string(buf) != "still works\n" {
		t.Errorf("echo after restart: %q, %v", buf, err)
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	ta := newTestApp(t, []string{"-exit", "3"}, nil)
	// Hammer the app: whatever the load, one start per back-off period.
	// Go on until the third spawn, then for one more second (well inside
	// the 4 s back-off that follows it).
	refused := 0
	hammer := func(until func() bool) {
		deadline := time.Now().Add(15 * time.Second)
		for !until() {
			if time.Now().After(deadline) {
				t.Fatalf("%d spawns after 15 s of crash loop", len(ta.startLines()))
			}
			start := time.Now()
			if got, _ := echo(t, ta.addr, "x"); got != "" {
				t.Fatalf("got %q from an app that never listens", got)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("a refused connection took %s, want it closed at once", took)
			}
			refused++
			time.Sleep(20 * time.Millisecond) // pacing the load, not waiting for a condition
		}
	}
	hammer(func() bool { return len(ta.startLines()) >= 3 })
	third := time.Now()
	hammer(func() bool { return time.Since(third) > time.Second })
	starts := ta.startLines()
	if len(starts) != 3 {
		t.Fatalf("%d spawns, want 3 (t=0, +1s, +2s more)", len(starts))
	}
	if gap := starts[1].at.Sub(starts[0].at); gap < 950*time.Millisecond {
		t.Errorf("second spawn %s after the first, want >= 1s", gap)
	}
	if gap := starts[2].at.Sub(starts[1].at); gap < 1950*time.Millisecond {
		t.Errorf("third spawn %s after the second, want >= 2s", gap)
	}
	st := ta.Status()
	if st.State != Backoff || st.Failures != 3 || st.BackoffUntil == nil {
		t.Errorf("status = %+v, want backoff after 3 failures", st)
	}
	if !strings.Contains(st.LastError, "exiting with status 3") {
		t.Errorf("last_error %q should carry the app's last stderr line", st.LastError)
	}
	m := ta.Metrics()
	if m.Failures[FailExit] != 3 || m.Outcomes[OutcomeRefused] != uint64(refused) || m.ColdStart.Count != 0 {
		t.Errorf("metrics: failures %v outcomes %v cold starts %d; want 3 %s, %d refused, none",
			m.Failures, m.Outcomes, m.ColdStart.Count, FailExit, refused)
	}
	t.Logf("%d connections refused, 3 spawns", refused)
}

func TestExitBeforeReadyIsAFailure(t *testing.T) {
	ta := newTestApp(t, []string{"-exit", "7"}, func(c *Config) { c.StartTimeout = time.Minute })
	start := time.Now()
	if got, _ := echo(t, ta.addr, "x"); got != "" {
		t.Fatalf("got %q", got)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("exit before ready noticed after %s, want at once", took)
	}
	st := ta.waitState(t, Backoff)
	if !strings.Contains(st.LastError, "exit status 7") {
		t.Errorf("last_error = %q, want the exit status", st.LastError)
	}
	// The process is gone; what it said last stays in the status.
	if n := len(st.StderrTail); n == 0 || !strings.Contains(st.StderrTail[n-1], "exiting with status 7") {
		t.Errorf("stderr tail %q, want the gone process's last line", st.StderrTail)
	}
}

func TestReadinessTimeoutKillsTheProcess(t *testing.T) {
	ta := newTestApp(t, []string{"-never-listen"}, func(c *Config) { c.StartTimeout = 300 * time.Millisecond })
	if got, _ := echo(t, ta.addr, "x"); got != "" {
		t.Fatalf("got %q", got)
	}
	st := ta.waitState(t, Backoff)
	if !strings.Contains(st.LastError, "not ready") {
		t.Errorf("last_error = %q, want a readiness timeout", st.LastError)
	}
	for _, pid := range ta.pids() {
		waitFor(t, "the unready process to be killed", func() bool { return !alive(pid) })
	}
}

func TestNonexistentCommand(t *testing.T) {
	ta := newTestApp(t, nil, func(c *Config) { c.Process.Argv = []string{"/nonexistent/rouse-test-app"} })
	if got, _ := echo(t, ta.addr, "x"); got != "" {
		t.Fatalf("got %q", got)
	}
	st := ta.waitState(t, Backoff)
	if !strings.Contains(st.LastError, "/nonexistent/rouse-test-app") {
		t.Errorf("last_error = %q, want it to name the command", st.LastError)
	}
	if st.Failures != 1 {
		t.Errorf("failures = %d, want 1", st.Failures)
	}
}

func TestAppKilledWithOpenConnections(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo", "-banner"}, nil)
	var conns []net.Conn
	var pid int
	for range 3 {
		c, p := bannerConn(t, ta.addr)
		defer c.Close()
		conns, pid = append(conns, c), p
	}
	if st := ta.Status(); st.Conns != 3 || st.PID != pid {
		t.Fatalf("conns %d pid %d, want 3 and %d", st.Conns, st.PID, pid)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for _, c := range conns {
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client of a killed app: %v, want EOF or reset", err)
		}
	}
	st := ta.waitState(t, Backoff)
	if st.Failures != 1 || !strings.Contains(st.LastError, "killed") {
		t.Errorf("failures %d last_error %q, want 1 and the signal", st.Failures, st.LastError)
	}
	waitFor(t, "the connections to be released", func() bool { return ta.Status().Conns == 0 })
	// After the back-off, the next connection starts it again.
	waitFor(t, "the back-off to end", func() bool { return ta.Status().State == Idle })
	c, pid2 := bannerConn(t, ta.addr)
	c.Close()
	if pid2 == pid {
		t.Errorf("served by the killed pid")
	}
}

func TestQueueLimits(t *testing.T) {
	t.Run("max_queued", func(t *testing.T) {
		ta := newTestApp(t, []string{"-proto", "echo", "-delay", "500ms"}, func(c *Config) { c.MaxQueued = 2 })
		var wg sync.WaitGroup
		results := make(chan string, 3)
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got, _ := echo(t, ta.addr, "held")
				results <- got
			}()
		}
		waitFor(t, "two held connections", func() bool { return ta.Status().Queued == 2 })
		if got, _ := echo(t, ta.addr, "third"); got != "" {
			t.Errorf("third connection beyond max_queued got %q, want closed", got)
		}
		wg.Wait()
		close(results)
		for got := range results {
			if got != "held" {
				t.Errorf("held connection got %q", got)
			}
		}
	})
	t.Run("queue_timeout", func(t *testing.T) {
		ta := newTestApp(t, []string{"-proto", "echo", "-delay", "2s"}, func(c *Config) { c.QueueTimeout = 200 * time.Millisecond })
		start := time.Now()
		if got, _ := echo(t, ta.addr, "x"); got != "" {
			t.Errorf("got %q past queue_timeout", got)
		}
		if took := time.Since(start); took > 1500*time.Millisecond {
			t.Errorf("closed after %s, want about queue_timeout", took)
		}
	})
	t.Run("max_conns", func(t *testing.T) {
		ta := newTestApp(t, []string{"-proto", "echo", "-banner"}, func(c *Config) { c.MaxConns = 1 })
		c1, _ := bannerConn(t, ta.addr)
		done := make(chan string)
		go func() {
			got, _ := echo(t, ta.addr, "second")
			done <- got
		}()
		waitFor(t, "the second connection to wait for a slot", func() bool { return ta.Status().Queued == 1 })
		c1.Close()
		if got := <-done; !strings.HasSuffix(got, "second") {
			t.Errorf("second connection got %q, want served once the first closed", got)
		}
	})
}

func TestCloseDrainsAndStops(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo", "-banner"}, nil)
	c, pid := bannerConn(t, ta.addr)
	defer c.Close()
	closed := make(chan struct{})
	go func() {
		ta.Close(t.Context())
		close(closed)
	}()
	// While draining, the open connection still works.
	waitFor(t, "listener closed", func() bool {
		c, err := net.Dial("tcp", ta.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("open connection during drain: %v", err)
	}
	c.Close()
	<-closed
	if alive(pid) {
		t.Errorf("app %d alive after Close", pid)
	}
}

func TestNotifyReadiness(t *testing.T) {
	t.Run("go app", func(t *testing.T) {
		ta := newTestApp(t, []string{"-proto", "echo", "-notify"}, func(c *Config) { c.Ready = Readiness{Kind: "notify"} })
		if got, err := echo(t, ta.addr, "hi"); err != nil || got != "hi" {
			t.Fatalf("echo through a notify-ready app: %q %v", got, err)
		}
		if st := ta.Status(); !strings.HasPrefix(st.AppStatus, "serving on ") {
			t.Errorf("status shows the app's STATUS= as %q", st.AppStatus)
		}
	})
	t.Run("shell script with systemd-notify", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-notify"); err != nil {
			t.Fatal("systemd-notify is not installed (make deps installs systemd)")
		}
		ta := newTestApp(t, nil, func(c *Config) {
			c.Ready = Readiness{Kind: "notify"}
			c.StartTimeout = 3 * time.Second // a BARRIER=1 fd left open would hang systemd-notify ~5 s
			ready := filepath.Join(filepath.Dir(startsFile(c.Process.Argv)), "ready")
			argv := append(c.Process.Argv, "-proto", "echo", "-ready-file", ready)
			c.Process.Argv = nil
			// The script is the app's process; it says READY=1 once the
			// backend it started listens.
			c.Process.Shell = fmt.Sprintf(`'%s' & until [ -s %s ]; do sleep 0.01; done; systemd-notify --ready --status="from a script"; wait`,
				strings.Join(argv, "' '"), ready)
		})
		start := time.Now()
		if got, err := echo(t, ta.addr, "hi"); err != nil || got != "hi" {
			t.Fatalf("echo through a script-notified app: %q %v", got, err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("ready after %s", took)
		}
		if st := ta.Status(); st.AppStatus != "from a script" {
			t.Errorf("app status %q", st.AppStatus)
		}
	})
}

// startsFile returns the -starts file of a backend argv.
func startsFile(argv []string) string {
	for i, a := range argv {
		if a == "-starts" && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}
