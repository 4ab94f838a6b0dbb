package activator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rouse-dev/rouse/procman"
)

// App runs one configured app: it accepts on the app's listeners, starts the
// process on demand, hands connections to it and stops it when idle.
//
// All mutable state is guarded by mu, and every change of state closes and
// replaces the changed channel, which is how held connections wait. The lock
// is never held across I/O, a dial, a spawn or a wait: the process of each
// start is owned by exactly one goroutine (run), which does those outside it.
type App struct {
	log   *slog.Logger
	guard *procman.Guard
	lns   []net.Listener
	cfgp  atomic.Pointer[Config] // replaced whole by Reconfigure; read with config()
	probe procman.Probe          // set by the mode (handoff); else derived from the config at each start
	now   func() time.Time
	gate  *DialGate // paces new connections to the process (http, tcp)
	// upstream: http mode, the front's connections to the process.
	upstream upstreamSlot
	// removed: a reload took the app out of the config (it drains).
	removed atomic.Bool
	// pending counts the connections and requests going through their
	// attempts (proxy, connect), held or between two of them.
	pending atomic.Int64

	shim     []string     // handoff and inetd modes: Options.ExecShim
	handoff  *handoff     // handoff mode: the sockets handed to the app
	watch    *ListenWatch // tcp mode: wakes the app when a connection waits on an idle listener
	ownWatch bool         // watch is the app's own: Close closes it

	movePort  func(name string, taken int) (Config, error) // Options.MovePort
	accessLog func(AccessRecord)                           // Options.AccessLog

	metrics *metrics
	pool    *pool         // shared capacity; nil when no limit is set
	rssSeen atomic.Uint64 // the largest memory sampled of its last run: what a start will reserve (capacity.go)

	wg sync.WaitGroup // every goroutine the app starts

	mu           sync.Mutex
	state        State
	changed      chan struct{}
	inst         *instance // the current process, nil when idle or in back-off
	draining     bool      // Close began: no new connections, held ones are still served
	closing      bool      // the drain is over: nothing more is served
	active       int       // connections handed to the app (status: conns)
	queued       int       // connections waiting for ready or a free slot
	conns        map[net.Conn]struct{}
	idleSince    time.Time
	idleTimer    *time.Timer
	backoffTimer *time.Timer
	backoffUntil time.Time
	consecutive  int         // failures in a row, for the back-off
	fails        []time.Time // refused dials while ready, within FailTimeout
	starts       int
	failures     int
	lastStart    time.Duration
	lastErr      string
	lastTail     []string  // the last stderr lines of the process that ran last
	lastUsed     time.Time // when the last connection ended, for LRU
	crashed      bool      // the back-off follows a crash of a ready app, not a failed start
	asked        bool      // Start was called and waits for the pool to grant a start
	refusals     int       // starts the pool refused (capacity.go): a waiter that saw fewer gets refusal
	refusal      error
	portMoves    int            // failed starts in a row put down to another process holding the port (port.go)
	tcpLns       []*tcpListener // tcp mode: the listeners and whether they are accepted on (tcp.go)
}

// instance is one start of the app's process. Its fields other than gen,
// ctx and stop are written under App.mu.
type instance struct {
	gen      int
	ctx      context.Context // cancelled to ask run to stop the process
	stop     context.CancelFunc
	proc     *procman.Process
	readyAt  time.Time
	why      string                 // why it was asked to stop, for the log
	failure  error                  // set when it is stopped because of failures
	conns    map[io.Closer]struct{} // both ends of every connection handed to this process
	pooled   bool                   // holds a run slot of the pool
	booting  bool                   // holds a start slot of the pool
	retiring bool                   // a reload changed the command: hand it nothing new, stop it when done
	rssPeak  uint64                 // the largest RSS sampled of this process
	reserve  reservation            // what its start reserved in memory_budget (capacity.go)
	noFreeze bool                   // freezing it failed: it is stopped after idle_timeout instead (freeze.go)
}

