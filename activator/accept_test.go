package activator

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An accept loop that keeps getting EMFILE, with accepts succeeding in
// between (fds come free and are taken again), logs one line per
// acceptWarnEvery with the number of errors, not one per error.
func TestAcceptWarningsAreRateLimited(t *testing.T) {
	var buf bytes.Buffer
	warn := newAcceptWarner(slog.New(slog.NewTextHandler(&buf, nil)))
	now := time.Unix(1000, 0)
	warn.now = func() time.Time { return now }
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8001}
	noWait := func(time.Duration) bool { return true }
	lines := func() []string { return strings.Split(strings.TrimSpace(buf.String()), "\n") }

	// 100 accepts, each after 30 EMFILEs, over 5 s: half an interval.
	for i := range 100 {
		if _, ok := acceptWith(emfiles(30), addr, warn, noWait); !ok {
			t.Fatalf("accept %d failed", i)
		}
		now = now.Add(50 * time.Millisecond)
	}
	if got := lines(); len(got) != 1 || !strings.Contains(got[0], "too many open files") || !strings.Contains(got[0], "errors=1 ") {
		t.Fatalf("3000 EMFILEs in 5s logged:\n%s\nwant the first one only", buf.String())
	}
	// Past the interval, the next error says how many there were since.
	now = now.Add(acceptWarnEvery)
	acceptWith(emfiles(1), addr, warn, noWait)
	if got := lines(); len(got) != 2 || !strings.Contains(got[1], "errors=3000 ") {
		t.Fatalf("after the interval:\n%s\nwant a second line with errors=3000 (2999 untold and this one)", buf.String())
	}
	// Errors that end within an interval are told by the next accept
	// after it.
	acceptWith(emfiles(5), addr, warn, noWait)
	now = now.Add(acceptWarnEvery)
	acceptWith(emfiles(0), addr, warn, noWait)
	if got := lines(); len(got) != 3 || !strings.Contains(got[2], "accept works again") || !strings.Contains(got[2], "errors=5 ") {
		t.Fatalf("after the errors ended:\n%s\nwant a third line telling the 5 errors", buf.String())
	}
	acceptWith(emfiles(0), addr, warn, noWait)
	if got := lines(); len(got) != 3 {
		t.Fatalf("an accept with nothing to tell logged:\n%s", buf.String())
	}
}

// emfiles is an accept that fails with EMFILE n times, then succeeds.
func emfiles(n int) func() (int, error) {
	return func() (int, error) {
		if n > 0 {
			n--
			return 0, syscall.EMFILE
		}
		return 1, nil
	}
}

// failingListener fails its first n accepts with EMFILE.
type failingListener struct {
	net.Listener
	n int
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.n > 0 {
		l.n--
		return nil, syscall.EMFILE
	}
	return l.Listener.Accept()
}

// PatientListener waits EMFILE out with one warning, and says ErrClosed
// once closed.
func TestPatientListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	pl := PatientListener(&failingListener{Listener: ln, n: 3}, slog.New(slog.NewTextHandler(&buf, nil)))
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := pl.Accept()
	if err != nil {
		t.Fatalf("Accept after 3 EMFILEs: %v", err)
	}
	got.Close()
	if n := strings.Count(buf.String(), "msg=accept "); n != 1 {
		t.Errorf("%d warnings for 3 EMFILEs, want 1:\n%s", n, buf.String())
	}
	pl.Close()
	if _, err := pl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
