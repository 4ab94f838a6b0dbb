package activator

// freeze.go: freeze_after puts a tier between ready and idle. An app idle
// that long is frozen (procman: its cgroup's freezer, else SIGSTOP to its
// group): it keeps its memory and sockets, takes no CPU, and the next
// connection thaws it in a system call instead of a boot. idle_timeout then
// counts from the freeze and stops it as it would a ready app.
//
// Both transitions are made under mu, like every change of state: asking
// the kernel to freeze or thaw never waits for the app, so that no
// connection can see a state that the process is not in, or about to be.
// A connection that arrives while the app freezes finds it Frozen and
// thaws it at once (acquire, tryAcquire); nothing is held for long and
// nothing is lost at either boundary. While it is frozen nothing of rouse
// reaches the process: no probe runs (there are only readiness probes,
// while starting), kept connections to it were closed by the freeze, and a
// handoff app's connections are not sampled (handoff.go), its sockets'
// arrivals thaw it. Stopping a frozen app thaws it first (procman.Stop).

// freezeLocked freezes the app's process; call with mu held, in Ready,
// with nothing in flight. An app that cannot be frozen stays ready and is
// stopped after idle_timeout instead.
func (a *App) freezeLocked() {
	p := a.inst.proc
	// The app's own timers jump at the thaw: a kept connection it would
	// close then must not carry a request meanwhile.
	a.dropIdleConns()
	if err := p.Freeze(); err != nil {
		a.log.Warn("cannot freeze: stopped after idle_timeout instead", "pid", p.Pid(), "err", err)
		a.inst.noFreeze = true
		a.armIdleLocked()
		return
	}
	a.metrics.froze()
	a.setState(Frozen)
	a.log.Info("frozen", "state", Frozen, "pid", p.Pid())
	a.armIdleLocked() // idle_timeout from now
}

// thawLocked thaws the frozen app for why; call with mu held, in Frozen.
// It reports whether the app is Ready again: it is not when its process
// exited meanwhile (run finishes that instance).
func (a *App) thawLocked(why string) bool {
	p := a.inst.proc
	if err := p.Thaw(); err != nil {
		a.log.Warn("cannot thaw", "pid", p.Pid(), "err", err)
		return false
	}
	a.metrics.thawed()
	a.setState(Ready)
	if a.pool != nil {
		a.pool.wake() // its memory may grow again: the budget is watched
	}
	a.log.Info("thawed", "state", Ready, "pid", p.Pid(), "why", why)
	a.armIdleLocked()
	return true
}