// Options are the app's collaborators, shared by all apps of a daemon.
type Options struct {
	Logger *slog.Logger   // nil: slog.Default()
	Guard  *procman.Guard // nil: no guard process (tests)
	// ExecShim is the argv that runs ExecMain, e.g. rouse's hidden verb
	// ["/proc/self/exe", "__exec"]; handoff and inetd apps need it.
	ExecShim []string
	// MovePort gives the app called name, whose Config.PickedPort taken
	// is held by another process, the config it has with another picked
	// port ({port} and $PORT substituted anew). nil: ports never move. It
	// is called with no lock of the app held.
	MovePort func(name string, taken int) (Config, error)
	// AccessLog takes the access record of each request (http) or
	// connection (tcp, inetd) of an app whose Config.AccessLog is set. It
	// is called on the serving paths, the event loops included: it must
	// not block, and must copy what it keeps of the record's slices. nil:
	// no access log.
	AccessLog func(AccessRecord)
	// ListenWatch, shared by the tcp apps of a daemon, wakes an idle app
	// when a connection waits. nil: each tcp app has one of its own.
	ListenWatch *ListenWatch
}

// New returns an app that serves on lns once Serve is called. It takes
// ownership of the listeners: Close closes them.
func New(cfg Config, lns []net.Listener, opts Options) (*App, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("app %s: %w", cfg.Name, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &App{
		log:     log.With("app", cfg.Name),
		guard:   opts.Guard,
		lns:     lns,
		now:     time.Now,
		changed: make(chan struct{}),
		conns:   make(map[net.Conn]struct{}),
		metrics: newMetrics(),
		gate:    newDialGate(),
	}
	a.movePort, a.accessLog, a.watch = opts.MovePort, opts.AccessLog, opts.ListenWatch
	cfg.Process.Notify = cfg.Ready.Kind == "notify" // readiness is the app's READY=1
	a.cfgp.Store(&cfg)
	if err := a.setupShimmed(opts.ExecShim); err != nil {
		return nil, fmt.Errorf("app %s: %w", cfg.Name, err)
	}
	return a, nil
}

func (c *Config) check() error {
	switch c.Mode {
	case ModeTCP, ModeHTTP, ModeHandoff, ModeInetd:
	default:
		return fmt.Errorf("mode %q is not supported by this version of rouse", c.Mode)
	}
	switch c.Ready.Kind {
	case "tcp", "http", "notify":
	case "exec":
		if c.Ready.Command == "" {
			return errors.New(`ready = "exec": no command`)
		}
	default:
		return fmt.Errorf("ready %q is not supported by this version of rouse", c.Ready.Kind)
	}
	if c.Mode == ModeInetd && c.FreezeAfter > 0 {
		return errors.New("freeze_after: not in inetd mode (one process per connection)")
	}
	if c.StartTimeout <= 0 || c.QueueTimeout <= 0 || c.RetryTries < 1 || c.BackoffMax <= 0 {
		return errors.New("start_timeout, queue_timeout, backoff_max and retry_tries must be set")
	}
	return nil
}

// Name is the app's name.
func (a *App) Name() string { return a.config().Name }

// config returns the app's settings; a reload may replace them between two
// calls, so a function that needs several fields to agree reads it once.
func (a *App) config() *Config { return a.cfgp.Load() }

// readiness is how a start of the app with cfg, as process p, learns it
// is ready.
func (a *App) readiness(cfg *Config, p *procman.Process) procman.Probe {
	switch {
	case a.probe != nil:
		return a.probe
	case cfg.Ready.Kind == "exec":
		return procman.ExecProbe(p, cfg.Ready.Command, func(line string) { a.log.Debug("ready probe", "pid", p.Pid(), "out", line) })
	case cfg.Ready.Kind == "http":
		return procman.HTTPProbe(cfg.UpstreamNetwork, cfg.UpstreamAddress, cfg.Ready.Path)
	case cfg.Ready.Kind == "notify":
		return nil
	}
	return procman.TCPProbe(cfg.UpstreamNetwork, cfg.UpstreamAddress)
}

// Serve starts accepting on the app's listeners and returns at once; a
// keep_warm app is started now. An http app has no listeners of its own:
// an HTTPFront accepts for it and calls ServeHTTP.
func (a *App) Serve() {
	if a.config().KeepWarm {
		a.mu.Lock()
		if a.state == Idle && !a.closing {
			a.startLocked("keep_warm")
		}
		a.mu.Unlock()
	}
	switch a.config().Mode {
	case ModeTCP:
		a.serveTCP(a.lns)
	case ModeHandoff:
		a.serveHandoff()
	case ModeInetd:
		a.serveInetd()
	}
}

// broadcast wakes every waiter; call with mu held.
func (a *App) broadcast() {
	close(a.changed)
	a.changed = make(chan struct{})
}

func (a *App) setState(s State) {
	if a.state != s {
		a.state = s
		a.broadcast()
		a.dozeLocked()
	}
}

// startLocked starts the app, or, when the pool has no room now, queues it
// there and leaves it Idle with its connections held; call with mu held,
// in Idle.
func (a *App) startLocked(why string) {
	if a.pool != nil && !a.pool.admit(a) {
		a.log.Debug("waiting for capacity", "why", why)
		return
	}
	a.spawnLocked(why, a.pool.reserve(a))
}

// grant is the pool's answer to admit: a run and a start slot are taken for
// the app, which reserves r (what the pool decided on). It reports whether
// the app used them.
func (a *App) grant(r reservation) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.wantsStartLocked() {
		return false
	}
	a.spawnLocked("capacity freed", r)
	return true
}

