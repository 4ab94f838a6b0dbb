package procman

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// freeze.go: a process that is not needed for a while is frozen rather
// than stopped: it keeps its memory and sockets and takes no CPU, and
// thawing it takes a system call. With a cgroup the whole cgroup is frozen
// (cgroup.freeze), whatever the app started in it; without one, its
// process group gets SIGSTOP and SIGCONT. A process may notice the
// fallback (a SIGCHLD to its parent, a waitpid with WUNTRACED), never the
// cgroup freezer.

// frozenPoll is how often WaitFrozen looks whether the freeze took effect.
const frozenPoll = time.Millisecond

// Freeze freezes the process and, with a cgroup, everything in it; it
// returns once the freeze is asked, not done (see WaitFrozen). It never
// waits for the process, and is cheap enough to call under a caller's
// lock. Freezing a frozen process does nothing; once the process exited it
// returns an error wrapping ErrExited.
func (p *Process) Freeze() error {
	return p.setFrozen(true)
}

// Thaw lets a frozen process run again, at once; thawing a process that
// is not frozen does nothing. Like Freeze it never waits.
func (p *Process) Thaw() error {
	return p.setFrozen(false)
}

// Frozen reports whether the process was frozen and not thawed since.
func (p *Process) Frozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

func (p *Process) setFrozen(frozen bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return fmt.Errorf("freeze %s pid %d: %w", p.name, p.pid, ErrExited)
	}
	if p.frozen == frozen {
		return nil
	}
	if err := p.freezeLocked(frozen); err != nil {
		return fmt.Errorf("freeze %s pid %d: %w", p.name, p.pid, err)
	}
	p.frozen = frozen
	return nil
}

// freezeLocked asks the cgroup, or the group's processes, to freeze or
// thaw; p.mu must be held.
func (p *Process) freezeLocked(frozen bool) error {
	if p.scope != nil && p.scope.cg != nil {
		v := "0"
		if frozen {
			v = "1"
		}
		return writeCgroup(p.scope.cg.dir, "cgroup.freeze", v)
	}
	sig := unix.SIGCONT
	if frozen {
		sig = unix.SIGSTOP
	}
	return unix.Kill(-p.pid, sig)
}

// thawForStopLocked thaws a frozen process so that it receives the signal
// about to be sent (a stop signal waits while the process is frozen);
// p.mu must be held.
func (p *Process) thawForStopLocked() {
	if p.frozen && !p.reaped {
		_ = p.freezeLocked(false)
		p.frozen = false
	}
}

// WaitFrozen waits until the freeze Freeze asked for took effect: every
// process of the cgroup is frozen (cgroup.events), or on the fallback
// every live process of the group is stopped. It returns early, with an
// error, when the process was thawed or exited meanwhile, or ctx ended.
func (p *Process) WaitFrozen(ctx context.Context) error {
	tick := time.NewTicker(frozenPoll)
	defer tick.Stop()
	for {
		p.mu.Lock()
		frozen, reaped := p.frozen, p.reaped
		p.mu.Unlock()
		switch {
		case reaped:
			return fmt.Errorf("freeze %s pid %d: %w", p.name, p.pid, ErrExited)
		case !frozen:
			return fmt.Errorf("freeze %s pid %d: thawed meanwhile", p.name, p.pid)
		case p.freezeDone():
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("freeze %s pid %d: %w", p.name, p.pid, ctx.Err())
		case <-tick.C:
		}
	}
}

// freezeDone reports whether the freeze took effect.
func (p *Process) freezeDone() bool {
	if p.scope != nil && p.scope.cg != nil {
		frozen, _ := cgroupFrozen(p.scope.cg.dir)
		return frozen
	}
	for _, q := range scanProcs() {
		// T: stopped by a signal; t: stopped while traced; Z: gone.
		if q.pgrp == p.pid && q.state != 'T' && q.state != 't' && q.state != 'Z' {
			return false
		}
	}
	return true
}
