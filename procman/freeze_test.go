package procman

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// freezers are the ways a process is frozen: its cgroup, or SIGSTOP to its
// group (with a guard on the subreaper fallback, and with no guard at all).
var freezers = []struct {
	name  string
	guard *containment
}{
	{"cgroup", &containments[0]},
	{"subreaper", &containments[1]},
	{"no guard", nil},
}

func freezerSpec(t *testing.T, c *containment, spec Spec) Spec {
	t.Helper()
	if c != nil {
		spec.Guard = containedGuard(t, *c)
	}
	return spec
}

// A process that burns CPU uses none while frozen, runs again once
// thawed, and a frozen process that handles SIGTERM gets it from Stop
// (thawed first) rather than being killed at stop_timeout.
func TestFreezeThaw(t *testing.T) {
	for _, f := range freezers {
		t.Run(f.name, func(t *testing.T) {
			p := start(t, freezerSpec(t, f.guard, helperSpec(t, "spin")))
			cpu := func() time.Duration {
				_, c, err := p.usage()
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			eventually(t, 10*time.Second, "the spinner uses CPU", func() bool { return cpu() > 20*time.Millisecond })

			if err := p.Freeze(); err != nil {
				t.Fatal(err)
			}
			if err := p.WaitFrozen(testContext(t)); err != nil {
				t.Fatal(err)
			}
			if !p.Frozen() {
				t.Fatal("Frozen() = false after Freeze")
			}
			before := cpu()
			// A measurement window, not a wait for a condition: a frozen
			// process must not run during it.
			time.Sleep(200 * time.Millisecond)
			if used := cpu() - before; used > 20*time.Millisecond {
				t.Errorf("frozen process used %v of CPU in 200ms", used)
			}

			if err := p.Thaw(); err != nil {
				t.Fatal(err)
			}
			thawed := cpu()
			eventually(t, 10*time.Second, "the thawed spinner runs", func() bool { return cpu()-thawed > 20*time.Millisecond })
			if err := p.WaitFrozen(testContext(t)); err == nil {
				t.Error("WaitFrozen of a thawed process returned nil")
			}
		})
	}
}

func TestStopFrozen(t *testing.T) {
	for _, f := range freezers {
		t.Run(f.name, func(t *testing.T) {
			var out lines
			spec := freezerSpec(t, f.guard, helperSpec(t, "slowterm"))
			spec.Output, spec.StopTimeout = out.output, 10*time.Second
			p := start(t, spec)
			out.waitFor(t, "stdout: waiting")
			if err := p.Freeze(); err != nil {
				t.Fatal(err)
			}
			if err := p.WaitFrozen(testContext(t)); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			if err := p.Stop(testContext(t)); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(t0); took > 5*time.Second {
				t.Errorf("Stop of a frozen process took %v: it was killed at the stop timeout", took)
			}
			if !strings.Contains(strings.Join(out.get(), "\n"), "stdout: term") {
				t.Errorf("the frozen process never got SIGTERM; output: %q", out.get())
			}
			if err := p.Freeze(); !errors.Is(err, ErrExited) {
				t.Errorf("Freeze after exit = %v, want ErrExited", err)
			}
		})
	}
}
