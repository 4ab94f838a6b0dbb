package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// options are the harness's flags.
type options struct {
	rounds         int
	duration       time.Duration
	warmup         time.Duration
	threads        int
	conns          int
	backend        string // go | nginx | auto
	nginxWorkers   string
	haproxyThreads int // 0: as many as rouse's default procs
	coldN          int
	thawN          int
	idleConns      int
	coldDelay      time.Duration
	burstN         int
	burstRounds    int
	densityApps    int
	densityIdle    time.Duration
	only           []string
	workloads      []string // of the tcp, http and handoff sections; nil: all
	perf           string   // auto | on | off
	out            string
	keep           bool
	rouseBin       string   // use this rouse instead of building one
	accessLog      bool     // rouse and the nginx proxy log every request to a file
	args           []string // as given, for the report
}

func (o *options) want(section string) bool { return slices.Contains(o.only, section) }

// haproxyNbthread is the HAProxy contender's nbthread: by default as many
// threads as rouse runs Go code on (its default procs, half the CPUs).
func (o *options) haproxyNbthread() int {
	if o.haproxyThreads > 0 {
		return o.haproxyThreads
	}
	return (runtime.NumCPU() + 1) / 2
}

var sections = []string{"tcp", "http", "handoff", "cold", "thaw", "burst", "density"}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	o := &options{args: args}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.rounds, "rounds", 5, "interleaved rounds per contender and workload")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "length of one wrk round (wrk -d)")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "unrecorded wrk run per contender before the rounds")
	fs.IntVar(&o.threads, "threads", 1, "wrk threads (-t)")
	fs.IntVar(&o.conns, "conns", 32, "wrk connections (-c)")
	fs.StringVar(&o.backend, "backend", "auto", "backend behind every contender: go (rouse __backend) | nginx (return 200) | auto (the faster)")
	fs.StringVar(&o.nginxWorkers, "nginx-workers", "auto", "worker_processes of the nginx proxy contender")
	fs.IntVar(&o.haproxyThreads, "haproxy-threads", 0, "nbthread of the HAProxy contender (0: as many as rouse's default procs, half the CPUs)")
	fs.IntVar(&o.idleConns, "idle-conns", 4000, "idle keep-alive connections held to each http proxy to measure their memory (0: none)")
	fs.IntVar(&o.coldN, "cold-n", 50, "cold starts per case")
	fs.IntVar(&o.thawN, "thaw-n", 20, "rounds of the thaw section (cold, thawed, warm request each; the app boots in 2 s)")
	fs.DurationVar(&o.coldDelay, "cold-delay", 500*time.Millisecond, "boot time of the late backend (proxyd vs rouse)")
	fs.IntVar(&o.burstN, "burst-n", 1000, "concurrent first requests of the burst section")
	fs.IntVar(&o.burstRounds, "burst-rounds", 3, "rounds of the burst section")
	fs.IntVar(&o.densityApps, "density-apps", 1000, "idle apps configured for the density run")
	fs.DurationVar(&o.densityIdle, "density-idle", time.Minute, "how long the density run stays idle to measure CPU")
	only := fs.String("only", strings.Join(sections, ","), "sections to run: "+strings.Join(sections, ","))
	wls := fs.String("workloads", "", "workloads of the tcp, http and handoff sections to run: some of "+strings.Join(workloadKeys(), ",")+" (default: all)")
	fs.StringVar(&o.perf, "perf", "auto", "profile rouse with perf in one extra round per workload: auto | on | off")
	fs.StringVar(&o.out, "out", "", "write the report to this file (default: stdout)")
	fs.BoolVar(&o.accessLog, "access-log", false, "rouse ([rouse].access_log) and the nginx proxy (buffered, as rouse's) write an access log file each")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs, logs)")
	fs.StringVar(&o.rouseBin, "rouse", "", "benchmark this rouse binary instead of building ./cmd/rouse (it must have the __backend verb)")
	quick := fs.Bool("quick", false, "short run: -rounds 2 -duration 2s -warmup 500ms -cold-n 10 -density-idle 5s -burst-rounds 1, unless given")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quickDefaults := map[string]string{"rounds": "2", "duration": "2s", "cold-n": "10", "thaw-n": "5", "density-idle": "5s", "burst-rounds": "1"}
		for name, v := range quickDefaults {
			if !set[name] {
				fs.Set(name, v)
			}
		}
	}
	for s := range strings.SplitSeq(*only, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(sections, s) {
			return nil, fmt.Errorf("-only: unknown section %q (want some of %s)", s, strings.Join(sections, ","))
		}
		o.only = append(o.only, s)
	}
	for k := range strings.SplitSeq(*wls, ",") {
		if k = strings.TrimSpace(k); k == "" {
			continue
		}
		if !slices.Contains(workloadKeys(), k) {
			return nil, fmt.Errorf("-workloads: unknown workload %q (want some of %s)", k, strings.Join(workloadKeys(), ","))
		}
		o.workloads = append(o.workloads, k)
	}
	if o.duration%time.Second != 0 || o.warmup%time.Second != 0 {
		return nil, errors.New("-duration and -warmup are whole seconds (wrk -d takes seconds); -warmup 0 skips the warm-up")
	}
	switch {
	case o.rounds < 1, o.duration < time.Second, o.threads < 1, o.conns < o.threads, o.coldN < 1, o.thawN < 1, o.densityApps < 1, o.idleConns < 0, o.burstN < 1, o.burstRounds < 1:
		return nil, errors.New("need -rounds >= 1, -duration >= 1s, -conns >= -threads >= 1, -cold-n >= 1, -density-apps >= 1, -idle-conns >= 0, -burst-n >= 1, -burst-rounds >= 1")
	}
	switch o.backend {
	case "go", "nginx", "auto":
	default:
		return nil, fmt.Errorf("-backend %q: want go, nginx or auto", o.backend)
	}
	switch o.perf {
	case "auto", "on", "off":
	default:
		return nil, fmt.Errorf("-perf %q: want auto, on or off", o.perf)
	}
	return o, nil
}

// helperMain runs the hidden verbs the harness re-executes itself with;
// ok is false for anything else.
func helperMain(args []string, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	switch args[0] {
	case naiveProxyVerb:
		return naiveProxyMain(args[1:], stderr), true
	case goHTTPProxyVerb:
		return goHTTPProxyMain(args[1:], stderr), true
	case noSigpipeVerb:
		return noSigpipeMain(args[1:], stderr), true
	}
	return 0, false
}

// run is the whole harness; main only adds the process around it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	h, err := newHarness(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	rep, err := h.run(ctx)
	h.close()
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if o.out == "" {
		fmt.Fprint(stdout, rep)
		return 0
	}
	// Write next to the target and rename, so that a failed or interrupted
	// run never leaves a half-written report behind.
	tmp := o.out + ".tmp"
	if err := os.WriteFile(tmp, []byte(rep), 0o644); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if err := os.Rename(tmp, o.out); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	abs, _ := filepath.Abs(o.out)
	fmt.Fprintln(stderr, "bench: report written to", abs)
	return 0
}