// spawnLocked starts a new instance that reserves r in the memory budget;
// call with mu held, in Idle, with pool slots taken if there is a pool.
func (a *App) spawnLocked(why string, r reservation) {
	ctx, stop := context.WithCancel(context.Background())
	a.asked = false
	a.starts++
	inst := &instance{gen: a.starts, ctx: ctx, stop: stop, conns: make(map[io.Closer]struct{}),
		pooled: a.pool != nil, booting: a.pool != nil, reserve: r}
	a.inst = inst
	a.fails = a.fails[:0]
	a.setState(Starting)
	a.log.Info("starting", "state", Starting, "why", why)
	a.wg.Add(1)
	go a.run(inst)
}

// stopLocked asks the current instance to stop; call with mu held.
func (a *App) stopLocked(why string, failure error) {
	if a.inst == nil || (!a.state.settled() && a.state != Starting) {
		return
	}
	// A frozen process is thawed by its Stop, so that it gets the signal.
	a.inst.why, a.inst.failure = why, failure
	a.setState(Stopping)
	a.inst.stop()
	// Pooled connections to the app, some dialed and never used, would
	// hold up its graceful shutdown (a Go app waits for them).
	a.dropIdleConns()
}

// run owns one process from spawn to reaping.
func (a *App) run(inst *instance) {
	defer a.wg.Done()
	defer inst.stop()
	cfg := a.config() // this start runs with the settings in force now
	if a.portTaken(cfg) {
		cfg = a.movePortOff(cfg, "before start")
	}
	spec := cfg.Process
	spec.Name = cfg.Name
	spec.Guard = a.guard
	if spec.Output == nil {
		spec.Output = func(stream, line string) { a.log.Info(line, "stream", stream) }
	}
	t0 := a.now()
	p, err := a.spawn(spec)
	if err != nil {
		a.finish(inst, err, FailSpawn)
		return
	}
	a.mu.Lock()
	inst.proc = p
	a.mu.Unlock()

	err = procman.WaitReady(inst.ctx, p, a.readiness(cfg, p), cfg.StartTimeout)
	if err != nil {
		if inst.ctx.Err() != nil { // asked to stop while starting
			a.stopProcess(p)
			a.finish(inst, nil, "")
			return
		}
		p.Kill()
		<-p.Done()
		if a.portTaken(cfg) && a.movedOff() {
			// Not the app's failure: start again at once, elsewhere.
			a.movePortOff(cfg, "start failed")
			a.finish(inst, nil, "")
			return
		}
		kind := FailNotReady
		if errors.Is(err, procman.ErrExited) {
			kind = FailExit
		}
		a.finish(inst, fmt.Errorf("start: %w", err), kind)
		return
	}
	a.ready(inst, a.now().Sub(t0))
	unwatch := a.watchConns(inst) // handoff: the app's connections, sampled

	select {
	case <-p.Done():
		unwatch()
		a.finish(inst, exitError(p), FailCrash)
	case <-inst.ctx.Done():
		unwatch()
		a.stopProcess(p)
		a.finish(inst, nil, "")
	}
}

func (a *App) stopProcess(p *procman.Process) {
	// Stop is bounded by the app's stop_timeout, after which it SIGKILLs.
	if err := p.Stop(context.Background()); err != nil {
		a.log.Warn("stop", "pid", p.Pid(), "err", err)
	}
}

