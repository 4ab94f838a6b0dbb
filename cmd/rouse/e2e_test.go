package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/testport"
)

// TestMain lets the test binary be rouse: run with ROUSE_TEST_MAIN=1 it is
// the rouse command (and so also the guard and the demo backend).
func TestMain(m *testing.M) {
	// Apps get a small environment (no ROUSE_TEST_MAIN), so the test binary
	// run as an app's command is rouse too when its first argument is one
	// of rouse's hidden verbs (__backend, __guard, __exec).
	if os.Getenv("ROUSE_TEST_MAIN") == "1" || len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "__") {
		main()
	}
	os.Exit(m.Run())
}

// rouseProc is a rouse daemon run as a real child process.
type rouseProc struct {
	cmd     *exec.Cmd
	control string
	done    chan struct{}
	log     *lockedBuffer
}

// startRouse runs `rouse run -c file` and waits until its control socket
// answers.
func startRouse(t *testing.T, file, control string) *rouseProc {
	t.Helper()
	r := spawnRouse(t, []string{os.Args[0], "run", "-c", file}, nil, nil)
	r.control = control
	waitControl(t, control, r)
	return r
}

// waitControl waits until rouse answers on control, failing at once if
// it exited.
func waitControl(t *testing.T, control string, r *rouseProc) {
	t.Helper()
	waitFor(t, "rouse's control socket", func() bool {
		if !r.alive() {
			t.Fatalf("rouse exited: %v\n%s", r.cmd.ProcessState, lastLines(r.log.String(), 50))
		}
		_, err := (&rouseProc{control: control}).status()
		return err == nil
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// spawnRouse runs argv (which ends up exec'ing this test binary as
// rouse) with env added and files as fd 3, 4, ...; the test's cleanup
// stops it and shows its log if the test failed. The race runtime's 1s
// sleep at exit is turned off for rouse and, through its environment, for
// its apps.
func spawnRouse(t *testing.T, argv, env []string, files []*os.File) *rouseProc {
	t.Helper()
	return spawnRouseTo(t, argv, env, files, nil)
}

// spawnRouseTo is spawnRouse with rouse's stderr going to stderr (nil:
// the rouseProc's log).
func spawnRouseTo(t *testing.T, argv, env []string, files []*os.File, stderr *os.File) *rouseProc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "ROUSE_TEST_MAIN=1", "GORACE=atexit_sleep_ms=0"), env...)
	cmd.ExtraFiles = files
	r := &rouseProc{cmd: cmd, done: make(chan struct{}), log: &lockedBuffer{}}
	cmd.Stderr = r.log
	if stderr != nil {
		cmd.Stderr = stderr
	}
	cmd.WaitDelay = 5 * time.Second // a process left holding stderr must not hold Wait
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-r.done
		}
		if t.Failed() {
			t.Logf("rouse pid %d log:\n%s", cmd.Process.Pid, lastLines(r.log.String(), 150))
		}
	})
	return r
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... %d lines before", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

func (r *rouseProc) alive() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// heldSocket listens on address as a systemd socket unit would and returns
// its address and the socket as a file to pass to rouse; both stay open
// across the rouse processes of the test and are closed when it ends.
func heldSocket(t *testing.T, network, address string) (net.Addr, *os.File) {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return ln.Addr(), f
}

