package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/rouse-dev/rouse/activator"
)

// The access log: a line per request (http) or connection (tcp, inetd) of
// each app whose access_log is not "off", to stderr, the journal or a
// file, as nginx's "combined" format with rouse's fields appended, or as
// JSON. The activator hands each record to Log on its serving paths (the
// event loops too): Log copies it into a bounded batch, allocating
// nothing, and never waits; a full batch drops the record and counts it
// (rouse_access_log_dropped_total). One goroutine formats the batches and
// writes them, a batch every accessFlushDelay at most; it alone writes the
// files, which it opens once and opens again after a reload or SIGHUP
// (logrotate moves a file, then sends SIGHUP).

// Where an access log goes, besides a file path.
const (
	accessOff     = "off"
	accessStderr  = "stderr"
	accessJournal = "journal"
)

const (
	accessBatchRecords = 4096    // records a batch holds
	accessBatchBytes   = 1 << 20 // of their copied request lines and headers
	accessFieldMax     = 2048    // a longer target, referer or user agent is cut
	// accessFlushDelay gathers records into one write: at most this late,
	// and no wake-up at all while nothing is logged.
	accessFlushDelay = 25 * time.Millisecond
	// accessPipeChunk is the most written to stderr at once: a pipe
	// keeps such a write whole among rouse's own log lines.
	accessPipeChunk = 4096
)

// accessLog is the daemon's access log. Log, Dropped and configure are
// safe for concurrent use; Close writes what is logged and stops the
// writer.
type accessLog struct {
	log     *slog.Logger // rouse's own, for the access log's troubles
	stderr  io.Writer
	journal func(msg string, p journal.Priority, vars map[string]string) error // nil: no journald

	mu      sync.Mutex
	cur     *accessBatch // where Log copies records; nil once closed
	dropped atomic.Uint64
	routes  atomic.Pointer[accessRoutes] // replaced whole by configure and reopen
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
	once    sync.Once

	// The writer's own.
	spare  *accessBatch
	seen   *accessRoutes       // the routes files were opened for
	files  map[string]*os.File // by path
	failed map[string]bool     // targets whose trouble was told since seen
	out    map[string][]byte   // lines gathered per target
}

// accessBatch is records and the bytes their slices point to: text never
// grows beyond its capacity, so that they stay put.
type accessBatch struct {
	recs []activator.AccessRecord
	text []byte
}

// accessRoutes is where each app's records go, and how.
type accessRoutes struct {
	apps map[string]accessRoute
}

type accessRoute struct {
	target string // accessStderr, accessJournal or a file path
	json   bool
}

// newAccessBatch returns a batch whose buffers are allocated by its first
// record (alloc): a daemon whose apps log no access never holds them
// (5 MiB each, which would also raise the garbage collector's goal).
func newAccessBatch() *accessBatch { return &accessBatch{} }

func (b *accessBatch) alloc() {
	if b.recs == nil {
		b.recs, b.text = make([]activator.AccessRecord, 0, accessBatchRecords), make([]byte, 0, accessBatchBytes)
	}
}

// newAccessLog starts the writer; records go nowhere until configure.
func newAccessLog(log *slog.Logger, stderr io.Writer) *accessLog {
	l := &accessLog{log: log, stderr: stderr, cur: newAccessBatch(), spare: newAccessBatch(),
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		files: map[string]*os.File{}, failed: map[string]bool{}, out: map[string][]byte{}}
	if journal.Enabled() {
		l.journal = journal.Send
	}
	l.routes.Store(&accessRoutes{})
	go l.run()
	return l
}

