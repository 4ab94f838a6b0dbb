package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rouse-dev/rouse/activator"
)

// Prometheus metrics, served at /metrics on the control socket and, when
// [rouse].metrics is set, on that TCP address. The official client does the
// text format, content negotiation and registry; rouse only supplies a
// Collector that reads the apps' own counters at scrape time, so nothing
// is sampled or updated between scrapes.

// appCollector is a prometheus.Collector over one daemon's apps. It keeps
// no state of its own: every scrape reads App.Metrics and App.Status (the
// latter reads /proc, but only for apps that run). Safe for concurrent
// scrapes.
type appCollector struct {
	sup    *activator.Supervisor
	budget int64 // [rouse].memory_budget in bytes, 0 = none

	state, starts, failures, stops, requests, bytes *prometheus.Desc
	reqErrors, freezes, thaws                       *prometheus.Desc
	coldStart, queueWait                            *prometheus.Desc
	rss, cpu, conns, queued                         *prometheus.Desc
	apps, running, memUsed, memBudget, lruStops     *prometheus.Desc
	memCounted, memOver, budgetExceeded             *prometheus.Desc

	// Label values reported as 0 before they first happen, so that rate()
	// and alerts see a series from the start. Others that turn up (an
	// outcome such as "1xx" or "rouse_400") are reported as they come.
	states                    []activator.State
	failureKinds, stopReasons []string
	errorKinds                []string
	httpOutcomes, tcpOutcomes []string
}

func newAppCollector(sup *activator.Supervisor, memoryBudget int64) *appCollector {
	app := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append([]string{"app"}, labels...), nil)
	}
	global := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, nil, nil)
	}
	return &appCollector{
		sup:    sup,
		budget: memoryBudget,

		states:       []activator.State{activator.Idle, activator.Starting, activator.Ready, activator.Stopping, activator.Backoff, activator.Frozen},
		failureKinds: []string{activator.FailSpawn, activator.FailExit, activator.FailNotReady, activator.FailCrash, activator.FailRefused, activator.FailDialTimeout, activator.FailTooMany},
		errorKinds:   []string{activator.ErrKindAppClosed, activator.ErrKindBadResponse, activator.ErrKindClient, activator.ErrKindUnforwardable, activator.ErrKindLocal, activator.ErrKindBacklog},
		stopReasons:  []string{"idle", "lru", "reload", "shutdown", "asked", "failures"},
		httpOutcomes: []string{"2xx", "3xx", "4xx", "5xx", "rouse_502", "rouse_503", "rouse_504"},
		tcpOutcomes:  []string{activator.OutcomeServed, activator.OutcomeRefused},

		state:     app("rouse_app_state", "Whether the app is in this state (1) or not (0): idle, starting, ready, stopping, backoff, frozen.", "state"),
		starts:    app("rouse_app_starts_total", "Processes rouse spawned for the app."),
		freezes:   app("rouse_app_freezes_total", "Times the app was frozen after freeze_after without activity."),
		thaws:     app("rouse_app_thaws_total", "Times a frozen app was thawed (by a connection, or rouse start)."),
		failures:  app("rouse_app_failures_total", "Evidence that the app's process is unhealthy, by kind: spawn, exit_before_ready, not_ready, crash, refused, dial_timeout, max_fails.", "kind"),
		reqErrors: app("rouse_app_request_errors_total", "Requests or connections that failed without it being the process's fault, by kind: app_closed (accepted, then closed or reset before a whole response), bad_response, client, unforwardable (400 from rouse), local (rouse short of fds or memory), backlog_full. Never counted toward max_fails.", "kind"),
		stops:     app("rouse_app_stops_total", "Processes rouse stopped on purpose, by reason: idle, lru, reload, shutdown, asked, failures.", "reason"),
		requests:  app("rouse_app_requests_total", `Requests (http) or connections (tcp) by outcome: the status class of the app's answer ("2xx".."5xx"), rouse's own answer ("rouse_502", "rouse_503", "rouse_504"), or for tcp "served" and "refused".`, "outcome"),
		bytes:     app("rouse_app_bytes_total", `Bytes proxied for tcp apps: direction="in" from clients to the app, "out" from the app to clients.`, "direction"),
		coldStart: app("rouse_app_cold_start_seconds", "Time from spawning the app to its readiness."),
		queueWait: app("rouse_app_queue_wait_seconds", "Time a held connection or request waited for the app before it was handed over."),
		rss:       app("rouse_app_rss_bytes", "Resident memory of the app's processes (its process group); 0 when it does not run."),
		cpu:       app("rouse_app_cpu_percent", "CPU use of the app's processes, in percent of one core, averaged since the previous sample (a scrape or rouse status); 0 when it does not run."),
		conns:     app("rouse_app_connections", "Connections (tcp) or requests in flight (http) the app is serving now."),
		queued:    app("rouse_app_queued", "Connections or requests held now, waiting for the app to be ready."),

		apps:      global("rouse_apps", "Apps configured."),
		running:   global("rouse_apps_running", "Apps with a process: starting, ready or stopping."),
		memUsed:   global("rouse_memory_used_bytes", "Resident memory of all running apps, summed."),
		memBudget: global("rouse_memory_budget_bytes", "The memory budget of [rouse].memory_budget; 0 when there is none."),
		lruStops:  global("rouse_lru_stops_total", "Apps stopped to keep within max_running or memory_budget, across all apps."),

		memCounted:     global("rouse_memory_counted_bytes", "What the running apps count against memory_budget, as last sampled: their memory, or more where a start's reservation holds."),
		memOver:        global("rouse_memory_over_budget_bytes", "How far rouse_memory_counted_bytes is above memory_budget; 0 within it. The log says why (msg=\"memory budget exceeded\")."),
		budgetExceeded: global("rouse_memory_budget_exceeded_total", "Times the running apps went above memory_budget (an app grew past what its start reserved)."),
	}
}

