package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// daemonApp is an app whose shell starts a daemon the classic way (a
// subshell that backgrounds `setsid sleep` and exits: double fork and a
// session of its own) and writes its pid to @DIR@/NAME.pid, then runs the
// echo backend.
func daemonApp(name string, port int, extra string) string {
	return fmt.Sprintf(`
[apps.%[1]s]
listen = ["127.0.0.1:%[2]d"]
command = "(setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! >'@DIR@/%[1]s.pid'); exec '@BIN@' __backend -proto echo -listen 127.0.0.1:{port}"
%[3]s
`, name, port, extra)
}

// containedConfig writes a config (see writeConfig) with
// [rouse].containment set.
func containedConfig(t *testing.T, containment, body string) (file, control string) {
	t.Helper()
	file, control = writeConfig(t, body)
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text = bytes.Replace(text, []byte("[rouse]\n"), []byte("[rouse]\ncontainment = \""+containment+"\"\n"), 1)
	if err := os.WriteFile(file, text, 0o644); err != nil {
		t.Fatal(err)
	}
	return file, control
}

// appCgroups reports whether rouse r runs its apps in cgroups of their
// own, as it logs at start-up: read once "rouse ready", logged after it,
// is in, as the control socket may answer before the log is read.
func appCgroups(t *testing.T, r *rouseProc) bool {
	t.Helper()
	waitFor(t, "rouse's start-up log", func() bool { return strings.Contains(r.log.String(), "rouse ready") })
	return strings.Contains(r.log.String(), "apps run in cgroups of their own")
}

// startDaemon connects to the app on port (which starts it) and returns
// the pid of the daemon it started, checked to be contained: in the app's
// cgroup, or carrying ROUSE_SCOPE on the fallback.
func startDaemon(t *testing.T, file, name string, port int, containment string) int {
	t.Helper()
	pidFile := filepath.Join(filepath.Dir(file), name+".pid")
	os.Remove(pidFile)
	if got := echoOnce(t, port, "ping"); got != "ping" {
		t.Fatalf("echo through rouse on %d: %q", port, got)
	}
	var pid int
	waitFor(t, name+"'s daemon pid", func() bool {
		b, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0 && alive(pid)
	})
	cg := cgroupOf(pid)
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	switch {
	case containment == "auto" && !strings.Contains(cg, "/app-"+name+"."):
		t.Errorf("daemon %d of %s in cgroup %q, want its app's own", pid, name, cg)
	case containment == "subreaper" && !bytes.Contains(env, []byte("ROUSE_SCOPE=")):
		t.Errorf("daemon %d of %s carries no ROUSE_SCOPE", pid, name)
	}
	return pid
}

// gone waits until pid is dead and, while rouse (rousePid) lives, reaped
// by it: on the fallback rouse adopted the daemon.
func gone(t *testing.T, pid, rousePid int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("daemon %d gone", pid), func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		return !alive(pid) && f[1] != strconv.Itoa(rousePid)
	})
}

// cgroupOf returns the cgroup v2 path of pid, "" when it is gone.
func cgroupOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

// cgroupDir is the directory of cgroup path p on the cgroup2 mount.
func cgroupDir(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return filepath.Join(fields[4], p)
			}
		}
	}
	t.Fatal("no cgroup2 mount")
	return ""
}

// A daemon an app started with setsid is gone after an idle stop, `rouse
// stop`, a clean shutdown and a SIGKILL of rouse, with app cgroups (where
// this machine has a cgroup2 hierarchy rouse may use) and on the subreaper
// fallback. No cgroup rouse made is left.
func TestSetsidDaemonNeverSurvives(t *testing.T) {
	for _, containment := range []string{"auto", "subreaper"} {
		t.Run(containment, func(t *testing.T) {
			idle, manual := freePort(t), freePort(t)
			file, control := containedConfig(t, containment,
				daemonApp("idle", idle, `idle_timeout = "300ms"`)+daemonApp("manual", manual, ""))
			r := startRouse(t, file, control)
			rousePid := r.cmd.Process.Pid
			if containment == "auto" && !appCgroups(t, r) {
				t.Logf("no cgroup here: auto ran the fallback too")
				containment = "fallback"
			}

			d := startDaemon(t, file, "idle", idle, containment)
			waitFor(t, "idle stop", func() bool { return r.app(t, "idle").state == "idle" })
			gone(t, d, rousePid)

			d = startDaemon(t, file, "manual", manual, containment)
			var out bytes.Buffer
			if code := run(t.Context(), []string{"stop", "--control", control, "manual"}, os.Getenv, nil, &out, &out); code != 0 {
				t.Fatalf("rouse stop manual: %d %s", code, out.String())
			}
			gone(t, d, rousePid)

			// Clean shutdown.
			d1, d2 := startDaemon(t, file, "idle", idle, containment), startDaemon(t, file, "manual", manual, containment)
			tree := filepath.Dir(cgroupOf(d1))
			r.cmd.Process.Signal(syscall.SIGTERM)
			<-r.done
			gone(t, d1, 0)
			gone(t, d2, 0)
			if containment == "auto" {
				if _, err := os.Stat(cgroupDir(t, tree)); err == nil {
					t.Errorf("cgroup %s left after shutdown", tree)
				}
			}

			// SIGKILL: the guard cleans up.
			r = startRouse(t, file, control)
			d = startDaemon(t, file, "manual", manual, containment)
			tree = filepath.Dir(cgroupOf(d))
			r.cmd.Process.Kill()
			<-r.done
			gone(t, d, 0)
			if containment == "auto" {
				waitFor(t, "the guard to remove "+tree, func() bool {
					_, err := os.Stat(cgroupDir(t, tree))
					return err != nil
				})
			}
		})
	}
}

