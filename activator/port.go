package activator

import "github.com/rouse-dev/rouse/listeners"

// maxPortMoves bounds the failed starts in a row that are put down to
// another process holding the app's port, and so start again at once on
// another port: past it, they are failures with back-off like any other.
const maxPortMoves = 3

// portTaken reports whether the port rouse picked for the app is held by
// another process: it is checked before each start (no process of the
// app runs then) and after a failed one (once it is gone), so whatever
// holds it is not the app. Whether something binds the port says it,
// whatever the app printed.
func (a *App) portTaken(cfg *Config) bool {
	return cfg.PickedPort != 0 && a.movePort != nil && !listeners.TCPPortFree(cfg.PickedPort)
}

// movedOff counts a failed start put down to a taken port; false when
// there were too many in a row for that.
func (a *App) movedOff() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.portMoves++
	return a.portMoves <= maxPortMoves
}

// movePortOff gives the app another picked port, as the next start's
// settings, because cfg's is taken; it returns the settings to start with.
func (a *App) movePortOff(cfg *Config, when string) *Config {
	moved, err := a.movePort(cfg.Name, cfg.PickedPort)
	if err != nil {
		a.log.Warn("port held by another process, and no other port to move to", "port", cfg.PickedPort, "when", when, "err", err)
		return cfg
	}
	a.storeConfig(moved)
	a.log.Warn("port held by another process: moved to another", "port", cfg.PickedPort, "new_port", moved.PickedPort, "when", when)
	return a.config()
}
