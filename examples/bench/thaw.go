package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// thaw.go: what freeze_after buys. One app that takes thawBoot to boot,
// frozen after thawFreeze idle; each round times one request from its
// arrival (the client's connect) to the whole response, three ways in a
// row: cold (the app stopped: a spawn and its boot), thawed (the app
// frozen), warm (the app ready, just used). Modes interleaved.

const (
	thawBoot   = 2 * time.Second
	thawFreeze = "50ms"
	thawGoal   = time.Millisecond // issue 16: thawed - warm, p50
)

// thawCase is one mode measured.
type thawCase struct {
	name, app, mode string
}

var thawCases = []thawCase{
	{"http mode", "thaw-http", "http"},
	{"tcp mode", "thaw-tcp", "tcp"},
}

// thawResult is the measurements of one case.
type thawResult struct {
	c                  thawCase
	cold, thawed, warm []time.Duration
}

// diffs returns thawed[i] - warm[i] for each round: the warm request of a
// round came right after its thawed one, on the same machine load.
func (r *thawResult) diffs() []time.Duration {
	d := make([]time.Duration, len(r.thawed))
	for i := range r.thawed {
		d[i] = r.thawed[i] - r.warm[i]
	}
	return d
}

func (h *harness) thaw(ctx context.Context) error {
	ps := &procs{}
	defer h.cleanup(ps)
	ports, err := freePorts(len(thawCases))
	if err != nil {
		return err
	}
	var apps []rouseApp
	var results []*thawResult
	for i, c := range thawCases {
		apps = append(apps, rouseApp{name: c.app, mode: c.mode, listen: addr(ports[i]), freeze: thawFreeze,
			command: []string{h.rouse, "__backend", "-proto", "http", "-name", c.app, "-delay", thawBoot.String(), "-listen", "127.0.0.1:{port}"}})
		results = append(results, &thawResult{c: c})
	}
	h.rep.thaw = results
	file, control, err := h.writeRouseConfig("rouse-thaw", apps, "0")
	if err != nil {
		return err
	}
	h.rep.addConfig("rouse config (freeze and thaw)", "toml", file)
	rd, _, err := h.startRouse(ctx, ps, "rouse (freeze and thaw)", file, control)
	if err != nil {
		return err
	}
	// One unrecorded round first (page cache, first exec).
	for rep := -1; rep < h.o.thawN; rep++ {
		for i, res := range results {
			cold, thawed, warm, err := h.thawRound(ctx, rd, res.c.app, apps[i].listen)
			if err != nil {
				return fmt.Errorf("%s: %w", res.c.name, err)
			}
			if rep >= 0 {
				res.cold = append(res.cold, cold)
				res.thawed = append(res.thawed, thawed)
				res.warm = append(res.warm, warm)
			}
		}
		if rep >= 0 && (rep+1)%5 == 0 {
			h.logf("freeze and thaw: %d/%d", rep+1, h.o.thawN)
		}
	}
	st, err := rd.status(ctx)
	if err != nil {
		return err
	}
	for _, a := range st {
		if a.Failures > 0 || a.Starts != h.o.thawN+1 {
			return fmt.Errorf("app %s: %d starts for %d cold requests, %d failures: %s", a.Name, a.Starts, h.o.thawN+1, a.Failures, a.LastError)
		}
	}
	return nil
}

// thawRound times a cold, a thawed and a warm request to app.
func (h *harness) thawRound(ctx context.Context, rd *rouseDaemon, app, listen string) (cold, thawed, warm time.Duration, err error) {
	if err := h.stopApp(ctx, rd, app); err != nil {
		return 0, 0, 0, err
	}
	if cold, err = timedGet(listen); err != nil {
		return 0, 0, 0, fmt.Errorf("cold: %w", err)
	}
	if err := waitState(ctx, rd, app, "frozen"); err != nil {
		return 0, 0, 0, err
	}
	if thawed, err = timedGet(listen); err != nil {
		return 0, 0, 0, fmt.Errorf("thawed: %w", err)
	}
	if warm, err = timedGet(listen); err != nil {
		return 0, 0, 0, fmt.Errorf("warm: %w", err)
	}
	return cold, thawed, warm, nil
}

// waitState polls rouse's status until app is in state, for at most 10 s.
func waitState(ctx context.Context, rd *rouseDaemon, app, state string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := rd.status(ctx)
		if err != nil {
			return err
		}
		for _, a := range st {
			if a.Name == app && a.State == state {
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond) // polling a condition with a deadline
	}
	return fmt.Errorf("%s not %s within 10s", app, state)
}

// timedGet sends request on a new connection to listen and returns the
// time from the connect to the end of a 200 response.
func timedGet(listen string) (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", listen, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(request)); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	took := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	return took, nil
}

