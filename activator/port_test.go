package activator

import (
	"net"
	"net/http"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// holdPort binds a client socket (no SO_REUSEADDR, not listening) to
// 127.0.0.1:port, as an outgoing connection holds its local port, until
// the test ends.
func holdPort(t *testing.T, port int) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("hold port %d: %v", port, err)
	}
}

// pickedPortApp is a Python http app (testdata/allocapp.py) taking delay
// to bind, whose port counts as picked by rouse: MovePort moves it to a
// free port, noting each move.
func pickedPortApp(t *testing.T, delay time.Duration) (*testApp, *[]int) {
	py := python3(t)
	ta := newTestApps(t, Capacity{}, allocApp(py, 0, delay, func(c *Config) {
		_, port, _ := net.SplitHostPort(c.UpstreamAddress)
		c.PickedPort, _ = strconv.Atoi(port)
	}))[0]
	var moves []int
	ta.movePort = func(name string, taken int) (Config, error) {
		cfg := *ta.config()
		p := freePort(t)
		cfg.PickedPort, cfg.UpstreamAddress = p, "127.0.0.1:"+strconv.Itoa(p)
		cfg.Process.Argv = slices.Clone(cfg.Process.Argv)
		cfg.Process.Argv[2] = strconv.Itoa(p) // allocapp.py PORT ...
		moves = append(moves, taken)
		return cfg, nil
	}
	return ta, &moves
}

// A picked port that another process holds when the app is to start: the
// app starts on another port at once, and the request is served.
func TestPickedPortHeldBeforeStartMoves(t *testing.T) {
	ta, moves := pickedPortApp(t, 0)
	port := ta.config().PickedPort
	holdPort(t, port)
	resp, body := get(t, newClient(t), "http://"+ta.addr+"/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d %q", resp.StatusCode, body)
	}
	st := ta.Status()
	if st.Starts != 1 || st.Failures != 0 || !slices.Equal(*moves, []int{port}) || ta.config().PickedPort == port {
		t.Errorf("starts %d failures %d moves %v, now on %s; want one start on another port than %d",
			st.Starts, st.Failures, *moves, st.Upstream, port)
	}
}

// A port taken after the start began, before the app could bind it: the
// app fails (EADDRINUSE), which is not its fault: it starts again at once
// on another port, with no back-off, and the held request is served.
func TestPickedPortTakenWhileStartingMovesAtOnce(t *testing.T) {
	ta, moves := pickedPortApp(t, 1500*time.Millisecond)
	port := ta.config().PickedPort
	ans := getAsync(newClient(t), "http://"+ta.addr+"/")
	waitFor(t, "the app's process to start", func() bool { return len(ta.startLines()) == 1 })
	holdPort(t, port) // before it binds, 1.5 s after it started
	got := <-ans
	if got.code != http.StatusOK {
		t.Fatalf("GET: %d %q after %s", got.code, got.body, got.took)
	}
	st := ta.Status()
	if st.Starts != 2 || st.Failures != 0 || !slices.Equal(*moves, []int{port}) {
		t.Errorf("starts %d failures %d moves %v; want a second start at once on another port", st.Starts, st.Failures, *moves)
	}
	if got.took > 10*time.Second {
		t.Errorf("served after %s: backed off?", got.took)
	}
}
