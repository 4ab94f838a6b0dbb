package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// writeStatusTable prints one line per app in units a person reads.
func writeStatusTable(w io.Writer, apps []activator.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tSTATE\tPID\tUPTIME\tRSS\tCPU\tCONNS\tQUEUED\tSTARTS\tFAILS\tLAST ERROR")
	for _, s := range apps {
		state := s.State.String()
		if s.BackoffUntil != nil {
			state += " " + max(0, s.BackoffUntil.Sub(now)).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n",
			s.Name, state, dash(s.PID != 0, fmt.Sprint(s.PID)), dash(s.PID != 0, humanDuration(s.UptimeS)),
			dash(s.RSSBytes != 0, humanBytes(s.RSSBytes)), dash(s.PID != 0, fmt.Sprintf("%.1f%%", s.CPUPercent)),
			s.Conns, s.Queued, s.Starts, s.Failures, dash(s.LastError != "", truncate(s.LastError, 60)))
	}
	tw.Flush()
}

// writeBudget prints the memory budget under the table: what the apps
// count against it, and when it was exceeded, why.
func writeBudget(w io.Writer, b activator.BudgetStatus) {
	fmt.Fprintf(w, "memory budget: %s of %s counted (%s held)", humanBytes(b.Counted), humanBytes(uint64(b.Budget)), humanBytes(b.Used))
	switch {
	case b.Over > 0:
		fmt.Fprintf(w, ", %s OVER: %s", humanBytes(b.Over), b.Reason)
	case b.Exceeded > 0:
		fmt.Fprintf(w, "; exceeded %d times, last: %s", b.Exceeded, b.Reason)
	}
	fmt.Fprintln(w)
}

// writeStatusDetail prints everything rouse knows about one app.
func writeStatusDetail(w io.Writer, s activator.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("app", s.Name)
	row("state", s.State.String())
	if s.BackoffUntil != nil {
		row("back-off until", fmt.Sprintf("%s (in %s)", s.BackoffUntil.Format(time.TimeOnly), s.BackoffUntil.Sub(now).Round(time.Second)))
	}
	row("mode", string(s.Mode))
	row("listen", strings.Join(s.Listen, ", "))
	row("upstream", s.Upstream)
	row("command", strings.Join(s.Command, " "))
	if s.PID != 0 {
		row("pid", fmt.Sprint(s.PID))
		row("uptime", humanDuration(s.UptimeS))
		row("rss", humanBytes(s.RSSBytes))
		row("cpu", fmt.Sprintf("%.1f%%", s.CPUPercent))
	}
	row("conns", fmt.Sprint(s.Conns))
	row("queued", fmt.Sprint(s.Queued))
	row("starts", fmt.Sprint(s.Starts))
	row("failures", fmt.Sprint(s.Failures))
	if s.LastStartMS > 0 {
		row("last start took", fmt.Sprintf("%.1f ms", s.LastStartMS))
	}
	if s.AppStatus != "" {
		row("app status", s.AppStatus)
	}
	row("last error", dash(s.LastError != "", s.LastError))
	tw.Flush()
	if len(s.StderrTail) > 0 {
		fmt.Fprintln(w, "last stderr lines:")
		for _, l := range s.StderrTail {
			fmt.Fprintln(w, "  "+l)
		}
	}
}

func dash(ok bool, s string) string {
	if !ok {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func humanDuration(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func humanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
