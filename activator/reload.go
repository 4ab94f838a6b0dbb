package activator

import (
	"net"
	"slices"
	"syscall"
	"time"

	"github.com/rouse-dev/rouse/listeners"
)

// stopAccepting closes the app's listeners and marks it draining: what it
// accepted is still served. Close does this first; a reload that removes
// the app calls it at once, so the address is free before Close returns.
// With quiesce, each listener first completes no new connection and hands
// over those the kernel queued (listeners.Quiesce): the app is removed for
// good, and closing would reset them.
func (a *App) stopAccepting(quiesce bool) {
	a.mu.Lock()
	a.draining = true
	lns := a.lns
	a.mu.Unlock()
	for _, ln := range lns {
		if sc, ok := ln.(syscall.Conn); ok && quiesce {
			if err := listeners.Quiesce(sc, quiesceWait); err != nil {
				a.log.Warn("removing the app: its queued connections may be reset", "addr", ln.Addr().String(), "err", err)
			}
		}
		a.unwatchTCP(ln)
		ln.Close()
	}
}

// quiesceWait bounds how long a removed listener's queued connections are
// waited for.
const quiesceWait = time.Second

// Reconfigure gives the app new settings (same name, same mode). They
// apply from its next start, except that a new command (argv, shell, dir,
// env, user) or upstream restarts a running app gracefully: what was
// handed to it finishes, new connections are held meanwhile, then it stops
// and starts again with the new settings. Nothing is refused. It returns
// what it did, for the log.
func (a *App) Reconfigure(cfg Config) string {
	old, upstream := a.storeConfig(cfg)
	o, n := old.Process, a.config().Process
	restart := upstream || o.Shell != n.Shell || o.Dir != n.Dir || o.User != n.User ||
		!slices.Equal(o.Argv, n.Argv) || !slices.Equal(o.Env, n.Env)

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state.settled() && a.active == 0 && a.queued == 0 {
		a.armIdleLocked() // with the new idle_timeout (a frozen app's counts from now)
	}
	if !restart || a.inst == nil || (!a.state.settled() && a.state != Starting) {
		return "new settings from the next start"
	}
	a.inst.retiring = true
	if a.state.settled() && a.active == 0 {
		a.stopLocked("reload", nil)
	}
	return "restarting with the new command once its connections are done"
}

// storeConfig makes cfg the app's settings, with new connections for an
// http app whose upstream changed; it returns the old settings and
// whether the upstream changed.
func (a *App) storeConfig(cfg Config) (old *Config, upstream bool) {
	cfg.Process.Notify = cfg.Ready.Kind == "notify"
	old = a.config()
	a.cfgp.Store(&cfg)
	upstream = old.UpstreamNetwork != cfg.UpstreamNetwork || old.UpstreamAddress != cfg.UpstreamAddress
	if cfg.Mode == ModeHTTP && upstream {
		a.renewUpstream(&cfg)
	}
	return old, upstream
}

// retireIfDoneLocked stops a retiring instance once nothing is handed to
// it; call with mu held when active may have dropped to 0.
func (a *App) retireIfDoneLocked() {
	if a.inst != nil && a.inst.retiring && a.state == Ready && a.active == 0 {
		a.stopLocked("reload", nil)
	}
}

// SetListeners replaces the listeners of a tcp or inetd app: those not in
// lns are closed, new ones are accepted on. A reload uses it when the
// listen addresses changed.
func (a *App) SetListeners(lns []net.Listener) {
	a.mu.Lock()
	old := a.lns
	a.lns = lns
	draining := a.draining
	a.mu.Unlock()
	for _, ln := range old {
		if !slices.Contains(lns, ln) {
			a.unwatchTCP(ln)
			ln.Close()
		}
	}
	if draining {
		return
	}
	var added []net.Listener
	for _, ln := range lns {
		if !slices.Contains(old, ln) {
			added = append(added, ln)
		}
	}
	if a.config().Mode == ModeTCP {
		a.serveTCP(added)
		return
	}
	for _, ln := range added {
		a.wg.Add(1)
		go a.acceptLoop(ln)
	}
}
