package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The burst section (issue 14): many concurrent first requests to a cold
// app that listens with Python's default backlog of 5, as a crawler or a
// page with many assets does after idle. rouse must serve them all with
// one spawn, the slowest about as soon after the app is ready as the same
// burst straight to the warm app takes.

// burstResult is what one contender's clients got over the rounds.
type burstResult struct {
	name      string
	n         int            // requests per round
	rounds    int            // rounds measured
	kinds     map[string]int // "ok" or the failure
	afterZero []time.Duration
	slowest   []time.Duration // per round: the last answer after time zero
	spawns    []int           // per round (rouse)
	zero      string          // what time zero is
}

// pyApp returns python3 and the path of examples/apps/pyapp.py, or a
// skipError.
func pyApp() (python, script string, err error) {
	python = "/usr/bin/python3" // Debian's, as users run it
	if _, err := os.Stat(python); err != nil {
		if python, err = exec.LookPath("python3"); err != nil {
			return "", "", skipError{"python3 is not installed"}
		}
	}
	script, err = filepath.Abs(filepath.Join("examples", "apps", "pyapp.py"))
	if err != nil {
		return "", "", err
	}
	if _, err := os.Stat(script); err != nil {
		return "", "", skipError{"examples/apps/pyapp.py not found: run from the repository's root"}
	}
	return python, script, nil
}

func (h *harness) burst(ctx context.Context) error {
	python, script, err := pyApp()
	if err != nil {
		return err
	}
	ps := &procs{}
	defer h.cleanup(ps)
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	n, boot := h.o.burstN, "1"
	listening := filepath.Join(h.dir, "burst.listening")
	app := rouseApp{name: "burst", mode: "http", listen: addr(ports[0]),
		command: []string{python, script, "http", "--port", "{port}", "--boot", boot, "--listening", listening}}
	file, control, err := h.writeRouseConfig("rouse-burst", []rouseApp{app}, "0")
	if err != nil {
		return err
	}
	h.rep.addConfig("rouse config (burst)", "toml", file)
	rd, _, err := h.startRouse(ctx, ps, "rouse (burst)", file, control)
	if err != nil {
		return err
	}
	cold := &burstResult{name: "rouse, cold app (boot " + boot + " s)", n: n, kinds: map[string]int{},
		zero: "the app listening"}
	for round := range h.o.burstRounds {
		if err := h.stopApp(ctx, rd, app.name); err != nil {
			return err
		}
		before := len(readyLines(listening))
		starts := appStarts(ctx, rd, app.name)
		ends, kinds := burstOnce(ctx, app.listen, n)
		lines := readyLines(listening)
		if len(lines) <= before {
			return fmt.Errorf("burst round %d: the app never listened", round)
		}
		ns, _ := strconv.ParseInt(lines[before], 10, 64)
		cold.add(ends, kinds, time.Unix(0, ns))
		cold.spawns = append(cold.spawns, appStarts(ctx, rd, app.name)-starts)
		h.logf("burst, cold through rouse, round %d: %v, slowest %s after ready", round+1, kinds, ms(cold.slowest[len(cold.slowest)-1]))
	}
	// The reference: the same burst straight to the warm app.
	direct := &burstResult{name: "direct, warm app", n: n, kinds: map[string]int{}, zero: "the first request sent"}
	p, err := ps.start("python app (burst, direct)", []string{python, script, "http", "--port", strconv.Itoa(ports[1])})
	if err != nil {
		return err
	}
	if err := waitListening(ctx, p, addr(ports[1])); err != nil {
		return err
	}
	for round := range h.o.burstRounds {
		t0 := time.Now()
		ends, kinds := burstOnce(ctx, addr(ports[1]), n)
		direct.add(ends, kinds, t0)
		h.logf("burst, direct, round %d: %v, slowest %s", round+1, kinds, ms(direct.slowest[len(direct.slowest)-1]))
	}
	h.rep.bursts = []*burstResult{cold, direct}
	h.rep.burstCmd = shellJoin(app.command)
	return nil
}

func (b *burstResult) add(ends []time.Time, kinds map[string]int, zero time.Time) {
	b.rounds++
	for k, v := range kinds {
		b.kinds[k] += v
	}
	var slowest time.Duration
	for _, e := range ends {
		d := max(e.Sub(zero), 0)
		b.afterZero = append(b.afterZero, d)
		slowest = max(slowest, d)
	}
	b.slowest = append(b.slowest, slowest)
}

// appStarts is the app's starts counter, -1 if unknown.
func appStarts(ctx context.Context, rd *rouseDaemon, app string) int {
	st, err := rd.status(ctx)
	if err != nil {
		return -1
	}
	for _, a := range st {
		if a.Name == app {
			return a.Starts
		}
	}
	return -1
}

// burstOnce sends n requests at once, each on a new connection, and
// returns when each 200 came and what the others got.
func burstOnce(ctx context.Context, address string, n int) ([]time.Time, map[string]int) {
	var mu sync.Mutex
	var ends []time.Time
	kinds := map[string]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			err := burstRequest(ctx, address)
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			kinds[errKind(err)]++
			if err == nil {
				ends = append(ends, now)
			}
		})
	}
	close(start)
	wg.Wait()
	return ends, kinds
}

func burstRequest(ctx context.Context, address string) error {
	d := net.Dialer{Timeout: 30 * time.Second}
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(request)); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func (r *report) renderBurst(p func(string, ...any)) {
	if len(r.bursts) == 0 {
		return
	}
	p("## Burst of first requests\n\n")
	p("%d requests at once, each on a new connection (`Connection: close`), to a Python `ThreadingHTTPServer` (listen backlog 5, Python's default; HTTP/1.0),"+
		" `%s`; through rouse the app is stopped before each round, so the burst starts it. %d rounds; a client gives up after 30 s.\n\n",
		r.bursts[0].n, r.burstCmd, r.bursts[0].rounds)
	p("| via | requests | served | not served | p50 after time zero | slowest after time zero, per round | spawns per round | time zero |\n|---|---:|---:|---|---:|---|---|---|\n")
	for _, b := range r.bursts {
		total, other := 0, ""
		for k, v := range b.kinds {
			total += v
			if k != "ok" {
				other += fmt.Sprintf("%s: %d; ", k, v)
			}
		}
		slowest := ""
		for i, s := range b.slowest {
			if i > 0 {
				slowest += ", "
			}
			slowest += ms(s)
		}
		spawns := "-"
		if len(b.spawns) > 0 {
			spawns = fmt.Sprint(b.spawns)
		}
		if other == "" {
			other = "-"
		}
		p("| %s | %d | %d | %s | %s | %s | %s | %s |\n", b.name, total, b.kinds["ok"], other, ms(percentile(b.afterZero, 50)), slowest, spawns, b.zero)
	}
	p("\n")
}

func (r *report) burstSummary() string {
	if len(r.bursts) != 2 {
		return ""
	}
	c, d := r.bursts[0], r.bursts[1]
	total := 0
	for _, v := range c.kinds {
		total += v
	}
	return fmt.Sprintf("Burst of %d first requests to a cold Python app (backlog 5): %d of %d served, slowest %s after the app listened (median of rounds; direct to the warm app: %s), spawns per round %v.",
		c.n, c.kinds["ok"], total, ms(percentile(c.slowest, 50)), ms(percentile(d.slowest, 50)), c.spawns)
}