// heldRouse starts rouse as systemd would over sockets the test holds:
// LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID set to rouse's own pid (the
// shell's $$ is rouse's after exec).
func heldRouse(t *testing.T, file string, names []string, files []*os.File) *rouseProc {
	t.Helper()
	return spawnRouse(t,
		[]string{"/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" run -c "$1"`, os.Args[0], file},
		[]string{"LISTEN_FDS=" + strconv.Itoa(len(files)), "LISTEN_FDNAMES=" + strings.Join(names, ":")},
		files)
}

func (r *rouseProc) status() (statusReply, error) {
	var reply statusReply
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := newControlClient(r.control).do(ctx, http.MethodGet, "/v1/status", &reply)
	return reply, err
}

func (r *rouseProc) app(t *testing.T, name string) statusApp {
	t.Helper()
	reply, err := r.status()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range reply.Apps {
		if a.Name == name {
			return statusApp{a.State.String(), a.PID, a.Starts, a.Conns}
		}
	}
	t.Fatalf("no app %s in status", name)
	return statusApp{}
}

type statusApp struct {
	state  string
	pid    int
	starts int
	conns  int
}

// writeConfig writes a config file whose apps are this test binary run as
// the example backend, and returns its path and the control socket.
func writeConfig(t *testing.T, body string) (file, control string) {
	t.Helper()
	dir := t.TempDir()
	control = filepath.Join(dir, "control.sock")
	user := ""
	if os.Geteuid() == 0 {
		user = `user = "root"`
	}
	text := fmt.Sprintf("[rouse]\ncontrol = %q\ndrain_timeout = \"2s\"\n\n[defaults]\nmode = \"tcp\"\n%s\nenv = { ROUSE_TEST_MAIN = \"1\", GORACE = \"atexit_sleep_ms=0\" }\n\n", control, user)
	text += strings.NewReplacer("@BIN@", os.Args[0], "@DIR@", dir).Replace(body)
	file = filepath.Join(dir, "rouse.toml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file, control
}

func TestSIGKILLOfRouseLeavesNoAppProcess(t *testing.T) {
	p1, p2 := freePort(t), freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.plain]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-grandchild", "-listen", "127.0.0.1:{port}"]

[apps.shell]
listen = ["127.0.0.1:%d"]
command = "sleep 1000 & '@BIN@' __backend -proto echo -listen 127.0.0.1:{port} & wait"
`, p1, p2))
	r := startRouse(t, file, control)
	var groups []int
	for _, port := range []int{p1, p2} {
		if got := echoOnce(t, port, "ping"); got != "ping" {
			t.Fatalf("echo through rouse on %d: %q", port, got)
		}
	}
	for _, name := range []string{"plain", "shell"} {
		groups = append(groups, r.app(t, name).pid)
	}
	var pids []int
	for _, g := range groups {
		pids = append(pids, groupMembers(g)...)
	}
	// plain: backend + its sleep; shell: sh + sleep + backend.
	if len(pids) < 5 {
		t.Fatalf("app processes %v, want at least 5 across the two groups", pids)
	}
	r.cmd.Process.Kill()
	<-r.done
	deadline := time.Now().Add(3 * time.Second)
	waitFor(t, "every app process to die with rouse", func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
	if time.Now().After(deadline) {
		t.Errorf("app processes outlived rouse by more than 3s")
	}
}

func TestSIGTERMDrainsAndStopsEveryApp(t *testing.T) {
	port := freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.echo]
listen = ["127.0.0.1:%d"]
command = "'@BIN@' __backend -proto echo -grandchild -listen 127.0.0.1:{port}"
`, port))
	r := startRouse(t, file, control)
	if got := echoOnce(t, port, "x"); got != "x" {
		t.Fatalf("echo: %q", got)
	}
	pids := groupMembers(r.app(t, "echo").pid)
	r.cmd.Process.Signal(syscall.SIGTERM)
	<-r.done
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("rouse exit code after SIGTERM = %d, want 0", code)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("app process %d alive after rouse exited", pid)
		}
	}
	if _, err := os.Stat(control); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
}

func TestRedisStartedOnDemand(t *testing.T) {
	redis := requireTool(t, "redis-server")
	requireTool(t, "redis-cli")
	requireTool(t, "redis-benchmark")
	port := freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.redis]
listen = ["127.0.0.1:%d"]
command = [%q, "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", "@DIR@"]
idle_timeout = "1s"
`, port, redis))
	r := startRouse(t, file, control)
	if st := r.app(t, "redis"); st.state != "idle" || st.starts != 0 {
		t.Fatalf("before any connection: %+v, want idle and never started", st)
	}
	ps := strconv.Itoa(port)
	if out := runTool(t, "redis-cli", "-p", ps, "ping"); out != "PONG" {
		t.Fatalf("redis-cli ping on a cold app = %q, want PONG", out)
	}
	out := runTool(t, "redis-benchmark", "-p", ps, "-n", "5000", "-c", "20", "-t", "set,get", "-q")
	for _, op := range []string{"SET", "GET"} {
		if !strings.Contains(out, op+": ") || !strings.Contains(out, "requests per second") {
			t.Errorf("redis-benchmark through rouse:\n%s", out)
		}
	}
	if st := r.app(t, "redis"); st.starts != 1 {
		t.Errorf("starts = %d after cold start and benchmark, want 1", st.starts)
	}
	waitFor(t, "redis to be stopped when idle", func() bool { return r.app(t, "redis").state == "idle" })
	if out := runTool(t, "redis-cli", "-p", ps, "set", "k", "v"); out != "OK" {
		t.Fatalf("redis-cli after idle stop = %q", out)
	}
	if st := r.app(t, "redis"); st.starts != 2 || st.state != "ready" {
		t.Errorf("after restart: %+v, want ready and 2 starts", st)
	}
}

