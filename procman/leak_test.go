package procman

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// A whole cycle (guard, start, output, HTTP readiness, stats, stop) leaves no
// goroutine, fd or process behind. Not parallel: it counts for the whole test
// process.
func TestNoLeaks(t *testing.T) {
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)

	func() {
		g := startGuard(t)
		defer g.Close()
		addr := freeAddr(t)
		var out lines
		spec := helperSpec(t, "http", "HELPER_NETWORK=tcp", "HELPER_ADDR="+addr)
		spec.Guard = g
		spec.Output = out.output
		p := start(t, spec)
		if err := WaitReady(testContext(t), p, HTTPProbe("tcp", addr, "/health"), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Stats(); err != nil {
			t.Fatal(err)
		}
		if err := p.Stop(testContext(t)); err != nil {
			t.Fatal(err)
		}
		groupGone(t, p.Pid())
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
	}()

	eventually(t, 5*time.Second, "goroutines back to the start", func() bool {
		return runtime.NumGoroutine() <= goroutines
	})
	eventually(t, 5*time.Second, "fds back to the start", func() bool {
		return openFDs(t) <= fds
	})
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}