// rouse started with an extra open fd (not close-on-exec, as a careless
// parent leaves it) does not pass it on to an app; the app gets the small
// environment, or rouse's whole one with inherit_env.
func TestAppsInheritNoFDAndASmallEnv(t *testing.T) {
	small, inherit := freePort(t), freePort(t)
	app := func(name string, port int, extra string) string {
		return fmt.Sprintf(`
[apps.%[1]s]
listen = ["127.0.0.1:%[2]d"]
command = "env >'@DIR@/%[1]s.env'; exec '@BIN@' __backend -proto echo -listen 127.0.0.1:{port}"
%[3]s
`, name, port, extra)
	}
	file, control := writeConfig(t, app("small", small, `memory_max = "256MiB"`)+app("inherit", inherit, "inherit_env = true"))
	leak, err := os.Create(filepath.Join(t.TempDir(), "leaked-fd"))
	if err != nil {
		t.Fatal(err)
	}
	defer leak.Close()
	r := spawnRouse(t, []string{os.Args[0], "run", "-c", file}, []string{"ROUSE_TEST_SECRET=1"}, []*os.File{leak})
	r.control = control
	waitControl(t, control, r)

	for _, port := range []int{small, inherit} {
		if got := echoOnce(t, port, "ping"); got != "ping" {
			t.Fatalf("echo through rouse on %d: %q", port, got)
		}
	}
	// memory_max: applied where the memory controller is enabled for the
	// apps' cgroups, else a warning (this dev box: no controllers).
	appCgroups(t, r) // the start-up log is in
	log := r.log.String()
	memory := false
	for line := range strings.SplitSeq(log, "\n") {
		memory = memory || strings.Contains(line, "apps run in cgroups of their own") && strings.Contains(line, "memory")
	}
	if !memory {
		if !strings.Contains(log, "limit not applied") || !strings.Contains(log, "key=memory_max") {
			t.Errorf("no warning that memory_max is not applied:\n%s", log)
		}
	} else if got, _ := os.ReadFile(cgroupDir(t, cgroupOf(r.app(t, "small").pid)) + "/memory.max"); strings.TrimSpace(string(got)) != "268435456" {
		t.Errorf("memory.max = %q, want 256MiB", got)
	}
	for _, name := range []string{"small", "inherit"} {
		pid := r.app(t, name).pid
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); target == leak.Name() {
				t.Errorf("app %s (pid %d) has rouse's inherited fd as its fd %s", name, pid, fd.Name())
			}
		}
	}

	env := func(name string) map[string]string {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(file), name+".env"))
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
			k, v, _ := strings.Cut(line, "=")
			m[k] = v
		}
		return m
	}
	got := env("small")
	allowed := map[string]bool{"PATH": true, "LANG": true, "HOME": true, "USER": true, "LOGNAME": true, "PORT": true,
		"ROUSE_SCOPE": true, "ROUSE_TEST_MAIN": true, "GORACE": true, // the last two from the config's env
		"PWD": true, "SHLVL": true, "_": true, // set by the shell itself
	}
	for k := range got {
		if !allowed[k] {
			t.Errorf("app small got %s=%s from rouse's environment", k, got[k])
		}
	}
	if got["PORT"] == "" || got["PATH"] != os.Getenv("PATH") || got["USER"] == "" {
		t.Errorf("app small: PATH %q PORT %q USER %q, want all set", got["PATH"], got["PORT"], got["USER"])
	}
	if got := env("inherit"); got["ROUSE_TEST_SECRET"] != "1" || got["PORT"] == "" {
		t.Errorf("app inherit: ROUSE_TEST_SECRET %q PORT %q: want rouse's environment and PORT", got["ROUSE_TEST_SECRET"], got["PORT"])
	}
}
