package procman

import (
	"errors"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func startGuard(t *testing.T) *Guard {
	t.Helper()
	return startGuardWith(t, GuardOptions{})
}

func startGuardWith(t *testing.T, opts GuardOptions) *Guard {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	g, err := StartGuard([]string{exe, "__guard"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

func TestGuarded(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want guardedSet
	}{
		{"empty", "", guardedSet{}},
		{"added", "+100\n+200\n", guardedSet{groups: []int{100, 200}}},
		{"removed", "+100\n+200\n-100\n", guardedSet{groups: []int{200}}},
		{"no final newline", "+100\n+300", guardedSet{groups: []int{100, 300}}},
		{"never -1, 0 or 1", "+-1\n+0\n+1\n+2\n+02\n", guardedSet{groups: []int{2}}},
		{"garbage", "hello\n+\n+12x\n*5\n\n+7\n", guardedSet{groups: []int{7}}},
		{"cgroups", "+/cg/a\n+/cg/b\n-/cg/a\n+/cg/../etc\n+cg/rel\n", guardedSet{cgroups: []string{"/cg/b"}}},
		{"scopes", "+=ROUSE_SCOPE=x.1\n+=ROUSE_SCOPE=x.2\n-=ROUSE_SCOPE=x.1\n+=PATH=/bin\n", guardedSet{scopes: []string{"ROUSE_SCOPE=x.2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := guarded(strings.NewReader(tt.in))
			slices.Sort(got.groups)
			slices.Sort(got.cgroups)
			if !slices.Equal(got.groups, tt.want.groups) || !slices.Equal(got.cgroups, tt.want.cgroups) || !slices.Equal(got.scopes, tt.want.scopes) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// Closing the guard's stdin without stopping the app is what rouse dying
// looks like to the guard: it kills the whole group.
func TestGuardKillsGroupsAtEOF(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	var out lines
	spec := helperSpec(t, "grandchild")
	spec.Guard = g
	spec.Output = out.output
	p := start(t, spec)
	grandchild := out.waitPid(t, "stdout: grandchild ")

	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, p, 5*time.Second)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Err() = %v, want killed by the guard", err)
	}
	groupGone(t, p.Pid(), grandchild)
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// The real thing: a rouse (played by a helper) is SIGKILLed; Pdeathsig kills
// its app, the guard kills the app's grandchild.
func TestGuardOutlivesKilledRouse(t *testing.T) {
	t.Parallel()
	var out lines
	spec := helperSpec(t, "rouse")
	spec.Output = out.output
	rouse := start(t, spec)
	guard := out.waitPid(t, "stdout: guard ")
	app := out.waitPid(t, "stdout: app ")
	grandchild := out.waitPid(t, "stdout: grandchild ")
	t.Cleanup(func() {
		for _, pid := range []int{guard, app, grandchild} {
			if alive(pid) {
				t.Errorf("pid %d survived", pid)
			}
		}
	})

	rouse.Kill()
	waitDone(t, rouse, 5*time.Second)
	groupGone(t, app, grandchild, guard)
}

// A guard that died does not make Start fail or block.
func TestGuardDead(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	if err := syscall.Kill(g.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-g.Done()
	spec := helperSpec(t, "sleep")
	spec.Guard = g
	p := start(t, spec)
	if err := p.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Close = %v, want the guard's death", err)
	}
}

// A guard that stopped reading delays a caller by guardWriteTimeout at most,
// and Close kills it when it does not exit.
func TestGuardStuck(t *testing.T) {
	t.Parallel()
	g, err := StartGuard([]string{"sleep", "1000"}, GuardOptions{}) // never reads stdin
	if err != nil {
		t.Fatal(err)
	}
	g.closeTimeout = 100 * time.Millisecond
	t.Cleanup(func() { _ = g.Close() })

	// Fill the pipe.
	_ = g.w.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := g.w.Write(make([]byte, 1<<20)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("filling the pipe: %v", err)
	}
	began := time.Now()
	g.add(12345)
	if took := time.Since(began); took > guardWriteTimeout+time.Second {
		t.Errorf("add blocked for %s", took)
	}
	began = time.Now()
	if err := g.Close(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Close = %v, want the guard killed", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("Close took %s", took)
	}
}
