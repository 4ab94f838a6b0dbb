package procman

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v3/process"
)

// Stats is a sample of a process group's resource use.
type Stats struct {
	RSS        uint64  // bytes: memory.current of the cgroup, or the RSS sum of its (the group's) processes
	CPUPercent float64 // since the previous Stats call (or since start); 100 = one core
}

// statsState is what CPUPercent is measured against.
type statsState struct {
	mu      sync.Mutex
	prevAt  time.Time
	prevCPU time.Duration // CPU time of the group at prevAt
	percent float64       // last result, reused by a call that sampled before it
}

// Stats samples the memory and CPU use of the process and what it started:
// with a cgroup, of everything in it (memory.current where the memory
// controller is enabled, else the RSS sum of its processes; CPU from
// cpu.stat), else of every live process of the group (the leader and
// whatever it forked without leaving the group). It is safe to
// call concurrently; once the process exited it returns an error wrapping
// ErrExited.
func (p *Process) Stats() (Stats, error) {
	if p.isReaped() {
		return Stats{}, fmt.Errorf("stats %s pid %d: %w", p.name, p.pid, ErrExited)
	}
	rss, cpu, err := p.usage()
	at := time.Now()
	if err != nil {
		return Stats{}, fmt.Errorf("stats %s pid %d: %w", p.name, p.pid, err)
	}
	// Until the leader is reaped its pgid cannot be reused, so a sample taken
	// before that moment is of our group only.
	if p.isReaped() {
		return Stats{}, fmt.Errorf("stats %s pid %d: %w", p.name, p.pid, ErrExited)
	}

	s := &p.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	if at.After(s.prevAt) {
		// Processes that died since the previous sample take their CPU time
		// with them, so the difference can be negative: count it as idle.
		used := cpu - s.prevCPU
		s.percent = 0
		if used > 0 {
			s.percent = 100 * used.Seconds() / at.Sub(s.prevAt).Seconds()
		}
		s.prevAt, s.prevCPU = at, cpu
	}
	return Stats{RSS: rss, CPUPercent: s.percent}, nil
}

// usage is the memory and CPU time of the process's cgroup, or of its
// process group without one.
func (p *Process) usage() (uint64, time.Duration, error) {
	if p.scope != nil && p.scope.cg != nil {
		return p.scope.cg.usage()
	}
	return groupUsage(p.pid)
}

func (p *Process) isReaped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reaped
}

// groupUsage sums the resident memory and the CPU time of the processes whose
// process group is pgid. Members are found by reading /proc/*/stat (field 5,
// pgrp; no pgrep is forked).
func groupUsage(pgid int) (rss uint64, cpu time.Duration, err error) {
	for _, p := range scanProcs() {
		if p.pgrp != pgid || p.state == 'Z' {
			continue
		}
		r, c := pidUsage(p.pid)
		rss += r
		cpu += c
	}
	return rss, cpu, nil
}

// pidUsage reads the resident memory and CPU time of one process with
// gopsutil; zero for one that exited meanwhile.
func pidUsage(pid int) (uint64, time.Duration) {
	proc, err := process.NewProcess(int32(pid))
	if err != nil {
		return 0, 0
	}
	mem, err := proc.MemoryInfo()
	if err != nil {
		return 0, 0
	}
	times, err := proc.Times()
	if err != nil {
		return 0, 0
	}
	return mem.RSS, time.Duration((times.User + times.System) * float64(time.Second))
}

// procStat is what procman needs from /proc/PID/stat.
type procStat struct {
	state   byte
	ppid    int
	pgrp    int
	session int
	rss     uint64 // resident pages (field 24), as statm's second field
}

// parseStat parses /proc/PID/stat (see proc(5)). The command name, field 2,
// is in parentheses and may itself hold spaces and parentheses, so fields
// are counted from the last ')'.
func parseStat(data []byte) (procStat, bool) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := bytes.Fields(data[i+1:]) // f[0] is field 3
	if len(f) < 22 || len(f[0]) != 1 {
		return procStat{}, false
	}
	var n [3]int
	for j := range n { // fields 4 (ppid), 5 (pgrp), 6 (session)
		v, err := strconv.Atoi(string(f[4-3+j]))
		if err != nil {
			return procStat{}, false
		}
		n[j] = v
	}
	rss, err := strconv.ParseInt(string(f[24-3]), 10, 64)
	if err != nil {
		return procStat{}, false
	}
	return procStat{state: f[0][0], ppid: n[0], pgrp: n[1], session: n[2], rss: uint64(max(rss, 0))}, true
}

// Memory samples the memory of each of ps and what it started, as Stats
// does (memory.current of its cgroup where the memory controller is
// enabled, else the RSS sum of the processes of its cgroup, or of its
// process group without one), with one scan of /proc for all of them:
// what a memory budget compares, often and cheaply. It takes no CPU
// sample, so the CPUPercent of the next Stats is not cut short. A nil
// process, or one that exited, counts 0. Safe to call concurrently.
func Memory(ps []*Process) []uint64 {
	out := make([]uint64, len(ps))
	// Filled on the first process that needs them: RSS pages by pid and
	// by process group, of the live processes.
	var byPid map[int]uint64
	var byPgrp map[int]uint64
	scan := func() {
		if byPid != nil {
			return
		}
		procs := scanProcs()
		byPid, byPgrp = make(map[int]uint64, len(procs)), make(map[int]uint64)
		for _, q := range procs {
			if q.state != 'Z' {
				byPid[q.pid] = q.rss
				byPgrp[q.pgrp] += q.rss
			}
		}
	}
	page := uint64(os.Getpagesize())
	for i, p := range ps {
		if p == nil || p.isReaped() {
			continue
		}
		var rss uint64
		switch cg := p.cgroup(); {
		case cg != nil && cg.memory:
			if n, err := readCgroupUint(cg.dir, "memory.current"); err == nil {
				rss = n
				break
			}
			fallthrough
		case cg != nil:
			scan()
			for _, pid := range cgroupPids(cg.dir) {
				rss += byPid[pid] * page
			}
		default:
			scan()
			rss = byPgrp[p.pid] * page
		}
		// As in Stats: a sample taken before the leader is reaped is of
		// this process's group only (its pgid cannot be reused before).
		if !p.isReaped() {
			out[i] = rss
		}
	}
	return out
}

// readCgroupUint reads a cgroup file that holds one number.
func readCgroupUint(dir, file string) (uint64, error) {
	data, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
}

func (p *Process) cgroup() *appCgroup {
	if p.scope == nil {
		return nil
	}
	return p.scope.cg
}
