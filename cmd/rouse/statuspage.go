package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// The status page: an HTML view of `rouse status` at / on the metrics
// address, for a person with a browser (a phone included). It is one
// self-contained document (inline CSS, no script, no external asset) that
// reloads itself every statusRefresh; html/template escapes every value, so
// an app's stderr cannot inject markup.

//go:embed statuspage.html
var statusPageHTML string

// statusPageTemplate is parsed once; executing it is safe concurrently.
var statusPageTemplate = template.Must(template.New("status").Parse(statusPageHTML))

// statusRefresh is how often the page reloads itself.
const statusRefresh = 2 * time.Second

// statusPage is what the template renders.
type statusPage struct {
	Refresh int // seconds
	Host    string
	Version string
	Now     string
	Summary string
	Memory  string
	Apps    []statusRow
}

// statusRow is one app, formatted for a person.
type statusRow struct {
	Name, State, StateName, Mode, PID, Uptime string
	Memory, CPU                               string
	Conns, Queued, Starts, Failures           int
	ColdStart, LastError, AppStatus           string
	Listen                                    string
	StderrTail                                []string
}

// newStatusPage serves the status page of sup's apps. memoryBudget is
// [rouse].memory_budget in bytes, 0 for none.
func newStatusPage(sup *activator.Supervisor, memoryBudget int64, log *slog.Logger) http.Handler {
	host, _ := os.Hostname()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		page := statusPage{
			Refresh: int(statusRefresh / time.Second),
			Host:    host,
			Version: buildVersion(),
			Now:     now.Format("2006-01-02 15:04:05 MST"),
			Summary: sup.Summary().String(),
		}
		var used uint64
		for _, s := range sup.Status() {
			page.Apps = append(page.Apps, newStatusRow(s, now))
			used += s.RSSBytes
		}
		page.Memory = humanBytes(used) + " used by apps"
		if memoryBudget > 0 {
			page.Memory += " of a " + humanBytes(uint64(memoryBudget)) + " budget"
		}
		var buf bytes.Buffer
		if err := statusPageTemplate.Execute(&buf, page); err != nil {
			log.Warn("status page", "err", err)
			http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		// Nothing but the inline style: no script, no frame, no fetch.
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
		w.Write(buf.Bytes())
	})
}

func newStatusRow(s activator.Status, now time.Time) statusRow {
	running := s.PID != 0
	state := s.State.String()
	if s.BackoffUntil != nil {
		state += " " + max(0, s.BackoffUntil.Sub(now)).Round(time.Second).String()
	}
	return statusRow{
		Name: s.Name, State: state, StateName: s.State.String(), Mode: string(s.Mode),
		PID:    dash(running, fmt.Sprint(s.PID)),
		Uptime: dash(running, humanDuration(s.UptimeS)),
		Memory: dash(s.RSSBytes != 0, humanBytes(s.RSSBytes)),
		CPU:    dash(running, fmt.Sprintf("%.1f%%", s.CPUPercent)),
		Conns:  s.Conns, Queued: s.Queued, Starts: s.Starts, Failures: s.Failures,
		ColdStart: dash(s.LastStartMS > 0, fmt.Sprintf("%.0f ms", s.LastStartMS)),
		LastError: s.LastError, AppStatus: s.AppStatus,
		Listen:     strings.Join(s.Listen, " "),
		StderrTail: s.StderrTail,
	}
}