func TestControlVerbs(t *testing.T) {
	port := freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.echo]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
`, port))
	startRouse(t, file, control)
	rouse := func(args ...string) (string, int) {
		var out, errb bytes.Buffer
		code := run(t.Context(), args, func(string) string { return "" }, nil, &out, &errb)
		return out.String() + errb.String(), code
	}
	if out, code := rouse("start", "echo", "-c", file); code != 0 || !strings.Contains(out, "echo: ready (pid ") {
		t.Fatalf("rouse start: %d %q", code, out)
	}
	out, code := rouse("status", "--json", "--control", control)
	if code != 0 {
		t.Fatalf("rouse status --json: %d %s", code, out)
	}
	var raw struct {
		Apps []map[string]any `json:"apps"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil || len(raw.Apps) != 1 {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, k := range []string{"name", "state", "pid", "mode", "listen", "uptime_s", "rss_bytes", "cpu_percent", "conns", "queued", "starts", "failures", "last_start_ms", "last_error"} {
		if _, ok := raw.Apps[0][k]; !ok {
			t.Errorf("status --json lacks %q", k)
		}
	}
	if raw.Apps[0]["state"] != "ready" || raw.Apps[0]["rss_bytes"].(float64) <= 0 {
		t.Errorf("status of a started app: %v", raw.Apps[0])
	}
	if out, code := rouse("status", "-c", file); code != 0 || !strings.Contains(out, "APP") || !strings.Contains(out, "echo") {
		t.Errorf("status table: %d\n%s", code, out)
	}
	if out, code := rouse("status", "echo", "--control", control); code != 0 || !strings.Contains(out, "listen:") {
		t.Errorf("status echo: %d\n%s", code, out)
	}
	if out, code := rouse("stop", "echo", "--control", control); code != 0 || !strings.Contains(out, "echo: idle") {
		t.Errorf("rouse stop: %d %q", code, out)
	}
	if out, code := rouse("restart", "nosuch", "--control", control); code == 0 || !strings.Contains(out, `no app called "nosuch"`) {
		t.Errorf("rouse restart nosuch: %d %q", code, out)
	}
	if out, code := rouse("status", "--control", filepath.Join(t.TempDir(), "none.sock")); code != 1 || !strings.Contains(out, "is it running?") {
		t.Errorf("status without a daemon: %d %q", code, out)
	}
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte(`
[apps.a]
listen = ["127.0.0.1:9"]
command = ["/bin/true"]
user = "nobody"
`), 0o644)
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[defaults]\nidle_timeout = 300\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"check", "-c", good}, os.Getenv, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "a") {
		t.Errorf("check good: %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code := run(t.Context(), []string{"check", "-c", bad}, os.Getenv, nil, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), bad+":2: defaults.idle_timeout: ") {
		t.Errorf("check bad: exit %d, stderr %q; want 2 and file:line: key", code, errb.String())
	}
	env := func(k string) string {
		if k == "ROUSE_CONFIG" {
			return good
		}
		return ""
	}
	if code := run(t.Context(), []string{"check"}, env, nil, &out, &errb); code != 0 {
		t.Errorf("check with $ROUSE_CONFIG: %d %s", code, errb.String())
	}
}