// configure routes the records of cfg's apps, and those of the requests
// the http fronts answer for no app (App "", to [rouse].access_log), and
// opens the files anew. It reports a file that cannot be opened (its
// records are dropped until it can).
func (l *accessLog) configure(cfg *Config) error {
	r := &accessRoutes{apps: make(map[string]accessRoute, len(cfg.Apps)+1)}
	var errs []error
	tried := map[string]bool{}
	add := func(name, target, format string) {
		route := accessRoute{target: target, json: format == "json"}
		if route.target == accessJournal && l.journal == nil {
			route.target = accessStderr
			if !tried[accessJournal] {
				l.log.Warn("access log: no journal to write to; writing to stderr", "app", name)
			}
			tried[accessJournal] = true
		}
		if isAccessFile(route.target) && !tried[route.target] {
			tried[route.target] = true
			if f, err := openAccessFile(route.target); err != nil {
				errs = append(errs, fmt.Errorf("access log: %w", err))
			} else {
				f.Close()
			}
		}
		r.apps[name] = route
	}
	for _, a := range cfg.Apps {
		if a.Config.AccessLog {
			add(a.Name, a.AccessTarget, a.AccessFormat)
		}
	}
	if cfg.AccessLog != accessOff && cfg.AccessLog != "" {
		add(noApp, cfg.AccessLog, cfg.AccessFormat)
	}
	l.routes.Store(r)
	l.kick()
	return errors.Join(errs...)
}

// noApp is the App of the records of requests an http front answered
// itself (a Host no app takes, an invalid Host, ambiguous framing): they
// go to [rouse].access_log, and read "-" as their app.
const noApp = ""

// appName is r's app as the log writes it.
func appName(r *activator.AccessRecord) string {
	if r.App == noApp {
		return "-"
	}
	return r.App
}

// reopen has the writer close its files and open them again (SIGHUP).
func (l *accessLog) reopen() {
	r := *l.routes.Load()
	l.routes.Store(&r)
	l.kick()
}

func (l *accessLog) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func isAccessFile(target string) bool { return target != accessStderr && target != accessJournal }

func openAccessFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
}

// Dropped is how many records were dropped: the batch was full, or
// their target could not be written.
func (l *accessLog) Dropped() uint64 { return l.dropped.Load() }

// Log copies r into the batch being filled, or drops it when the batch
// is full; it never blocks, and allocates nothing past the first records
// (one per batch).
func (l *accessLog) Log(r activator.AccessRecord) {
	if _, ok := l.routes.Load().apps[r.App]; !ok {
		return // nowhere to go: an app turned off by a reload, or a front's own answer with [rouse].access_log off
	}
	need := fieldLen(r.Method) + fieldLen(r.Target) + fieldLen(r.Proto) + fieldLen(r.Referer) + fieldLen(r.UserAgent)
	l.mu.Lock()
	b := l.cur
	if b != nil {
		b.alloc()
	}
	if b == nil || len(b.recs) == cap(b.recs) || len(b.text)+need > cap(b.text) {
		l.mu.Unlock()
		l.dropped.Add(1)
		return
	}
	first := len(b.recs) == 0
	r.Method, r.Target, r.Proto = b.keep(r.Method), b.keep(r.Target), b.keep(r.Proto)
	r.Referer, r.UserAgent = b.keep(r.Referer), b.keep(r.UserAgent)
	b.recs = append(b.recs, r)
	l.mu.Unlock()
	if first {
		l.kick()
	}
}

func fieldLen(p []byte) int { return min(len(p), accessFieldMax) }

// keep copies p (cut to accessFieldMax) into the batch's text, which has
// room for it.
func (b *accessBatch) keep(p []byte) []byte {
	if len(p) == 0 {
		return nil
	}
	from := len(b.text)
	b.text = append(b.text, p[:fieldLen(p)]...)
	return b.text[from:len(b.text):len(b.text)]
}

// Close writes what was logged, waiting at most logFlushTimeout for a
// target that takes nothing, and stops the writer; later records are
// dropped.
func (l *accessLog) Close() {
	l.once.Do(func() { close(l.quit) })
	t := time.NewTimer(logFlushTimeout)
	defer t.Stop()
	select {
	case <-l.done:
	case <-t.C:
	}
}

