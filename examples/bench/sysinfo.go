package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of utime/stime in /proc/PID/stat: 100 on
// every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// machine describes the box for the report.
func machine() [][2]string {
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := strings.TrimSpace(readFile("/proc/sys/kernel/osrelease"))
	mem := "unknown"
	for line := range strings.SplitSeq(readFile("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			if kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB")); err == nil {
				mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	distro := "unknown"
	for line := range strings.SplitSeq(readFile("/etc/os-release"), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			distro = strings.Trim(v, `"`)
		}
	}
	return [][2]string{
		{"CPU", model},
		{"nproc", strconv.Itoa(runtime.NumCPU())},
		{"memory", mem},
		{"kernel", kernel},
		{"OS", distro},
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func loadavg() string {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// statFields returns the fields of /proc/PID/stat after the command name
// (field 3, the state, is index 0).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// cpuTime is utime+stime of a whole process (all its threads), in clock
// ticks: 10 ms resolution.
func cpuTime(pid int) (time.Duration, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// cpuTimeAll sums cpuTime over pids; a process that is gone counts 0.
func cpuTimeAll(pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		if d, err := cpuTime(pid); err == nil {
			sum += d
		}
	}
	return sum
}

// runTime is the time on CPU of a process's live threads in nanoseconds,
// from /proc/PID/task/*/schedstat: finer than cpuTime.
func runTime(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	for _, t := range tasks {
		f := strings.Fields(readFile(t))
		if len(f) > 0 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				sum += time.Duration(ns)
			}
		}
	}
	return sum
}

// statusValue returns a field of /proc/PID/status, such as "VmRSS".
func statusValue(pid int, key string) string {
	for line := range strings.SplitSeq(readFile(fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// rssBytes is VmRSS of pid.
func rssBytes(pid int) int64 {
	return kbValue(statusValue(pid, "VmRSS"))
}

func kbValue(v string) int64 {
	kb, err := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
	if err != nil {
		return 0
	}
	return kb << 10
}

// children lists the direct children of pid.
func children(pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range files {
		for s := range strings.FieldsSeq(readFile(f)) {
			if c, err := strconv.Atoi(s); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// openFDs counts the open file descriptors of pid.
func openFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// ignoresSignal reports whether pid has sig ignored (SigIgn in status).
func ignoresSignal(pid int, sig int) (bool, error) {
	v := statusValue(pid, "SigIgn")
	if v == "" {
		return false, fmt.Errorf("no SigIgn for pid %d", pid)
	}
	mask, err := strconv.ParseUint(v, 16, 64)
	if err != nil {
		return false, err
	}
	return mask&(1<<(sig-1)) != 0, nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
