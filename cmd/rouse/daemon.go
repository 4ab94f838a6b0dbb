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
	"path/filepath"
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
	log := newLogger(stderr, cfg.LogLevel)
	if err := serve(ctx, cfg, log, nil); err != nil {
		log.Error("rouse stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the daemon for cfg until ctx ends, then drains and stops every
// app. ready, when set, is called once every socket is bound.
func serve(ctx context.Context, cfg *Config, log *slog.Logger, ready func(*activator.Supervisor)) error {
	// First, before anything is spawned: the notifier takes NOTIFY_SOCKET
	// out of the environment the apps inherit.
	notify := newNotifier(log)
	defer notify.close()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find rouse's own executable: %w", err)
	}
	guard, err := procman.StartGuard([]string{self, guardVerb})
	if err != nil {
		return err
	}
	defer guard.Close()

	sockets := listeners.NewSet(log)
	sup, err := buildApps(cfg, sockets, log, guard)
	if err != nil {
		return err
	}
	sockets.CloseUnused()

	ctl, err := listenControl(sockets, cfg.Control)
	if err != nil {
		sup.Close(context.Background())
		return err
	}
	srv := &http.Server{Handler: controlHandler(sup), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ctl) }()

	sup.Serve()
	notify.send("READY=1\nSTATUS=" + sup.Summary().String())
	log.Info("rouse ready", "apps", len(cfg.Apps), "control", cfg.Control, "version", buildVersion(), "systemd_notify", notify.String())
	if ready != nil {
		ready(sup)
	}
	notifyCtx, stopNotify := context.WithCancel(ctx)
	notifyDone := make(chan struct{})
	go func() {
		defer close(notifyDone)
		notify.run(notifyCtx, sup)
	}()

	<-ctx.Done()
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

// buildApps binds (or takes from systemd) every listen address and builds
// the apps: a tcp app owns its listeners; http apps sharing an address are
// served by one HTTPFront that routes by Host. On error, everything built
// so far is closed.
func buildApps(cfg *Config, sockets *listeners.Set, log *slog.Logger, guard *procman.Guard) (*activator.Supervisor, error) {
	var (
		apps    []*activator.App
		fronts  []*activator.HTTPFront
		open    []net.Listener // not yet owned by an app or a front
		byAddr  = make(map[string][]*activator.App)
		addrs   []listeners.Addr
		failure error
	)
	defer func() {
		if failure == nil {
			return
		}
		for _, ln := range open {
			ln.Close()
		}
		for _, f := range fronts {
			f.Close()
		}
		for _, a := range apps {
			a.Close(context.Background())
		}
	}()
	for _, ac := range cfg.Apps {
		var own []net.Listener
		if ac.Mode != activator.ModeHTTP {
			for _, addr := range ac.Addrs {
				lns, err := sockets.Listen(addr, listeners.Options{})
				if err != nil {
					failure = fmt.Errorf("app %s: %w", ac.Name, err)
					open = append(open, own...)
					return nil, failure
				}
				own = append(own, lns...)
			}
		}
		a, err := activator.New(ac.Config, own, activator.Options{Logger: log, Guard: guard})
		if err != nil {
			failure = err
			open = append(open, own...)
			return nil, failure
		}
		apps = append(apps, a)
		if ac.Mode == activator.ModeHTTP {
			for _, addr := range ac.Addrs {
				key := addr.String()
				if _, seen := byAddr[key]; !seen {
					addrs = append(addrs, addr)
				}
				byAddr[key] = append(byAddr[key], a)
			}
		}
	}
	for _, addr := range addrs {
		lns, err := sockets.Listen(addr, listeners.Options{})
		if err != nil {
			failure = err
			return nil, failure
		}
		for i, ln := range lns {
			f, err := activator.NewHTTPFront(ln, byAddr[addr.String()], log)
			if err != nil {
				failure = err
				open = append(open, lns[i:]...)
				return nil, failure
			}
			fronts = append(fronts, f)
		}
	}
	sup, err := activator.NewSupervisor(apps, fronts)
	if err != nil {
		failure = err
		return nil, failure
	}
	return sup, nil
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