// run is the writer goroutine.
func (l *accessLog) run() {
	defer close(l.done)
	delay := time.NewTimer(accessFlushDelay)
	delay.Stop()
	for {
		select {
		case <-l.wake:
		case <-l.quit:
			l.mu.Lock()
			last := l.cur
			l.cur = nil
			l.mu.Unlock()
			l.write(last)
			l.closeFiles()
			return
		}
		delay.Reset(accessFlushDelay)
		select {
		case <-delay.C:
		case <-l.quit: // then the loop above takes the rest
			delay.Stop()
			continue
		}
		l.mu.Lock()
		b := l.cur
		l.cur = l.spare
		l.mu.Unlock()
		l.write(b)
		l.spare = b
	}
}

// write formats the records of b, writes them and empties b.
func (l *accessLog) write(b *accessBatch) {
	routes := l.routes.Load()
	if routes != l.seen {
		l.closeFiles()
		l.seen = routes
		clear(l.failed)
	}
	if b == nil {
		return
	}
	for i := range b.recs {
		r := &b.recs[i]
		route, ok := routes.apps[r.App]
		if !ok {
			continue // an app a reload removed, or turned off
		}
		if route.target == accessJournal {
			l.toJournal(r, route.json)
			continue
		}
		out := l.out[route.target]
		if route.json {
			out = appendAccessJSON(out, r)
		} else {
			out = appendCombined(out, r)
		}
		l.out[route.target] = append(out, '\n')
	}
	clear(b.recs) // what they point to, for the collector
	b.recs, b.text = b.recs[:0], b.text[:0]
	for target, out := range l.out {
		if len(out) == 0 {
			continue
		}
		if err := l.writeOut(target, out); err != nil {
			l.dropped.Add(uint64(countLines(out)))
			if !l.failed[target] {
				l.failed[target] = true
				l.log.Error("access log: lines dropped until it can be written again", "target", target, "err", err)
			}
		}
		l.out[target] = out[:0]
	}
}

// writeOut writes lines to target: stderr in chunks that a pipe keeps
// whole, a file at once.
func (l *accessLog) writeOut(target string, out []byte) error {
	if target == accessStderr {
		for len(out) > 0 {
			n := len(out)
			if n > accessPipeChunk {
				n = accessPipeChunk
				for n > 0 && out[n-1] != '\n' {
					n--
				}
				if n == 0 {
					n = min(len(out), accessPipeChunk) // one line longer than a chunk
				}
			}
			if _, err := l.stderr.Write(out[:n]); err != nil {
				return err
			}
			out = out[n:]
		}
		return nil
	}
	f := l.files[target]
	if f == nil {
		var err error
		if f, err = openAccessFile(target); err != nil {
			return err
		}
		l.files[target] = f
	}
	_, err := f.Write(out)
	return err
}

// toJournal sends one record as a journal entry: the line as MESSAGE,
// and fields to select by (journalctl -t rouse-access APP=blog).
func (l *accessLog) toJournal(r *activator.AccessRecord, json bool) {
	var line []byte
	if json {
		line = appendAccessJSON(nil, r)
	} else {
		line = appendCombined(nil, r)
	}
	vars := map[string]string{
		"SYSLOG_IDENTIFIER": "rouse-access",
		"APP":               appName(r),
		"STATUS":            strconv.Itoa(r.Status),
		"CLIENT":            r.Client,
		"DURATION_MS":       strconv.FormatFloat(ms(r.Duration), 'f', 3, 64),
	}
	if r.Waited {
		vars["WAIT_MS"] = strconv.FormatFloat(ms(r.Wait), 'f', 3, 64)
	}
	if err := l.journal(string(line), journal.PriInfo, vars); err != nil {
		l.dropped.Add(1)
		if !l.failed[accessJournal] {
			l.failed[accessJournal] = true
			l.log.Error("access log: lines dropped until the journal takes them again", "err", err)
		}
	}
}

func (l *accessLog) closeFiles() {
	for path, f := range l.files {
		f.Close()
		delete(l.files, path)
	}
}

