package activator

import (
	"slices"
	"sync"
	"time"
)

// Failure kinds, as counted in Metrics.Failures.
const (
	FailSpawn    = "spawn"             // the process could not be started
	FailExit     = "exit_before_ready" // it exited before it was ready
	FailNotReady = "not_ready"         // not ready within start_timeout
	FailCrash    = "crash"             // it exited while ready, unasked
	FailRefused  = "refused"           // the app refused a connection it should have accepted
	FailTooMany  = "max_fails"         // max_fails within fail_timeout: restarted
)

// Outcomes of a connection or request, as counted in Metrics.Outcomes.
// http requests answered by the app count by status class ("2xx" ...);
// those rouse answered itself as "rouse_502", "rouse_503", "rouse_504".
const (
	OutcomeServed  = "served"  // tcp: handed to the app
	OutcomeRefused = "refused" // tcp: closed by rouse (back-off, queue full or timeout)
)

// Buckets of the duration histograms, in seconds.
var (
	ColdStartBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	QueueWaitBuckets = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// Histogram is a cumulative-free bucketed count: Counts[i] is the number of
// observations <= Buckets[i] and > Buckets[i-1]; Counts[len(Buckets)] is
// the +Inf bucket.
type Histogram struct {
	Buckets []float64
	Counts  []uint64 // one per bucket and +Inf; nil before the first observation
	Sum     float64
	Count   uint64
}

// newHistogram returns an empty histogram; its counts are allocated by
// the first observation, which most apps of a box never make.
func newHistogram(buckets []float64) Histogram {
	return Histogram{Buckets: buckets}
}

func (h *Histogram) observe(v float64) {
	if h.Counts == nil {
		h.Counts = make([]uint64, len(h.Buckets)+1)
	}
	i, _ := slices.BinarySearch(h.Buckets, v)
	h.Counts[i]++
	h.Sum += v
	h.Count++
}

func (h Histogram) clone() Histogram {
	h.Counts = slices.Clone(h.Counts)
	return h
}

// Metrics are an app's counters since rouse started. Metrics returns a
// copy; the App updates its own under a mutex of their own, never held
// across anything but the update.
type Metrics struct {
	Starts    uint64
	Failures  map[string]uint64 // by kind (Fail*)
	Stops     map[string]uint64 // by reason: idle, lru, reload, shutdown, asked, failures
	Outcomes  map[string]uint64 // by outcome (Outcome*, status class, rouse_5xx)
	Errors    map[string]uint64 // request-level errors by kind (ErrKind*): not the process's fault
	Freezes   uint64            // times the app was frozen (freeze_after)
	Thaws     uint64            // times a frozen app was thawed
	BytesIn   uint64            // from clients to the app (tcp)
	BytesOut  uint64            // from the app to clients (tcp)
	ColdStart Histogram         // spawn -> ready, seconds
	QueueWait Histogram         // held connection or request: arrival -> handed to the app, seconds
}

type metrics struct {
	mu sync.Mutex
	m  Metrics
}

func newMetrics() *metrics {
	// The maps are made by their first count (count): an idle app holds
	// none of them.
	return &metrics{m: Metrics{
		ColdStart: newHistogram(ColdStartBuckets),
		QueueWait: newHistogram(QueueWaitBuckets),
	}}
}

func (m *metrics) update(f func(*Metrics)) {
	m.mu.Lock()
	f(&m.m)
	m.mu.Unlock()
}

// count adds one to key in *m, made first when nil; call under metrics.mu.
func count(m *map[string]uint64, key string) {
	if *m == nil {
		*m = make(map[string]uint64)
	}
	(*m)[key]++
}

func (m *metrics) failure(kind string) { m.update(func(x *Metrics) { count(&x.Failures, kind) }) }
func (m *metrics) stop(why string)     { m.update(func(x *Metrics) { count(&x.Stops, why) }) }
func (m *metrics) froze()              { m.update(func(x *Metrics) { x.Freezes++ }) }
func (m *metrics) thawed()             { m.update(func(x *Metrics) { x.Thaws++ }) }
func (m *metrics) outcome(o string)    { m.update(func(x *Metrics) { count(&x.Outcomes, o) }) }
func (m *metrics) requestError(kind string) {
	m.update(func(x *Metrics) { count(&x.Errors, kind) })
}
func (m *metrics) started(took time.Duration) {
	m.update(func(x *Metrics) { x.ColdStart.observe(took.Seconds()) })
}
func (m *metrics) waited(d time.Duration) {
	m.update(func(x *Metrics) { x.QueueWait.observe(d.Seconds()) })
}
func (m *metrics) bytes(in, out int64) {
	m.update(func(x *Metrics) { x.BytesIn += uint64(in); x.BytesOut += uint64(out) })
}

func (m *metrics) snapshot() Metrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.m
	s.Failures = cloneMap(s.Failures)
	s.Stops = cloneMap(s.Stops)
	s.Outcomes = cloneMap(s.Outcomes)
	s.Errors = cloneMap(s.Errors)
	s.ColdStart = s.ColdStart.clone()
	s.QueueWait = s.QueueWait.clone()
	return s
}

func cloneMap(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Metrics returns a copy of the app's counters.
func (a *App) Metrics() Metrics {
	s := a.metrics.snapshot()
	a.mu.Lock()
	s.Starts = uint64(a.starts)
	a.mu.Unlock()
	return s
}
