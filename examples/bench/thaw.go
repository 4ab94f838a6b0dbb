package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
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
	if len(r.thaw) == 0 {
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
}