func countLines(p []byte) int {
	n := 0
	for _, c := range p {
		if c == '\n' {
			n++
		}
	}
	return n
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// appendCombined appends r as nginx's "combined" line, then rouse's
// fields: the app, its mode, the time taken (rt, seconds), the time held
// for the app (wait, seconds; "-" when it was not held) and the attempts:
//
//	127.0.0.1 - - [07/Dec/2026:02:00:00 +0000] "GET / HTTP/1.1" 200 12 "-" "curl/8.5" app=blog mode=http rt=1.204 wait=1.190 tries=1
//
// A tcp or inetd connection has "-" as its request. Strings are escaped
// as nginx does: '"', '\' and bytes outside printable ASCII as \xHH.
func appendCombined(b []byte, r *activator.AccessRecord) []byte {
	b = appendOr(b, []byte(r.Client), false)
	b = append(b, " - - ["...)
	b = r.Time.Add(r.Duration).AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
	b = append(b, "] \""...)
	if len(r.Method) == 0 {
		b = append(b, '-')
	} else {
		b = appendEscaped(b, r.Method)
		b = append(b, ' ')
		b = appendEscaped(b, r.Target)
		b = append(b, ' ')
		b = appendEscaped(b, r.Proto)
	}
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, r.Bytes, 10)
	b = append(b, " \""...)
	b = appendOr(b, r.Referer, true)
	b = append(b, "\" \""...)
	b = appendOr(b, r.UserAgent, true)
	b = append(b, "\" app="...)
	b = append(b, appName(r)...)
	b = append(b, " mode="...)
	b = append(b, r.Mode...)
	b = append(b, " rt="...)
	b = strconv.AppendFloat(b, r.Duration.Seconds(), 'f', 3, 64)
	b = append(b, " wait="...)
	if r.Waited {
		b = strconv.AppendFloat(b, r.Wait.Seconds(), 'f', 3, 64)
	} else {
		b = append(b, '-')
	}
	b = append(b, " tries="...)
	return strconv.AppendInt(b, int64(r.Attempts), 10)
}

// appendOr appends p, or "-" when it is empty.
func appendOr(b, p []byte, escape bool) []byte {
	switch {
	case len(p) == 0:
		return append(b, '-')
	case escape:
		return appendEscaped(b, p)
	}
	return append(b, p...)
}

const hexDigits = "0123456789ABCDEF"

func appendEscaped(b, p []byte) []byte {
	for _, c := range p {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
			continue
		}
		b = append(b, c)
	}
	return b
}

// appendAccessJSON appends r as one JSON object: time is when the
// response ended (RFC 3339, milliseconds), durations are in milliseconds,
// path is the request target as sent (path and query).
func appendAccessJSON(b []byte, r *activator.AccessRecord) []byte {
	b = append(b, `{"time":"`...)
	b = r.Time.Add(r.Duration).AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","app":`...)
	b = appendJSONString(b, []byte(appName(r)))
	b = append(b, `,"mode":`...)
	b = appendJSONString(b, []byte(r.Mode))
	b = append(b, `,"client":`...)
	b = appendJSONString(b, []byte(r.Client))
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, r.Target)
	b = append(b, `,"proto":`...)
	b = appendJSONString(b, r.Proto)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, r.Bytes, 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, ms(r.Duration), 'f', 3, 64)
	b = append(b, `,"waited":`...)
	b = strconv.AppendBool(b, r.Waited)
	b = append(b, `,"wait_ms":`...)
	b = strconv.AppendFloat(b, ms(r.Wait), 'f', 3, 64)
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(r.Attempts), 10)
	b = append(b, `,"referer":`...)
	b = appendJSONString(b, r.Referer)
	b = append(b, `,"user_agent":`...)
	b = appendJSONString(b, r.UserAgent)
	return append(b, '}')
}

// appendJSONString appends p as a JSON string: invalid UTF-8 becomes
// U+FFFD, control characters \u00XX.
func appendJSONString(b, p []byte) []byte {
	b = append(b, '"')
	for len(p) > 0 {
		c := p[0]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
			default:
				b = append(b, c)
			}
			p = p[1:]
			continue
		}
		r, n := utf8.DecodeRune(p)
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, p[:n]...)
		}
		p = p[n:]
	}
	return append(b, '"')
}
