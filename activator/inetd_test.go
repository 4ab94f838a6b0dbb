package activator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestInetdOneProcessPerConnection(t *testing.T) {
	ta := newShimApp(t, ModeInetd, []net.Listener{listenTCP(t)}, []string{"-inetd"}, nil)
	const n = 50
	var wg sync.WaitGroup
	pids := make(chan int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := fmt.Sprintf("connection %d\n", i)
			c, f := banner(t, ta.addr, msg)
			defer c.Close()
			// NAME REMOTE_ADDR REMOTE_PORT PID: the client's own address.
			local := c.LocalAddr().(*net.TCPAddr)
			if len(f) != 4 || f[1] != local.IP.String() || f[2] != strconv.Itoa(local.Port) {
				t.Errorf("banner %q: want REMOTE_ADDR %s REMOTE_PORT %d", f, local.IP, local.Port)
			}
			readEcho(t, c, msg)
			c.(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				t.Errorf("after the echo: %q, %v; want EOF as the process exits", rest, err)
			}
			pids <- pidOf(t, f)
		}()
	}
	wg.Wait()
	close(pids)
	seen := map[int]bool{}
	for pid := range pids {
		if seen[pid] {
			t.Errorf("pid %d served two connections", pid)
		}
		seen[pid] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct processes for %d connections", len(seen), n)
	}
	st := ta.waitState(t, Idle)
	if st.Starts != n || st.Conns != 0 || st.Queued != 0 || st.Failures != 0 {
		t.Errorf("status %+v: want %d starts, nothing running or failed", st, n)
	}
	// Every process was reaped: alive counts our zombies as alive.
	for pid := range seen {
		if alive(pid) {
			t.Errorf("process %d not reaped", pid)
		}
	}
}

func TestInetdMaxConns(t *testing.T) {
	const limit, n = 3, 12
	ta := newShimApp(t, ModeInetd, []net.Listener{listenTCP(t)}, []string{"-inetd"}, func(c *Config) {
		c.MaxConns = limit
	})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := fmt.Sprintf("held %d\n", i)
			c, _ := banner(t, ta.addr, msg)
			defer c.Close()
			readEcho(t, c, msg)
			time.Sleep(100 * time.Millisecond) // holding the process, not waiting for a condition
		}()
	}
	maxConns, queued := 0, false
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(5 * time.Millisecond): // sampling the status
		}
		st := ta.Status()
		maxConns = max(maxConns, st.Conns)
		queued = queued || st.Queued > 0
	}
	if maxConns > limit {
		t.Errorf("status showed %d processes at once, max_conns is %d", maxConns, limit)
	}
	if !queued {
		t.Error("no connection ever waited for a slot")
	}
	// The processes' own record: no more than limit alive at once.
	waitFor(t, "every process to record its end", func() bool { return len(lines(ta.ends)) == n })
	if got := maxOverlap(t, lines(ta.starts), lines(ta.ends)); got > limit || got < 1 {
		t.Errorf("%d processes ran at once, max_conns is %d", got, limit)
	}
}

func lines(file string) []string {
	b, _ := os.ReadFile(file)
	return strings.Fields(strings.ReplaceAll(string(b), " ", "@"))
}

// maxOverlap returns how many [start, end] intervals of the same pids
// overlapped at most, from lines "PID@UNIXNANO".
func maxOverlap(t *testing.T, starts, ends []string) int {
	t.Helper()
	type event struct {
		at    int64
		delta int
	}
	var events []event
	for _, set := range []struct {
		lines []string
		delta int
	}{{starts, 1}, {ends, -1}} {
		for _, l := range set.lines {
			_, at, _ := strings.Cut(l, "@")
			ns, err := strconv.ParseInt(at, 10, 64)
			if err != nil {
				t.Fatalf("bad line %q", l)
			}
			events = append(events, event{ns, set.delta})
		}
	}
	slices.SortFunc(events, func(a, b event) int {
		if a.at != b.at {
			return int(a.at - b.at)
		}
		return a.delta - b.delta // an end before a start at the same instant
	})
	cur, top := 0, 0
	for _, e := range events {
		cur += e.delta
		top = max(top, cur)
	}
	return top
}

