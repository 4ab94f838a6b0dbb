package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/activator/httpfront"
	"github.com/rouse-dev/rouse/listeners"
	"github.com/rouse-dev/rouse/procman"
)

// daemon is the running rouse as a reload sees it: the config in force,
// the apps and fronts built from it, and which listeners each owns.
type daemon struct {
	file    string
	log     *slog.Logger
	guard   *procman.Guard
	sockets *listeners.Set
	notify  *notifier
	access  *accessLog
	watch   *activator.ListenWatch // wakes idle tcp apps, shared by all

	mu     sync.Mutex // one build or reload at a time
	cfg    *Config
	sup    *activator.Supervisor
	owned  map[string]addrListeners        // tcp-like app -> its listeners by address
	fronts map[string]*httpfront.HTTPFront // http address -> its front
}

// build binds (or takes from systemd) every listen address of cfg and
// builds the apps: a tcp app owns its listeners; the http apps of one
// address share an HTTPFront that routes by Host. On error, everything
// built so far is closed.
func (d *daemon) build(cfg *Config) (*activator.Supervisor, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.owned = make(map[string]addrListeners)
	d.fronts = make(map[string]*httpfront.HTTPFront)
	var apps []*activator.App
	undo := func() {
		for _, f := range d.fronts {
			f.Close()
		}
		for _, a := range apps {
			a.Close(context.Background())
		}
	}
	for _, ac := range cfg.Apps {
		a, err := d.newApp(ac, nil)
		if err != nil {
			undo()
			return nil, err
		}
		apps = append(apps, a)
	}
	byName := make(map[string]*activator.App)
	for _, a := range apps {
		byName[a.Name()] = a
	}
	for _, g := range httpAddrs(cfg) {
		f, err := d.newFront(g.addr, pick(byName, g.apps))
		if err != nil {
			undo()
			return nil, err
		}
		d.fronts[g.addr.String()] = f
	}
	limits := capacity(cfg)
	limits.Logger = d.log
	sup, err := activator.NewSupervisor(apps, supervised(d.fronts), limits)
	if err != nil {
		undo()
		return nil, err
	}
	d.cfg, d.sup = cfg, sup
	return sup, nil
}

func capacity(cfg *Config) activator.Capacity {
	return activator.Capacity{MaxRunning: cfg.MaxRunning, MemoryBudget: cfg.MemoryBudget, MaxStarting: cfg.MaxStarting}
}

// addrListeners are the listeners of a tcp-like app by address: a slice,
// as an app has one address or a few (a map of one costs 350 bytes).
type addrListeners []addrListener

type addrListener struct {
	addr string
	lns  []net.Listener
}

func (al addrListeners) find(addr string) ([]net.Listener, bool) {
	for _, x := range al {
		if x.addr == addr {
			return x.lns, true
		}
	}
	return nil, false
}

func (al *addrListeners) add(addr string, lns []net.Listener) {
	*al = append(*al, addrListener{addr, lns})
}

// newApp builds one app; a non-http app gets its listeners, reusing those
// in keep and binding the others.
func (d *daemon) newApp(ac App, keep addrListeners) (*activator.App, error) {
	var own []net.Listener
	var byAddr addrListeners
	if ac.Mode != activator.ModeHTTP {
		for _, addr := range ac.Addrs {
			lns, ok := keep.find(addr.String())
			if !ok {
				var err error
				if lns, err = d.sockets.Listen(addr, listeners.Options{Keep: true}); err != nil {
					closeAll(own)
					return nil, fmt.Errorf("app %s: %w", ac.Name, err)
				}
			}
			byAddr.add(addr.String(), lns)
			own = append(own, lns...)
		}
	}
	a, err := activator.New(ac.Config, own, activator.Options{Logger: d.log, Guard: d.guard, ExecShim: []string{"/proc/self/exe", execVerb},
		MovePort: d.movePort, AccessLog: d.access.Log, ListenWatch: d.watch})
	if err != nil {
		closeAll(own)
		return nil, err
	}
	warnLimits(d.log, d.guard, ac)
	if ac.Mode != activator.ModeHTTP {
		d.owned[ac.Name] = byAddr
	}
	return a, nil
}

func (d *daemon) newFront(addr listeners.Addr, apps []*activator.App) (*httpfront.HTTPFront, error) {
	// The front closes idle connections itself (as nginx, no SO_KEEPALIVE).
	lns, err := d.sockets.Listen(addr, listeners.Options{NoKeepAlive: true, Keep: true})
	if err != nil {
		return nil, err
	}
	if len(lns) != 1 {
		closeAll(lns)
		return nil, fmt.Errorf("listen %s: %d sockets for one http address; name each systemd socket differently", addr, len(lns))
	}
	f, err := httpfront.NewHTTPFront(lns[0], apps, d.log)
	if err != nil {
		closeAll(lns)
		return nil, err
	}
	f.SetAccessLog(d.access.Log)
	return f, nil
}