// Describe sends every Desc the collector uses.
func (c *appCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.state, c.starts, c.failures, c.reqErrors, c.stops, c.requests, c.bytes, c.freezes, c.thaws,
		c.coldStart, c.queueWait, c.rss, c.cpu, c.conns, c.queued,
		c.apps, c.running, c.memUsed, c.memBudget, c.lruStops,
		c.memCounted, c.memOver, c.budgetExceeded,
	} {
		ch <- d
	}
}

// Collect reads every app's counters and status now.
func (c *appCollector) Collect(ch chan<- prometheus.Metric) {
	apps := c.sup.Apps()
	var running int
	var memUsed, lruStops uint64
	for _, a := range apps {
		st, m := a.Status(), a.Metrics()
		name := st.Name
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{name}, labels...)...)
		}
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{name}, labels...)...)
		}
		byLabel := func(d *prometheus.Desc, counts map[string]uint64, known []string) {
			for _, k := range known {
				if _, ok := counts[k]; !ok {
					counter(d, 0, k)
				}
			}
			for k, v := range counts {
				counter(d, v, k)
			}
		}

		for _, s := range c.states {
			gauge(c.state, boolValue(st.State == s), s.String())
		}
		counter(c.starts, m.Starts)
		counter(c.freezes, m.Freezes)
		counter(c.thaws, m.Thaws)
		byLabel(c.failures, m.Failures, c.failureKinds)
		byLabel(c.reqErrors, m.Errors, c.errorKinds)
		byLabel(c.stops, m.Stops, c.stopReasons)
		// Zeros only for the modes that count outcomes (http, tcp); the
		// others report what the activator counts for them, if anything.
		var outcomes []string
		switch st.Mode {
		case activator.ModeHTTP:
			outcomes = c.httpOutcomes
		case activator.ModeTCP:
			outcomes = c.tcpOutcomes
		}
		byLabel(c.requests, m.Outcomes, outcomes)
		if st.Mode == activator.ModeTCP || m.BytesIn+m.BytesOut > 0 {
			// Only tcp apps count bytes; a 0 for the others would lie.
			counter(c.bytes, m.BytesIn, "in")
			counter(c.bytes, m.BytesOut, "out")
		}
		ch <- constHistogram(c.coldStart, m.ColdStart, name)
		ch <- constHistogram(c.queueWait, m.QueueWait, name)
		gauge(c.rss, float64(st.RSSBytes))
		gauge(c.cpu, st.CPUPercent)
		gauge(c.conns, float64(st.Conns))
		gauge(c.queued, float64(st.Queued))

		switch st.State {
		case activator.Starting, activator.Ready, activator.Frozen, activator.Stopping:
			running++
			memUsed += st.RSSBytes
		}
		lruStops += m.Stops["lru"]
	}
	global := func(d *prometheus.Desc, t prometheus.ValueType, v float64) {
		ch <- prometheus.MustNewConstMetric(d, t, v)
	}
	global(c.apps, prometheus.GaugeValue, float64(len(apps)))
	global(c.running, prometheus.GaugeValue, float64(running))
	global(c.memUsed, prometheus.GaugeValue, float64(memUsed))
	global(c.memBudget, prometheus.GaugeValue, float64(c.budget))
	global(c.lruStops, prometheus.CounterValue, float64(lruStops))
	b := c.sup.Budget()
	global(c.memCounted, prometheus.GaugeValue, float64(b.Counted))
	global(c.memOver, prometheus.GaugeValue, float64(b.Over))
	global(c.budgetExceeded, prometheus.CounterValue, float64(b.Exceeded))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// constHistogram turns the activator's histogram into a Prometheus one.
