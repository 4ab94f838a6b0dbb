package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// The control socket speaks HTTP/1.1 over a unix socket:
//
//	GET  /v1/status[?app=NAME]      {"apps": [Status...], "budget": BudgetStatus}
//	POST /v1/apps/NAME/start|stop|restart
//
// Errors come back as {"error": "..."} with a 4xx/5xx status.

type statusReply struct {
	Apps []activator.Status `json:"apps"`
	// Budget: with a memory_budget, in the status of all apps.
	Budget *activator.BudgetStatus `json:"budget,omitempty"`
}

// allStatus is the status of every app, and the budget if there is one.
func allStatus(sup *activator.Supervisor) statusReply {
	r := statusReply{Apps: sup.Status()}
	if b := sup.Budget(); b.Budget > 0 {
		r.Budget = &b
	}
	return r
}

type errorReply struct {
	Error string `json:"error"`
}

func controlHandler(sup *activator.Supervisor, reload func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		if err := reload(); err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, errorReply{Error: err.Error()})
			return
		}
		writeStatus(w, allStatus(sup))
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("app")
		if name == "" {
			writeStatus(w, allStatus(sup))
			return
		}
		a, ok := sup.App(name)
		if !ok {
			writeJSON(w, http.StatusNotFound, errorReply{Error: fmt.Sprintf("no app called %q", name)})
			return
		}
		writeJSON(w, http.StatusOK, statusReply{Apps: []activator.Status{a.Status()}})
	})
	mux.HandleFunc("POST /v1/apps/{name}/{action}", func(w http.ResponseWriter, r *http.Request) {
		name, action := r.PathValue("name"), r.PathValue("action")
		a, ok := sup.App(name)
		if !ok {
			writeJSON(w, http.StatusNotFound, errorReply{Error: fmt.Sprintf("no app called %q", name)})
			return
		}
		var err error
		switch action {
		case "start":
			err = a.Start(r.Context())
		case "stop":
			err = a.Stop(r.Context())
		case "restart":
			err = a.Restart(r.Context())
		default:
			writeJSON(w, http.StatusNotFound, errorReply{Error: fmt.Sprintf("unknown action %q", action)})
			return
		}
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, errorReply{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, statusReply{Apps: []activator.Status{a.Status()}})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeStatus writes r with status 200, as writeJSON does, one app at a
// time: for a thousand apps the reply is about a MiB, which encoding it
// whole (then indenting it again) held three times over in rouse's heap,
// where it stayed until the next collection.
func writeStatus(w http.ResponseWriter, r statusReply) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if len(r.Apps) == 0 {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(r)
		return
	}
	bw := bufio.NewWriterSize(w, 16<<10)
	bw.WriteString("{\n  \"apps\": [\n")
	// One buffer and one encoder (which keeps its indenting buffer) for
	// every app: no garbage per app.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("    ", "  ")
	for i := range r.Apps {
		buf.Reset()
		if err := enc.Encode(&r.Apps[i]); err != nil {
			return // as Encode does: nothing more is written
		}
		bw.WriteString("    ")
		bw.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
		if i < len(r.Apps)-1 {
			bw.WriteByte(',')
		}
		bw.WriteByte('\n')
	}
	bw.WriteString("  ]")
	if r.Budget != nil {
		buf.Reset()
		enc.SetIndent("  ", "  ")
		if err := enc.Encode(r.Budget); err != nil {
			return
		}
		bw.WriteString(",\n  \"budget\": ")
		bw.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	}
	bw.WriteString("\n}\n")
	bw.Flush()
}

// controlClient talks to a running daemon over its control socket.
type controlClient struct {
	socket string
	http   *http.Client
}

func newControlClient(socket string) *controlClient {
	return &controlClient{
		socket: socket,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		}},
	}
}

func (c *controlClient) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://rouse"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("talk to rouse at %s (is it running?): %w", c.socket, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read from rouse at %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorReply
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return &replyError{status: resp.StatusCode, msg: e.Error}
		}
		return fmt.Errorf("rouse at %s answered %s", c.socket, resp.Status)
	}
	return json.Unmarshal(body, out)
}

// replyError is the error the daemon answered with.
type replyError struct {
	status int // the HTTP status: 422 for a config a reload rejected
	msg    string
}

func (e *replyError) Error() string { return e.msg }

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// clientFlags adds -c and --control and returns the socket to talk to:
// --control, else [rouse].control of the main config file alone.
func clientFlags(fs *flag.FlagSet, getenv func(string) string, stderr io.Writer) func() (string, int) {
	file := configFlag(fs, getenv)
	var socket string
	fs.StringVar(&socket, "control", "", "control `SOCKET` of the running daemon")
	return func() (string, int) {
		if socket != "" {
			return socket, 0
		}
		control, err := LoadControl(file())
		if err != nil {
			return "", reportLoad(err, stderr)
		}
		return control, 0
	}
}

func cmdStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rouse status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON (the fields listed in the README's \"Status and logs\")")
	socket := clientFlags(fs, getenv, stderr)
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) > 1 {
		return exitConfig
	}
	path, code := socket()
	if path == "" {
		return code
	}
	q := "/v1/status"
	if len(pos) == 1 {
		q += "?app=" + url.QueryEscape(pos[0])
	}
	var reply statusReply
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := newControlClient(path).do(ctx, http.MethodGet, q, &reply); err != nil {
		fmt.Fprintln(stderr, "rouse status:", err)
		return 1
	}
	switch {
	case *asJSON:
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(reply)
	case len(pos) == 1:
		writeStatusDetail(stdout, reply.Apps[0], time.Now())
	default:
		writeStatusTable(stdout, reply.Apps, time.Now())
		if reply.Budget != nil {
			writeBudget(stdout, *reply.Budget)
		}
	}
	return 0
}

func cmdReload(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rouse reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := clientFlags(fs, getenv, stderr)
	if pos, err := parseFlags(fs, args); err != nil || len(pos) > 0 {
		return exitConfig
	}
	path, code := socket()
	if path == "" {
		return code
	}
	var reply statusReply
	if err := newControlClient(path).do(ctx, http.MethodPost, "/v1/reload", &reply); err != nil {
		var re *replyError
		if errors.As(err, &re) && re.status == http.StatusUnprocessableEntity {
			fmt.Fprintf(stderr, "rouse reload: rejected, the running config stays:\n%s\n", strings.TrimSpace(err.Error()))
			return exitConfig // a bad config, as for rouse check
		}
		fmt.Fprintln(stderr, "rouse reload:", err)
		return 1
	}
	fmt.Fprintf(stdout, "reloaded: %d apps\n", len(reply.Apps))
	return 0
}

func cmdAppAction(ctx context.Context, verb string, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rouse "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := clientFlags(fs, getenv, stderr)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return exitConfig
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "usage: rouse %s APP\n", verb)
		return exitConfig
	}
	path, code := socket()
	if path == "" {
		return code
	}
	var reply statusReply
	if err := newControlClient(path).do(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(pos[0])+"/"+verb, &reply); err != nil {
		fmt.Fprintf(stderr, "rouse %s %s: %s\n", verb, pos[0], strings.TrimSpace(err.Error()))
		return 1
	}
	st := reply.Apps[0]
	fmt.Fprintf(stdout, "%s: %s", st.Name, st.State)
	if st.PID != 0 {
		fmt.Fprintf(stdout, " (pid %d)", st.PID)
	}
	fmt.Fprintln(stdout)
	return 0
}