// movePort is every app's activator.Options.MovePort: it picks the app
// another port, which the config in force records, so that a reload keeps
// it as it keeps any picked port.
func (d *daemon) movePort(name string, taken int) (activator.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := slices.IndexFunc(d.cfg.Apps, func(a App) bool { return a.Name == name })
	if i < 0 || d.cfg.Apps[i].PickedPort == 0 {
		return activator.Config{}, fmt.Errorf("app %s has no picked port", name)
	}
	used := d.cfg.takenPorts()
	used[taken] = true
	p, err := d.cfg.picker.pick(func(p int) bool { return used[p] })
	if err != nil {
		return activator.Config{}, err
	}
	d.cfg.Apps[i] = d.cfg.Apps[i].withPort(p)
	return d.cfg.Apps[i].Config, nil
}

// reload reads the config again and applies it: unchanged apps keep their
// process and sockets; changed apps take the new settings (a changed
// command restarts the app once its connections are done); removed apps
// stop accepting and drain; new apps and addresses get their sockets. A
// config with any problem changes nothing.
func (d *daemon) reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.notify.send("RELOADING=1\nSTATUS=reloading " + d.file)
	defer func() { d.notify.send("READY=1\nSTATUS=" + d.sup.Summary().String()) }()

	ports := make(map[string]int, len(d.cfg.Apps))
	for _, a := range d.cfg.Apps {
		ports[a.Name] = a.Port
	}
	cfg, err := Load(d.file, LoadOptions{Euid: os.Geteuid(), Ports: ports})
	if err != nil {
		d.log.Error("reload rejected; the running config stays", "file", d.file, "err", err)
		d.access.reopen() // a rotated log is let go of all the same
		return err
	}
	for _, w := range cfg.Warnings {
		d.log.Warn("reload: config", "warning", w.String())
	}
	if err := checkReloadable(d.cfg, cfg); err != nil {
		d.log.Error("reload rejected; the running config stays", "file", d.file, "err", err)
		d.access.reopen()
		return err
	}
	// Before the apps: a new one logs from its first request.
	if err := d.access.configure(cfg); err != nil {
		d.log.Error("reload", "err", err)
	}
	old := make(map[string]App, len(d.cfg.Apps))
	for _, a := range d.cfg.Apps {
		old[a.Name] = a
	}
	drain := timeoutCtx(cfg.DrainTimeout)

	var added, changed, removed []string
	var addedApps []*activator.App
	seen := make(map[string]bool)
	for _, ac := range cfg.Apps {
		seen[ac.Name] = true
		prev, ok := old[ac.Name]
		switch {
		case !ok:
			a, err := d.newApp(ac, nil)
			if err != nil {
				// Sockets could not be had: the apps added so far stay.
				d.log.Error("reload: app not added", "app", ac.Name, "err", err)
				continue
			}
			addedApps = append(addedApps, a)
			added = append(added, ac.Name)
		case !reflect.DeepEqual(prev.Config, ac.Config) || !reflect.DeepEqual(prev.Addrs, ac.Addrs):
			a, _ := d.sup.App(ac.Name)
			if ac.Mode != activator.ModeHTTP && !reflect.DeepEqual(prev.Addrs, ac.Addrs) {
				d.relisten(a, ac)
			}
			why := a.Reconfigure(ac.Config)
			changed = append(changed, ac.Name+" ("+why+")")
		}
	}
	// Fronts first, so that no front routes to an app being removed.
	if err := d.refront(cfg, addedApps); err != nil {
		d.log.Error("reload: http addresses", "err", err)
	}
	for _, a := range addedApps {
		if err := d.sup.Add(a); err != nil {
			d.log.Error("reload: app not added", "app", a.Name(), "err", err)
		}
	}
	for name := range old {
		if seen[name] {
			continue
		}
		if a, ok := d.sup.App(name); ok {
			d.sup.Retire(drain, a, ownSockets(old[name].Addrs...))
			delete(d.owned, name)
			removed = append(removed, name)
		}
	}
	if was, now := capacity(d.cfg), capacity(cfg); was != now {
		d.sup.SetCapacity(now)
		d.log.Info("reload: capacity limits changed", "max_running", now.MaxRunning, "max_starting", now.MaxStarting, "memory_budget", now.MemoryBudget)
	}
	forgetGone(d.sockets, d.cfg, cfg)
	d.cfg = cfg
	d.log.Info("reloaded", "file", d.file, "added", strings.Join(added, ","), "changed", strings.Join(changed, ","), "removed", strings.Join(removed, ","))
	return nil
}

// forgetGone drops the sockets of the addresses old listens on and cfg
// does not from systemd's file descriptor store, so that a restart does not
// bring them back: a socket systemd keeps listening would queue
// connections nobody accepts, where a closed one refuses them.
func forgetGone(sockets *listeners.Set, old, cfg *Config) {
	keep := make(map[listeners.Addr]bool)
	for _, a := range cfg.Apps {
		for _, addr := range a.Addrs {
			keep[addr] = true
		}
	}
	for _, a := range old.Apps {
		for _, addr := range a.Addrs {
			if !keep[addr] {
				sockets.Forget(addr)
				keep[addr] = true // once
			}
		}
	}
}

