package procman

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// containment is one way a Guard contains apps, for tests that run on both.
type containment struct {
	name string
	opts GuardOptions
}

var containments = []containment{
	{"cgroup", GuardOptions{Containment: ContainAuto}},
	{"subreaper", GuardOptions{Containment: ContainSubreaper}},
}

// containedGuard starts a guard with c, skipping the cgroup case where no
// cgroup v2 subtree can be managed.
func containedGuard(t *testing.T, c containment) *Guard {
	t.Helper()
	g := startGuardWith(t, c.opts)
	if c.name == "cgroup" && g.Cgroup() == "" {
		t.Skip("no cgroup v2 subtree rouse may manage here: only the fallback runs")
	}
	t.Logf("containment %s: cgroup %q, controllers %v", c.name, g.Cgroup(), g.Controllers())
	return g
}

// python3 finds a Python for the non-Go daemon, preferring Debian's.
func python3(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	return p
}

// daemonSpec runs testdata/daemonize.py with args.
func daemonSpec(t *testing.T, args ...string) Spec {
	t.Helper()
	script, err := filepath.Abs("testdata/daemonize.py")
	if err != nil {
		t.Fatal(err)
	}
	return Spec{Name: "daemonize", Argv: append([]string{python3(t), script}, args...), User: currentUser()}
}

// cgroupOf returns the cgroup v2 path of pid ("" when it is gone).
func cgroupOf(pid int) string {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	p, _ := ownCgroup(data)
	return p
}

// gone waits until pid is neither alive nor a zombie of ours: on the
// fallback rouse adopted and must reap it.
func gone(t *testing.T, pid int, reaped bool) {
	t.Helper()
	eventually(t, 5*time.Second, "pid "+strconv.Itoa(pid)+" gone", func() bool {
		if !reaped {
			return !alive(pid)
		}
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return true
		}
		st, _ := parseStat(data)
		return st.ppid != os.Getpid() && !alive(pid) // a zombie of init is not ours to reap
	})
}

