package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// harness holds what every section shares: the temporary directory, the
// rouse binary built once, the tools found and the report being written.
type harness struct {
	o      *options
	log    io.Writer
	dir    string
	tools  tools
	rouse  string // rouse built into dir; also the Go backend (rouse __backend)
	self   string // this program: the naive proxy and the SIGPIPE wrapper
	script string // report.lua written into dir
	rep    *report
}

func newHarness(ctx context.Context, o *options, log io.Writer) (*harness, error) {
	dir, err := os.MkdirTemp("", "rouse-bench-")
	if err != nil {
		return nil, err
	}
	// nginx workers run as nobody when the harness is root: they must be
	// able to read the files served and the configs.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	h := &harness{o: o, log: log, dir: dir, rep: &report{}}
	if err := h.setup(ctx); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) setup(ctx context.Context) error {
	h.tools = findTools()
	for _, m := range h.tools.missing {
		h.logf("MISSING: %s", m)
	}
	if len(h.tools.missing) > 0 {
		h.logf("install them with `make deps` (as root), or apt-get install wrk nginx-light systemd")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	h.self = self
	h.script = filepath.Join(h.dir, "report.lua")
	if err := os.WriteFile(h.script, []byte(wrkScript), 0o644); err != nil {
		return err
	}
	if err := h.raiseNofile(); err != nil {
		return err
	}
	h.rouse = filepath.Join(h.dir, "rouse")
	if h.o.rouseBin != "" {
		// Copied, so that the report's paths and perf's symbols are the
		// same as for a built one.
		b, err := os.ReadFile(h.o.rouseBin)
		if err != nil {
			return err
		}
		if err := os.WriteFile(h.rouse, b, 0o755); err != nil {
			return err
		}
		h.rep.build = "given with -rouse " + h.o.rouseBin
		return nil
	}
	// Build rouse once, with symbols (for perf) and the version stamped
	// as `make build` does.
	version := "devel"
	if out, err := command(ctx, []string{"git", "describe", "--tags", "--always", "--dirty"}); err == nil {
		version = strings.TrimSpace(out)
	}
	h.logf("building rouse (%s) into %s", version, h.dir)
	build := []string{"go", "build", "-trimpath", "-ldflags", "-X main.version=" + version, "-o", h.rouse, "github.com/rouse-dev/rouse/cmd/rouse"}
	// Static, as packaging/build-deb.sh builds it: a cgo build also maps
	// libc, about 1 MiB more in each of rouse and its guard.
	if out, err := command(ctx, build, "CGO_ENABLED=0"); err != nil {
		return fmt.Errorf("build rouse: %w\n%s", err, out)
	}
	h.rep.build = "CGO_ENABLED=0 " + strings.Join(build, " ")
	return nil
}

// raiseNofile lifts the soft limit on open files to the hard one: the
// density run holds a listener per app, and wrk, rouse and nginx inherit it.
func (h *harness) raiseNofile() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	need := uint64(1024)
	if h.o.want("density") {
		need += uint64(h.o.densityApps * 2)
	}
	if h.o.want("http") {
		need = max(need, uint64(h.o.idleConns+1024))
	}
	if h.o.want("burst") {
		need = max(need, uint64(4*h.o.burstN+1024)) // client, rouse's two ends, the app
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
		}
	}
	h.rep.nofile = lim.Cur
	if lim.Cur < need {
		return fmt.Errorf("open files limit %d is below the %d this run needs (-density-apps %d, -idle-conns %d): raise ulimit -Hn", lim.Cur, need, h.o.densityApps, h.o.idleConns)
	}
	return nil
}

func (h *harness) logf(format string, a ...any) {
	fmt.Fprintf(h.log, "bench: "+format+"\n", a...)
}

// close removes the temporary directory, unless -keep.
func (h *harness) close() {
	if h.o.keep {
		h.logf("kept %s", h.dir)
		return
	}
	os.RemoveAll(h.dir)
}

// cleanup stops the processes of a section and reports any group that
// survived (there should be none).
func (h *harness) cleanup(ps *procs) {
	for _, a := range ps.stopAll() {
		h.logf("LEFTOVER process group after stop: %s", a)
		h.rep.leftovers = append(h.rep.leftovers, a)
	}
}

// run runs the sections asked for and returns the report.
func (h *harness) run(ctx context.Context) (string, error) {
	r := h.rep
	r.started = time.Now()
	r.args = h.o.args
	r.machine = machine()
	r.versions = h.tools.versions(ctx, h.rouse)
	r.loadStart = loadavg()
	r.missing = h.tools.missing
	r.opts = h.o

	type section struct {
		name string
		run  func(context.Context) error
	}
	var secs []section
	if h.o.want("tcp") || h.o.want("http") || h.o.want("handoff") {
		secs = append(secs, section{"throughput", h.throughput})
	}
	if h.o.want("cold") {
		secs = append(secs, section{"cold start", h.coldStart}, section{"late backend", h.lateBackend})
	}
	if h.o.want("thaw") {
		secs = append(secs, section{"freeze and thaw", h.thaw}, section{"frozen apps under a budget", h.thawFleet})
	}
	if h.o.want("burst") {
		secs = append(secs, section{"burst", h.burst})
	}
	if h.o.want("density") {
		secs = append(secs, section{"density", h.density})
	}
	for _, s := range secs {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		h.logf("== %s", s.name)
		t0 := time.Now()
		if err := s.run(ctx); err != nil {
			if ctx.Err() != nil {
				return "", fmt.Errorf("interrupted during %s: %w", s.name, ctx.Err())
			}
			var skip skipError
			if errors.As(err, &skip) {
				h.logf("%s skipped: %s", s.name, skip.why)
				r.skipped = append(r.skipped, fmt.Sprintf("%s: %s", s.name, skip.why))
				continue
			}
			return "", fmt.Errorf("%s: %w", s.name, err)
		}
		h.logf("%s took %s", s.name, time.Since(t0).Round(time.Second))
	}
	r.finished = time.Now()
	r.loadEnd = loadavg()
	return r.render(h.dir, h.rouse, h.self), nil
}

// skipError marks a section that could not run on this machine (a tool is
// missing); the report says so and the run goes on.
type skipError struct{ why string }

func (e skipError) Error() string { return "skipped: " + e.why }
