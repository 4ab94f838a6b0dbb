package main

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stalledWriter blocks every Write until released, as a pipe nobody reads.
type stalledWriter struct {
	release chan struct{}
	lockedBuffer
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	<-w.release
	return w.lockedBuffer.Write(p)
}

// With stderr stalled, logging never blocks: what does not fit is dropped
// and counted, and once stderr takes lines again one line says how many.
func TestLogQueueNeverBlocks(t *testing.T) {
	w := &stalledWriter{release: make(chan struct{})}
	logs := newLogger(w, slog.LevelInfo)
	log := logs.Logger().With("app", "flood")
	const n = 3 * logQueueRecords
	began := time.Now()
	for i := range n {
		log.Info("a line the app printed", "stream", "stderr", "i", i)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("%d log calls with stderr stalled took %s", n, took)
	}
	dropped := logs.Dropped()
	if dropped < n-logQueueRecords-1 || dropped >= n {
		t.Errorf("dropped %d of %d with room for %d", dropped, n, logQueueRecords)
	}
	close(w.release)
	waitFor(t, "the line saying how many were dropped", func() bool {
		return strings.Contains(w.String(), "log lines dropped")
	})
	logs.Close()
	out := w.String()
	if want := "dropped=" + itoa(dropped); !strings.Contains(out, want) {
		t.Errorf("no %q in the report:\n%s", want, lastLines(out, 3))
	}
	if got := strings.Count(out, "msg=\"a line the app printed\""); uint64(got)+dropped != n {
		t.Errorf("%d lines written + %d dropped != %d logged", got, dropped, n)
	}
	if !strings.Contains(out, "app=flood") {
		t.Errorf("attributes lost on the way:\n%s", lastLines(out, 3))
	}
}

// epipeWriter is stderr whose reader went away after the first write.
type epipeWriter struct{ writes int }

func (w *epipeWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.writes > 1 {
		return 0, syscall.EPIPE
	}
	return len(p), nil
}

// recordHandler keeps the messages it handles.
type recordHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.msgs...)
}

// Once stderr's reader is gone, records go to the other handler (the
// journal) and stderr is not written again.
func TestLogQueueEPIPE(t *testing.T) {
	w := &epipeWriter{}
	sw := &stderrWriter{w: w}
	alt := &recordHandler{}
	logs := newLogQueue(slog.NewTextHandler(sw, nil), alt, sw.gone.Load)
	log := logs.Logger()
	for _, m := range []string{"one", "two", "three"} {
		log.Info(m)
	}
	logs.Close()
	if got := alt.messages(); strings.Join(got, ",") != "two,three" {
		t.Errorf("the journal got %q, want two and three", got)
	}
	if w.writes != 2 {
		t.Errorf("stderr written %d times, want 2 (one, and two which failed)", w.writes)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