// exitError describes an exit rouse did not ask for.
func exitError(p *procman.Process) error {
	err := p.Err()
	if err == nil {
		err = errors.New("exit status 0")
	}
	if tail := p.StderrTail(1); len(tail) > 0 {
		return fmt.Errorf("exited unexpectedly: %w (last stderr: %s)", err, tail[0])
	}
	return fmt.Errorf("exited unexpectedly: %w", err)
}

func (a *App) ready(inst *instance, took time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inst != inst || a.state != Starting {
		return
	}
	inst.readyAt = a.now()
	a.portMoves = 0
	a.lastStart = took
	if inst.booting {
		inst.booting = false
		a.pool.started()
	}
	if inst.retiring && a.active == 0 {
		a.stopLocked("reload", nil)
		return
	}
	a.metrics.started(took)
	a.gate.reset()
	a.setState(Ready)
	a.log.Info("ready", "state", Ready, "pid", inst.proc.Pid(), "took", took.Round(time.Microsecond))
	if a.active == 0 && a.queued == 0 {
		a.armIdleLocked()
	}
}

// finish records the end of an instance: failure (of kind) -> back-off,
// else idle, and starts again at once when connections are waiting.
func (a *App) finish(inst *instance, err error, kind string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inst != inst {
		return
	}
	a.inst = nil
	if inst.booting {
		a.pool.started()
	}
	if inst.pooled {
		defer a.pool.stopped(a) // after the state below is set
	}
	// A process that is gone has no live connections: cut both ends of
	// those it had, or a client that never closes would hold them forever.
	for c := range inst.conns {
		c.Close()
	}
	// Keep-alive connections to a process that is gone are dead.
	a.dropIdleConns()
	if err == nil && inst.failure != nil {
		err, kind = inst.failure, FailTooMany
	}
	p := inst.proc
	pid := 0
	if p != nil {
		pid = p.Pid()
		a.lastTail = p.StderrTail(stderrTailLines)
	}
	// An app may exit by itself when it has nothing to do (as systemd
	// socket-activated services do); that is not a failure. With a
	// connection or request waiting for it (held, or between two
	// attempts), it is: that start served nothing.
	if err != nil && inst.why == "" && p != nil && p.Err() == nil && a.state == Ready && a.active == 0 && a.queued == 0 &&
		a.pending.Load() == 0 {
		a.log.Info("exited by itself while idle", "pid", pid)
		err = nil
	}
	if a.idleTimer != nil {
		a.idleTimer.Stop()
	}
	if !inst.readyAt.IsZero() && a.now().Sub(inst.readyAt) >= backoffReset {
		a.consecutive = 0 // it ran long enough to count as healthy
	}
	if err != nil {
		a.metrics.failure(kind)
		a.crashed = !inst.readyAt.IsZero()
		a.failLocked(err, pid)
		return
	}
	if inst.why != "" {
		a.metrics.stop(inst.why)
		a.log.Info("stopped", "state", Idle, "pid", pid, "why", inst.why)
	}
	a.setState(Idle)
	if (a.queued > 0 || a.config().KeepWarm) && !a.closing {
		a.startLocked("connections waiting")
	}
}

func (a *App) failLocked(err error, pid int) {
	now := a.now()
	a.failures++
	a.consecutive++
	delay := backoffDelay(a.consecutive, a.config().BackoffMax)
	a.backoffUntil = now.Add(delay)
	a.lastErr = err.Error()
	a.setState(Backoff)
	a.log.Warn("failed", "state", Backoff, "pid", pid, "err", err, "retry_in", delay, "until", a.backoffUntil.Format(time.TimeOnly), "failures_in_a_row", a.consecutive)
	if a.closing {
		return
	}
	a.backoffTimer = time.AfterFunc(delay, a.backoffOver)
}

func (a *App) backoffOver() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != Backoff || a.now().Before(a.backoffUntil) {
		return
	}
	a.endBackoffLocked()
	if (a.queued > 0 || a.config().KeepWarm) && !a.closing {
		a.startLocked("back-off over")
	}
}

// endBackoffLocked leaves back-off for Idle: its time is up, or Start or
// Stop cut it short. Call with mu held, in Backoff.
func (a *App) endBackoffLocked() {
	if a.backoffTimer != nil {
		a.backoffTimer.Stop()
	}
	a.setState(Idle)
}

