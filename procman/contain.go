package procman

import (
	"errors"
	"strconv"
	"syscall"
)

// Limits caps the resources of one process and everything it starts, in
// its cgroup. A field is applied only where its controller is enabled (see
// Guard.Controllers); zero means no limit.
type Limits struct {
	MemoryMax int64   // bytes: memory.max
	CPUMax    float64 // CPUs: 0.5 is half of one, 2 two: cpu.max
	TasksMax  int     // processes and threads: pids.max
}

// scope keeps one app process and everything it starts together: a cgroup
// of its own, or on the fallback a ScopeEnv mark. The nil *scope (no Guard)
// contains nothing.
type scope struct {
	guard  *Guard
	cg     *appCgroup // nil on the fallback
	marker string     // "ROUSE_SCOPE=VALUE" on the fallback
}

// newScope creates the scope of one process of app name. With a cgroup it
// also returns an fd of the cgroup's directory to spawn into (closed by
// the caller), else -1.
func (g *Guard) newScope(name string, lim Limits) (*scope, int, error) {
	if g == nil {
		return nil, -1, nil
	}
	if g.tree == nil {
		s := &scope{guard: g, marker: ScopeEnv + "=" + g.token + "." + strconv.FormatUint(g.seq.Add(1), 10)}
		g.send('+', "="+s.marker)
		return s, -1, nil
	}
	cg, fd, err := g.tree.newApp(name, lim)
	if err != nil {
		return nil, -1, err
	}
	g.send('+', cg.dir)
	return &scope{guard: g, cg: cg}, fd, nil
}

// env is what the process's environment gets: the mark on the fallback.
func (s *scope) env() []string {
	if s == nil || s.marker == "" {
		return nil
	}
	return []string{s.marker}
}

// spawned moves a process started without CLONE_INTO_CGROUP into the
// scope's cgroup; it is called while the process is held stopped at its
// exec (startStopped), so nothing it forks stays outside.
func (s *scope) spawned(pid int, joinCgroup bool) error {
	if s == nil || s.cg == nil || !joinCgroup {
		return nil
	}
	return s.cg.join(pid)
}

// kill SIGKILLs everything of the scope but its reserved leader's group
// (which the caller kills): the cgroup, or on the fallback whatever carries
// the mark, with its descendants and sessions.
func (s *scope) kill(pgid int) {
	switch {
	case s == nil:
	case s.cg != nil:
		s.cg.kill()
	default:
		sweep(s.marker, pgid)
	}
}

// release removes the cgroup (killing what is left) and tells the guard
// the scope is gone. On the fallback the reaper reaps what sweep killed.
func (s *scope) release() error {
	if s == nil {
		return nil
	}
	if s.cg == nil {
		s.guard.send('-', "="+s.marker)
		return nil
	}
	err := s.cg.remove()
	if err == nil {
		s.guard.send('-', s.cg.dir)
	}
	return err
}

// retryOutsideCgroup tells a spawn error that CLONE_INTO_CGROUP causes (no
// clone3, a kernel before 5.7, or a seccomp filter that refuses it).
func retryOutsideCgroup(err error) bool {
	return errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EINVAL)
}
