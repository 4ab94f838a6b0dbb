package activator

import (
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// acceptGoroutines counts the goroutines accepting for a tcp or inetd app.
func acceptGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "activator.(*App).acceptFrom(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestListenWatchWakesOncePerArm(t *testing.T) {
	w, err := NewListenWatch()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var wakes atomic.Int32
	id, err := w.watch(raw, func() { wakes.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	if wakes.Load() != 0 {
		t.Fatal("woken with no connection waiting")
	}
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	waitFor(t, "a wake for the first connection", func() bool { return wakes.Load() == 1 })
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	// One-shot: a second arrival wakes nothing until armed. Armed with
	// connections waiting, it wakes at once.
	if err := w.arm(raw, id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a wake when armed with connections waiting", func() bool { return wakes.Load() == 2 })
	for range 2 {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if err := w.arm(raw, id); err != nil {
		t.Fatal(err)
	}
	if err := w.unwatch(raw, id); err != nil {
		t.Fatal(err)
	}
	c3, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	// A barrier: a second socket's arrival, after c3's, is reported; had
	// the first still been registered, c3 would have been reported first.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	raw2, err := ln2.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var wakes2 atomic.Int32
	id2, err := w.watch(raw2, func() { wakes2.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer w.unwatch(raw2, id2)
	c4, err := net.Dial("tcp", ln2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c4.Close()
	waitFor(t, "a wake for the second socket", func() bool { return wakes2.Load() == 1 })
	if n := wakes.Load(); n != 2 {
		t.Errorf("%d wakes after unwatch, want 2", n)
	}
}

// An idle tcp app has no goroutine blocked in accept: the watch wakes it,
// it accepts while it runs, and once stopped for idleness it hands its
// listener back to the watch, which wakes it again.
func TestIdleTCPAppAcceptsOnlyWhileActive(t *testing.T) {
	before := acceptGoroutines()
	ta := newTestApp(t, []string{"-proto", "echo"}, func(c *Config) {
		c.IdleTimeout = 100 * time.Millisecond
	})
	if n := acceptGoroutines() - before; n != 0 {
		t.Fatalf("%d accept goroutines for an idle app, want 0", n)
	}
	for round := range 2 {
		msg := "round " + strconv.Itoa(round)
		if got, err := echo(t, ta.addr, msg); err != nil || got != msg {
			t.Fatalf("echo %q: %q, %v", msg, got, err)
		}
		ta.waitState(t, Idle)
		waitFor(t, "no accept goroutine once idle", func() bool { return acceptGoroutines() == before })
	}
	if st := ta.Status(); st.Starts != 2 {
		t.Errorf("starts %d, want 2", st.Starts)
	}
}

// Clients aimed at the idle boundary of an app not written in Go (Python's
// socketserver, backlog 5): bursts of connections after pauses from 0 to
// twice idle_timeout (20 ms), so that some arrive while the app runs, some
// as it stops, some once it is idle; every connection gets all its bytes.
func TestIdleBoundaryLosesNoConnectionPython(t *testing.T) {
	const size = 1000
	ta := newPyApp(t, "stream", []string{"--size", strconv.Itoa(size)}, func(c *Config) {
		c.Mode = ModeTCP
		c.IdleTimeout = 20 * time.Millisecond
	})
	var errs []string
	var mu sync.Mutex
	burst := func() {
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var e string
				c, err := net.DialTimeout("tcp", ta.addr, 5*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(20 * time.Second))
					got, err := io.ReadAll(c)
					c.Close()
					if err != nil || len(got) != size {
						e = "got " + strconv.Itoa(len(got)) + " bytes, want " + strconv.Itoa(size)
					}
				} else {
					e = err.Error()
				}
				if e != "" {
					mu.Lock()
					errs = append(errs, e)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	for r := range 20 {
		time.Sleep(time.Duration(2*r) * time.Millisecond) // a client's pause, not a wait for a condition
		burst()
	}
	ta.waitState(t, Idle)
	burst() // and once surely from idle
	for _, e := range errs {
		t.Error(e)
	}
	st := ta.waitState(t, Idle)
	if st.Starts < 2 {
		t.Errorf("starts %d, want 2 or more", st.Starts)
	}
	if st.Failures != 0 {
		t.Errorf("failures %d, want 0", st.Failures)
	}
}

// An app that fails every start: its listener stays served through the
// back-off, is handed back to the watch once the app is idle, and a later
// connection still wakes it for another attempt.
func TestCrashingTCPAppDozesAndWakes(t *testing.T) {
	before := acceptGoroutines()
	ta := newTestApp(t, []string{"-exit", "3"}, func(c *Config) {
		c.BackoffMax = 100 * time.Millisecond
	})
	attempt := func() {
		c, err := net.DialTimeout("tcp", ta.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if n, _ := io.Copy(io.Discard, c); n != 0 {
			t.Errorf("%d bytes from an app that never started", n)
		}
		c.Close()
	}
	attempt()
	ta.waitState(t, Idle) // the back-off is over
	waitFor(t, "no accept goroutine after the back-off", func() bool { return acceptGoroutines() == before })
	starts := ta.Status().Starts
	attempt()
	waitFor(t, "another start attempt", func() bool { return ta.Status().Starts > starts })
}

// A reload that moves an idle tcp app to other addresses: the old
// listener is unwatched and closed, the new ones are watched and wake it.
func TestSetListenersWatchesTheNewOnes(t *testing.T) {
	before := acceptGoroutines()
	ta := newTestApp(t, []string{"-proto", "echo"}, func(c *Config) {
		c.IdleTimeout = 100 * time.Millisecond
	})
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	ta.mu.Lock()
	old := ta.lns[0]
	ta.mu.Unlock()
	ln2, ln3 := listen(), listen()
	ta.SetListeners([]net.Listener{ln2})
	if _, err := net.Dial("tcp", old.Addr().String()); err == nil {
		t.Error("the old address still takes connections")
	}
	if got, err := echo(t, ln2.Addr().String(), "two"); err != nil || got != "two" {
		t.Fatalf("echo on the new address: %q, %v", got, err)
	}
	ta.waitState(t, Idle)
	waitFor(t, "no accept goroutine once idle", func() bool { return acceptGoroutines() == before })
	ta.SetListeners([]net.Listener{ln2, ln3}) // ln2 stays as it is
	for _, ln := range []net.Listener{ln3, ln2} {
		if got, err := echo(t, ln.Addr().String(), "again"); err != nil || got != "again" {
			t.Fatalf("echo on %s: %q, %v", ln.Addr(), got, err)
		}
	}
	ta.waitState(t, Idle)
	waitFor(t, "no accept goroutine once idle again", func() bool { return acceptGoroutines() == before })
}
