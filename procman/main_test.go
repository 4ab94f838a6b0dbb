package procman

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/testport"
)

// TestMain re-executes the test binary as the children the tests run: the
// guard ("__guard" argument) or a helper app (PROCMAN_HELPER=mode).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "__guard" {
		os.Exit(GuardMain(os.Stdin))
	}
	if mode := os.Getenv("PROCMAN_HELPER"); mode != "" {
		os.Exit(helperMain(mode))
	}
	// Under -race every helper would sleep a second before exiting
	// (atexit_sleep_ms), hiding how fast exits are seen.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	os.Exit(m.Run())
}

// helperMain is a small app whose behaviour the tests pick with
// PROCMAN_HELPER and HELPER_* variables.
func helperMain(mode string) int {
	delay, _ := time.ParseDuration(os.Getenv("HELPER_DELAY"))
	switch mode {
	case "tcp", "http":
		time.Sleep(delay) // an app that takes a while to bind
		ln, err := net.Listen(os.Getenv("HELPER_NETWORK"), os.Getenv("HELPER_ADDR"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			return 1
		}
		if mode == "tcp" {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return 1
				}
				conn.Close()
			}
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "broken", 500) })
		_ = http.Serve(ln, mux)
		return 1
	case "exit":
		fmt.Fprintln(os.Stderr, "starting")
		fmt.Fprintln(os.Stderr, "fatal: cannot open database")
		code, _ := strconv.Atoi(os.Getenv("HELPER_CODE"))
		return code
	case "sleep":
		blockForever()
	case "ignoreterm":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		blockForever()
	case "slowterm":
		sig := make(chan os.Signal, 4)
		signal.Notify(sig, syscall.SIGTERM)
		fmt.Println("waiting")
		for range sig {
			fmt.Println("term")
			time.AfterFunc(200*time.Millisecond, func() { os.Exit(0) }) // a graceful shutdown
		}
	case "grandchild":
		cmd := exec.Command("sleep", "1000")
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("grandchild", cmd.Process.Pid)
		if os.Getenv("HELPER_EXIT") != "" {
			return 0
		}
		blockForever()
	case "print":
		fmt.Println("out 1")
		for i := range 30 {
			fmt.Fprintln(os.Stderr, "err", i)
		}
		fmt.Println(strings.Repeat("x", 3*MaxLineLength+10))
		fmt.Print("out 2\r\nout 3")
		return 0
	case "alloc":
		mib, _ := strconv.Atoi(os.Getenv("HELPER_MIB"))
		buf := make([]byte, mib<<20)
		for i := 0; i < len(buf); i += 4096 {
			buf[i] = 1
		}
		fmt.Println("allocated")
		blockForever()
		return int(buf[0])
	case "spin":
		//lint:ignore SA5002 burning CPU is the point
		for {
		}
	case "notify":
		return helperNotify()
	case "rouse":
		// Plays rouse: guards an app that has a grandchild, then waits to be
		// SIGKILLed by the test. HELPER_NOCLONE3: on a kernel that refuses
		// clone3, as seccomp filters of some container runtimes make it.
		if os.Getenv("HELPER_NOCLONE3") != "" {
			if err := refuseClone3(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		exe, _ := os.Executable()
		opts := GuardOptions{}
		if os.Getenv("HELPER_CONTAIN") == "subreaper" {
			opts.Containment = ContainSubreaper
		}
		g, err := StartGuard([]string{exe, "__guard"}, opts)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		spec := Spec{
			Name:   "app",
			Argv:   []string{exe},
			Env:    []string{"PROCMAN_HELPER=grandchild"},
			User:   currentUser(),
			Guard:  g,
			Output: func(stream, line string) { fmt.Println(line) },
		}
		if app := os.Getenv("HELPER_APP"); app != "" {
			spec.Argv, spec.Env = strings.Fields(app), nil
		}
		app, err := Start(spec)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("guard", g.Pid())
		fmt.Println("app", app.Pid())
		fmt.Println("cgroup", g.Cgroup())
		if os.Getenv("HELPER_STOP") != "" { // a clean stop once stdin is closed
			_, _ = io.Copy(io.Discard, os.Stdin)
			if err := app.Stop(context.Background()); err != nil {
				fmt.Println("stop:", err)
			}
			if err := g.Close(); err != nil {
				fmt.Println("close:", err)
			}
			fmt.Println("stopped")
		}
		blockForever()
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// blockForever parks a helper until it is signalled.
func blockForever() {
	time.Sleep(time.Hour)
	os.Exit(3)
}

func currentUser() string {
	u, err := user.Current()
	if err != nil {
		panic(err)
	}
	return u.Username
}

// helperSpec runs the test binary as helper mode, with more KEY=VALUE
// settings in env.
func helperSpec(t *testing.T, mode string, env ...string) Spec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Spec{
		Name: "helper-" + mode,
		Argv: []string{exe},
		Env:  append([]string{"PROCMAN_HELPER=" + mode}, env...),
		User: currentUser(),
	}
}

// start starts spec and makes sure the process is gone when the test ends.
func start(t *testing.T, spec Spec) *Process {
	t.Helper()
	p, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("pid %d not reaped 10s after SIGKILL", p.Pid())
		}
	})
	return p
}

// lines collects what a process writes, for Spec.Output.
type lines struct {
	mu  sync.Mutex
	all []string // "stream: line"
}

func (l *lines) output(stream, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, stream+": "+line)
}

func (l *lines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.all...)
}

// waitFor returns the first line starting with prefix, waiting for it.
func (l *lines) waitFor(t *testing.T, prefix string) string {
	t.Helper()
	var found string
	eventually(t, 10*time.Second, "a line "+prefix, func() bool {
		for _, line := range l.get() {
			if strings.HasPrefix(line, prefix) {
				found = line
				return true
			}
		}
		return false
	})
	return found
}

// waitPid returns the number after prefix in the first such line.
func (l *lines) waitPid(t *testing.T, prefix string) int {
	t.Helper()
	line := l.waitFor(t, prefix)
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, prefix)))
	if err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	return pid
}

// eventually polls cond until it holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		<-tick.C
	}
}

// waitDone waits for p to exit.
func waitDone(t *testing.T, p *Process, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(timeout):
		t.Fatalf("pid %d still running after %s", p.Pid(), timeout)
	}
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	st, ok := parseStat(data)
	return ok && st.state != 'Z' && st.state != 'X'
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(t *testing.T, pgid int) []int {
	t.Helper()
	names, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range names {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if st, ok := parseStat(data); ok && st.pgrp == pgid && st.state != 'Z' && st.state != 'X' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// groupGone waits until no live process is left in group pgid and pid.
func groupGone(t *testing.T, pgid int, pids ...int) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("group %d and pids %v gone", pgid, pids), func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return len(groupMembers(t, pgid)) == 0
	})
}

// freeAddr is a loopback address nothing listens on now (testport.Free).
func freeAddr(t *testing.T) string { return "127.0.0.1:" + strconv.Itoa(testport.Free(t)) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