// checkReloadable refuses what a reload cannot change in place.
func checkReloadable(old, cfg *Config) error {
	var errs []error
	if cfg.Control != old.Control {
		errs = append(errs, fmt.Errorf("rouse.control: changing the control socket needs a restart of rouse"))
	}
	prev := make(map[string]App)
	for _, a := range old.Apps {
		prev[a.Name] = a
	}
	for _, a := range cfg.Apps {
		p, ok := prev[a.Name]
		switch {
		case !ok:
		case p.Mode != a.Mode:
			errs = append(errs, fmt.Errorf("%s: apps.%s.mode: a reload cannot change an app's mode (%s to %s); rename the app, or restart rouse", a.Source, a.Name, p.Mode, a.Mode))
		case a.Mode == activator.ModeHandoff && !reflect.DeepEqual(p.Addrs, a.Addrs):
			errs = append(errs, fmt.Errorf("%s: apps.%s.listen: a reload cannot change the sockets handed to a handoff app; rename the app, or restart rouse", a.Source, a.Name))
		}
	}
	return errors.Join(errs...)
}

// relisten gives a tcp-like app the listeners of its new addresses,
// keeping those it has for addresses that stay.
func (d *daemon) relisten(a *activator.App, ac App) {
	keep := d.owned[ac.Name]
	var lns []net.Listener
	var byAddr addrListeners
	for _, addr := range ac.Addrs {
		got, ok := keep.find(addr.String())
		if !ok {
			var err error
			if got, err = d.sockets.Listen(addr, listeners.Options{Keep: true}); err != nil {
				d.log.Error("reload: listen", "app", ac.Name, "addr", addr.String(), "err", err)
				continue
			}
		}
		byAddr.add(addr.String(), got)
		lns = append(lns, got...)
	}
	d.owned[ac.Name] = byAddr
	a.SetListeners(lns)
}

// refront makes the fronts match cfg's http apps: new addresses get a
// front, gone ones are retired, the others get their new route table.
func (d *daemon) refront(cfg *Config, added []*activator.App) error {
	byName := make(map[string]*activator.App)
	for _, a := range d.sup.Apps() {
		byName[a.Name()] = a
	}
	for _, a := range added {
		byName[a.Name()] = a
	}
	var errs []error
	want := make(map[string]bool)
	for _, g := range httpAddrs(cfg) {
		key := g.addr.String()
		want[key] = true
		apps := pick(byName, g.apps)
		if f, ok := d.fronts[key]; ok {
			if err := f.SetApps(apps); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		f, err := d.newFront(g.addr, apps)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.fronts[key] = f
		d.sup.AddFront(f)
	}
	drain := timeoutCtx(cfg.DrainTimeout)
	for key, f := range d.fronts {
		if !want[key] {
			addr, _ := listeners.ParseAddr(key)
			d.sup.RetireFront(drain, f, ownSockets(addr))
			delete(d.fronts, key)
		}
	}
	return errors.Join(errs...)
}

// ownSockets reports whether rouse bound every one of addrs itself: none
// is a socket systemd holds and would pass to the next rouse, so their
// queued connections are to be taken before they close for good.
func ownSockets(addrs ...listeners.Addr) bool {
	for _, a := range addrs {
		if a.Kind == listeners.Systemd {
			return false
		}
	}
	return true
}

// httpGroup is one http listen address and the apps on it, in config order.
type httpGroup struct {
	addr listeners.Addr
	apps []string
}

func httpAddrs(cfg *Config) []httpGroup {
	var groups []httpGroup
	index := make(map[string]int)
	for _, ac := range cfg.Apps {
		if ac.Mode != activator.ModeHTTP {
			continue
		}
		for _, addr := range ac.Addrs {
			i, ok := index[addr.String()]
			if !ok {
				i = len(groups)
				index[addr.String()] = i
				groups = append(groups, httpGroup{addr: addr})
			}
			groups[i].apps = append(groups[i].apps, ac.Name)
		}
	}
	return groups
}

func pick(byName map[string]*activator.App, names []string) []*activator.App {
	out := make([]*activator.App, 0, len(names))
	for _, n := range names {
		if a, ok := byName[n]; ok {
			out = append(out, a)
		}
	}
	return out
}

// supervised is the fronts as the Supervisor runs them.
func supervised(fronts map[string]*httpfront.HTTPFront) []activator.Front {
	var l []activator.Front
	for _, f := range fronts {
		l = append(l, f)
	}
	return l
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// timeoutCtx is a context that ends after d, for work that outlives the
// function that starts it (apps draining after a reload).
func timeoutCtx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	time.AfterFunc(d, cancel)
	return ctx
}
