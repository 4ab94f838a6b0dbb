package procman

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestStartErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"no command", Spec{Name: "a"}, "start a: no command"},
		{"not in PATH", Spec{Name: "b", Argv: []string{"no-such-program-procman"}}, `start b: exec: "no-such-program-procman": executable file not found`},
		{"no such dir", Spec{Name: "c", Argv: []string{"true"}, Dir: "/no/such/dir"}, "start c: dir: stat /no/such/dir: no such file"},
		{"unknown user", Spec{Name: "d", Argv: []string{"true"}, User: "no-such-user-procman"}, "start d: user: unknown user no-such-user-procman"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.spec.User == "" {
				tt.spec.User = currentUser()
			}
			p, err := Start(tt.spec)
			if err == nil {
				p.Kill()
				<-p.Done()
				t.Fatal("Start succeeded")
			}
			if got := err.Error(); !strings.HasPrefix(got, tt.want) {
				t.Errorf("got %q, want prefix %q", got, tt.want)
			}
		})
	}
}

func TestErrRootWithoutUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	_, err := Start(Spec{Name: "blog", Argv: []string{"true"}})
	if !errors.Is(err, ErrRoot) {
		t.Fatalf("got %v, want ErrRoot", err)
	}
	if !strings.Contains(err.Error(), "set user") || !strings.HasPrefix(err.Error(), "start blog: ") {
		t.Errorf("message %q should name the app and tell to set user", err)
	}
}

func TestRunsAsUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip(err)
	}
	groups, err := nobody.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	var out lines
	p := start(t, Spec{
		Name:   "as-nobody",
		Shell:  `echo "uid $(id -u)"; echo "gid $(id -g)"; echo "groups $(id -G)"; echo "home $HOME"`,
		Dir:    "/",
		User:   "nobody",
		Output: out.output,
	})
	waitDone(t, p, 10*time.Second)
	if err := p.Err(); err != nil {
		t.Fatal(err, p.StderrTail(5))
	}
	want := []string{
		"stdout: uid " + nobody.Uid,
		"stdout: gid " + nobody.Gid,
		"stdout: groups " + strings.Join(groups, " "),
		"stdout: home " + nobody.HomeDir,
	}
	if got := out.get(); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestEnvDirAndExitStatus(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out lines
	p := start(t, Spec{
		Name:   "env",
		Shell:  `pwd; echo "$PROCMAN_A $PROCMAN_B"; exit 3`,
		Dir:    dir,
		Env:    []string{"PROCMAN_A=first", "PROCMAN_B=b", "PROCMAN_A=later"},
		User:   currentUser(),
		Output: out.output,
	})
	waitDone(t, p, 10*time.Second)
	resolved, _ := filepath.EvalSymlinks(dir)
	want := []string{"stdout: " + resolved, "stdout: later b"}
	if got := out.get(); !slices.Equal(got, want) {
		t.Errorf("output %q, want %q", got, want)
	}
	var exit *exec.ExitError
	if err := p.Err(); !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("Err() = %v, want exit status 3", err)
	}
	if want := "run env pid " + strconv.Itoa(p.Pid()) + ": exit status 3"; p.Err().Error() != want {
		t.Errorf("Err() = %q, want %q", p.Err(), want)
	}

	ok := start(t, Spec{Name: "ok", Argv: []string{"true"}, User: currentUser()})
	waitDone(t, ok, 10*time.Second)
	if err := ok.Err(); err != nil {
		t.Errorf("Err() = %v for status 0", err)
	}
}

func TestExtraFiles(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := start(t, Spec{
		Name:       "fds",
		Shell:      `echo "fd 3" >&3; echo "fd 4" >&4`,
		User:       currentUser(),
		ExtraFiles: []*os.File{w, w},
	})
	w.Close()
	waitDone(t, p, 10*time.Second)
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if want := "fd 3\nfd 4\n"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode        string
		signal      syscall.Signal
		stopTimeout time.Duration
		wantErr     string // in Err() after Stop
		minTook     time.Duration
	}{
		{mode: "sleep", wantErr: "signal: terminated"},
		{mode: "sleep", signal: syscall.SIGINT, wantErr: "signal: interrupt"},
		{mode: "ignoreterm", stopTimeout: 300 * time.Millisecond, wantErr: "signal: killed", minTook: 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.mode+"/"+tt.wantErr, func(t *testing.T) {
			t.Parallel()
			var out lines
			spec := helperSpec(t, tt.mode)
			spec.StopSignal = tt.signal
			spec.StopTimeout = tt.stopTimeout
			spec.Output = out.output
			p := start(t, spec)
			if tt.mode == "ignoreterm" {
				out.waitFor(t, "stdout: ignoring SIGTERM")
			}
			began := time.Now()
			if err := p.Stop(testContext(t)); err != nil {
				t.Fatal(err)
			}
			took := time.Since(began)
			select {
			case <-p.Done():
			default:
				t.Fatal("Stop returned before Done was closed")
			}
			if err := p.Err(); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Err() = %v, want %q", err, tt.wantErr)
			}
			if took < tt.minTook || took > tt.minTook+5*time.Second {
				t.Errorf("Stop took %s, want about %s", took, tt.minTook)
			}
		})
	}
}

