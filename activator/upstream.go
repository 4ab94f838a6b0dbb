package activator

import "sync/atomic"

// Upstream is what an HTTP front keeps of an http app between requests:
// its connections to the app's process. The app does not know what they
// are; it says when they must go. Both methods are called with the app's
// lock held, and must not block on anything but closing connections.
type Upstream interface {
	// DropIdle closes the kept connections that serve no request: the
	// process stops, exited or froze, and one kept would hold up its
	// graceful stop or carry a request across the freeze.
	DropIdle()
	// Retire drops every connection, the busy ones once they are done,
	// and keeps nothing more: a reload changed where the app listens.
	Retire()
}

// upstreamSlot is an http app's Upstream and how to make another when a
// reload changes the app's address.
type upstreamSlot struct {
	up    atomic.Pointer[upstreamBox]
	newUp atomic.Pointer[func(*Config, *dialGate) Upstream]
}

type upstreamBox struct{ Upstream }

// attachUpstream gives an http app the front's way to keep connections to
// it, unless it has one (several fronts share an app's).
func (a *App) attachUpstream(newUp func(*Config, *dialGate) Upstream) {
	if a.upstream.newUp.CompareAndSwap(nil, &newUp) {
		a.upstream.up.Store(&upstreamBox{newUp(a.config(), a.gate)})
	}
}

// currentUpstream is the app's Upstream; nil before a front attached one.
func (a *App) currentUpstream() Upstream {
	if b := a.upstream.up.Load(); b != nil {
		return b.Upstream
	}
	return nil
}

// dropIdleConns tells the front that kept connections to the process must
// go (see Upstream.DropIdle).
func (a *App) dropIdleConns() {
	if up := a.currentUpstream(); up != nil {
		up.DropIdle()
	}
}

// renewUpstream replaces the app's Upstream after a reload changed cfg's
// address (or response timeout), retiring the old one.
func (a *App) renewUpstream(cfg *Config) {
	newUp := a.upstream.newUp.Load()
	if newUp == nil {
		return
	}
	if prev := a.upstream.up.Swap(&upstreamBox{(*newUp)(cfg, a.gate)}); prev != nil {
		prev.Retire()
	}
}
