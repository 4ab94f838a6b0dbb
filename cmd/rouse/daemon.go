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
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if err := serve(ctx, cfg, log, nil); err != nil {
		log.Error("rouse stopped", "err", err)
		return 1
	}
	return 0
}

// serve runs the daemon for cfg until ctx ends, then drains and stops every
// app. ready, when set, is called once every socket is bound.
func serve(ctx context.Context, cfg *Config, log *slog.Logger, ready func(*activator.Supervisor)) error {
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
	var apps []*activator.App
	closeAll := func() {
		for _, a := range apps {
			a.Close(context.Background())
		}
	}
	for _, ac := range cfg.Apps {
		lns, err := listen(sockets, ac)
		if err != nil {
			closeAll()
			return err
		}
		a, err := activator.New(ac.Config, lns, activator.Options{Logger: log, Guard: guard})
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			closeAll()
			return err
		}
		apps = append(apps, a)
	}
	sockets.CloseUnused()
	sup, err := activator.NewSupervisor(apps...)
	if err != nil {
		closeAll()
		return err
	}

	ctl, err := listenControl(sockets, cfg.Control)
	if err != nil {
		closeAll()
		return err
	}
	srv := &http.Server{Handler: controlHandler(sup), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(ctl) }()

	sup.Serve()
	log.Info("rouse ready", "apps", len(apps), "control", cfg.Control, "version", buildVersion())
	if ready != nil {
		ready(sup)
	}

	<-ctx.Done()
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

func listen(sockets *listeners.Set, ac App) ([]net.Listener, error) {
	var lns []net.Listener
	for _, addr := range ac.Addrs {
		l, err := sockets.Listen(addr, listeners.Options{})
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			return nil, fmt.Errorf("app %s: %w", ac.Name, err)
		}
		lns = append(lns, l...)
	}
	return lns, nil
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