// Concurrent Stops share one stop signal: an app that shuts down gracefully
// is not hit by a second SIGTERM (many treat that as "exit now").
func TestStopIsIdempotent(t *testing.T) {
	t.Parallel()
	var out lines
	spec := helperSpec(t, "slowterm")
	spec.Output = out.output
	p := start(t, spec)
	out.waitFor(t, "stdout: waiting")

	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = p.Stop(testContext(t)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Stop %d: %v", i, err)
		}
	}
	if err := p.Err(); err != nil {
		t.Errorf("Err() = %v, want a clean exit", err)
	}
	var terms int
	for _, line := range out.get() {
		if line == "stdout: term" {
			terms++
		}
	}
	if terms != 1 {
		t.Errorf("the app got %d SIGTERMs, want 1", terms)
	}
	if err := p.Stop(testContext(t)); err != nil {
		t.Errorf("Stop after exit: %v", err)
	}
	p.Kill() // a no-op now
}

func TestStopContextEnds(t *testing.T) {
	t.Parallel()
	var out lines
	spec := helperSpec(t, "ignoreterm")
	spec.Output = out.output
	p := start(t, spec)
	out.waitFor(t, "stdout: ignoring SIGTERM")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := p.Stop(ctx) // StopTimeout is the default 10s
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop = %v, want DeadlineExceeded", err)
	}
	waitDone(t, p, 5*time.Second) // SIGKILL was sent anyway
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("Err() = %v, want killed", err)
	}
}

func TestGrandchildrenDie(t *testing.T) {
	t.Parallel()
	t.Run("on Stop", func(t *testing.T) {
		t.Parallel()
		var out lines
		spec := helperSpec(t, "grandchild")
		spec.Output = out.output
		p := start(t, spec)
		grandchild := out.waitPid(t, "stdout: grandchild ")
		if err := p.Stop(testContext(t)); err != nil {
			t.Fatal(err)
		}
		groupGone(t, p.Pid(), grandchild)
	})
	t.Run("when the leader exits", func(t *testing.T) {
		t.Parallel()
		var out lines
		spec := helperSpec(t, "grandchild", "HELPER_EXIT=1")
		spec.Output = out.output
		p := start(t, spec)
		waitDone(t, p, 10*time.Second)
		if err := p.Err(); err != nil {
			t.Fatal(err)
		}
		groupGone(t, p.Pid(), out.waitPid(t, "stdout: grandchild "))
	})
	t.Run("of a shell string", func(t *testing.T) {
		t.Parallel()
		// The background job ignores SIGTERM and keeps the output pipes open;
		// only the group SIGKILL after sh exits ends it.
		var out lines
		began := time.Now()
		p := start(t, Spec{
			Name:   "shell",
			Shell:  `(trap '' TERM; sleep 1000) & echo "background $!"`,
			User:   currentUser(),
			Output: out.output,
		})
		waitDone(t, p, 10*time.Second)
		if took := time.Since(began); took >= OutputDrainTimeout {
			t.Errorf("Done took %s: the group was not killed, the drain timeout ended it", took)
		}
		groupGone(t, p.Pid(), out.waitPid(t, "stdout: background "))
	})
}

// A process that left the group but holds the output pipes delays Done by
// OutputDrainTimeout at most.
func TestEscapedProcessDoesNotHoldDone(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip(err)
	}
	var out lines
	p := start(t, Spec{
		Name:   "escape",
		Shell:  `setsid sleep 1000 & echo "escaped $!"; exec sleep 1000`,
		User:   currentUser(),
		Output: out.output,
	})
	escaped := out.waitPid(t, "stdout: escaped ")
	t.Cleanup(func() { _ = syscall.Kill(escaped, syscall.SIGKILL) })
	eventually(t, 5*time.Second, "the background process left the group", func() bool {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(escaped) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		st, _ := parseStat(data)
		return st.pgrp == escaped
	})

	began := time.Now()
	if err := p.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < OutputDrainTimeout || took > OutputDrainTimeout+2*time.Second {
		t.Errorf("Stop took %s, want a little over OutputDrainTimeout (%s)", took, OutputDrainTimeout)
	}
	if !alive(escaped) {
		t.Fatal("the escaped process died: the test proves nothing")
	}
}