func (r *report) renderThaw(p func(string, ...any)) {
	if len(r.thaw) == 0 && r.fleet == nil {
		return
	}
	p("## Freeze and thaw\n\n")
	p("One app whose backend takes %s to listen (`rouse __backend -delay %s`), with `freeze_after = %q` and `idle_timeout = \"0\"`."+
		" Each round times three requests from the client's connect to the end of the response (`GET /`, `Connection: close`), one after the other:"+
		" *cold* after `rouse stop` (spawn and boot), *thawed* once `rouse status` shows the app frozen, *warm* right after that."+
		" *thawed − warm* is per round: what a thaw adds.\n\n", thawBoot, thawBoot, thawFreeze)
	p("| case | n | cold p50 | thawed p50 | p90 | warm p50 | p90 | thawed − warm p50 | p90 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, t := range r.thaw {
		if len(t.thawed) == 0 {
			continue
		}
		d := t.diffs()
		p("| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", t.c.name, len(t.thawed),
			ms(percentile(t.cold, 50)), ms(percentile(t.thawed, 50)), ms(percentile(t.thawed, 90)),
			ms(percentile(t.warm, 50)), ms(percentile(t.warm, 90)), ms(percentile(d, 50)), ms(percentile(d, 90)))
	}
	p("\n")
	r.renderFleet(p)
}

func (r *report) summarizeThaw(p func(string, ...any)) {
	for _, t := range r.thaw {
		if len(t.thawed) == 0 {
			continue
		}
		d := percentile(t.diffs(), 50)
		p("- Thaw, %s: thawed − warm p50 **%s** against a cold start p50 of %s (n=%d); %s.\n", t.c.name, ms(d),
			ms(percentile(t.cold, 50)), len(t.thawed), verdict(d <= thawGoal, "goal p50 <= "+ms(thawGoal)+" (issue 16)"))
	}
	if f := r.fleet; f != nil && f.requests > 0 {
		p("- %d apps under a budget for %d: %d requests across all of them, %d lost, %d LRU stops; then %d frozen: rouse used %s of CPU in %s idle.\n",
			f.apps, thawFleetRoom, f.requests, f.lost, f.lruStops, f.frozen, ms(f.cpuSched), f.idle.Round(time.Second))
	}
}

// fleetResult is the run of thawFleetApps apps under one memory budget.
type fleetResult struct {
	apps, passes      int
	appRSS            int64 // one app's, measured first
	budget            int64
	requests, lost    int
	firstLost         string
	lruStops          int
	peakUsed          int64   // the largest sum of the apps' memory sampled during the traffic
	overBudget        float64 // share of those samples above the budget
	exceeded          int     // times rouse said the budget was exceeded (status: budget.exceeded_total)
	reason            string  // the first reason it gave
	idle              time.Duration
	frozen            int           // apps frozen when the idle period began
	cpuSched          time.Duration // rouse's time on CPU over the idle period
	cpuTicks          time.Duration
	wakeups, switches int64 // rouse's context switches over the idle period (voluntary, involuntary)
}

const (
	thawFleetApps   = 50
	thawFleetPasses = 3
	thawFleetRoom   = 20 // apps the budget holds
)

