package listeners

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperEnv, when set in the environment, makes the test binary run
// activatedHelper instead of the tests. Its value is the comma-separated
// names the helper listens on, in that order.
const helperEnv = "LISTENERS_HELPER"

func TestMain(m *testing.M) {
	if ask := os.Getenv(helperEnv); ask != "" {
		os.Exit(activatedHelper(strings.Split(ask, ",")))
	}
	os.Exit(m.Run())
}

// helperReport is what activatedHelper tells the test, as one JSON line on
// stdout, before it serves connections.
type helperReport struct {
	EnvBefore  map[string]string       // LISTEN_* as the helper received them
	PIDMatches bool                    // LISTEN_PID was the helper's own pid
	EnvAfter   []string                // LISTEN_* still set after NewSet
	Inherited  map[int]string          // fd -> "socket:[inode]", before NewSet
	Listen     map[string]helperListen // per asked name
	OpenAfter  []string                // /proc/self/fd link targets after CloseUnused
	Logs       string                  // the Set's slog output, JSON lines
}

type helperListen struct {
	Addrs       []string
	NonBlocking []bool
	Err         string
}

var listenEnv = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}

// activatedHelper runs as the process systemd-socket-activate execs: NewSet,
// Listen for each name in ask, CloseUnused, report, then accept one
// connection on every listener and answer it with the name it was claimed by.
func activatedHelper(ask []string) int {
	r := helperReport{EnvBefore: map[string]string{}, Inherited: map[int]string{}, Listen: map[string]helperListen{}}
	for _, k := range listenEnv {
		r.EnvBefore[k] = os.Getenv(k)
	}
	r.PIDMatches = os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid())
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	for fd := 3; fd < 3+n; fd++ {
		r.Inherited[fd], _ = os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	}

	var logs bytes.Buffer
	set := NewSet(slog.New(slog.NewJSONHandler(&logs, nil)))
	for _, k := range listenEnv {
		if _, ok := os.LookupEnv(k); ok {
			r.EnvAfter = append(r.EnvAfter, k)
		}
	}
	served := map[string][]net.Listener{}
	for _, name := range ask {
		ls, err := set.Listen(Addr{Kind: Systemd, Address: name}, Options{})
		var hl helperListen
		if err != nil {
			hl.Err = err.Error()
		}
		for _, l := range ls {
			hl.Addrs = append(hl.Addrs, l.Addr().String())
			hl.NonBlocking = append(hl.NonBlocking, isNonblocking(l.(syscall.Conn)))
		}
		r.Listen[name] = hl
		served[name] = ls
	}
	set.CloseUnused()
	r.Logs = logs.String()
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		r.OpenAfter = append(r.OpenAfter, target)
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for name, ls := range served {
		for _, l := range ls {
			wg.Go(func() {
				defer l.Close()
				errs <- serveOnce(l, name)
			})
		}
	}
	wg.Wait()
	close(errs)
	code := 0
	for err := range errs {
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			code = 1
		}
	}
	return code
}