// armIdleLocked (re)starts the idle countdown; call with mu held when the
// last connection went away, or the app was frozen.
func (a *App) armIdleLocked() {
	a.idleSince = a.now()
	d, _ := a.idleStepLocked(a.config())
	if d <= 0 {
		return
	}
	if a.idleTimer == nil {
		a.idleTimer = time.AfterFunc(d, a.idleCheck)
		return
	}
	a.idleTimer.Reset(d)
}

// idleStepLocked is how long the app may stay idle in its state, and
// whether what follows is a freeze (else a stop); 0 when nothing follows.
// A ready app is frozen after freeze_after, if set, else stopped after
// idle_timeout; a frozen one is stopped idle_timeout after its freeze. A
// keep_warm app is never stopped for idleness, but it may be frozen.
func (a *App) idleStepLocked(cfg *Config) (d time.Duration, freeze bool) {
	switch a.state {
	case Ready:
		if cfg.FreezeAfter > 0 && !a.inst.retiring && !a.inst.noFreeze {
			return cfg.FreezeAfter, true
		}
		fallthrough
	case Frozen:
		if !cfg.KeepWarm && cfg.IdleTimeout > 0 {
			return cfg.IdleTimeout, false
		}
	}
	return 0, false
}

func (a *App) idleCheck() {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg := a.config() // a reload may have changed the timeouts since the timer was armed
	if a.inst == nil || a.active > 0 || a.queued > 0 || a.closing {
		return
	}
	d, freeze := a.idleStepLocked(cfg)
	if d <= 0 {
		return
	}
	if left := d - a.now().Sub(a.idleSince); left > 0 {
		a.idleTimer.Reset(left)
		return
	}
	if freeze {
		a.freezeLocked()
		return
	}
	a.stopLocked("idle", nil)
}

// tryAcquire takes a connection slot if the app is ready and has one free,
// without waiting; nil otherwise.
func (a *App) tryAcquire() *instance {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state == Frozen && !a.closing {
		a.thawLocked("connection")
	}
	if a.closing || a.state != Ready || a.inst.retiring {
		return nil
	}
	if limit := a.config().MaxConns; limit > 0 && a.active >= limit {
		return nil
	}
	a.active++
	return a.inst
}

// acquire waits until the app is ready and has a free connection slot, then
// takes the slot (active++). deadline bounds the wait; retrying allows
// waiting out a back-off that ends before the deadline.
func (a *App) acquire(ctx context.Context, deadline time.Time, retrying bool) (*instance, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := heldWait{a: a, arrived: a.now()}
	defer w.done()
	for {
		if a.closing {
			return nil, ErrClosing
		}
		switch a.state {
		case Ready:
			if !a.inst.retiring && (a.config().MaxConns <= 0 || a.active < a.config().MaxConns) {
				a.active++
				if w.waiting {
					a.metrics.waited(a.now().Sub(w.arrived))
				}
				return a.inst, nil
			}
		case Frozen:
			if a.thawLocked("connection") {
				continue
			}
		case Idle:
			if !w.waiting && a.queueFullLocked() {
				return nil, ErrQueueFull
			}
			a.startLocked("connection")
		case Backoff:
			if !a.now().Before(a.backoffUntil) {
				// Over, though its timer has not run yet: start now.
				a.endBackoffLocked()
				a.startLocked("back-off over")
				break
			}
			// A crash of an app that was serving, or a request being
			// retried, waits out a back-off that ends in time; a start
			// that keeps failing is answered at once.
			if !(retrying || a.crashed) || !a.backoffUntil.Before(deadline) {
				return nil, &BackoffError{App: a.config().Name, Until: a.backoffUntil, Last: a.lastErr}
			}
		}
		if err := w.wait(ctx, deadline); err != nil {
			return nil, err
		}
	}
}

// heldWait is a connection held in the app's queue until it can be handed
// on: registered (queued) by its first wait, given up by done. Its methods
// are called with mu held.
type heldWait struct {
	a       *App
	arrived time.Time
	waiting bool
	timer   *time.Timer
	refSeen int // a.refusals when it began to wait
}