// thawFleet runs thawFleetApps apps with freeze_after under a memory
// budget that holds thawFleetRoom of them: traffic passes over all of them
// (4 clients, each app in turn), then everything is left alone for
// -density-idle and rouse's CPU is measured while the apps are frozen.
func (h *harness) thawFleet(ctx context.Context) error {
	ps := &procs{}
	defer h.cleanup(ps)
	ports, err := freePorts(thawFleetApps)
	if err != nil {
		return err
	}
	apps := make([]rouseApp, thawFleetApps)
	for i := range apps {
		name := fmt.Sprintf("fleet%02d", i)
		apps[i] = rouseApp{name: name, mode: "http", listen: addr(ports[i]), freeze: thawFreeze,
			command: []string{h.rouse, "__backend", "-proto", "http", "-name", name, "-listen", "127.0.0.1:{port}"}}
	}
	res := &fleetResult{apps: thawFleetApps, passes: thawFleetPasses}
	h.rep.fleet = res

	// One app's memory first, with no budget.
	file, control, err := h.writeRouseConfig("rouse-fleet-probe", apps[:1], "0")
	if err != nil {
		return err
	}
	rd, _, err := h.startRouse(ctx, ps, "rouse (fleet probe)", file, control)
	if err != nil {
		return err
	}
	if _, err := timedGet(apps[0].listen); err != nil {
		return err
	}
	st, err := rd.status(ctx)
	if err != nil {
		return err
	}
	res.appRSS = st[0].RSSBytes
	rd.stop(10 * time.Second)
	if res.appRSS <= 0 {
		return fmt.Errorf("fleet probe: app memory %d", res.appRSS)
	}
	res.budget = res.appRSS * thawFleetRoom

	file, control, err = h.writeRouseConfig("rouse-fleet", apps, "0")
	if err != nil {
		return err
	}
	if err := addRouseKey(file, fmt.Sprintf("memory_budget = \"%dMiB\"", res.budget>>20)); err != nil {
		return err
	}
	res.budget = res.budget >> 20 << 20
	h.rep.addConfig("rouse config (frozen apps under a budget), first app", "toml", file)
	if rd, _, err = h.startRouse(ctx, ps, "rouse (fleet)", file, control); err != nil {
		return err
	}

	// Traffic across every app, memory sampled meanwhile.
	var mu sync.Mutex
	next := 0
	sampled, over := 0, 0
	stopSampling := make(chan struct{})
	sampler := make(chan struct{})
	go func() {
		defer close(sampler)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
			var st statusReply
			if err := rd.statusAll(ctx, &st); err != nil {
				continue
			}
			var used int64
			for _, a := range st.Apps {
				used += a.RSSBytes
			}
			mu.Lock()
			res.peakUsed = max(res.peakUsed, used)
			sampled++
			if used > res.budget {
				over++
			}
			if b := st.Budget; b != nil {
				res.exceeded = max(res.exceeded, b.Exceeded)
				if b.Reason != "" && res.reason == "" {
					res.reason = b.Reason
				}
			}
			mu.Unlock()
		}
	}()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= thawFleetApps*thawFleetPasses {
					return
				}
				_, err := timedGet(apps[i%thawFleetApps].listen)
				mu.Lock()
				res.requests++
				if err != nil {
					res.lost++
					if res.firstLost == "" {
						res.firstLost = err.Error()
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(stopSampling)
	<-sampler
	if sampled > 0 {
		res.overBudget = float64(over) / float64(sampled)
	}
	n, err := lruStops(ctx, rd)
	if err != nil {
		return err
	}
	res.lruStops = n

	// Left alone: every app still running freezes.
	err = poll(ctx, "every running app frozen", 30*time.Second, 10*time.Millisecond, func() bool {
		st, err := rd.status(ctx)
		if err != nil {
			return false
		}
		res.frozen = 0
		for _, a := range st {
			switch a.State {
			case "frozen":
				res.frozen++
			case "idle":
			default:
				return false
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	pid := rd.pid()
	t0, ticks0, sched0 := time.Now(), must(cpuTime(pid)), runTime(pid)
	vol0, invol0 := switches(pid)
	h.logf("freeze and thaw: %d apps frozen, idle for %s", res.frozen, h.o.densityIdle)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(h.o.densityIdle):
	}
	res.idle = time.Since(t0)
	res.cpuTicks = must(cpuTime(pid)) - ticks0
	res.cpuSched = runTime(pid) - sched0
	vol1, invol1 := switches(pid)
	res.wakeups, res.switches = vol1-vol0, invol1-invol0
	return nil
}

func must(d time.Duration, _ error) time.Duration { return d }

// switches sums the voluntary and involuntary context switches of every
// thread of pid: a voluntary one is a wake-up after a sleep.
func switches(pid int) (voluntary, involuntary int64) {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		for line := range strings.SplitSeq(readFile(t), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				voluntary += n
			}
			if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				involuntary += n
			}
		}
	}
	return voluntary, involuntary
}

// addRouseKey adds line to the [rouse] table of the config file.
func addRouseKey(file, line string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	return os.WriteFile(file, bytes.Replace(b, []byte("[rouse]\n"), []byte("[rouse]\n"+line+"\n"), 1), 0o644)
}

// lruStops reads rouse_lru_stops_total from rouse's /metrics.
func lruStops(ctx context.Context, rd *rouseDaemon) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://rouse/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := rd.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rouse_lru_stops_total "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no rouse_lru_stops_total in /metrics")
}

func (r *report) renderFleet(p func(string, ...any)) {
	f := r.fleet
	if f == nil || f.requests == 0 {
		return
	}
	p("### %d frozen apps under one memory budget\n\n", f.apps)
	p("%d http apps (`rouse __backend -proto http`, %s each after one request), `freeze_after = %q`, `idle_timeout = \"0\"`, `memory_budget` = %s (room for %d)."+
		" 4 clients pass over every app in turn, %d times (`GET /`, a new connection each); rouse's status is sampled every 100 ms meanwhile."+
		" Then nothing for %s while the apps that still run are frozen.\n\n",
		f.apps, mib(f.appRSS), thawFreeze, mib(f.budget), thawFleetRoom, f.passes, f.idle.Round(time.Second))
	lost := "0"
	if f.lost > 0 {
		lost = fmt.Sprintf("%d (first: %s)", f.lost, f.firstLost)
	}
	p("| requests | lost | LRU stops | peak memory of the apps | samples over budget | frozen then | rouse CPU over the idle period (schedstat / ticks) | wake-ups (voluntary / involuntary switches) |\n|---:|---|---:|---:|---:|---:|---:|---:|\n")
	p("| %d | %s | %d | %s | %.0f%% | %d | %s / %s | %d / %d |\n\n", f.requests, lost, f.lruStops, mib(f.peakUsed), 100*f.overBudget, f.frozen,
		ms(f.cpuSched), ms(f.cpuTicks), f.wakeups, f.switches)
	p("A start reserves what the app took on its last run (never run: the mean of the apps measured so far) before it is granted, up to the budget less 1/32 of it; apps are sampled at each start decided and every 500 ms while any runs unfrozen. rouse itself said the budget was exceeded %d times", f.exceeded)
	if f.reason != "" {
		p(" (first: %s)", f.reason)
	}
	p(".\n\n")
}
