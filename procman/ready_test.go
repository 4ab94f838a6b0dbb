package procman

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestWaitReady(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		mode  string
		unix  bool
		probe func(network, addr string) Probe
	}{
		{"tcp", "tcp", false, TCPProbe},
		{"http over tcp", "http", false, func(n, a string) Probe { return HTTPProbe(n, a, "/health") }},
		{"http over unix", "http", true, func(n, a string) Probe { return HTTPProbe(n, a, "health") }},
		{"tcp over unix", "tcp", true, TCPProbe},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			network, addr := "tcp", freeAddr(t)
			if tt.unix {
				network, addr = "unix", filepath.Join(t.TempDir(), "app.sock")
			}
			// The app binds only after 150ms: the probe must keep trying.
			p := start(t, helperSpec(t, tt.mode, "HELPER_DELAY=150ms", "HELPER_NETWORK="+network, "HELPER_ADDR="+addr))
			began := time.Now()
			if err := WaitReady(testContext(t), p, tt.probe(network, addr), 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(began); took < 150*time.Millisecond {
				t.Errorf("ready after %s, before the app could bind", took)
			}
		})
	}
}

// The first attempts come within a millisecond or two (most apps bind fast,
// and every millisecond here is added to the first request), then slow down
// to one every maxProbeInterval. Fake time makes the schedule exact.
func TestWaitReadySchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &Process{name: "app", pid: 42, done: make(chan struct{})}
		began := time.Now()
		var calls []time.Duration
		probe := func(ctx context.Context) error {
			calls = append(calls, time.Since(began))
			if len(calls) < 20 {
				return errors.New("connection refused")
			}
			return nil
		}
		if err := WaitReady(t.Context(), p, probe, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		want := []time.Duration{0, 250 * time.Microsecond, 625 * time.Microsecond, 1187500 * time.Nanosecond}
		if !slices.Equal(calls[:len(want)], want) {
			t.Errorf("first attempts at %v, want %v", calls[:len(want)], want)
		}
		for i := 1; i < len(calls); i++ {
			if gap := calls[i] - calls[i-1]; gap > maxProbeInterval {
				t.Errorf("gap of %s before attempt %d", gap, i)
			}
		}
		if last := calls[len(calls)-1] - calls[len(calls)-2]; last != maxProbeInterval {
			t.Errorf("last gap %s, want the cap %s", last, maxProbeInterval)
		}
	})
}

// An exit is seen at once, even while an attempt hangs; so are the timeout
// and the end of ctx.
func TestWaitReadyEndsAtOnce(t *testing.T) {
	hang := func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}
	tests := []struct {
		name string
		end  func(p *Process, cancel context.CancelFunc)
		want error
		at   time.Duration
	}{
		{"exit", func(p *Process, _ context.CancelFunc) {
			time.AfterFunc(300*time.Millisecond, func() { close(p.done) })
		}, ErrExited, 300 * time.Millisecond},
		{"timeout", func(*Process, context.CancelFunc) {}, ErrNotReady, 2 * time.Second},
		{"ctx", func(_ *Process, cancel context.CancelFunc) {
			time.AfterFunc(700*time.Millisecond, cancel)
		}, context.Canceled, 700 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &Process{name: "app", pid: 42, done: make(chan struct{})}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				began := time.Now()
				tt.end(p, cancel)
				err := WaitReady(ctx, p, hang, 2*time.Second)
				if !errors.Is(err, tt.want) {
					t.Fatalf("got %v, want %v", err, tt.want)
				}
				if took := time.Since(began); took != tt.at {
					t.Errorf("returned after %s, want %s", took, tt.at)
				}
			})
		})
	}
}

func TestWaitReadyExited(t *testing.T) {
	t.Parallel()
	p := start(t, helperSpec(t, "exit", "HELPER_CODE=3"))
	// A probe that hangs: the exit must be seen during the attempt, not
	// after it.
	hang := func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}
	var exitedAt time.Time
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		<-p.Done()
		exitedAt = time.Now()
	}()
	err := WaitReady(testContext(t), p, hang, 10*time.Second)
	returnedAt := time.Now()
	<-watched
	if !errors.Is(err, ErrExited) {
		t.Fatalf("got %v, want ErrExited", err)
	}
	for _, want := range []string{"helper-exit", "exit status 3", "fatal: cannot open database"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// Far below probeAttemptLimit: the hanging attempt was not waited for.
	if lag := returnedAt.Sub(exitedAt); lag > probeAttemptLimit/2 {
		t.Errorf("WaitReady returned %s after the exit", lag)
	}
}

func TestWaitReadyTimeout(t *testing.T) {
	t.Parallel()
	t.Run("nothing listens", func(t *testing.T) {
		t.Parallel()
		p := start(t, helperSpec(t, "sleep"))
		began := time.Now()
		err := WaitReady(testContext(t), p, TCPProbe("tcp", freeAddr(t)), 300*time.Millisecond)
		if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("got %v, want ErrNotReady with the last probe error", err)
		}
		if took := time.Since(began); took < 300*time.Millisecond || took > 3*time.Second {
			t.Errorf("took %s, want about 300ms", took)
		}
	})
	t.Run("http 500", func(t *testing.T) {
		t.Parallel()
		addr := freeAddr(t)
		p := start(t, helperSpec(t, "http", "HELPER_NETWORK=tcp", "HELPER_ADDR="+addr))
		err := WaitReady(testContext(t), p, HTTPProbe("tcp", addr, "/fail"), 500*time.Millisecond)
		if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "500") {
			t.Fatalf("got %v, want ErrNotReady with the status", err)
		}
	})
	t.Run("context", func(t *testing.T) {
		t.Parallel()
		p := start(t, helperSpec(t, "sleep"))
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		err := WaitReady(ctx, p, TCPProbe("tcp", freeAddr(t)), 10*time.Second)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}