// TestDemo runs `rouse demo`, as the README's first command, and proves
// that its apps answer and that the commands it prints work as printed.
func TestDemo(t *testing.T) {
	hello, echoPort := freePort(t), freePort(t)
	cmd := exec.Command(os.Args[0], "demo", "-hello", fmt.Sprintf("127.0.0.1:%d", hello), "-echo", fmt.Sprintf("127.0.0.1:%d", echoPort))
	cmd.Env = append(os.Environ(), "ROUSE_TEST_MAIN=1")
	var out, errb lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("demo stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
		}
	}()
	var body string
	waitFor(t, "the demo's hello app to answer", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", hello))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return true
	})
	if !strings.HasPrefix(body, "hello from hello") {
		t.Errorf("demo hello answered %q", body)
	}
	if got := echoOnce(t, echoPort, "hi\n"); !strings.HasSuffix(got, "hi\n") || !strings.HasPrefix(got, "echo ") {
		t.Errorf("demo echo answered %q", got)
	}
	// The hints it printed work as printed, run by a shell.
	waitFor(t, "the demo's hints", func() bool { return strings.Contains(out.String(), "Ctrl-C stops") })
	hints := demoHints(out.String())
	if len(hints) != 3 {
		t.Fatalf("demo printed %d commands to try, want 3: %q", len(hints), hints)
	}
	wants := []string{"hello from hello", "hi", "STATE"}
	for i, hint := range hints {
		sh := exec.Command("/bin/sh", "-c", hint)
		sh.Env = append(os.Environ(), "ROUSE_TEST_MAIN=1") // the printed rouse is this test binary
		sh.WaitDelay = 10 * time.Second
		got, err := sh.CombinedOutput()
		if err != nil || !strings.Contains(string(got), wants[i]) {
			t.Errorf("printed hint %q: %v, output %q, want %q in it", hint, err, got, wants[i])
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Errorf("demo after Ctrl-C: %v", err)
	}
}

// demoHints returns the commands the demo printed for the user to try: the
// indented lines of its greeting.
func demoHints(out string) []string {
	var hints []string
	for line := range strings.Lines(out) {
		if cmd, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "  "); ok {
			hints = append(hints, cmd)
		}
	}
	return hints
}

// TestSelfCommand proves that the demo's hints name rouse as the user ran
// it, go run included.
func TestSelfCommand(t *testing.T) {
	for arg0, want := range map[string]string{
		"/tmp/go-build1752648836/b001/exe/rouse": "go run ./cmd/rouse",
		"./bin/rouse":                            "./bin/rouse",
		"/usr/bin/rouse":                         "/usr/bin/rouse",
		"rouse":                                  "rouse",
	} {
		if got := selfCommand(arg0); got != want {
			t.Errorf("selfCommand(%q) = %q, want %q", arg0, got, want)
		}
	}
}

// echoOnce sends msg to an echo app behind rouse and returns the reply.
func echoOnce(t *testing.T, port int, msg string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, msg)
	c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

// requireTool finds a program the test drives; in CI its absence is a
// failure, not a skip (make deps installs it).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed (run `make deps`)", name)
		}
		t.Skipf("%s is not installed (run `make deps`)", name)
	}
	return path
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether pid still runs. Zombies count as dead here: once
// rouse is gone its orphans belong to init, which reaps them on its own time.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	state := s[strings.LastIndexByte(s, ')')+1:]
	return !strings.HasPrefix(state, " X") && !strings.HasPrefix(state, " Z")
}

// freePort is a port for an app to listen on later (testport.Free).
func freePort(t testing.TB) int { return testport.Free(t) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for d := time.Millisecond; !cond(); d = min(2*d, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(d) // polling interval of a condition with a deadline
	}
}
