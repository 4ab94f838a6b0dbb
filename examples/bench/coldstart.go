package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// coldCase is one kind of cold start: an app with this mode and readiness,
// stopped, then asked for by one client. To measure another mode or
// readiness (handoff, ready = "notify"), add a case with the backend flags
// that make the app ready that way; a case this rouse refuses (`rouse
// check` fails) is listed as not supported instead of failing the run.
type coldCase struct {
	name  string
	app   string
	mode  string
	ready string        // "" = rouse's default, tcp
	args  []string      // extra backend flags
	goal  time.Duration // issue 7's target for the overhead's p50; 0: none
}

var coldCases = []coldCase{
	{name: "tcp mode, ready = tcp", app: "cold-tcp", mode: "tcp", goal: 5 * time.Millisecond},
	{name: "http mode, ready = tcp", app: "cold-http", mode: "http", goal: 5 * time.Millisecond},
	{name: `http mode, ready = "http /health"`, app: "cold-httpready", mode: "http", ready: "http /health"},
	{name: "tcp mode, ready = notify", app: "cold-notify", mode: "tcp", ready: "notify", args: []string{"-notify"}, goal: 2 * time.Millisecond},
	// An app that takes 300 ms to listen: the tcp readiness probe's
	// interval has grown by then, which shows in the overhead.
	{name: "tcp mode, ready = tcp, app listens after 300 ms", app: "cold-slow", mode: "tcp", args: []string{"-delay", "300ms"}},
	{name: "handoff mode (the app accepts itself)", app: "cold-handoff", mode: "handoff", args: []string{"-listen-fds"}, goal: 2 * time.Millisecond},
}

// coldResult is the measurements of one case.
type coldResult struct {
	c        coldCase
	overhead []time.Duration // the app's socket listening -> the client's first byte
	total    []time.Duration // the client's connect -> its first byte (spawn included)
	skipped  string          // why the case was not measured
}

// request is what every cold-start and late-backend client sends.
const request = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"

func (h *harness) coldStart(ctx context.Context) error {
	ps := &procs{}
	defer h.cleanup(ps)
	ports, err := freePorts(len(coldCases))
	if err != nil {
		return err
	}
	var apps []rouseApp
	var results []*coldResult
	for i, c := range coldCases {
		readyFile := filepath.Join(h.dir, c.app+".ready")
		command := append([]string{h.rouse, "__backend", "-proto", "http", "-name", c.app, "-ready-file", readyFile}, c.args...)
		if !slices.Contains(c.args, "-listen-fds") {
			command = append(command, "-listen", "127.0.0.1:{port}")
		}
		app := rouseApp{name: c.app, mode: c.mode, listen: addr(ports[i]), ready: c.ready, command: command}
		res := &coldResult{c: c}
		results = append(results, res)
		if why := h.supported(ctx, app); why != "" {
			res.skipped = why
			continue
		}
		apps = append(apps, app)
	}
	h.rep.cold = results
	if len(apps) == 0 {
		return nil
	}
	file, control, err := h.writeRouseConfig("rouse-cold", apps, "0")
	if err != nil {
		return err
	}
	h.rep.addConfig("rouse config (cold start)", "toml", file)
	rd, _, err := h.startRouse(ctx, ps, "rouse (cold start)", file, control)
	if err != nil {
		return err
	}
	listen := map[string]string{}
	for _, a := range apps {
		listen[a.name] = a.listen
	}
	// One unrecorded start each (page cache, first exec), then the
	// repetitions interleaved across the cases.
	for rep := -1; rep < h.o.coldN; rep++ {
		for _, res := range results {
			if res.skipped != "" {
				continue
			}
			over, total, err := h.coldOnce(ctx, rd, res.c.app, listen[res.c.app], filepath.Join(h.dir, res.c.app+".ready"))
			if err != nil {
				return fmt.Errorf("%s: %w", res.c.name, err)
			}
			if rep >= 0 {
				res.overhead = append(res.overhead, over)
				res.total = append(res.total, total)
			}
		}
		if rep >= 0 && (rep+1)%10 == 0 {
			h.logf("cold start: %d/%d", rep+1, h.o.coldN)
		}
	}
	st, err := rd.status(ctx)
	if err != nil {
		return err
	}
	for _, a := range st {
		if a.Failures > 0 {
			return fmt.Errorf("app %s recorded %d failures during the cold starts: %s", a.Name, a.Failures, a.LastError)
		}
	}
	return nil
}

