package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The README's "apps people run", as it says them.

// redis with --save "" (the README's first example) keeps nothing across
// an idle stop; with --appendonly yes it writes its data on SIGTERM and
// reads it back at the next start. It listens before it has read it back
// (a client gets "LOADING Redis is loading the dataset in memory"), so
// ready = "tcp" is not enough then: notify (--supervised systemd) or an
// exec probe that wants PONG (redis-cli exits 0 on an error reply).
func TestRedisDataAcrossIdleStops(t *testing.T) {
	redis := requireTool(t, "redis-server")
	requireTool(t, "redis-cli")
	for _, tc := range []struct {
		name, args string
		want       string // GET k after an idle stop
	}{
		{"save off", `"--save", "", "--appendonly", "no"]`, ""},
		{"appendonly notify", `"--save", "", "--appendonly", "yes", "--supervised", "systemd"]
ready = "notify"`, "v"},
		{"appendonly exec", `"--save", "", "--appendonly", "yes"]
ready = "exec redis-cli -p {port} ping | grep -q PONG"`, "v"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			file, control := writeConfig(t, fmt.Sprintf(`
[apps.redis]
listen = ["127.0.0.1:%d"]
command = [%q, "--port", "{port}", "--bind", "127.0.0.1", "--dir", "@DIR@", %s
idle_timeout = "1s"
`, port, redis, tc.args))
			r := startRouse(t, file, control)
			ps := strconv.Itoa(port)
			if out := runTool(t, "redis-cli", "-p", ps, "set", "k", "v"); out != "OK" {
				t.Fatalf("redis-cli set = %q", out)
			}
			waitFor(t, "redis to be stopped when idle", func() bool { return r.app(t, "redis").state == "idle" })
			if got := runTool(t, "redis-cli", "-p", ps, "get", "k"); got != tc.want {
				t.Errorf("GET k after an idle stop = %q, want %q", got, tc.want)
			}
			if st := r.app(t, "redis"); st.starts != 2 {
				t.Errorf("starts = %d, want 2", st.starts)
			}
		})
	}
}

// node in handoff mode: the listening socket is fd 3 (server.listen({fd:
// 3})); rouse starts it on the first connection and stops it when idle.
func TestNodeHandoff(t *testing.T) {
	node := requireTool(t, "node")
	dir := t.TempDir()
	script := filepath.Join(dir, "app.js")
	os.WriteFile(script, []byte(`require("http").createServer((req, res) => res.end("hello from node " + process.pid + "\n")).listen({fd: 3});
process.on("SIGTERM", () => process.exit(0));
`), 0o644)
	testHandoffApp(t, "node", fmt.Sprintf("command = [%q, %q]", node, script), "hello from node ")
}

// gunicorn in handoff mode: it takes the socket from LISTEN_FDS itself
// (LISTEN_PID is its own pid) and forks its workers over it.
func TestGunicornHandoff(t *testing.T) {
	gunicorn := requireTool(t, "gunicorn")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "app.py"), []byte(`import os
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from gunicorn %d\n" % os.getpid()]
`), 0o644)
	testHandoffApp(t, "gunicorn", fmt.Sprintf("command = [%q, \"--workers\", \"2\", \"app:app\"]\ndir = %q", gunicorn, dir), "hello from gunicorn ")
}

// testHandoffApp runs an http server as a handoff app (cmd: its command
// keys) and checks that two cold starts, with an idle stop between, both
// answer with a body starting with want, and that SIGTERM stops it.
func testHandoffApp(t *testing.T, name, cmd, want string) {
	port := freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.%s]
mode = "handoff"
listen = ["127.0.0.1:%d"]
%s
idle_timeout = "1s"
`, name, port, cmd))
	r := startRouse(t, file, control)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 2 {
		began := time.Now()
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			t.Fatalf("cold GET %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(body), want) {
			t.Fatalf("cold GET %d: %s %q", i, resp.Status, body)
		}
		t.Logf("cold GET %d answered in %s", i, time.Since(began).Round(time.Millisecond))
		stopping := time.Now()
		waitFor(t, name+" to be stopped when idle", func() bool { return r.app(t, name).state == "idle" })
		took := time.Since(stopping)
		t.Logf("idle stop %d done %s after the answer (idle_timeout 1s)", i, took.Round(time.Millisecond))
		if took > 6*time.Second { // stop_timeout is 10s: more would mean it waited for a SIGKILL
			t.Errorf("idle stop %d took %s after the answer: SIGTERM did not stop %s", i, took, name)
		}
	}
	if st := r.app(t, name); st.starts != 2 {
		t.Errorf("starts = %d, want 2", st.starts)
	}
}
