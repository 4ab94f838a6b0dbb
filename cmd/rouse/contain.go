package main

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/procman"
)

// markInheritedFDs makes every file descriptor rouse inherited close-on-exec,
// so that what whoever started rouse left open (a terminal's, a deploy
// script's, a leaked socket) never reaches an app. Kept as they are: stdio
// and the sockets systemd passed to rouse (LISTEN_FDS), which the listeners
// package takes over. Apps get their sockets explicitly (ExtraFiles).
func markInheritedFDs(getenv func(string) string) error {
	keep := 3
	if pid, _ := strconv.Atoi(getenv("LISTEN_PID")); pid == os.Getpid() {
		n, _ := strconv.Atoi(getenv("LISTEN_FDS"))
		keep += max(n, 0)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list inherited fds: %w", err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < keep {
			continue
		}
		// EBADF: the fd of the ReadDir above, closed since.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return fmt.Errorf("fd %d: close-on-exec: %w", fd, err)
		}
	}
	return nil
}

// startGuard starts the guard with the containment cfg asks for and says
// which one rouse got.
func startGuard(self string, cfg *Config, log *slog.Logger) (*procman.Guard, error) {
	g, err := procman.StartGuard([]string{self, guardVerb}, procman.GuardOptions{Containment: cfg.Containment})
	if err != nil {
		return nil, err
	}
	if dir := g.Cgroup(); dir != "" {
		log.Info("apps run in cgroups of their own", "cgroup", dir, "controllers", g.Controllers())
	} else {
		log.Info("apps contained by rouse as child subreaper: no cgroup v2 subtree rouse may manage, or containment = \"subreaper\"")
	}
	return g, nil
}

// warnLimits logs the limits of app that cannot be applied because their
// cgroup controller is not there. They are warnings rather than config
// errors: the same file may run under systemd (controllers delegated) and
// elsewhere, and the app works either way, just without the cap.
func warnLimits(log *slog.Logger, g *procman.Guard, app App) {
	lim := app.Process.Limits
	set := map[string]string{}
	if lim.MemoryMax > 0 {
		set["memory_max"] = "memory"
	}
	if lim.CPUMax > 0 {
		set["cpu_max"] = "cpu"
	}
	if lim.TasksMax > 0 {
		set["tasks_max"] = "pids"
	}
	have := g.Controllers()
	for _, key := range sortedKeys(set) {
		if c := set[key]; !slices.Contains(have, c) {
			log.Warn("limit not applied: no cgroup controller for it", "app", app.Name, "key", key, "controller", c, "source", app.Source, "cgroup", g.Cgroup())
		}
	}
}
