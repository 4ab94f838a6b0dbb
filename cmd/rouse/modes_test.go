package main

import (
	"fmt"
	"strings"
	"testing"
)

// The real daemon runs handoff and inetd apps: through the exec shim,
// with LISTEN_PID the app's own pid (the backend exits 3 otherwise).
func TestHandoffAndInetdThroughTheDaemon(t *testing.T) {
	handoffPort, inetdPort := freePort(t), freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.handed]
mode = "handoff"
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-name", "handed", "-proto", "echo", "-banner", "-listen-fds"]

[apps.perconn]
mode = "inetd"
max_conns = 4
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-name", "perconn", "-inetd"]
`, handoffPort, inetdPort))
	r := startRouse(t, file, control)
	got := echoOnce(t, handoffPort, "through the app's own socket\n")
	if !strings.HasSuffix(got, "through the app's own socket\n") || !strings.HasPrefix(got, "handed") {
		t.Errorf("handoff app answered %q", got)
	}
	// rouse sees the app accept by sampling: the app may have served
	// the connection already.
	waitFor(t, "the handoff app to be seen ready", func() bool { return r.app(t, "handed").state == "ready" })
	if st := r.app(t, "handed"); st.starts != 1 {
		t.Errorf("handoff app %+v, want one start", st)
	}
	for i := range 3 {
		got := echoOnce(t, inetdPort, "hi\n")
		f := strings.Fields(got)
		if len(f) != 5 || f[0] != "perconn" || f[1] != "127.0.0.1" || f[4] != "hi" {
			t.Errorf("inetd connection %d answered %q, want the banner with REMOTE_ADDR then the echo", i, got)
		}
	}
	if st := r.app(t, "perconn"); st.starts != 3 {
		t.Errorf("inetd app started %d processes for 3 connections", st.starts)
	}
}