// wait holds the connection (ErrQueueFull when max_queued are held
// already) until the app's state changes, the deadline passes
// (ErrQueueTimeout) or ctx ends; it unlocks mu meanwhile. A start the
// pool refused meanwhile is the error (a *BudgetError).
func (w *heldWait) wait(ctx context.Context, deadline time.Time) error {
	a := w.a
	if !w.waiting {
		if a.queueFullLocked() {
			return ErrQueueFull
		}
		a.queued++
		w.waiting = true
		w.refSeen = a.refusals
	} else if a.refusals != w.refSeen {
		return a.refusal
	}
	if w.timer == nil {
		w.timer = time.NewTimer(deadline.Sub(a.now()))
	}
	ch := a.changed
	a.mu.Unlock()
	defer a.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-w.timer.C:
		return ErrQueueTimeout
	case <-ctx.Done():
		return ctx.Err()
	}
}

// done gives up the connection's place in the queue.
func (w *heldWait) done() {
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.waiting {
		w.a.queued--
		if w.a.draining {
			w.a.broadcast() // Close may be waiting for the queue to empty
		}
		if w.a.queued == 0 && w.a.pool != nil {
			w.a.pool.wake() // it may want a start no more
		}
	}
}

func (a *App) queueFullLocked() bool {
	return a.config().MaxQueued > 0 && a.queued >= a.config().MaxQueued
}

// forget unregisters connections registered with adopt.
func (a *App) forget(inst *instance, conns ...io.Closer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range conns {
		delete(inst.conns, c)
	}
}

// release gives back a slot taken by acquire, and forgets the connections
// that used it.
func (a *App) release(inst *instance, conns ...io.Closer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range conns {
		delete(inst.conns, c)
	}
	a.active--
	a.lastUsed = a.now()
	a.retireIfDoneLocked()
	if a.active == 0 && a.pool != nil {
		a.pool.idle()
	}
	if a.queued > 0 || (a.draining && a.active == 0) {
		a.broadcast() // a slot is free for a held connection, or Close may go on
	}
	if a.active == 0 && a.state == Ready && a.queued == 0 {
		a.armIdleLocked()
	}
}

// failed records evidence that inst's process is unhealthy (see blame): a
// connection it refused or did not accept in time. max_fails of them
// within fail_timeout restart the app.
func (a *App) failed(inst *instance, kind string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inst != inst || a.state != Ready {
		return
	}
	now := a.now()
	a.log.Debug("connection failed", "kind", kind, "err", err)
	a.metrics.failure(kind)
	if a.config().MaxFails <= 0 {
		return
	}
	keep := a.fails[:0]
	for _, t := range a.fails {
		if now.Sub(t) < a.config().FailTimeout {
			keep = append(keep, t)
		}
	}
	a.fails = append(keep, now)
	if len(a.fails) >= a.config().MaxFails {
		a.stopLocked("failures", fmt.Errorf("%d failures within %s, last: %w", len(a.fails), a.config().FailTimeout, err))
	}
}

// replaced reports whether inst is no longer the app's serving process:
// it stopped (failures restarted it, or it crashed) or is stopping.
func (a *App) replaced(inst *instance) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inst != inst || a.state != Ready
}

// retryPause is the wait before attempt try+1 after a failed one: 10 ms,
// doubling, at most 320 ms, so that an app that closed its listener is
// given the time to be restarted rather than spent in a few milliseconds.
func retryPause(try int) time.Duration {
	return 10 * time.Millisecond << min(max(try-1, 0), 5)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// adopt registers the ends of a connection handed to inst, so that they
// are cut when its process ends. It fails when the process is already gone.
func (a *App) adopt(inst *instance, conns ...io.Closer) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inst != inst || a.closing {
		return false
	}
	for _, c := range conns {
		inst.conns[c] = struct{}{}
	}
	return true
}

// track registers a client connection so that Close can cut it after the drain.
func (a *App) track(c net.Conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return false
	}
	a.conns[c] = struct{}{}
	return true
}

func (a *App) untrack(c net.Conn) {
	a.mu.Lock()
	delete(a.conns, c)
	a.dozeLocked()
	if a.draining {
		a.broadcast() // Close may be waiting for the accepted connections
	}
	a.mu.Unlock()
}

