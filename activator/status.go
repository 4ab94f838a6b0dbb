package activator

import (
	"time"
)

// Status is a snapshot of one app, as `rouse status --json` shows it. The
// JSON names are part of rouse's contract (DESIGN.md).
type Status struct {
	Name         string     `json:"name"`
	State        State      `json:"state"`
	PID          int        `json:"pid"`
	Mode         Mode       `json:"mode"`
	Listen       []string   `json:"listen"`
	UptimeS      float64    `json:"uptime_s"`
	RSSBytes     uint64     `json:"rss_bytes"`
	CPUPercent   float64    `json:"cpu_percent"`
	Conns        int        `json:"conns"`
	Queued       int        `json:"queued"`
	Starts       int        `json:"starts"`
	Failures     int        `json:"failures"`
	LastStartMS  float64    `json:"last_start_ms"`
	LastError    string     `json:"last_error"`
	BackoffUntil *time.Time `json:"backoff_until,omitempty"`
	Command      []string   `json:"command,omitempty"`
	Upstream     string     `json:"upstream,omitempty"`
	StderrTail   []string   `json:"stderr_tail,omitempty"` // of the running process, else of the last one
	AppStatus    string     `json:"app_status,omitempty"`  // the app's last sd_notify STATUS=
}

// stderrTailLines is how many of an app's last stderr lines Status reports.
const stderrTailLines = 10

// Status returns a snapshot of the app. It samples the process's RSS and
// CPU, so it costs a few reads of /proc while the app runs.
func (a *App) Status() Status {
	a.mu.Lock()
	st := Status{
		Name:        a.config().Name,
		State:       a.state,
		Mode:        a.config().Mode,
		Listen:      a.config().Listen,
		Conns:       a.active,
		Queued:      a.queued,
		Starts:      a.starts,
		Failures:    a.failures,
		LastStartMS: float64(a.lastStart.Microseconds()) / 1000,
		LastError:   a.lastErr,
		Upstream:    a.config().UpstreamNetwork + ":" + a.config().UpstreamAddress,
		Command:     a.config().Process.Argv,
	}
	if a.config().Process.Shell != "" {
		st.Command = []string{"/bin/sh", "-c", a.config().Process.Shell}
	}
	if a.inst == nil || a.inst.proc == nil {
		st.StderrTail = a.lastTail // what it said before it stopped or failed
	}
	if a.state == Backoff {
		until := a.backoffUntil
		st.BackoffUntil = &until
	}
	var inst *instance
	if a.inst != nil && a.inst.proc != nil {
		inst = a.inst
	}
	a.mu.Unlock()

	if inst != nil {
		p := inst.proc
		st.PID = p.Pid()
		st.UptimeS = a.now().Sub(p.StartedAt()).Seconds()
		if s, err := p.Stats(); err == nil {
			st.RSSBytes, st.CPUPercent = s.RSS, s.CPUPercent
		}
		st.StderrTail = p.StderrTail(stderrTailLines)
		st.AppStatus = p.NotifyStatus()
	}
	return st
}

// State returns the app's state without sampling anything.
func (a *App) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}
