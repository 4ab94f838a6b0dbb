package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rouse whose stderr reader goes away (`rouse run | logger` ending) keeps
// serving, also when started with SIGPIPE ignored as systemd does: the
// writes fail with EPIPE and the log goes to the journal or nowhere.
func TestStderrReaderGone(t *testing.T) {
	for _, tc := range []struct{ name, trap string }{
		{"default SIGPIPE", ""},
		{"SIGPIPE ignored", `trap "" PIPE; `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			file, control := writeConfig(t, fmt.Sprintf(`
[apps.echo]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
idle_timeout = "300ms"
`, port))
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			r := spawnRouseTo(t, []string{"/bin/sh", "-c", tc.trap + `exec "$0" run -c "$1"`, os.Args[0], file}, nil, nil, pw)
			pw.Close()
			// Read until rouse is ready, then go away.
			ready := make(chan error, 1)
			go func() {
				sc := bufio.NewScanner(pr)
				for sc.Scan() {
					if strings.Contains(sc.Text(), "rouse ready") {
						ready <- nil
						return
					}
				}
				ready <- fmt.Errorf("stderr ended before rouse was ready: %v", sc.Err())
			}()
			select {
			case err := <-ready:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("rouse not ready in 30s")
			}
			pr.Close()
			r.control = control

			// Every start and idle stop logs: each write now fails.
			for i := range 3 {
				if got := echoOnce(t, port, "hi"); got != "hi" {
					t.Fatalf("echo %d through rouse = %q", i, got)
				}
				waitFor(t, "the idle stop", func() bool {
					if !r.alive() {
						t.Fatalf("rouse died: %v", r.cmd.ProcessState)
					}
					return r.app(t, "echo").state == "idle"
				})
			}
			if st := r.app(t, "echo"); st.starts != 3 {
				t.Errorf("starts = %d, want 3", st.starts)
			}
			if !r.alive() {
				t.Fatalf("rouse died: %v", r.cmd.ProcessState)
			}
		})
	}
}

// With a stderr nobody reads (a stalled log pipe) and an app flooding its
// own stderr, rouse still answers status within a second, cold-starts
// another app and stops the flooding one: log lines are dropped and
// counted instead of waited for.
func TestStalledStderr(t *testing.T) {
	floodPort, echoPort := freePort(t), freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.flood]
listen = ["127.0.0.1:%d"]
command = 'yes "flood: a line of an app that writes to stderr all the time" >&2 & exec @BIN@ __backend -proto echo -listen 127.0.0.1:{port}'
stop_timeout = "3s"

[apps.echo]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
`, floodPort, echoPort))
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pr.Close() }) // after rouse is stopped: cleanups run last first
	r := spawnRouseTo(t, []string{os.Args[0], "run", "-c", file}, nil, nil, pw)
	pw.Close()
	r.control = control
	waitControl(t, control, r)

	if got := echoOnce(t, floodPort, "hi"); got != "hi" {
		t.Fatalf("echo through the flooding app = %q", got)
	}
	waitFor(t, "the log pipe to fill and rouse to drop lines", func() bool {
		return logDropped(t, control) > 0
	})
	if n, err := unix.IoctlGetInt(int(pr.Fd()), unix.TIOCINQ); err != nil || n < 60000 {
		t.Fatalf("%d bytes in the log pipe (%v): it is not full", n, err)
	}

	rouse := func(args ...string) (string, time.Duration) {
		t.Helper()
		var out bytes.Buffer
		began := time.Now()
		if code := run(t.Context(), append(args, "--control", control), func(string) string { return "" }, nil, &out, &out); code != 0 {
			t.Fatalf("rouse %s: exit %d\n%s", strings.Join(args, " "), code, out.String())
		}
		return out.String(), time.Since(began)
	}
	var slowest time.Duration
	for range 10 {
		out, took := rouse("status")
		slowest = max(slowest, took)
		if !strings.Contains(out, "flood") {
			t.Fatalf("status:\n%s", out)
		}
	}
	if slowest > time.Second {
		t.Errorf("rouse status took up to %s with stderr stalled, want under 1s", slowest)
	}
	began := time.Now()
	if got := echoOnce(t, echoPort, "cold"); got != "cold" {
		t.Fatalf("cold start with stderr stalled: echo = %q", got)
	}
	coldTook := time.Since(began)
	out, stopTook := rouse("stop", "flood")
	if !strings.Contains(out, "flood: idle") {
		t.Errorf("rouse stop flood: %s", out)
	}
	t.Logf("stderr stalled: status took at most %s, a cold start %s, stopping the flooding app %s; %d log lines dropped",
		slowest, coldTook.Round(time.Millisecond), stopTook.Round(time.Millisecond), logDropped(t, control))
	if coldTook > 5*time.Second || stopTook > 5*time.Second {
		t.Errorf("cold start %s, stop %s with stderr stalled", coldTook, stopTook)
	}
}

// logDropped reads rouse_log_dropped_lines_total from the daemon at control.
func logDropped(t *testing.T, control string) uint64 {
	t.Helper()
	resp, err := newControlClient(control).http.Get("http://rouse/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "rouse_log_dropped_lines_total "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics: %q", line)
			}
			return uint64(n)
		}
	}
	t.Fatalf("no rouse_log_dropped_lines_total in /metrics:\n%s", body)
	return 0
}
