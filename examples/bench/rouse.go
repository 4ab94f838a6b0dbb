package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// rouseApp is one [apps.NAME] table of a config the harness writes.
type rouseApp struct {
	name    string
	mode    string // tcp | http
	listen  string // HOST:PORT
	port    int    // 0: rouse picks one ({port} must appear in command)
	command []string
	ready   string // "" = rouse's default (tcp)
	idle    string // idle_timeout; "" = the [defaults] one
	freeze  string // freeze_after; "" = none
}

// writeRouseConfig writes DIR/NAME.toml for apps and returns it with the
// control socket's path.
func (h *harness) writeRouseConfig(name string, apps []rouseApp, idleDefault string) (file, control string, err error) {
	control = filepath.Join(h.dir, name+".sock")
	var b strings.Builder
	fmt.Fprintf(&b, "# written by examples/bench\n[rouse]\ncontrol = %s\ndrain_timeout = \"1s\"\nlog_level = \"warn\"\n", quote(control))
	if h.o.accessLog {
		fmt.Fprintf(&b, "access_log = %s\n", quote(filepath.Join(h.dir, name+"-access.log")))
	}
	b.WriteString("\n[defaults]\n")
	fmt.Fprintf(&b, "idle_timeout = %s\n", quote(idleDefault))
	if os.Geteuid() == 0 {
		b.WriteString("user = \"root\"   # rouse requires an explicit user when it runs as root\n")
	}
	for _, a := range apps {
		fmt.Fprintf(&b, "\n[apps.%s]\nmode = %s\nlisten = [%s]\n", a.name, quote(a.mode), quote(a.listen))
		if a.port != 0 {
			fmt.Fprintf(&b, "port = %d\n", a.port)
		}
		if a.ready != "" {
			fmt.Fprintf(&b, "ready = %s\n", quote(a.ready))
		}
		if a.idle != "" {
			fmt.Fprintf(&b, "idle_timeout = %s\n", quote(a.idle))
		}
		if a.freeze != "" {
			fmt.Fprintf(&b, "freeze_after = %s\n", quote(a.freeze))
		}
		quoted := make([]string, len(a.command))
		for i, s := range a.command {
			quoted[i] = quote(s)
		}
		fmt.Fprintf(&b, "command = [%s]\n", strings.Join(quoted, ", "))
	}
	file = filepath.Join(h.dir, name+".toml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		return "", "", err
	}
	return file, control, nil
}

// quote makes a TOML basic string; Go's escapes are valid TOML for the
// paths and words used here.
func quote(s string) string { return strconv.Quote(s) }

// rouseDaemon is a running `rouse run -c FILE`.
type rouseDaemon struct {
	*proc
	control string
	client  *http.Client
}

// startRouse runs `rouse run -c file` and waits until its control socket
// answers; it returns how long that took from the exec.
func (h *harness) startRouse(ctx context.Context, ps *procs, name, file, control string) (*rouseDaemon, time.Duration, error) {
	t0 := time.Now()
	p, err := ps.start(name, []string{h.rouse, "run", "-c", file})
	if err != nil {
		return nil, 0, err
	}
	d := &rouseDaemon{proc: p, control: control, client: controlClient(control)}
	var took time.Duration
	err = poll(ctx, name+"'s control socket", 60*time.Second, time.Millisecond, func() bool {
		if p.exited() {
			return true
		}
		if _, err := d.status(ctx); err != nil {
			return false
		}
		took = time.Since(t0)
		return true
	})
	if err == nil && p.exited() {
		err = fmt.Errorf("rouse exited: %s", p.describe())
	}
	if err != nil {
		return nil, 0, err
	}
	return d, took, nil
}

// appStatus is the part of `rouse status --json` the harness reads.
type appStatus struct {
	Name        string  `json:"name"`
	State       string  `json:"state"`
	PID         int     `json:"pid"`
	Starts      int     `json:"starts"`
	Failures    int     `json:"failures"`
	LastStartMS float64 `json:"last_start_ms"`
	LastError   string  `json:"last_error"`
	RSSBytes    int64   `json:"rss_bytes"`
}

func (d *rouseDaemon) status(ctx context.Context) ([]appStatus, error) {
	var reply statusReply
	err := d.statusAll(ctx, &reply)
	return reply.Apps, err
}

// statusReply is the part of rouse's whole status the harness reads.
type statusReply struct {
	Apps   []appStatus `json:"apps"`
	Budget *struct {
		OverBytes int64  `json:"over_bytes"`
		Exceeded  int    `json:"exceeded_total"`
		Reason    string `json:"reason"`
	} `json:"budget"`
}

func (d *rouseDaemon) statusAll(ctx context.Context, reply *statusReply) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://rouse/v1/status", nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("rouse status: %s", resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(reply)
}

// stopApp runs the CLI, `rouse stop --control SOCKET APP`, which returns
// once the app is idle.
func (h *harness) stopApp(ctx context.Context, d *rouseDaemon, app string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := command(ctx, []string{h.rouse, "stop", "--control", d.control, app})
	if err != nil {
		return fmt.Errorf("rouse stop %s: %w: %s", app, err, out)
	}
	return nil
}
