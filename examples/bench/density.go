package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// densityResult is one rouse daemon with n configured idle tcp apps.
type densityResult struct {
	apps       int
	startup    time.Duration // exec -> the control socket answers
	statusTook time.Duration // one GET /v1/status (`rouse status --json`) of every app
	rssStart   int64         // VmRSS once the control socket answers
	rssEnd     int64         // VmRSS after the idle period
	hwm        int64         // VmHWM: the peak
	threads    string
	fds        int
	guardRSS   int64         // the guard process rouse runs beside itself
	mem        memUse        // rouse after the idle period, from smaps_rollup
	guardMem   memUse        // the guard's
	idle       time.Duration // length of the idle period
	cpuTicks   time.Duration // utime+stime over it (10 ms resolution)
	cpuSched   time.Duration // time on CPU over it from schedstat (ns resolution)
	stopTook   time.Duration // SIGTERM -> exit
}

// density runs rouse with 1 and with -density-apps idle tcp apps (one
// loopback listener each, their ports picked by rouse) side by side, and
// measures start-up, memory and the CPU used while nothing happens.
func (h *harness) density(ctx context.Context) error {
	ps := &procs{}
	defer h.cleanup(ps)
	sizes := []int{1}
	if h.o.densityApps > 1 {
		sizes = append(sizes, h.o.densityApps)
	}
	type running struct {
		d   *rouseDaemon
		res *densityResult
	}
	var rs []running
	for _, n := range sizes {
		ports, err := freePorts(n)
		if err != nil {
			return err
		}
		apps := make([]rouseApp, n)
		for i := range apps {
			name := fmt.Sprintf("app%04d", i)
			apps[i] = rouseApp{name: name, mode: "tcp", listen: addr(ports[i]),
				command: []string{h.rouse, "__backend", "-proto", "echo", "-name", name, "-listen", "127.0.0.1:{port}"}}
		}
		cfgName := fmt.Sprintf("rouse-density-%d", n)
		file, control, err := h.writeRouseConfig(cfgName, apps, "15m")
		if err != nil {
			return err
		}
		if n == sizes[len(sizes)-1] {
			h.rep.densityConfig = fmt.Sprintf("%s (%d apps like the one below)\n\n[apps.app0000]\nmode = \"tcp\"\nlisten = [\"127.0.0.1:PORT\"]\ncommand = [%q, \"__backend\", \"-proto\", \"echo\", \"-name\", \"app0000\", \"-listen\", \"127.0.0.1:{port}\"]",
				cfgName+".toml", n, h.rouse)
		}
		d, took, err := h.startRouse(ctx, ps, cfgName, file, control)
		if err != nil {
			return err
		}
		res := &densityResult{apps: n, startup: took, rssStart: rssBytes(d.pid())}
		t0 := time.Now()
		st, err := d.status(ctx)
		if err != nil {
			return err
		}
		res.statusTook = time.Since(t0)
		if len(st) != n {
			return fmt.Errorf("%s: status lists %d apps, want %d", cfgName, len(st), n)
		}
		for _, a := range st {
			if a.State != "idle" {
				return fmt.Errorf("%s: app %s is %s, want idle", cfgName, a.Name, a.State)
			}
		}
		rs = append(rs, running{d, res})
		h.logf("density: %d apps: control socket answered %s after exec, RSS %s", n, took.Round(time.Millisecond), mib(res.rssStart))
	}

	// The idle period, for every daemon at once.
	type sample struct{ ticks, sched time.Duration }
	before := make([]sample, len(rs))
	for i, r := range rs {
		t, err := cpuTime(r.d.pid())
		if err != nil {
			return err
		}
		before[i] = sample{t, runTime(r.d.pid())}
	}
	t0 := time.Now()
	h.logf("density: idle for %s", h.o.densityIdle)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(h.o.densityIdle):
	}
	idle := time.Since(t0)
	for i, r := range rs {
		pid := r.d.pid()
		t, err := cpuTime(pid)
		if err != nil {
			return err
		}
		res := r.res
		res.idle = idle
		res.cpuTicks = t - before[i].ticks
		res.cpuSched = runTime(pid) - before[i].sched
		res.rssEnd = rssBytes(pid)
		res.hwm = kbValue(statusValue(pid, "VmHWM"))
		res.threads = statusValue(pid, "Threads")
		res.fds = openFDs(pid)
		res.mem = memUseOf(pid)
		for _, c := range children(pid) {
			// The apps are idle: the only child is the guard.
			res.guardRSS += rssBytes(c)
			res.guardMem = res.guardMem.plus(memUseOf(c))
		}
	}
	for _, r := range rs {
		t0 := time.Now()
		r.d.stop(30 * time.Second)
		r.res.stopTook = time.Since(t0)
		h.rep.density = append(h.rep.density, r.res)
	}
	return nil
}

// memUse is what a process holds, from /proc/PID/smaps_rollup. RSS counts
// every page it maps; rouse and its guard run the same executable and map
// the same pages of it, which PSS shares out between them (and whatever
// else maps them) and USS leaves out.
type memUse struct {
	rss int64 // resident
	pss int64 // proportional: each shared page divided among its processes
	uss int64 // unique: Private_Clean + Private_Dirty
}

func memUseOf(pid int) memUse {
	var m memUse
	for line := range strings.SplitSeq(readFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)), "\n") {
		key, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n := kbValue(strings.TrimSpace(v))
		switch key {
		case "Rss":
			m.rss = n
		case "Pss":
			m.pss = n
		case "Private_Clean", "Private_Dirty":
			m.uss += n
		}
	}
	return m
}

func (m memUse) plus(o memUse) memUse {
	return memUse{rss: m.rss + o.rss, pss: m.pss + o.pss, uss: m.uss + o.uss}
}