// appCgroups lists the app cgroups left below the guard's subtree.
func appCgroups(t *testing.T, g *Guard) []string {
	t.Helper()
	if g.Cgroup() == "" {
		return nil
	}
	m, err := filepath.Glob(filepath.Join(g.Cgroup(), "app-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// checkContained checks that the daemon runs in the app's cgroup, or
// carries the app's scope mark on the fallback.
func checkContained(t *testing.T, g *Guard, p *Process, daemon int) {
	t.Helper()
	if g.Cgroup() != "" {
		app, daemonCg := cgroupOf(p.Pid()), cgroupOf(daemon)
		if !strings.Contains(app, "/app-daemonize.") || daemonCg != app {
			t.Errorf("app in cgroup %q, its daemon in %q: want both in the app's own cgroup", app, daemonCg)
		}
		return
	}
	// Polled: the daemon's pid is printed just before it execs sleep, and
	// its environ reads empty while exec replaces its memory.
	eventually(t, 5*time.Second, "the daemon carries "+ScopeEnv, func() bool {
		return strings.Contains(string(readEnviron(daemon)), "\x00"+ScopeEnv+"=")
	})
}

// A daemon that called setsid (double fork) is gone once its app was
// stopped, on both paths, and nothing of the app's cgroup is left. The
// misbehaving case: a launcher exits at once after starting a daemon that
// ignores SIGTERM (on the cgroup path also with an empty environment, so no
// mark could find it); its exit takes the daemon along.
func TestDaemonGone(t *testing.T) {
	tests := []struct {
		name string
		args []string
		stop bool
	}{
		{"stopped", nil, true},
		{"launcher exits", []string{"exit", "ignoreterm"}, false},
	}
	for _, tt := range tests {
		for _, c := range containments {
			t.Run(tt.name+"/"+c.name, func(t *testing.T) {
				g := containedGuard(t, c)
				args := tt.args
				if !tt.stop && c.name == "cgroup" {
					args = append(args, "clearenv")
				}
				var out lines
				spec := daemonSpec(t, args...)
				spec.Guard, spec.Output = g, out.output
				p := start(t, spec)
				daemon := out.waitPid(t, "stdout: daemon ")
				if tt.stop {
					checkContained(t, g, p, daemon)
					if err := p.Stop(testContext(t)); err != nil {
						t.Fatal(err)
					}
				} else {
					waitDone(t, p, 10*time.Second)
					if err := p.Err(); err != nil {
						t.Errorf("Err() = %v, want the launcher's exit 0", err)
					}
				}
				gone(t, daemon, c.name == "subreaper")
				if left := appCgroups(t, g); len(left) > 0 {
					t.Errorf("cgroups left: %v", left)
				}
			})
		}
	}
}

// rouse (played by a helper) SIGKILLed: its guard kills the daemon its app
// started with setsid and removes the cgroups rouse had made.
func TestGuardKillsDaemonOfKilledRouse(t *testing.T) {
	for _, c := range containments {
		t.Run(c.name, func(t *testing.T) {
			containedGuard(t, c) // skips the cgroup case where there is none
			var out lines
			spec := helperSpec(t, "rouse", "HELPER_CONTAIN="+c.name, "HELPER_APP="+strings.Join(daemonSpec(t).Argv, " "))
			spec.Output = out.output
			rouse := start(t, spec)
			guard := out.waitPid(t, "stdout: guard ")
			daemon := out.waitPid(t, "stdout: daemon ")
			cgroup := strings.TrimPrefix(out.waitFor(t, "stdout: cgroup"), "stdout: cgroup")
			if c.name == "cgroup" && cgroupOf(daemon) == "" {
				t.Fatalf("daemon %d in no cgroup", daemon)
			}

			rouse.Kill()
			waitDone(t, rouse, 5*time.Second)
			gone(t, daemon, false)
			eventually(t, 10*time.Second, "the guard exited", func() bool { return !alive(guard) })
			if cgroup = strings.TrimSpace(cgroup); cgroup != "" {
				if _, err := os.Stat(cgroup); err == nil {
					t.Errorf("cgroup subtree %s left behind", cgroup)
				}
			}
		})
	}
}

// Stats of a contained app count its daemon too; without the memory
// controller (memory.current) memory is the RSS sum of the cgroup's
// processes.
func TestCgroupStats(t *testing.T) {
	g := containedGuard(t, containments[0])
	var out lines
	spec := helperSpec(t, "alloc", "HELPER_MIB=64")
	spec.Guard, spec.Output = g, out.output
	p := start(t, spec)
	out.waitFor(t, "stdout: allocated")
	s, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS < 64<<20 {
		t.Errorf("RSS = %d, want at least 64 MiB", s.RSS)
	}
	if mem := Memory([]*Process{p}); mem[0] < 64<<20 {
		t.Errorf("Memory = %d, want at least 64 MiB, as Stats", mem[0])
	}
	memory := slices.Contains(g.Controllers(), "memory")
	t.Logf("memory controller: %v (memory.current used: %v), RSS %d", memory, memory, s.RSS)

	spin := helperSpec(t, "spin")
	spin.Guard = g
	sp := start(t, spin)
	eventually(t, 10*time.Second, "CPU from cpu.stat", func() bool {
		s, err := sp.Stats()
		return err == nil && s.CPUPercent > 20
	})
}

// Limits are written where the controller is enabled and left out (the
// app still starts) where it is not.
func TestLimits(t *testing.T) {
	g := containedGuard(t, containments[0])
	spec := helperSpec(t, "sleep")
	spec.Guard = g
	spec.Limits = Limits{MemoryMax: 256 << 20, CPUMax: 0.5, TasksMax: 64}
	p := start(t, spec)
	dir := filepath.Join(filepath.Dir(g.Cgroup()), cgroupOf(p.Pid()))
	if mnt, root, ok := cgroup2Mount(must(os.ReadFile("/proc/self/mountinfo"))); ok {
		dir = filepath.Join(mnt, strings.TrimPrefix(cgroupOf(p.Pid()), root))
	}
	want := map[string][2]string{"memory": {"memory.max", "268435456"}, "cpu": {"cpu.max", "50000 100000"}, "pids": {"pids.max", "64"}}
	for c, fw := range want {
		data, err := os.ReadFile(filepath.Join(dir, fw[0]))
		if !slices.Contains(g.Controllers(), c) {
			if err == nil {
				t.Errorf("%s exists without the %s controller", fw[0], c)
			}
			continue
		}
		if got := strings.TrimSpace(string(data)); got != fw[1] {
			t.Errorf("%s = %q (%v), want %q", fw[0], got, err, fw[1])
		}
	}
	if err := p.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// An app that made cgroups of its own below its cgroup (a nested
// supervisor) leaves none behind.
func TestNestedCgroupsRemoved(t *testing.T) {
	g := containedGuard(t, containments[0])
	mnt, _, _ := cgroup2Mount(must(os.ReadFile("/proc/self/mountinfo")))
	var out lines
	p := start(t, Spec{
		Name:   "nested",
		Shell:  `d=$CG_MNT$(sed -n 's/^0:://p' /proc/self/cgroup); mkdir -p "$d/child/grandchild" && echo made; exec sleep 1000`,
		Env:    []string{"CG_MNT=" + mnt},
		User:   currentUser(),
		Guard:  g,
		Output: out.output,
	})
	out.waitFor(t, "stdout: made")
	if err := p.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if left := appCgroups(t, g); len(left) > 0 {
		t.Errorf("cgroups left: %v", left)
	}
}

// Under systemd with Delegate=yes rouse is alone in its cgroup: it moves
// into the leaf "supervisor" (the guard follows) and creates the app
// cgroups beside it. Played here by a helper spawned alone into a cgroup
// of the test's making.
func TestDelegatedCgroup(t *testing.T) {
	g := containedGuard(t, containments[0])
	unit, err := mkdirUnique(g.Cgroup(), "unit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeCgroup(unit); err != nil {
			t.Error(err)
		}
	})
	fd, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	for _, stop := range []bool{true, false} {
		var out lines
		spec := helperSpec(t, "rouse", "HELPER_APP="+strings.Join(daemonSpec(t).Argv, " "))
		if stop {
			spec.Env = append(spec.Env, "HELPER_STOP=1")
		}
		cmd := exec.Command(spec.Argv[0])
		cmd.Env = append(os.Environ(), spec.Env...)
		var stderr strings.Builder
		cmd.Stdout, cmd.Stderr = writerFunc(func(b []byte) {
			for l := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
				out.output(Stdout, l)
			}
		}), &stderr
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("helper: %q, stderr %q", out.get(), stderr.String())
			}
		})
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		guard, app, daemon := out.waitPid(t, "stdout: guard "), out.waitPid(t, "stdout: app "), out.waitPid(t, "stdout: daemon ")
		rel, _ := strings.CutPrefix(unit, filepath.Dir(g.Cgroup()))
		if got := out.waitFor(t, "stdout: cgroup "); got != "stdout: cgroup "+unit {
			t.Errorf("%s, want the delegated %s", got, unit)
		}
		for pid, want := range map[int]string{cmd.Process.Pid: "/supervisor", guard: "/supervisor", app: "/app-app.1", daemon: "/app-app.1"} {
			if got := cgroupOf(pid); !strings.HasSuffix(got, rel+want) {
				t.Errorf("pid %d in cgroup %s, want %s%s", pid, got, rel, want)
			}
		}
		stdin.Close()
		if stop {
			out.waitFor(t, "stdout: stopped")
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		gone(t, daemon, false)
		eventually(t, 10*time.Second, "the guard exited", func() bool { return !alive(guard) })
		eventually(t, 10*time.Second, "no app cgroup left", func() bool {
			m, _ := filepath.Glob(filepath.Join(unit, "app-*"))
			return len(m) == 0
		})
		if lines := out.get(); slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, ": ") && !strings.HasPrefix(l, "stdout: ") }) {
			t.Errorf("errors: %v", lines)
		}
		_ = os.Remove(filepath.Join(unit, "supervisor"))
	}
}

