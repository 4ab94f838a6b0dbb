package procman

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v3/process"
)

// Stats is a sample of a process group's resource use.
type Stats struct {
	RSS        uint64  // bytes, summed over the group's processes
	CPUPercent float64 // since the previous Stats call (or since start); 100 = one core
}

// statsState is what CPUPercent is measured against.
type statsState struct {
	mu      sync.Mutex
	prevAt  time.Time
	prevCPU time.Duration // CPU time of the group at prevAt
	percent float64       // last result, reused by a call that sampled before it
}

// Stats samples the RSS and CPU use of every live process of the group (the
// leader and whatever it forked without leaving the group). It is safe to
// call concurrently; once the process exited it returns an error wrapping
// ErrExited.
func (p *Process) Stats() (Stats, error) {
	if p.isReaped() {
		return Stats{}, fmt.Errorf("stats %s pid %d: %w", p.name, p.pid, ErrExited)
	}
	rss, cpu, err := groupUsage(p.pid)
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

func (p *Process) isReaped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reaped
}

// groupUsage sums the resident memory and the CPU time of the processes whose
// process group is pgid. Members are found by reading /proc/*/stat (field 5,
// pgrp; no pgrep is forked), their usage is read with gopsutil.
func groupUsage(pgid int) (rss uint64, cpu time.Duration, err error) {
	pids, err := groupPids(pgid)
	if err != nil {
		return 0, 0, err
	}
	for _, pid := range pids {
		proc, err := process.NewProcess(int32(pid))
		if err != nil {
			continue // exited meanwhile
		}
		mem, err := proc.MemoryInfo()
		if err != nil {
			continue
		}
		times, err := proc.Times()
		if err != nil {
			continue
		}
		rss += mem.RSS
		cpu += time.Duration((times.User + times.System) * float64(time.Second))
	}
	return rss, cpu, nil
}

// groupPids lists the live processes of process group pgid.
func groupPids(pgid int) ([]int, error) {
	dir, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		data, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		st, ok := parseStat(data)
		if !ok || st.pgrp != pgid || st.state == 'Z' {
			continue
		}
		pid, _ := strconv.Atoi(name)
		pids = append(pids, pid)
	}
	return pids, nil
}

// procStat is what groupPids needs from /proc/PID/stat.
type procStat struct {
	state byte
	pgrp  int
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
	pgrp, err := strconv.Atoi(string(f[5-3]))
	if err != nil {
		return procStat{}, false
	}
	return procStat{
		state: f[0][0],
		pgrp:  pgrp,
	}, true
}
