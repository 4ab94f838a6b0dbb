package procman

import (
	"bytes"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ScopeEnv is the variable that marks every process of an app where no
// cgroup is available: its value is unique per app process, the app's
// descendants inherit it, and whatever carries it (with its descendants
// and sessions) is killed when the app stops, even after a setsid.
const ScopeEnv = "ROUSE_SCOPE"

// Bounds of sweep: scans repeat while they still find processes to kill (a
// daemon may fork while being killed).
const (
	sweepTimeout = 2 * time.Second
	// reapInterval is how often the reaper looks for adopted orphans when
	// no SIGCHLD woke it up; it also catches the zombies of orphans that
	// died between two scans.
	reapInterval = time.Second
)

// reaper makes rouse a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so
// that the processes an app leaves behind when their parent exits are
// re-parented to rouse rather than to init, and reaps those orphans. It never
// reaps a child rouse started itself (os/exec waits for those): see
// adoptedZombie.
type reaper struct {
	self, sid, pgid int
	marker          []byte // "\x00ROUSE_SCOPE=TOKEN." : a scope of this Guard

	mu      sync.Mutex
	adopted map[int]bool // children of rouse seen alive carrying marker

	stop chan struct{}
	done chan struct{}
}

// startReaper sets the subreaper flag (it stays set for the life of the
// process) and starts the goroutine that reaps adopted orphans; close stops
// it.
func startReaper(token string) (*reaper, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, err
	}
	sid, err := unix.Getsid(0)
	if err != nil {
		return nil, err
	}
	r := &reaper{
		self:    os.Getpid(),
		sid:     sid,
		pgid:    unix.Getpgrp(),
		marker:  []byte("\x00" + ScopeEnv + "=" + token + "."),
		adopted: map[int]bool{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	go r.run(sigs)
	return r, nil
}

func (r *reaper) run(sigs chan os.Signal) {
	defer close(r.done)
	defer signal.Stop(sigs)
	tick := time.NewTicker(reapInterval)
	defer tick.Stop()
	for {
		r.reap()
		select {
		case <-r.stop:
			return
		case <-sigs:
		case <-tick.C:
		}
	}
}

// close stops the reaper goroutine after a last round.
func (r *reaper) close() {
	close(r.stop)
	<-r.done
	r.reap()
}

// reap reaps the zombies among rouse's adopted orphans and notes which of
// its live children carry this Guard's marker.
func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range scanProcs() {
		if p.ppid != r.self {
			continue
		}
		if p.state != 'Z' {
			// An app's leader carries the mark too, but os/exec reaps it.
			leader := p.sid == r.sid && p.pgrp == p.pid
			if !leader && !r.adopted[p.pid] && bytes.Contains(readEnviron(p.pid), r.marker) {
				r.adopted[p.pid] = true
			}
			continue
		}
		if r.adoptedZombie(p) {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(p.pid, &ws, unix.WNOHANG, nil)
			delete(r.adopted, p.pid)
		}
	}
}

// adoptedZombie tells a dead orphan rouse adopted from a child it started
// itself and os/exec will reap. rouse starts its children in its own
// session (it never uses Setsid), each in its own group (Setpgid) or in
// rouse's, so a child in another session, or in a group that is neither
// its own nor rouse's, was adopted; and one seen alive with the marker was.
// r.mu must be held.
func (r *reaper) adoptedZombie(p procInfo) bool {
	return r.adopted[p.pid] || p.sid != r.sid || p.pgrp != p.pid && p.pgrp != r.pgid
}

// sweep SIGKILLs every process that carries marker in its environment
// ("ROUSE_SCOPE=VALUE") or is in process group pgid (0: none), their
// descendants and the sessions they lead, scanning again until a scan finds
// none (bounded by sweepTimeout). rouse itself is never killed.
func sweep(marker string, pgid int) {
	needle := []byte("\x00" + marker + "\x00")
	deadline := time.Now().Add(sweepTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	empty := 0
	for ; ; <-tick.C {
		victims := sweepSet(scanProcs(), func(p procInfo) bool {
			return pgid > 1 && p.pgrp == pgid || bytes.Contains(readEnviron(p.pid), needle)
		})
		for _, pid := range victims {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		// Two empty scans in a row: a process in the middle of an exec
		// shows an empty environ for a moment.
		if len(victims) == 0 {
			empty++
		} else {
			empty = 0
		}
		if empty == 2 || time.Now().After(deadline) {
			return
		}
	}
}

// sweepSet returns the live processes for which seed holds, with their
// descendants and the members of the sessions they lead.
func sweepSet(procs []procInfo, seed func(procInfo) bool) []int {
	self := os.Getpid()
	in := map[int]bool{}
	for _, p := range procs {
		if p.state != 'Z' && p.pid != self && p.pid > 1 && seed(p) {
			in[p.pid] = true
		}
	}
	for grew := len(in) > 0; grew; {
		grew = false
		for _, p := range procs {
			if in[p.pid] || p.state == 'Z' || p.pid == self || p.pid <= 1 {
				continue
			}
			if in[p.ppid] || in[p.sid] && p.sid != self {
				in[p.pid] = true
				grew = true
			}
		}
	}
	out := make([]int, 0, len(in))
	for pid := range in {
		out = append(out, pid)
	}
	return out
}

// procInfo is what the fallback needs of one process.
type procInfo struct {
	pid, ppid, pgrp, sid int
	state                byte
	rss                  uint64 // resident pages
}

// scanProcs reads /proc/*/stat of every process.
func scanProcs() []procInfo {
	dir, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := dir.Readdirnames(-1)
	dir.Close()
	procs := make([]procInfo, 0, len(names))
	for _, name := range names {
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		data, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		st, ok := parseStat(data)
		if !ok {
			continue
		}
		pid, _ := strconv.Atoi(name)
		procs = append(procs, procInfo{pid: pid, ppid: st.ppid, pgrp: st.pgrp, sid: st.session, state: st.state, rss: st.rss})
	}
	return procs
}

// readEnviron returns the environment pid started with, each entry between
// NUL bytes; empty for a zombie or a process rouse may not read.
func readEnviron(pid int) []byte {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil || len(data) == 0 {
		return nil
	}
	return append([]byte{0}, data...)
}
