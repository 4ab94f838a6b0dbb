package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// rouse's log, its own events and every line its apps print, goes through
// a bounded queue to one writer goroutine. A log call never waits for
// stderr: when the reader of stderr stalls, the queue fills and further
// records are dropped and counted, so that no state change, control
// request or accept waits on a pipe (and no lock is held across a write).
// When the writer has caught up, one line says how many were dropped.
//
// When stderr's reader is gone (EPIPE), the log goes to the journal if
// one can be reached, else nowhere; rouse keeps running either way (main
// asks for SIGPIPE, so the write fails instead of killing rouse).
const (
	logQueueRecords = 4096
	logQueueBytes   = 4 << 20 // of messages queued; an app's lines are up to 64 KiB each
	logFlushTimeout = 2 * time.Second
)

// logQueue owns the writer goroutine. Handle and Dropped are safe for
// concurrent use; Close flushes what is queued, for at most
// logFlushTimeout, and stops the writer.
type logQueue struct {
	ch      chan *queuedRecord // pointers: a slog.Record is 300 bytes, 1.2 MiB for a queue held empty
	bytes   atomic.Int64       // message bytes in ch
	dropped atomic.Uint64      // records dropped since start (the metric)
	unsaid  atomic.Uint64      // dropped and not yet reported in the log
	closed  atomic.Bool
	quit    chan struct{}
	done    chan struct{}
	root    *queueHandler
	gone    func() bool // whether stderr's reader is gone (EPIPE)
	stderr  io.Writer   // rouse's stderr (newLogger's), for the access log; nil: none
	once    sync.Once
}

type queuedRecord struct {
	h *queueHandler
	r slog.Record
}

// queueHandler is the slog.Handler of the queue: out is the handler that
// writes to stderr, alt the one used once stderr is gone (nil: none).
type queueHandler struct {
	q        *logQueue
	out, alt slog.Handler
}

// newLogQueue starts the writer over out; gone reports that stderr's
// reader went away, after which records go to alt (nil: dropped).
func newLogQueue(out, alt slog.Handler, gone func() bool) *logQueue {
	q := &logQueue{
		ch:   make(chan *queuedRecord, logQueueRecords),
		quit: make(chan struct{}),
		done: make(chan struct{}),
		gone: gone,
	}
	q.root = &queueHandler{q: q, out: out, alt: alt}
	go q.write()
	return q
}

// Logger returns a logger whose records go through the queue.
func (q *logQueue) Logger() *slog.Logger { return slog.New(q.root) }

// Dropped is how many records were dropped since the queue started.
func (q *logQueue) Dropped() uint64 { return q.dropped.Load() }

// Close writes what is queued, waiting at most logFlushTimeout for a slow
// stderr, and stops the writer. Records logged afterwards are dropped.
func (q *logQueue) Close() {
	q.once.Do(func() {
		q.closed.Store(true)
		close(q.quit)
	})
	t := time.NewTimer(logFlushTimeout)
	defer t.Stop()
	select {
	case <-q.done:
	case <-t.C: // the writer is stuck in a write: rouse exits without it
	}
}

func (q *logQueue) enqueue(h *queueHandler, r slog.Record) {
	n := int64(len(r.Message))
	if q.closed.Load() || q.bytes.Add(n) > logQueueBytes {
		q.bytes.Add(-n)
		q.drop()
		return
	}
	select {
	case q.ch <- &queuedRecord{h: h, r: r.Clone()}:
	default:
		q.bytes.Add(-n)
		q.drop()
	}
}

func (q *logQueue) drop() {
	q.dropped.Add(1)
	q.unsaid.Add(1)
}

// write is the writer goroutine.
func (q *logQueue) write() {
	defer close(q.done)
	for {
		select {
		case rec := <-q.ch:
			q.handle(rec)
		case <-q.quit:
			for {
				select {
				case rec := <-q.ch:
					q.handle(rec)
				default:
					q.reportDropped()
					return
				}
			}
		}
		if len(q.ch) == 0 {
			q.reportDropped()
		}
	}
}

func (q *logQueue) handle(rec *queuedRecord) {
	q.bytes.Add(-int64(len(rec.r.Message)))
	ctx := context.Background()
	if !q.gone() {
		if err := rec.h.out.Handle(ctx, rec.r); err == nil || !q.gone() {
			return
		}
	}
	if rec.h.alt != nil {
		_ = rec.h.alt.Handle(ctx, rec.r)
	}
}

// reportDropped logs, once the writer has caught up, how many records
// were dropped since it last said so.
func (q *logQueue) reportDropped() {
	n := q.unsaid.Swap(0)
	if n == 0 {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelWarn, "log lines dropped: stderr did not take them in time", 0)
	r.AddAttrs(slog.Uint64("dropped", n))
	q.handle(&queuedRecord{h: q.root, r: r})
}

func (h *queueHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.out.Enabled(ctx, l)
}

// Handle queues r; it never blocks.
func (h *queueHandler) Handle(_ context.Context, r slog.Record) error {
	h.q.enqueue(h, r)
	return nil
}

func (h *queueHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := &queueHandler{q: h.q, out: h.out.WithAttrs(as)}
	if h.alt != nil {
		h2.alt = h.alt.WithAttrs(as)
	}
	return h2
}

func (h *queueHandler) WithGroup(name string) slog.Handler {
	h2 := &queueHandler{q: h.q, out: h.out.WithGroup(name)}
	if h.alt != nil {
		h2.alt = h.alt.WithGroup(name)
	}
	return h2
}

// stderrWriter is rouse's stderr: once a write fails with EPIPE (the
// reader is gone) it writes nothing more there.
type stderrWriter struct {
	w    io.Writer
	gone atomic.Bool
}

func (s *stderrWriter) Write(p []byte) (int, error) {
	if s.gone.Load() {
		return 0, syscall.EPIPE
	}
	n, err := s.w.Write(p)
	if errors.Is(err, syscall.EPIPE) {
		s.gone.Store(true)
	}
	return n, err
}