type writerFunc func([]byte)

func (f writerFunc) Write(b []byte) (int, error) { f(b); return len(b), nil }

func TestCgroup2Mount(t *testing.T) {
	tests := []struct {
		name, mountinfo, mnt, root string
		ok                         bool
	}{
		{"unified", "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup", "/", true},
		{"hybrid", "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified", "/", true},
		{"optional fields and a space", "41 31 0:38 /sub /mnt/cg\\040two rw shared:9 master:2 - cgroup2 none rw\n", "/mnt/cg two", "/sub", true},
		{"v1 only", "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "", "", false},
		{"garbage", "nonsense\n", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mnt, root, ok := cgroup2Mount([]byte(tt.mountinfo))
			if mnt != tt.mnt || root != tt.root || ok != tt.ok {
				t.Errorf("got %q %q %v, want %q %q %v", mnt, root, ok, tt.mnt, tt.root, tt.ok)
			}
		})
	}
}

func TestOwnCgroup(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"0::/system.slice/rouse.service\n", "/system.slice/rouse.service", true},
		{"9:name=systemd:/\n4:memory:/x\n0::/\n", "/", true},
		{"4:memory:/x\n", "", false},
	}
	for _, tt := range tests {
		got, ok := ownCgroup([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("ownCgroup(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// sweepSet takes the marked processes, their descendants and the members
// of the sessions they lead; never rouse, init or a zombie.
func TestSweepSet(t *testing.T) {
	self := os.Getpid()
	procs := []procInfo{
		{pid: 100, ppid: self, pgrp: 100, sid: 100, state: 'S'}, // marked daemon, session leader
		{pid: 101, ppid: 100, pgrp: 100, sid: 100, state: 'S'},  // its child
		{pid: 102, ppid: 1, pgrp: 102, sid: 100, state: 'S'},    // in its session, reparented
		{pid: 103, ppid: 101, pgrp: 103, sid: 103, state: 'S'},  // grandchild in a new session
		{pid: 104, ppid: 101, pgrp: 100, sid: 100, state: 'Z'},  // zombie
		{pid: 200, ppid: 1, pgrp: 200, sid: 200, state: 'S'},    // unrelated
		{pid: self, ppid: 1, pgrp: self, sid: self, state: 'S'},
		{pid: 1, ppid: 0, pgrp: 1, sid: 1, state: 'S'},
	}
	got := sweepSet(procs, func(p procInfo) bool { return p.pid == 100 || p.pid == 1 || p.pid == self })
	slices.Sort(got)
	if want := []int{100, 101, 102, 103}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// Before Linux 5.14 (no cgroup.kill) the cgroup is frozen and its
// processes killed one by one; here with a shell that keeps forking.
func TestKillCgroupProcs(t *testing.T) {
	g := containedGuard(t, containments[0])
	dir, err := mkdirUnique(g.Cgroup(), "old-kernel")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	cmd := exec.Command("/bin/sh", "-c", "while :; do sleep 1000 & done")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a few processes forked", func() bool { return len(cgroupPids(dir)) > 5 })
	killCgroupProcs(dir)
	_ = cmd.Wait()
	eventually(t, 5*time.Second, "the cgroup empty", func() bool {
		for _, pid := range cgroupPids(dir) {
			if alive(pid) {
				return false
			}
		}
		return true
	})
	if err := os.Remove(dir); err != nil {
		t.Error(err)
	}
}

// refuseClone3 makes clone3 fail with ENOSYS in this process and its
// children, as on a kernel before 5.3 or under a seccomp filter that does
// not know it: spawning into a cgroup (CLONE_INTO_CGROUP) needs it.
func refuseClone3() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_CLONE3},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	if errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}

// Where clone3 is refused, the app is moved into its cgroup just after it
// was spawned, and contained all the same.
func TestCgroupWithoutClone3(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the seccomp filter is written for amd64")
	}
	containedGuard(t, containments[0])
	var out lines
	spec := helperSpec(t, "rouse", "HELPER_NOCLONE3=1", "HELPER_APP="+strings.Join(daemonSpec(t).Argv, " "))
	spec.Output = out.output
	rouse := start(t, spec)
	app, daemon := out.waitPid(t, "stdout: app "), out.waitPid(t, "stdout: daemon ")
	for _, pid := range []int{app, daemon} {
		if cg := cgroupOf(pid); !strings.Contains(cg, "/app-app.") {
			t.Errorf("pid %d in cgroup %q, want the app's", pid, cg)
		}
	}
	rouse.Kill()
	waitDone(t, rouse, 5*time.Second)
	gone(t, daemon, false)
}

// BenchmarkStartStop measures what containment adds to one start and stop
// of a short-lived process (/bin/true): a cgroup made, spawned into, killed
// and removed; or on the fallback the scans of /proc for the mark.
func BenchmarkStartStop(b *testing.B) {
	for _, c := range append([]containment{{name: "none"}}, containments...) {
		b.Run(c.name, func(b *testing.B) {
			var g *Guard
			if c.name != "none" {
				exe, _ := os.Executable()
				var err error
				if g, err = StartGuard([]string{exe, "__guard"}, c.opts); err != nil {
					b.Fatal(err)
				}
				defer g.Close()
				if c.name == "cgroup" && g.Cgroup() == "" {
					b.Skip("no cgroup")
				}
			}
			u := currentUser()
			for b.Loop() {
				p, err := Start(Spec{Name: "true", Argv: []string{"/bin/true"}, User: u, Guard: g})
				if err != nil {
					b.Fatal(err)
				}
				<-p.Done()
			}
		})
	}
}
