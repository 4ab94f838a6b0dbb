package procman

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupEmptyTimeout bounds how long removing an app cgroup waits for the
// processes cgroup.kill ended to leave it.
const cgroupEmptyTimeout = 5 * time.Second

// limitControllers are the controllers rouse enables for the app cgroups
// when it can: the ones Limits uses (cpu also gives cpu.stat its full
// figures, memory gives memory.current).
var limitControllers = []string{"cpu", "memory", "pids"}

// cgroupTree is the cgroup v2 subtree in which a Guard's apps get a cgroup
// each. Under systemd with Delegate=yes it is rouse's own cgroup, rouse
// having moved itself into its leaf "supervisor"; elsewhere it is a child
// "rouse-PID" that rouse created below its own cgroup and removes at close.
type cgroupTree struct {
	dir         string          // absolute path of the subtree's root
	created     bool            // rouse made dir and removes it in close
	controllers map[string]bool // enabled for the app cgroups
}

// openCgroupTree finds the cgroup2 hierarchy (from mountinfo) and rouse's
// own cgroup in it (the "0::" line of /proc/self/cgroup) and sets up the
// subtree. An error means no cgroup can be used: the caller falls back.
func openCgroupTree() (*cgroupTree, error) {
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	mnt, root, ok := cgroup2Mount(mountinfo)
	if !ok {
		return nil, errors.New("no cgroup2 mount")
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	own, ok := ownCgroup(self)
	if !ok {
		return nil, errors.New("no cgroup v2 line in /proc/self/cgroup")
	}
	rel, ok := strings.CutPrefix(own, root)
	if !ok { // our cgroup is outside what is mounted
		return nil, fmt.Errorf("cgroup %s is not below the cgroup2 mount's root %s", own, root)
	}
	ownDir := filepath.Join(mnt, rel)
	if own != "/" && aloneIn(ownDir) {
		return delegatedTree(ownDir)
	}
	return createdTree(ownDir)
}

// delegatedTree takes over a cgroup rouse is alone in (systemd's
// Delegate=yes gives a unit its cgroup to manage): rouse moves into its
// leaf "supervisor", as the no-internal-process rule wants, and enables the
// controllers for the app cgroups created beside it.
func delegatedTree(dir string) (*cgroupTree, error) {
	sup := filepath.Join(dir, "supervisor")
	if err := os.Mkdir(sup, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	if err := writeCgroup(sup, "cgroup.procs", strconv.Itoa(os.Getpid())); err != nil {
		_ = os.Remove(sup)
		return nil, fmt.Errorf("move into %s: %w", sup, err)
	}
	t := &cgroupTree{dir: dir}
	t.enableControllers()
	return t, nil
}

// createdTree makes rouse's subtree a new child of its own cgroup, which
// other processes may share (a login session, a container's root).
func createdTree(ownDir string) (*cgroupTree, error) {
	dir, err := mkdirUnique(ownDir, "rouse-"+strconv.Itoa(os.Getpid()))
	if err != nil {
		return nil, err
	}
	t := &cgroupTree{dir: dir, created: true}
	t.enableControllers()
	return t, nil
}

// enableControllers enables, for the children of the tree's root, the
// controllers of limitControllers that the root has. Each is best effort:
// a parent that does not delegate one leaves it off.
func (t *cgroupTree) enableControllers() {
	t.controllers = map[string]bool{}
	data, _ := os.ReadFile(filepath.Join(t.dir, "cgroup.controllers"))
	have := strings.Fields(string(data))
	for _, c := range limitControllers {
		if slices.Contains(have, c) && writeCgroup(t.dir, "cgroup.subtree_control", "+"+c) == nil {
			t.controllers[c] = true
		}
	}
}

// close removes the tree's root if rouse created it. The app cgroups must
// have been removed before.
func (t *cgroupTree) close() error {
	if !t.created {
		return nil
	}
	if err := os.Remove(t.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", t.dir, err)
	}
	return nil
}

// appCgroup is the cgroup of one app process.
type appCgroup struct {
	dir    string
	memory bool // memory.current is there
}

// newApp creates the cgroup of one process of app name, applies lim to it
// and returns it with an fd of its directory for SysProcAttr.CgroupFD (the
// caller closes it).
func (t *cgroupTree) newApp(name string, lim Limits) (*appCgroup, int, error) {
	dir, err := mkdirUnique(t.dir, "app-"+cgroupName(name))
	if err != nil {
		return nil, -1, err
	}
	cg := &appCgroup{dir: dir, memory: t.controllers["memory"]}
	if err := cg.apply(t.controllers, lim); err != nil {
		_ = os.Remove(dir)
		return nil, -1, err
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, -1, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	return cg, fd, nil
}

// apply writes the limits whose controller is enabled; the others are left
// out (the caller warns about them, see Guard.Controllers).
func (cg *appCgroup) apply(controllers map[string]bool, lim Limits) error {
	if lim.MemoryMax > 0 && controllers["memory"] {
		if err := writeCgroup(cg.dir, "memory.max", strconv.FormatInt(lim.MemoryMax, 10)); err != nil {
			return err
		}
	}
	if lim.CPUMax > 0 && controllers["cpu"] {
		const period = 100000 // µs, the kernel's default
		quota := max(int64(lim.CPUMax*period), 1000)
		if err := writeCgroup(cg.dir, "cpu.max", fmt.Sprintf("%d %d", quota, period)); err != nil {
			return err
		}
	}
	if lim.TasksMax > 0 && controllers["pids"] {
		if err := writeCgroup(cg.dir, "pids.max", strconv.Itoa(lim.TasksMax)); err != nil {
			return err
		}
	}
	return nil
}

// kill SIGKILLs every process in the cgroup: with cgroup.kill (Linux 5.14)
// at once, else pid by pid until none is left.
func (cg *appCgroup) kill() {
	killCgroup(cg.dir)
}

// remove kills what is left in the cgroup, waits for it to be empty and
// removes it.
func (cg *appCgroup) remove() error {
	return removeCgroup(cg.dir)
}

// join moves pid into the cgroup, when it could not be spawned there.
func (cg *appCgroup) join(pid int) error {
	return writeCgroup(cg.dir, "cgroup.procs", strconv.Itoa(pid))
}

// usage returns the memory use (memory.current, else the RSS sum of its
// processes) and the CPU time (cpu.stat) of everything in the cgroup.
func (cg *appCgroup) usage() (uint64, time.Duration, error) {
	data, err := os.ReadFile(filepath.Join(cg.dir, "cpu.stat"))
	if err != nil {
		return 0, 0, err
	}
	usec, ok := statField(data, "usage_usec")
	if !ok {
		return 0, 0, fmt.Errorf("%s/cpu.stat: no usage_usec", cg.dir)
	}
	cpu := time.Duration(usec) * time.Microsecond
	if cg.memory {
		if n, err := readCgroupUint(cg.dir, "memory.current"); err == nil {
			return n, cpu, nil
		}
	}
	var rss uint64
	for _, pid := range cgroupPids(cg.dir) {
		r, _ := pidUsage(pid)
		rss += r
	}
	return rss, cpu, nil
}

// killCgroup SIGKILLs every process of the cgroup at dir (not of the
// cgroups below it without cgroup.kill). Before Linux 5.14 there is no
// cgroup.kill: the cgroup is frozen (5.2), so that nothing forks meanwhile,
// and its processes are killed one by one (a fatal signal ends a frozen
// task too).
func killCgroup(dir string) {
	if err := writeCgroup(dir, "cgroup.kill", "1"); err == nil || !exists(dir) {
		return
	}
	killCgroupProcs(dir)
}

// killCgroupProcs is killCgroup without cgroup.kill.
func killCgroupProcs(dir string) {
	frozen := writeCgroup(dir, "cgroup.freeze", "1") == nil
	if frozen {
		// Freezing is not immediate: until cgroup.events says frozen, a
		// process may still fork a child that the list below misses.
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			if done, ok := cgroupFrozen(dir); done || !ok {
				break // frozen, or gone: nothing to wait for
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, pid := range cgroupPids(dir) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	if frozen {
		_ = writeCgroup(dir, "cgroup.freeze", "0")
	}
}

// cgroupFrozen reports whether the cgroup at dir is frozen whole
// (cgroup.events: "frozen 1"); ok is false when it cannot be read.
func cgroupFrozen(dir string) (frozen, ok bool) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, false
	}
	n, found := statField(data, "frozen")
	return found && n == 1, true
}

// removeCgroup kills what is in the cgroup at dir, waits until it is
// empty, bounded by cgroupEmptyTimeout, and removes it with the cgroups an
// app may have made below it (a nested rouse, a container runtime).
func removeCgroup(dir string) error {
	if !exists(dir) {
		return nil
	}
	killCgroup(dir)
	deadline := time.Now().Add(cgroupEmptyTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		err := removeTree(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		<-tick.C
		killCgroup(dir) // without cgroup.kill, what forked meanwhile
	}
}

// removeTree removes the cgroup at dir and its descendants, deepest first.
func removeTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return os.Remove(dir)
}

// cgroupPids lists the processes of the cgroup at dir.
func cgroupPids(dir string) []int {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// aloneIn reports whether rouse is the only process of the cgroup at dir.
func aloneIn(dir string) bool {
	pids := cgroupPids(dir)
	return len(pids) == 1 && pids[0] == os.Getpid()
}

// cgroup2Mount returns the mount point and the root of the first cgroup2
// mount in mountinfo (proc(5): the fields after " - " are the type first).
func cgroup2Mount(mountinfo []byte) (mnt, root string, ok bool) {
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		pre, post, found := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !found || len(f) < 5 || len(g) < 1 || g[0] != "cgroup2" {
			continue
		}
		return unescapeMount(f[4]), unescapeMount(f[3]), true
	}
	return "", "", false
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroup returns the path of the "0::" (cgroup v2) line of
// /proc/self/cgroup.
func ownCgroup(data []byte) (string, bool) {
	for line := range strings.SplitSeq(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(p, "/") {
			return strings.TrimSuffix(p, " (deleted)"), true
		}
	}
	return "", false
}

// cgroupName keeps an app name usable as one path element.
func cgroupName(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r == '\n' {
			return '_'
		}
		return r
	}, name)
}

// mkdirUnique creates parent/base, or parent/base.N for the first N that is
// free, and returns its path.
func mkdirUnique(parent, base string) (string, error) {
	for n := 1; ; n++ {
		dir := filepath.Join(parent, base+"."+strconv.Itoa(n))
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, fs.ErrExist) || n >= 10000 {
			return "", err
		}
	}
}

// writeCgroup writes value to the control file dir/file.
func writeCgroup(dir, file, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, filepath.Join(dir, file), err)
	}
	return nil
}

// statField returns the number of "key N" in a flat-keyed cgroup file.
func statField(data []byte, key string) (uint64, bool) {
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