func serveOnce(l net.Listener, name string) error {
	deadline := time.Now().Add(10 * time.Second)
	l.(interface{ SetDeadline(time.Time) error }).SetDeadline(deadline)
	c, err := l.Accept()
	if err != nil {
		return fmt.Errorf("accept on %s: %w", l.Addr(), err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	_, err = fmt.Fprintln(c, name)
	return err
}

func isNonblocking(c syscall.Conn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var flags int
	rc.Control(func(fd uintptr) { flags, _ = fcntlGetfl(fd) })
	return flags&syscall.O_NONBLOCK != 0
}

func fcntlGetfl(fd uintptr) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// errPortTaken: the free port picked for systemd-socket-activate was taken
// before it could bind it; the test picks another.
var errPortTaken = errors.New("tcp port taken meanwhile")

// TestSystemdActivation runs the test binary under two nested
// systemd-socket-activate processes: the outer one passes a datagram
// socket (fd 3) through the inner one, which adds unix and TCP stream
// sockets (fds 4 to 8). Names are given in one order and asked for in
// another; "alpha" names two fds that are not adjacent, "unused" is asked
// for by nobody, "dgram" is not a stream socket and "missing" was not passed.
func TestSystemdActivation(t *testing.T) {
	ssa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed (Debian package systemd)")
	}
	for attempt := 1; ; attempt++ {
		err := runActivated(t, ssa)
		if errors.Is(err, errPortTaken) && attempt < 3 {
			t.Logf("attempt %d: %v; retrying", attempt, err)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
}

func runActivated(t *testing.T, ssa string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir := t.TempDir()
	sock := func(n string) string { return filepath.Join(dir, n) }
	tcpAddr := freeTCPAddr(t)
	// Passed as fds 3 to 8, in this order.
	passed := []struct{ name, listen string }{
		{"dgram", sock("dgram.sock")},
		{"beta", sock("beta.sock")},
		{"alpha", sock("alpha1.sock")},
		{"unused", sock("unused.sock")},
		{"alpha", sock("alpha2.sock")},
		{"web", tcpAddr},
	}
	var names []string
	args := []string{"--datagram", "--listen=" + passed[0].listen, ssa}
	for i, p := range passed {
		names = append(names, p.name)
		if i > 0 {
			args = append(args, "--listen="+p.listen)
		}
	}
	// systemd-socket-activate passes on only PATH, TERM, USER, HOME and
	// what --setenv names. Should the helper variable go missing anyway,
	// -test.run=^$ makes the binary exit instead of running this test again.
	args = append(args, "--fdname="+strings.Join(names, ":"),
		"--setenv="+helperEnv+"=web,alpha,beta,dgram,missing", exe, "-test.run=^$")

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ssa, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	waited := false
	wait := func() error {
		waited = true
		return cmd.Wait()
	}
	defer func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	logs := func() string {
		b, _ := os.ReadFile(stderr.Name())
		return string(b)
	}

	// Both systemd-socket-activate processes exec on the first datagram.
	triggered := poll(10*time.Second, func() bool {
		c, err := net.Dial("unixgram", passed[0].listen)
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Write([]byte("go"))
		return err == nil
	})
	if !triggered {
		return fmt.Errorf("no datagram socket at %s; stderr:\n%s", passed[0].listen, logs())
	}
	var r helperReport
	if err := json.NewDecoder(stdout).Decode(&r); err != nil {
		werr := wait()
		if strings.Contains(logs(), "Address already in use") {
			return fmt.Errorf("%w: %s", errPortTaken, tcpAddr)
		}
		return fmt.Errorf("read helper report: %v; exit: %v; stderr:\n%s", err, werr, logs())
	}
	checkReport(t, r, tcpAddr, sock)

	for _, tt := range []struct{ network, addr, want string }{
		{"unix", sock("beta.sock"), "beta"},
		{"unix", sock("alpha1.sock"), "alpha"},
		{"unix", sock("alpha2.sock"), "alpha"},
		{"tcp", tcpAddr, "web"},
	} {
		if got := readName(t, tt.network, tt.addr); got != tt.want {
			t.Errorf("%s answered as %q; want %q", tt.addr, got, tt.want)
		}
	}
	if _, err := net.Dial("unix", sock("unused.sock")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial the unused socket: %v; want ECONNREFUSED, CloseUnused closed it", err)
	}
	if err := wait(); err != nil {
		t.Errorf("helper: %v; stderr:\n%s", err, logs())
	}
	return nil
}

func checkReport(t *testing.T, r helperReport, tcpAddr string, sock func(string) string) {
	t.Helper()
	wantEnv := map[string]string{"LISTEN_FDS": "6", "LISTEN_FDNAMES": "dgram:beta:alpha:unused:alpha:web"}
	for k, v := range wantEnv {
		if r.EnvBefore[k] != v {
			t.Errorf("helper got %s=%q; want %q", k, r.EnvBefore[k], v)
		}
	}
	if !r.PIDMatches {
		t.Errorf("LISTEN_PID=%q is not the helper's pid", r.EnvBefore["LISTEN_PID"])
	}
	if len(r.EnvAfter) != 0 {
		t.Errorf("still set after NewSet: %v", r.EnvAfter)
	}

	for _, tt := range []struct {
		name  string
		addrs []string
		err   string
	}{
		{name: "web", addrs: []string{tcpAddr}},
		{name: "alpha", addrs: []string{sock("alpha1.sock"), sock("alpha2.sock")}},
		{name: "beta", addrs: []string{sock("beta.sock")}},
		{name: "dgram", err: "listen systemd:dgram: fd 3: datagram (SOCK_DGRAM) socket: want a listening stream socket (ListenStream=)"},
		{name: "missing", err: `listen systemd:missing: systemd passed no socket named "missing" (it passed "dgram", "beta", "alpha", "unused", "web")`},
	} {
		got := r.Listen[tt.name]
		if got.Err != tt.err || !slices.Equal(got.Addrs, tt.addrs) {
			t.Errorf("Listen(systemd:%s) = %q, error %q; want %q, error %q", tt.name, got.Addrs, got.Err, tt.addrs, tt.err)
		}
		for i, nb := range got.NonBlocking {
			if !nb {
				t.Errorf("Listen(systemd:%s)[%d] is blocking", tt.name, i)
			}
		}
	}

	// A closed fd's socket is gone from /proc/self/fd; a claimed one lives
	// on in its listener's dup, whatever fd number that got.
	for fd, open := range map[int]bool{3: false, 4: true, 5: true, 6: false, 7: true, 8: true} {
		inode := r.Inherited[fd]
		if !strings.HasPrefix(inode, "socket:[") {
			t.Errorf("fd %d was passed as %q; want a socket", fd, inode)
			continue
		}
		if got := slices.Contains(r.OpenAfter, inode); got != open {
			t.Errorf("fd %d (%s) open after CloseUnused: %v; want %v", fd, inode, got, open)
		}
	}

	recs := logRecords(t, []byte(r.Logs))
	if len(recs) != 1 || recs[0]["level"] != "WARN" || recs[0]["name"] != "unused" || recs[0]["fd"] != float64(6) {
		t.Errorf("helper logged %v; want one WARN with name=unused fd=6", recs)
	}
}

// readName connects to the helper and reads the name it answers with.
func readName(t *testing.T, network, addr string) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return strings.TrimSuffix(line, "\n")
}

// freeTCPAddr returns a loopback address that was free a moment ago:
// systemd-socket-activate cannot bind port 0.
func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// poll calls cond until it holds or timeout passes, and says whether it held.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}
