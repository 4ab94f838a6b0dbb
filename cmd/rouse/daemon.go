package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/listeners"
	"github.com/rouse-dev/rouse/procman"
)

func cmdRun(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("rouse run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := configFlag(fs, getenv)
	if pos, err := parseFlags(fs, args); err != nil || len(pos) > 0 {
		return exitConfig
	}
	cfg, code := loadConfig(file(), stderr)
	if cfg == nil {
		return code
	}
	logs := newLogger(stderr, cfg.LogLevel)
	defer logs.Close()
	if err := serve(ctx, cfg, logs, nil); err != nil {
		logs.Logger().Error("rouse stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the daemon for cfg until ctx ends, then drains and stops every
// app. ready, when set, is called once every socket is bound.
func serve(ctx context.Context, cfg *Config, logs *logQueue, ready func(*activator.Supervisor)) error {
	log := logs.Logger()
	if err := markInheritedFDs(os.Getenv); err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w.String())
	}
	setProcs(cfg.Procs, os.Getenv("GOMAXPROCS") != "", log)
	stderr := logs.stderr
	if stderr == nil {
		stderr = io.Discard
	}
	access := newAccessLog(log, stderr)
	defer access.Close() // after the apps, which log until they are closed
	if err := access.configure(cfg); err != nil {
		return err
	}
	// First, before anything is spawned: the notifier takes NOTIFY_SOCKET
	// out of the environment the apps inherit.
	notify := newNotifier(log)
	defer notify.close()
	// Then the sockets systemd passed: taking them marks them close-on-exec.
	// Until then every process rouse spawns (the guard first) would inherit
	// them and keep them listening after rouse closed them.
	sockets := listeners.NewSet(log)
	if notify.conn != nil {
		// The sockets rouse binds outlive a restart in systemd's fd store.
		sockets.UseFDStore(notify.conn)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find rouse's own executable: %w", err)
	}
	guard, err := startGuard(self, cfg, log)
	if err != nil {
		return err
	}
	defer guard.Close()

	watch, err := activator.NewListenWatch()
	if err != nil {
		return err
	}
	defer watch.Close() // after the apps: every return below closes them first
	d := &daemon{file: cfg.File, log: log, guard: guard, sockets: sockets, notify: notify, access: access, watch: watch}
	sup, err := d.build(cfg)
	if err != nil {
		return err
	}
	sockets.CloseUnused()

	ctl, err := listenControl(sockets, cfg.Control)
	if err != nil {
		sup.Close(context.Background())
		return err
	}
	metrics := newMetricsHandler(sup, cfg.MemoryBudget, log, logs.Dropped, access.Dropped)
	stopMetrics, err := startMetrics(cfg.Metrics, metrics, newStatusPage(sup, cfg.MemoryBudget, log), log)
	if err != nil {
		ctl.Close()
		sup.Close(context.Background())
		return err
	}
	defer stopMetrics()
	srv := &http.Server{Handler: withMetrics(controlHandler(sup, d.reload), metrics), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	srvDone := make(chan error, 1)
	// Out of fds, the control socket waits as the apps' sockets do, with
	// one warning per interval rather than one per retry.
	go func() { srvDone <- srv.Serve(activator.PatientListener(ctl, log)) }()

	sup.Serve()
	notify.send("READY=1\nSTATUS=" + sup.Summary().String())
	log.Info("rouse ready", "apps", len(cfg.Apps), "control", cfg.Control, "version", buildVersion(), "systemd_notify", notify.String())
	// What start-up alone needed (parsing the config, building the apps)
	// stays out of rouse's memory from now on: its garbage, then its code.
	debug.FreeOSMemory()
	log.Debug("start-up pages released", "bytes", procman.ReleaseImage())
	if ready != nil {
		ready(sup)
	}
	notifyCtx, stopNotify := context.WithCancel(ctx)
	notifyDone := make(chan struct{})
	go func() {
		defer close(notifyDone)
		notify.run(notifyCtx, sup)
	}()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for ctx.Err() == nil {
		select {
		case <-hup:
			log.Info("SIGHUP: reloading", "file", cfg.File)
			d.reload() // logs what it did or why it refused
		case <-ctx.Done():
		}
	}
	stopNotify()
	<-notifyDone
	notify.send("STOPPING=1\nSTATUS=stopping: draining connections and stopping apps")
	log.Info("shutting down: draining connections and stopping apps", "drain_timeout", cfg.DrainTimeout)
	drain, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	sup.Close(drain)
	shutdownCtx, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	srv.Shutdown(shutdownCtx)
	if err := <-srvDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("control socket", "err", err)
	}
	log.Info("rouse stopped")
	return nil
}

// setProcs sets how many threads run rouse's Go code at once (GOMAXPROCS):
// n, or when n is 0 half the CPUs rouse may use, rounded up. rouse shares
// the machine with the apps it starts and usually with a web server in
// front; and measured on 2 cores (examples/bench, http mode), one thread
// served as many requests as two, with 15% less CPU per request and a
// p99 latency about half as long: fewer wake-ups of one thread by another.
// A GOMAXPROCS environment variable wins over both.
func setProcs(n int, fromEnv bool, log *slog.Logger) {
	if fromEnv {
		return
	}
	if n == 0 {
		n = (runtime.GOMAXPROCS(0) + 1) / 2
	}
	runtime.GOMAXPROCS(n)
	log.Debug("threads for Go code", "procs", n)
}

// listenControl binds the control socket, readable and writable by rouse's
// user and group only.
func listenControl(sockets *listeners.Set, path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	lns, err := sockets.Listen(listeners.Addr{Kind: listeners.Unix, Address: path}, listeners.Options{UnixMode: 0o660})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return lns[0], nil
}
