package activator

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestReconfigureNewCommandRestartsOnceConnectionsAreDone(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo", "-banner", "-name", "old"}, nil)
	c1, pid1 := bannerConn(t, ta.addr)
	cfg := *ta.config()
	cfg.Process.Argv = append(slices.Clone(cfg.Process.Argv), "-name", "new") // the last -name wins
	if why := ta.Reconfigure(cfg); !strings.Contains(why, "restarting") {
		t.Fatalf("Reconfigure with a new command: %q", why)
	}
	// A new connection is held while the old process finishes its own.
	type result struct {
		line string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		c2, pid2 := bannerConn(t, ta.addr)
		defer c2.Close()
		if pid2 == pid1 {
			got <- result{"served by the old process", nil}
			return
		}
		io.WriteString(c2, "x")
		c2.(interface{ CloseWrite() error }).CloseWrite()
		b, err := io.ReadAll(c2)
		got <- result{string(b), err}
	}()
	waitFor(t, "the new connection to be held", func() bool { return ta.Status().Queued == 1 })
	if _, err := io.WriteString(c1, "still old\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("still old\n"))
	if _, err := io.ReadFull(c1, buf); err != nil {
		t.Fatalf("the old process stopped serving its connection: %v", err)
	}
	c1.Close()
	r := <-got
	if r.err != nil || r.line != "x" {
		t.Fatalf("held connection after the restart: %q %v", r.line, r.err)
	}
	if m := ta.Metrics(); m.Stops["reload"] != 1 {
		t.Errorf("stops %v, want one for the reload", m.Stops)
	}
}

func TestReconfigureOtherSettingsKeepTheProcess(t *testing.T) {
	ta := newTestApp(t, []string{"-proto", "echo", "-banner"}, nil)
	c, pid := bannerConn(t, ta.addr)
	c.Close()
	cfg := *ta.config()
	cfg.IdleTimeout = 100 * time.Millisecond
	if why := ta.Reconfigure(cfg); strings.Contains(why, "restarting") {
		t.Fatalf("Reconfigure with a new idle_timeout: %q", why)
	}
	if st := ta.Status(); st.PID != pid {
		t.Errorf("pid %d, want %d kept", st.PID, pid)
	}
	ta.waitState(t, Idle) // the new idle_timeout applies
}
