package main

import (
	"context"
	"io"
	"log/slog"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
)

// newLogger returns rouse's log, through a logQueue so that no log call
// waits for stderr: to journald with structured fields when stderr is the
// journal (systemd sets JOURNAL_STREAM), else key=value text on stderr.
// Once stderr's reader is gone, records go to journald if it can be
// reached, else nowhere.
func newLogger(stderr io.Writer, level slog.Level) *logQueue {
	w := &stderrWriter{w: stderr}
	text := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	var out, alt slog.Handler = text, nil
	if journal.Enabled() {
		alt = &journalHandler{level: level, send: journal.Send, fallback: slog.DiscardHandler}
		if ok, err := journal.StderrIsJournalStream(); ok && err == nil {
			out = &journalHandler{level: level, send: journal.Send, fallback: text}
		}
	}
	q := newLogQueue(out, alt, w.gone.Load)
	q.stderr = w
	return q
}

// journalHandler sends each record to journald as one entry. Attributes
// become fields (upper-cased: app -> APP, took -> TOOK). A line an app
// printed (a record with a "stream" attribute) is sent with the app's name
// as SYSLOG_IDENTIFIER, so `journalctl -t blog` shows one app's output;
// rouse's own events have SYSLOG_IDENTIFIER=rouse.
type journalHandler struct {
	level    slog.Leveler
	prefix   string      // group prefix for attribute keys
	attrs    []slog.Attr // from WithAttrs, keys already prefixed
	send     func(msg string, p journal.Priority, vars map[string]string) error
	fallback slog.Handler // when journald cannot be reached
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	vars := make(map[string]string, len(h.attrs)+r.NumAttrs()+1)
	for _, a := range h.attrs {
		addField(vars, "", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		addField(vars, h.prefix, a)
		return true
	})
	vars["SYSLOG_IDENTIFIER"] = "rouse"
	if _, ok := vars["STREAM"]; ok && vars["APP"] != "" {
		vars["SYSLOG_IDENTIFIER"] = vars["APP"]
	}
	if err := h.send(r.Message, priority(r.Level), vars); err != nil {
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := *h
	h2.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		a.Key = h.prefix + a.Key
		h2.attrs = append(h2.attrs, a)
	}
	h2.fallback = h.fallback.WithAttrs(as)
	return &h2
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + name + "_"
	h2.fallback = h.fallback.WithGroup(name)
	return &h2
}

// addField adds a as a journal field; groups flatten into GROUP_KEY.
func addField(vars map[string]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		for _, ga := range v.Group() {
			addField(vars, prefix+a.Key+"_", ga)
		}
		return
	}
	name := fieldName(prefix + a.Key)
	if name == "" {
		return
	}
	vars[name] = v.String()
}

// fieldName turns a key into a journal field name: upper case letters,
// digits and underscores, not starting with an underscore (those are the
// journal's own trusted fields) or a digit.
func fieldName(key string) string {
	var b strings.Builder
	for _, c := range strings.ToUpper(key) {
		switch {
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9' && b.Len() > 0:
			b.WriteRune(c)
		case b.Len() > 0:
			b.WriteByte('_')
		}
	}
	return strings.TrimRight(b.String(), "_")
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}