func TestInetdQueueTimeoutClosesWithALogLine(t *testing.T) {
	ta := newShimApp(t, ModeInetd, []net.Listener{listenTCP(t)}, []string{"-inetd"}, func(c *Config) {
		c.MaxConns = 1
		c.QueueTimeout = 200 * time.Millisecond
	})
	c1, _ := banner(t, ta.addr, "")
	defer c1.Close()
	start := time.Now()
	got, err := echo(t, ta.addr, "waits")
	if got != "" || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
		t.Errorf("second connection got %q, %v; want closed", got, err)
	}
	if took := time.Since(start); took < 150*time.Millisecond || took > 2*time.Second {
		t.Errorf("closed after %s, want about queue_timeout", took)
	}
	waitFor(t, "the log line", func() bool { return ta.logs.has("connection closed", "queue_timeout") })
	if st := ta.Status(); st.Starts != 1 || st.Conns != 1 || st.Queued != 0 {
		t.Errorf("status %+v: want 1 start, 1 running, none queued", st)
	}
}

func TestInetdUnixSocket(t *testing.T) {
	ln := listenUnix(t)
	ta := newShimApp(t, ModeInetd, []net.Listener{ln}, []string{"-inetd", "-name", "ux"}, nil)
	c, f := banner(t, "unix:"+ta.addr, "hi\n")
	defer c.Close()
	if strings.Join(f[:3], " ") != "ux - -" {
		t.Errorf("banner %q: want no REMOTE_ADDR or REMOTE_PORT over a unix socket", f)
	}
	readEcho(t, c, "hi\n")
}

func TestInetdCloseStopsTheProcesses(t *testing.T) {
	ta := newShimApp(t, ModeInetd, []net.Listener{listenTCP(t)}, []string{"-inetd"}, nil)
	var pids []int
	var conns []net.Conn
	for range 3 {
		c, f := banner(t, ta.addr, "")
		defer c.Close()
		conns, pids = append(conns, c), append(pids, pidOf(t, f))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	ta.Close(ctx)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Close took %s", took)
	}
	for i, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d alive after Close", pid)
		}
		if _, err := conns[i].Read(make([]byte, 1)); err == nil {
			t.Error("connection open after Close")
		}
	}
}

func TestInetdStopAndSpawnFailure(t *testing.T) {
	t.Run("stop", func(t *testing.T) {
		ta := newShimApp(t, ModeInetd, []net.Listener{listenTCP(t)}, []string{"-inetd"}, nil)
		c, f := banner(t, ta.addr, "")
		defer c.Close()
		if err := ta.Start(t.Context()); err != nil {
			t.Errorf("Start of an inetd app: %v", err)
		}
		if err := ta.Stop(t.Context()); err != nil {
			t.Fatal(err)
		}
		if pid := pidOf(t, f); alive(pid) {
			t.Errorf("process %d alive after Stop", pid)
		}
		if st := ta.Status(); st.State != Idle || st.Conns != 0 || st.Failures != 0 {
			t.Errorf("after Stop: %+v", st)
		}
		// It still serves.
		c2, _ := banner(t, ta.addr, "")
		c2.Close()
	})
	t.Run("spawn failure", func(t *testing.T) {
		ta := newShimApp(t, ModeInetd, []net.Listener{listenTCP(t)}, nil, func(c *Config) {
			c.Process.Argv = []string{"rouse-test-no-such-program"}
		})
		if got, _ := echo(t, ta.addr, "x"); got != "" {
			t.Fatalf("got %q", got)
		}
		st := ta.waitState(t, Backoff)
		if st.Failures != 1 || !strings.Contains(st.LastError, "rouse-test-no-such-program") {
			t.Errorf("status %+v: want 1 failure naming the program", st)
		}
		start := time.Now()
		if got, _ := echo(t, ta.addr, "x"); got != "" || time.Since(start) > time.Second {
			t.Errorf("during back-off: %q after %s, want closed at once", got, time.Since(start))
		}
		if st := ta.Status(); st.Starts != 1 || st.Failures != 1 {
			t.Errorf("status %+v: the connection during back-off spawned", st)
		}
	})
}