func constHistogram(d *prometheus.Desc, h activator.Histogram, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum, cumulativeBuckets(h), labels...)
}

// cumulativeBuckets converts the activator's per-bucket counts (each
// bucket counts only its own range) into Prometheus's buckets, each of
// which counts every observation up to its bound. The +Inf bucket is
// implied by the histogram's Count.
func cumulativeBuckets(h activator.Histogram) map[float64]uint64 {
	out := make(map[float64]uint64, len(h.Buckets))
	var n uint64
	for i, le := range h.Buckets {
		if i < len(h.Counts) {
			n += h.Counts[i]
		}
		out[le] = n
	}
	return out
}

// newMetricsHandler serves the metrics of sup's apps, plus the Go runtime's
// and the rouse process's own, from a registry of this daemon's (never the
// global one, so two daemons in one process do not collide). logDropped
// counts the log lines dropped because stderr did not take them,
// accessDropped the access log's records dropped.
func newMetricsHandler(sup *activator.Supervisor, memoryBudget int64, log *slog.Logger, logDropped, accessDropped func() uint64) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		newAppCollector(sup, memoryBudget),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "rouse_log_dropped_lines_total",
			Help: "Log lines (rouse's own and its apps' output) dropped because stderr did not take them in time.",
		}, func() float64 { return float64(logDropped()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "rouse_access_log_dropped_total",
			Help: "Access log records dropped: its buffer was full, or their target could not be written.",
		}, func() float64 { return float64(accessDropped()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		// A scrape reads /proc for every running app; a few at a time is
		// plenty for any number of Prometheus servers.
		MaxRequestsInFlight: 4,
	})
}

// withMetrics adds GET /metrics to the control socket's handler.
func withMetrics(control, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.Handle("/", control)
	return mux
}

// startMetrics serves metrics on addr ([rouse].metrics) until stop is
// called: /metrics, and the status page at /; never the control API. With
// addr empty it does nothing. stop returns once the server has exited.
func startMetrics(addr string, metrics, page http.Handler, log *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.Handle("GET /{$}", page)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close() // a scrape still running after a second is cut
		}
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics", "addr", addr, "err", err)
		}
	}, nil
}
