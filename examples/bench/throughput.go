package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// contender is one way for wrk to reach the backend.
type contender struct {
	name    string
	url     string       // http://127.0.0.1:PORT
	argv    []string     // how it was started, for the report; nil: see the rouse config
	cpu     func() []int // processes whose CPU counts as the proxy's; nil: none (direct)
	perfPID int          // profile this process with perf (rouse)
}

// workload is what wrk asks for.
type workload struct {
	key     string
	title   string
	path    string
	headers []string
	big     bool // report MiB/s too
}

var workloads = []workload{
	{key: "small", title: "small responses, keep-alive", path: "/"},
	{key: "64kib", title: "64 KiB responses, keep-alive", path: bytesPath(midSize), big: true},
	{key: "1mib", title: "1 MiB responses, keep-alive", path: bytesPath(bigSize), big: true},
	{key: "close", title: "a new connection per request (`Connection: close`)", path: "/", headers: []string{"Connection: close"}},
}

// workloadKeys are the keys of every workload.
func workloadKeys() []string {
	keys := make([]string, len(workloads))
	for i, wl := range workloads {
		keys[i] = wl.key
	}
	return keys
}

// pickWorkloads returns the workloads with these keys.
func pickWorkloads(keys ...string) []workload {
	var wls []workload
	for _, wl := range workloads {
		if slices.Contains(keys, wl.key) {
			wls = append(wls, wl)
		}
	}
	return wls
}

// group is a set of contenders measured together, interleaved.
type group struct {
	key        string // tcp | http | handoff
	title      string
	contenders []*contender
	workloads  []workload
	rouse      string   // the name of rouse's contender
	peers      []string // the names of the peers rouse is held against, the goal's first
	goal       string
}

// tableResult is one workload of one group: every round of every contender.
type tableResult struct {
	group *group
	wl    workload
	runs  map[string][]wrkResult
	perf  string // perf's view of rouse during one extra round, if taken
}