// Start starts the app if it is not running (a back-off is cut short) and
// waits until it is ready or failed.
func (a *App) Start(ctx context.Context) error {
	if a.config().Mode == ModeInetd {
		return a.inetdStart()
	}
	a.mu.Lock()
	if a.state == Backoff {
		a.endBackoffLocked()
	}
	refusals := a.refusals
	a.mu.Unlock()
	deadline := a.now().Add(a.config().StartTimeout + a.config().Process.StopTimeout + 10*time.Second)
	for {
		a.mu.Lock()
		if a.refusals != refusals {
			err := a.refusal
			a.mu.Unlock()
			return fmt.Errorf("start %s: %w", a.config().Name, err)
		}
		switch a.state {
		case Ready:
			a.mu.Unlock()
			return nil
		case Frozen:
			if a.thawLocked("asked") {
				a.mu.Unlock()
				return nil
			}
		case Idle:
			if a.closing {
				a.mu.Unlock()
				return ErrClosing
			}
			a.asked = true
			a.startLocked("asked")
		case Backoff:
			err := errors.New(a.lastErr)
			a.mu.Unlock()
			return fmt.Errorf("start %s: %w", a.config().Name, err)
		}
		ch := a.changed
		a.mu.Unlock()
		if err := waitChange(ctx, ch, deadline); err != nil {
			return fmt.Errorf("start %s: %w", a.config().Name, err)
		}
	}
}

// Stop stops the app's process (connections still open are cut by its
// exit) and waits until it is idle. A later connection starts it again.
func (a *App) Stop(ctx context.Context) error {
	if a.config().Mode == ModeInetd {
		return a.inetdStop(ctx)
	}
	deadline := a.now().Add(a.config().Process.StopTimeout + a.config().StartTimeout + 10*time.Second)
	for {
		a.mu.Lock()
		switch a.state {
		case Idle:
			a.mu.Unlock()
			return nil
		case Backoff:
			a.endBackoffLocked()
			a.mu.Unlock()
			return nil
		case Ready, Starting, Frozen:
			a.stopLocked("asked", nil)
		}
		ch := a.changed
		a.mu.Unlock()
		if err := waitChange(ctx, ch, deadline); err != nil {
			return fmt.Errorf("stop %s: %w", a.config().Name, err)
		}
	}
}

// Restart stops the app if it runs and starts it again.
func (a *App) Restart(ctx context.Context) error {
	if err := a.Stop(ctx); err != nil {
		return err
	}
	return a.Start(ctx)
}

func waitChange(ctx context.Context, ch <-chan struct{}, deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errors.New("timed out")
	}
}

// Close stops accepting (connections not accepted yet stay in the kernel's
// backlog, for the next rouse when systemd holds the sockets), serves the
// connections already accepted, held ones included, until they are done or
// ctx ends, cuts the rest, stops the process and returns when every
// goroutine of the app has exited.
func (a *App) Close(ctx context.Context) {
	a.stopAccepting(false)
	for {
		a.mu.Lock()
		n, ch := a.active+a.queued+len(a.conns), a.changed
		a.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ch:
			continue
		case <-ctx.Done():
		}
		break
	}

	a.mu.Lock()
	a.closing = true
	a.broadcast()
	if a.backoffTimer != nil {
		a.backoffTimer.Stop()
	}
	for c := range a.conns {
		c.Close()
	}
	a.stopLocked("shutdown", nil)
	if a.idleTimer != nil {
		a.idleTimer.Stop()
	}
	a.mu.Unlock()
	a.wg.Wait()
	if a.ownWatch {
		a.watch.Close()
	}
}

// describeErr turns a connection's error into a short reason for logs.
func describeErr(err error) string {
	var be *BackoffError
	switch {
	case errors.As(err, &be):
		return fmt.Sprintf("in back-off for %s", time.Until(be.Until).Round(time.Second))
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrQueueTimeout), errors.Is(err, ErrClosing):
		return err.Error()
	}
	return strings.TrimSpace(err.Error())
}

// evictable reports whether the pool may stop the app to make room, when
// it was last used and whether it is frozen.
func (a *App) evictable() (last time.Time, frozen bool, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.evictableLocked() {
		return time.Time{}, false, false
	}
	last = a.lastUsed
	if a.inst != nil && last.Before(a.inst.readyAt) {
		last = a.inst.readyAt
	}
	return last, a.state == Frozen, true
}

func (a *App) evictableLocked() bool {
	return a.state.settled() && a.active == 0 && a.queued == 0 && !a.config().KeepWarm && !a.draining
}

// stopFor stops the app for the pool if it is still evictable.
func (a *App) stopFor(why string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.evictableLocked() {
		return false
	}
	a.log.Info("stopping to make room", "why", why)
	a.stopLocked(why, nil)
	return true
}

// localError reports whether err is rouse running short of a resource
// rather than the app refusing or resetting.
func localError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