// supported tries app alone: `rouse check`, then `rouse run` and `rouse
// start APP`. It returns why this rouse cannot run it, or "". A mode the
// config accepts but the daemon cannot run must not take the whole
// section down with it.
func (h *harness) supported(ctx context.Context, app rouseApp) string {
	file, control, err := h.writeRouseConfig("check-"+app.name, []rouseApp{app}, "0")
	if err != nil {
		return err.Error()
	}
	out, err := command(ctx, []string{h.rouse, "check", "-c", file})
	if err != nil {
		return "`rouse check` refuses it: " + strings.TrimSpace(out)
	}
	ps := &procs{}
	defer h.cleanup(ps)
	d, _, err := h.startRouse(ctx, ps, "rouse (probe "+app.name+")", file, control)
	if err != nil {
		return "`rouse run` fails: " + lastLine(err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, err := command(ctx, []string{h.rouse, "start", "--control", d.control, app.name}); err != nil {
		return "`rouse start` fails: " + lastLine(out)
	}
	return ""
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// coldOnce stops app, sends one request and returns the time from the
// app's socket listening (its ready file) to the response's first byte,
// and from the client's connect to that byte.
func (h *harness) coldOnce(ctx context.Context, rd *rouseDaemon, app, listen, readyFile string) (overhead, total time.Duration, err error) {
	if err := h.stopApp(ctx, rd, app); err != nil {
		return 0, 0, err
	}
	before := len(readyLines(readyFile))
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", listen, 10*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(request)); err != nil {
		return 0, 0, err
	}
	br := bufio.NewReader(c)
	if _, err := br.Peek(1); err != nil {
		return 0, 0, fmt.Errorf("waiting for the first byte: %w", err)
	}
	first := time.Now()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("status %s", resp.Status)
	}
	lines := readyLines(readyFile)
	if len(lines) != before+1 {
		return 0, 0, fmt.Errorf("%d app starts for one request (ready file %s)", len(lines)-before, readyFile)
	}
	ns, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("ready file %s: %w", readyFile, err)
	}
	return first.Sub(time.Unix(0, ns)), first.Sub(t0), nil
}

func readyLines(file string) []string {
	return strings.Fields(readFile(file))
}

// lateResult is what the clients of one contender saw while the backend
// was booting.
type lateResult struct {
	name    string
	kinds   map[string]int // "ok", "reset", ...
	latency []time.Duration
	n       int
}

// lateBackend shows what a client sees when the backend needs a while to
// listen: proxyd passes each connection on at once and drops the client
// when the backend refuses it; rouse holds it until the app is ready.
// Clients connect one every 25 ms from the moment the backend is started
// until cold-delay + 250 ms later.
func (h *harness) lateBackend(ctx context.Context) error {
	ps := &procs{}
	defer h.cleanup(ps)
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	delay := h.o.coldDelay
	backendArgs := func(listen string) []string {
		return []string{h.rouse, "__backend", "-proto", "http", "-name", "late", "-delay", delay.String(), "-listen", listen}
	}
	h.rep.lateDelay = delay
	h.rep.lateBackendCmd = shellJoin(backendArgs("ADDR"))

	if h.tools.proxyd != "" && h.tools.activate != "" {
		p, err := ps.start("proxyd (late)", h.proxydArgv(ports[0], ports[1]))
		if err != nil {
			return err
		}
		if err := waitListening(ctx, p, addr(ports[0])); err != nil {
			return err
		}
		// The first connection makes systemd-socket-activate exec proxyd;
		// it fails (nothing listens yet) and is not counted.
		if c, err := net.DialTimeout("tcp", addr(ports[0]), 5*time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte(request))
			bufio.NewReader(c).ReadByte()
			c.Close()
		}
		res := h.lateClients(ctx, "systemd-socket-proxyd", addr(ports[0]), delay, func() error {
			_, err := ps.start("late backend", backendArgs(addr(ports[1])))
			return err
		})
		h.rep.late = append(h.rep.late, res)
	}

	apps := []rouseApp{
		{name: "late-tcp", mode: "tcp", listen: addr(ports[2]), command: backendArgs("127.0.0.1:{port}")},
		{name: "late-http", mode: "http", listen: addr(ports[3]), command: backendArgs("127.0.0.1:{port}")},
	}
	file, control, err := h.writeRouseConfig("rouse-late", apps, "0")
	if err != nil {
		return err
	}
	if _, _, err := h.startRouse(ctx, ps, "rouse (late)", file, control); err != nil {
		return err
	}
	for _, a := range apps {
		// The app is idle: the first of the clients starts it.
		res := h.lateClients(ctx, "rouse "+a.mode, a.listen, delay, func() error { return nil })
		h.rep.late = append(h.rep.late, res)
	}
	return nil
}

// lateClients calls start, and meanwhile connects a client to address
// every 25 ms until delay + 250 ms, each sending one request.
func (h *harness) lateClients(ctx context.Context, name, address string, delay time.Duration, start func() error) *lateResult {
	const every = 25 * time.Millisecond
	n := int((delay + 250*time.Millisecond) / every)
	res := &lateResult{name: name, kinds: map[string]int{}, n: n}
	var mu sync.Mutex
	var wg sync.WaitGroup
	t0 := time.Now()
	if err := start(); err != nil {
		res.kinds["harness error: "+err.Error()]++
		return res
	}
	for i := range n {
		at := t0.Add(time.Duration(i) * every)
		select {
		case <-ctx.Done():
			wg.Wait()
			return res
		case <-time.After(time.Until(at)):
		}
		wg.Go(func() {
			took, err := lateRequest(address)
			mu.Lock()
			defer mu.Unlock()
			res.kinds[errKind(err)]++
			if err == nil {
				res.latency = append(res.latency, took)
			}
		})
	}
	wg.Wait()
	h.logf("late backend via %s: %v", name, res.kinds)
	return res
}

// lateRequest sends one request and waits for a 200.
func lateRequest(address string) (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", address, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(request)); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	return time.Since(t0), nil
}
