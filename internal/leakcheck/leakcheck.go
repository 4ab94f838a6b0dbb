// Package leakcheck is how rouse's integration tests check that nothing
// outlives what they start: child processes (and zombies of ours),
// goroutines and file descriptors. It polls each condition with a
// deadline, never sleeps a fixed time.
package leakcheck

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Baseline is what the test process had before a test started anything.
type Baseline struct{ goroutines, fds int }

// Take notes the baseline now.
func Take(t testing.TB) Baseline { return Baseline{runtime.NumGoroutine(), FDs(t)} }

// After makes t's cleanup call stop (with 10 s to finish), then Check
// that the processes pids returns are gone and that goroutines and fds
// are back to b.
func (b Baseline) After(t testing.TB, stop func(context.Context), pids func() []int) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stop(ctx)
		Check(t, pids(), b.goroutines, b.fds)
	})
}

// Check fails t if any of pids still runs (or is an unreaped child of
// ours), or if goroutines or fds did not come back to what they were
// (runtime.NumGoroutine and FDs taken before the test started anything).
func Check(t testing.TB, pids []int, goroutines, fds int) {
	t.Helper()
	for _, pid := range pids {
		// A process of the group that is not our child (the app's own
		// child) is reaped by init, which takes its time.
		deadline := time.Now().Add(2 * time.Second)
		for Alive(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // polling with a deadline
		}
		if Alive(pid) {
			t.Errorf("app process %d still alive after Close", pid)
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("timed out waiting for goroutines back to where they were (%d > %d):\n%s",
				runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	// splice(2) keeps a pool of pipes that only the garbage collector
	// closes: collect while polling.
	WaitFor(t, "fds back to where they were", func() bool {
		runtime.GC()
		return FDs(t) <= fds
	})
}

// WaitFor polls cond until it holds, and fails t after 15 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for d := time.Millisecond; !cond(); d = min(2*d, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(d) // polling interval of a condition with a deadline
	}
}

// Alive reports whether pid runs, or is a zombie of ours: procman must
// reap its children, so an unreaped child is a leak. The zombie of a
// process that is not our child is init's to reap and counts as dead.
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return false
	}
	switch f[0] {
	case "X":
		return false
	case "Z":
		return f[1] == strconv.Itoa(os.Getpid())
	}
	return true
}

// FDs counts the test process's open file descriptors.
func FDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