func (h *harness) throughput(ctx context.Context) error {
	if h.tools.wrk == "" {
		return skipError{"wrk is missing"}
	}
	kind, err := h.chooseBackend(ctx)
	if err != nil {
		return err
	}
	ps := &procs{}
	defer h.cleanup(ps)
	ports, err := freePorts(12)
	if err != nil {
		return err
	}
	goProxyPort, handoffPort, handoffDirect, haproxyPort := ports[8], ports[9], ports[10], ports[11]
	backendPort, rouseTCPBackend, rouseHTTPBackend := ports[0], ports[1], ports[2]
	rouseTCP, rouseHTTP, proxydPort, naivePort, nginxPort := ports[3], ports[4], ports[5], ports[6], ports[7]

	// The backend every other contender reaches. rouse starts its own
	// copies (that is its job): same program, same flags, another port.
	argv, err := h.backendArgv(kind, backendPort)
	if err != nil {
		return err
	}
	backend, err := ps.start("backend", argv)
	if err != nil {
		return err
	}
	if err := waitListening(ctx, backend, addr(backendPort)); err != nil {
		return err
	}
	h.rep.commands = append(h.rep.commands, [2]string{"backend (" + kind + ")", shellJoin(argv)})

	var apps []rouseApp
	if h.o.want("tcp") {
		cmd, err := h.backendArgv(kind, rouseTCPBackend)
		if err != nil {
			return err
		}
		apps = append(apps, rouseApp{name: "tcp", mode: "tcp", listen: addr(rouseTCP), port: rouseTCPBackend, command: cmd})
	}
	if h.o.want("http") {
		cmd, err := h.backendArgv(kind, rouseHTTPBackend)
		if err != nil {
			return err
		}
		apps = append(apps, rouseApp{name: "web", mode: "http", listen: addr(rouseHTTP), port: rouseHTTPBackend, command: cmd})
	}
	// handoff: no byte passes through rouse, so the app must take the
	// socket itself (LISTEN_FDS): only the Go backend can, and the direct
	// contender of this group is the same Go backend listening by itself.
	handoff := rouseApp{name: "handoff", mode: "handoff", listen: addr(handoffPort),
		command: []string{h.rouse, "__backend", "-proto", "http", "-name", "bench", "-listen-fds"}}
	if h.o.want("handoff") {
		if why := h.supported(ctx, handoff); why != "" {
			h.rep.skipped = append(h.rep.skipped, "handoff throughput: "+why)
		} else {
			apps = append(apps, handoff)
		}
	}
	file, control, err := h.writeRouseConfig("rouse-throughput", apps, "0")
	if err != nil {
		return err
	}
	h.rep.addConfig("rouse config (throughput)", "toml", file)
	rd, _, err := h.startRouse(ctx, ps, "rouse", file, control)
	if err != nil {
		return err
	}
	h.rep.commands = append(h.rep.commands, [2]string{"rouse", shellJoin(rd.argv)})
	rousePIDs := func() []int { return []int{rd.pid()} }

	direct := &contender{name: "direct", url: "http://" + addr(backendPort)}
	var groups []*group
	proxydPID := 0
	if h.o.want("tcp") {
		g := &group{key: "tcp", title: "TCP proxies (HTTP/1.1 through byte proxies)", rouse: "rouse tcp",
			goal: "issue 7: rouse >= systemd-socket-proxyd", workloads: workloads}
		g.contenders = append(g.contenders, direct,
			&contender{name: "rouse tcp", url: "http://" + addr(rouseTCP), cpu: rousePIDs, perfPID: rd.pid()})
		if h.tools.proxyd != "" && h.tools.activate != "" {
			argv := h.proxydArgv(proxydPort, backendPort)
			p, err := ps.start("proxyd", argv)
			if err != nil {
				return err
			}
			if err := waitListening(ctx, p, addr(proxydPort)); err != nil {
				return err
			}
			g.contenders = append(g.contenders, &contender{name: "proxyd", url: "http://" + addr(proxydPort), argv: argv,
				cpu: func() []int { return []int{p.pid()} }})
			g.peers = append(g.peers, "proxyd")
			h.rep.commands = append(h.rep.commands, [2]string{"proxyd", shellJoin(argv)})
			proxydPID = p.pid()
		}
		argv := h.naiveArgv(naivePort, backendPort)
		p, err := ps.start("naive", argv)
		if err != nil {
			return err
		}
		if err := waitListening(ctx, p, addr(naivePort)); err != nil {
			return err
		}
		g.contenders = append(g.contenders, &contender{name: "naive Go", url: "http://" + addr(naivePort), argv: argv,
			cpu: func() []int { return []int{p.pid()} }})
		h.rep.commands = append(h.rep.commands, [2]string{"naive Go proxy", shellJoin(argv)})
		groups = append(groups, g)
	}
	if h.o.want("http") {
		g := &group{key: "http", title: "HTTP reverse proxies", rouse: "rouse http",
			goal: "issue 3/7: rouse >= nginx on small responses, p99 <= nginx; issue 13: rouse >= HAProxy too", workloads: workloads}
		g.contenders = append(g.contenders, direct,
			&contender{name: "rouse http", url: "http://" + addr(rouseHTTP), cpu: rousePIDs, perfPID: rd.pid()})
		// The peers rouse is held against, each with its config file.
		type peer struct {
			name, config, lang string
			port               int
			argv               func() ([]string, error)
		}
		var peers []peer
		if h.tools.nginx != "" {
			peers = append(peers, peer{"nginx", "nginx-proxy.conf", "nginx", nginxPort,
				func() ([]string, error) { return h.nginxProxyArgv(nginxPort, backendPort) }})
		}
		if h.tools.haproxy != "" {
			peers = append(peers, peer{"HAProxy", "haproxy-proxy.cfg", "haproxy", haproxyPort,
				func() ([]string, error) { return h.haproxyProxyArgv(haproxyPort, backendPort, h.o.haproxyNbthread()) }})
		}
		for _, pr := range peers {
			argv, err := pr.argv()
			if err != nil {
				return err
			}
			p, err := ps.start(pr.name+" proxy", argv)
			if err != nil {
				return err
			}
			if err := waitListening(ctx, p, addr(pr.port)); err != nil {
				return err
			}
			g.contenders = append(g.contenders, &contender{name: pr.name, url: "http://" + addr(pr.port), argv: argv,
				cpu: func() []int { return append([]int{p.pid()}, children(p.pid())...) }})
			g.peers = append(g.peers, pr.name)
			h.rep.commands = append(h.rep.commands, [2]string{pr.name + " proxy", shellJoin(argv)})
			h.rep.addConfig(pr.name+" proxy config", pr.lang, filepath.Join(h.dir, pr.config))
		}
		argv := h.goHTTPProxyArgv(goProxyPort, backendPort)
		p, err := ps.start("Go ReverseProxy", argv)
		if err != nil {
			return err
		}
		if err := waitListening(ctx, p, addr(goProxyPort)); err != nil {
			return err
		}
		g.contenders = append(g.contenders, &contender{name: "Go ReverseProxy", url: "http://" + addr(goProxyPort), argv: argv,
			cpu: func() []int { return []int{p.pid()} }})
		h.rep.commands = append(h.rep.commands, [2]string{"Go httputil.ReverseProxy", shellJoin(argv)})
		groups = append(groups, g)
	}
	if slices.ContainsFunc(apps, func(a rouseApp) bool { return a.name == "handoff" }) {
		argv := []string{h.rouse, "__backend", "-proto", "http", "-name", "bench", "-listen", addr(handoffDirect)}
		p, err := ps.start("Go backend (handoff group)", argv)
		if err != nil {
			return err
		}
		if err := waitListening(ctx, p, addr(handoffDirect)); err != nil {
			return err
		}
		h.rep.commands = append(h.rep.commands, [2]string{"Go backend (handoff group's direct)", shellJoin(argv)})
		groups = append(groups, &group{key: "handoff", title: "handoff mode (the app accepts on rouse's socket itself)",
			rouse: "rouse handoff", goal: "issue 7: handoff >= 0.97 × direct",
			workloads: pickWorkloads("small", "close"),
			contenders: []*contender{
				{name: "direct", url: "http://" + addr(handoffDirect)},
				{name: "rouse handoff", url: "http://" + addr(handoffPort), cpu: rousePIDs, perfPID: rd.pid()},
			}})
	}
	if kind == "nginx" {
		h.rep.addConfig("nginx backend config", "nginx", filepath.Join(h.dir, fmt.Sprintf("backend-%d.conf", backendPort)))
	}

	// Every contender must answer both routes correctly before anything is
	// timed; this also starts rouse's apps, which then stay up (idle_timeout 0).
	for _, g := range groups {
		for _, c := range g.contenders {
			if err := checkContender(ctx, c); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	if proxydPID != 0 {
		// systemd-socket-activate has exec'd proxyd on the first connection.
		h.rep.proxydSigpipe = sigpipeEvidence(proxydPID)
	}
	// A handoff app serves before rouse sees it ready: its readiness is
	// probed, every few milliseconds. Poll, with a deadline.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := rd.status(ctx)
		if err != nil {
			return err
		}
		var notReady *appStatus
		for i, a := range st {
			if a.State != "ready" {
				notReady = &st[i]
				break
			}
		}
		if notReady == nil {
			break
		}
		if notReady.State != "starting" || time.Now().After(deadline) {
			return fmt.Errorf("rouse app %s is %s after the first requests (last error: %s)", notReady.Name, notReady.State, notReady.LastError)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, bounded by deadline
	}

	// Before the rounds: their garbage, in a heap not yet returned to the
	// OS, would hide what the connections take.
	for _, g := range groups {
		if g.key == "http" && h.o.idleConns > 0 {
			if err := h.idleConns(ctx, g, h.o.idleConns); err != nil {
				return err
			}
		}
	}

	perf := h.o.perf == "on"
	if h.o.perf == "auto" {
		perf = h.tools.perfUsable() == nil
	}
	if h.o.perf == "on" {
		if err := h.tools.perfUsable(); err != nil {
			return err
		}
	}
	for _, g := range groups {
		for _, wl := range g.workloads {
			if h.o.workloads != nil && !slices.Contains(h.o.workloads, wl.key) {
				continue
			}
			t, err := h.runTable(ctx, g, wl, perf)
			if err != nil {
				return err
			}
			h.rep.tables = append(h.rep.tables, t)
		}
	}
	// rouse must not have restarted or failed anything while measured.
	if st, err := rd.status(ctx); err == nil {
		h.rep.rouseApps = append(h.rep.rouseApps, st...)
	}
	return nil
}

// checkContender makes sure c serves every route right.
func checkContender(ctx context.Context, c *contender) error {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	code, _, err := fetch(ctx, client, c.url+"/")
	if err != nil || code != http.StatusOK {
		return fmt.Errorf("GET /: %d %v", code, err)
	}
	for _, size := range []int{midSize, bigSize} {
		path := bytesPath(size)
		code, n, err := fetch(ctx, client, c.url+path)
		if err != nil || code != http.StatusOK || n != int64(size) {
			return fmt.Errorf("GET %s: %d, %d bytes, %v", path, code, n, err)
		}
	}
	return nil
}

// runTable measures one workload for every contender of g: a warm-up
// each, then rounds in the same order (A B C A B C ...).
func (h *harness) runTable(ctx context.Context, g *group, wl workload, perf bool) (*tableResult, error) {
	t := &tableResult{group: g, wl: wl, runs: map[string][]wrkResult{}}
	if h.o.warmup > 0 {
		for _, c := range g.contenders {
			if _, err := h.measure(ctx, c, wl, h.o.warmup); err != nil {
				return nil, err
			}
		}
	}
	for r := range h.o.rounds {
		var line []string
		for _, c := range g.contenders {
			res, err := h.measure(ctx, c, wl, h.o.duration)
			if err != nil {
				return nil, err
			}
			t.runs[c.name] = append(t.runs[c.name], res)
			line = append(line, fmt.Sprintf("%s %.0f/s p99 %s", c.name, res.rps(), us(res.P99US)))
		}
		h.logf("%s/%s round %d/%d: %s", g.key, wl.key, r+1, h.o.rounds, strings.Join(line, " | "))
	}
	if perf {
		for _, c := range g.contenders {
			if c.perfPID == 0 {
				continue
			}
			out, err := h.perfRound(ctx, c, g, wl)
			if err != nil {
				h.logf("perf: %v", err)
				continue
			}
			t.perf = out
		}
	}
	return t, nil
}

// measure runs wrk once against c, with the CPU its processes used.
func (h *harness) measure(ctx context.Context, c *contender, wl workload, d time.Duration) (wrkResult, error) {
	w := h.wrk(c.url+wl.path, wl.headers, d)
	var pids []int
	if c.cpu != nil {
		pids = c.cpu()
	}
	cpu0 := cpuTimeAll(pids)
	res, err := w.run(ctx)
	if err != nil {
		return res, fmt.Errorf("%s: %w", c.name, err)
	}
	res.ProxyCPU = cpuTimeAll(pids) - cpu0
	return res, nil
}

func (h *harness) wrk(url string, headers []string, d time.Duration) wrkRun {
	return wrkRun{wrk: h.tools.wrk, script: h.script, threads: h.o.threads, conns: h.o.conns, duration: d, headers: headers, url: url}
}

// chooseBackend picks the backend every contender reaches: as -backend
// says, or with auto the faster of the two on small keep-alive responses.
func (h *harness) chooseBackend(ctx context.Context) (string, error) {
	switch {
	case h.o.backend == "nginx" && h.tools.nginx == "":
		return "", fmt.Errorf("-backend nginx: nginx is missing")
	case h.o.backend != "auto":
		h.rep.backend, h.rep.backendWhy = h.o.backend, "chosen with -backend"
		return h.o.backend, nil
	case h.tools.nginx == "":
		h.rep.backend, h.rep.backendWhy = "go", "nginx is missing"
		return "go", nil
	}
	ps := &procs{}
	defer h.cleanup(ps)
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	var cs []*contender
	for i, kind := range []string{"go", "nginx"} {
		argv, err := h.backendArgv(kind, ports[i])
		if err != nil {
			return "", err
		}
		p, err := ps.start("backend "+kind, argv)
		if err != nil {
			return "", err
		}
		if err := waitListening(ctx, p, addr(ports[i])); err != nil {
			return "", err
		}
		cs = append(cs, &contender{name: kind, url: "http://" + addr(ports[i])})
	}
	g := &group{key: "calibration", contenders: cs}
	saved := *h.o
	h.o.rounds, h.o.duration, h.o.warmup = 2, min(h.o.duration, 2*time.Second), min(h.o.warmup, time.Second)
	t, err := h.runTable(ctx, g, workloads[0], false)
	*h.o = saved
	if err != nil {
		return "", err
	}
	goRPS, nginxRPS := medianOf(t.runs["go"], wrkResult.rps), medianOf(t.runs["nginx"], wrkResult.rps)
	kind := "go"
	if nginxRPS > goRPS {
		kind = "nginx"
	}
	h.rep.backend = kind
	h.rep.backendWhy = fmt.Sprintf("the faster on small keep-alive responses, measured directly first (2 interleaved rounds each, wrk -t%d -c%d): "+
		"nginx `return 200` %.0f req/s, Go `rouse __backend` %.0f req/s", h.o.threads, h.o.conns, nginxRPS, goRPS)
	return kind, nil
}

// perfRound profiles c's process with perf during one extra wrk round.
func (h *harness) perfRound(ctx context.Context, c *contender, g *group, wl workload) (string, error) {
	data := filepath.Join(h.dir, fmt.Sprintf("perf-%s-%s.data", g.key, wl.key))
	d := h.o.duration
	done := make(chan error, 1)
	go func() {
		out, err := command(ctx, []string{h.tools.perf, "record", "-F", "997", "-g", "-p", fmt.Sprint(c.perfPID), "-o", data,
			"--", "sleep", fmt.Sprint(d.Seconds())})
		if err != nil {
			err = fmt.Errorf("perf record: %w: %s", err, out)
		}
		done <- err
	}()
	_, werr := h.measure(ctx, c, wl, d)
	if err := <-done; err != nil {
		return "", err
	}
	if werr != nil {
		return "", werr
	}
	// Two views: kernel vs rouse's own code, then rouse's functions with
	// their callees included (--children), which is what points at a cause
	// (allocation, GC, a copy); frames every goroutine has are left out.
	dso := filepath.Base(h.rouse)
	var b strings.Builder
	for _, view := range [][]string{
		{"--no-children", "--sort", "dso", "-F", "overhead,dso"},
		{"--children", "--dsos", dso, "-F", "overhead_children,overhead,sym", "--percent-limit", "2.5"},
	} {
		args := append([]string{h.tools.perf, "report", "-i", data, "--stdio", "-g", "none"}, view...)
		out, err := command(ctx, args)
		if err != nil {
			return "", fmt.Errorf("perf report: %w: %s", err, out)
		}
		n := 0
		for line := range strings.SplitSeq(out, "\n") {
			if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" || perfNoise.MatchString(line) {
				continue
			}
			b.WriteString(strings.TrimRight(line, " ") + "\n")
			if n++; n >= 30 {
				break
			}
		}
		b.WriteString("\n")
	}
	if !h.o.keep {
		os.Remove(data)
	}
	return strings.TrimSpace(b.String()), nil
}

// perfNoise matches frames on every goroutine's stack, which say nothing.
var perfNoise = regexp.MustCompile(`goexit|gowrap|mstart|runtime\.mcall|systemstack|Syscall|syscall\.(read|write|Read|Write)|ignoringEINTRIO`)

// sigpipeEvidence says whether the running proxyd ignores SIGPIPE and
// which program the process is, read from /proc.
func sigpipeEvidence(pid int) string {
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	ign, err := ignoresSignal(pid, int(syscall.SIGPIPE))
	if err != nil {
		return fmt.Sprintf("could not read /proc/%d/status: %v", pid, err)
	}
	return fmt.Sprintf("pid %d is `%s`; SIGPIPE ignored (SigIgn in /proc/%d/status): %v", pid, exe, pid, ign)
}

func shellJoin(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\;&|<>*?()[]{}") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func medianOf(rs []wrkResult, f func(wrkResult) float64) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return median(xs)
}

func us(v float64) string {
	d := time.Duration(v * float64(time.Microsecond))
	switch {
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%dµs", d.Microseconds())
}

// orderedNames returns the contenders' names in their order.
func (g *group) names() []string {
	var out []string
	for _, c := range g.contenders {
		out = append(out, c.name)
	}
	return slices.Clip(out)
}
