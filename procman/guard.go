package procman

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// guardWriteTimeout bounds one message to the guard: a guard that stopped
// reading must not wedge Start or the reaper.
const guardWriteTimeout = time.Second

// guardCloseTimeout bounds how long Close waits for the guard to exit by
// itself before it SIGKILLs it.
const guardCloseTimeout = 5 * time.Second

// Guard is a helper process that kills what rouse's apps left running when
// rouse dies, and the owner of how those apps are contained. rouse holds the
// write end of a pipe to the guard's stdin and tells it "+X" when an app's
// process group, cgroup or scope marker X starts and "-X" when it is gone;
// when the pipe reaches EOF, because rouse exited, was killed or called
// Close, the guard kills everything still registered. Pdeathsig only
// covers the leader; the guard also covers what the leader forked (the app
// of a shell wrapper, helpers, workers, a daemon that called setsid).
//
// Containment: with a cgroup v2 subtree rouse may manage (see
// GuardOptions), each process started with the Guard runs in a cgroup of
// its own, killed with cgroup.kill and removed when it stops. Without one,
// rouse is a child subreaper, marks each process with ScopeEnv and kills
// whatever carries the mark when it stops.
//
// Its methods are safe to call concurrently. Spec.Guard may be nil: nothing
// is guarded or contained then.
type Guard struct {
	cmd          *exec.Cmd
	closeTimeout time.Duration
	done         chan struct{} // closed once the guard process was reaped
	err          error         // exit error, written before done is closed

	tree   *cgroupTree // nil on the fallback
	reaper *reaper     // nil with cgroups
	token  string      // unique to this Guard, in its ScopeEnv marks
	seq    atomic.Uint64

	containOnce sync.Once
	containErr  error

	mu     sync.Mutex // serializes writes
	w      *os.File
	closed bool
}

// Containment is how a Guard keeps together the processes an app starts.
type Containment int

const (
	// ContainAuto uses a cgroup v2 subtree when rouse can manage one
	// (systemd's Delegate=yes, or a cgroup2 hierarchy where rouse may create
	// children of its own cgroup), else ContainSubreaper.
	ContainAuto Containment = iota
	// ContainSubreaper never uses cgroups: rouse is a child subreaper and
	// tracks an app's processes by ScopeEnv.
	ContainSubreaper
)

// GuardOptions configures StartGuard.
type GuardOptions struct {
	Containment Containment
}

// StartGuard sets up containment as opts says, then starts the guard
// process with argv (a re-exec of rouse in guard mode, whose main calls
// GuardMain(os.Stdin)). Under systemd's Delegate=yes rouse first moves
// itself into the leaf cgroup "supervisor" (the guard follows it there).
// The guard runs in its own process group and does not die with rouse: it
// outlives it to clean up.
func StartGuard(argv []string, opts GuardOptions) (*Guard, error) {
	if len(argv) == 0 {
		return nil, errors.New("start guard: no command")
	}
	var tok [6]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, fmt.Errorf("start guard: %w", err)
	}
	g := &Guard{closeTimeout: guardCloseTimeout, done: make(chan struct{}), token: hex.EncodeToString(tok[:])}
	if opts.Containment == ContainAuto {
		g.tree, _ = openCgroupTree() // no usable cgroup: the fallback
	}
	if g.tree == nil {
		r, err := startReaper(g.token)
		if err != nil {
			return nil, fmt.Errorf("start guard: child subreaper: %w", err)
		}
		g.reaper = r
	}
	r, w, err := os.Pipe()
	if err != nil {
		g.closeContainment()
		return nil, fmt.Errorf("start guard: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		g.closeContainment()
		return nil, fmt.Errorf("start guard: %w", err)
	}
	g.cmd, g.w = cmd, w
	go func() {
		g.err = cmd.Wait()
		close(g.done)
	}()
	if g.tree != nil && g.tree.created {
		g.send('+', g.tree.dir) // emptied by killing the app cgroups first
	}
	return g, nil
}

// Cgroup returns the directory of the cgroup subtree the apps' cgroups are
// created in, "" when rouse is on the subreaper fallback.
func (g *Guard) Cgroup() string {
	if g == nil || g.tree == nil {
		return ""
	}
	return g.tree.dir
}

// Controllers returns the cgroup controllers enabled for the apps' cgroups
// (of cpu, memory and pids: what Limits needs), sorted; none on the fallback.
// A Limits field whose controller is missing is not applied.
func (g *Guard) Controllers() []string {
	if g == nil || g.tree == nil {
		return nil
	}
	out := make([]string, 0, len(g.tree.controllers))
	for c := range g.tree.controllers {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// Pid returns the guard's process id.
func (g *Guard) Pid() int { return g.cmd.Process.Pid }

// Done is closed once the guard process has exited, after Close or because
// it died; from then on nothing is guarded.
func (g *Guard) Done() <-chan struct{} { return g.done }

// Close tells the guard to exit after killing whatever is still registered,
// and blocks until it has exited; a guard that does not exit within 5s is
// SIGKILLed. Then it stops the reaper or removes the cgroup subtree rouse
// created. Stop the processes first to stop them gracefully. Close is
// idempotent.
func (g *Guard) Close() error {
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		g.w.Close()
	}
	g.mu.Unlock()
	timer := time.NewTimer(g.closeTimeout)
	defer timer.Stop()
	select {
	case <-g.done:
	case <-timer.C:
		_ = g.cmd.Process.Kill()
		<-g.done
	}
	cerr := g.closeContainment()
	if g.err != nil {
		return fmt.Errorf("guard pid %d: %w", g.Pid(), g.err)
	}
	return cerr
}

// closeContainment stops the reaper and removes the cgroup subtree rouse
// created, once the guard (which removes app cgroups rouse left) is gone.
// It runs once, from Close or a failed StartGuard.
func (g *Guard) closeContainment() error {
	g.containOnce.Do(func() {
		if g.reaper != nil {
			g.reaper.close()
		}
		if g.tree != nil {
			g.containErr = g.tree.close()
		}
	})
	return g.containErr
}

// add registers a process group; remove forgets it. Both are best effort: a
// guard that is gone or stuck is skipped, the leader still has Pdeathsig.
func (g *Guard) add(pgid int)    { g.send('+', strconv.Itoa(pgid)) }
func (g *Guard) remove(pgid int) { g.send('-', strconv.Itoa(pgid)) }

func (g *Guard) send(op byte, what string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.done:
		return
	default:
	}
	if g.closed {
		return
	}
	// Messages are below PIPE_BUF (4096 bytes, and cgroup paths are far
	// shorter), so a write is all or nothing and a timeout cannot leave half
	// a line behind.
	_ = g.w.SetWriteDeadline(time.Now().Add(guardWriteTimeout))
	_, _ = g.w.Write([]byte(string(op) + what + "\n"))
}

// GuardMain is the body of the guard process; it returns the exit code. It
// ignores SIGINT, SIGTERM and SIGHUP (it must outlive rouse), reads "+X" and
// "-X" lines from in, and at EOF SIGKILLs every process group, cgroup
// ("/PATH", then removed, deepest first) and scope ("=MARKER", with
// everything that carries it) still registered.
//
// The guard waits for the whole life of rouse, doing next to nothing: it
// drops the start-up pages of the executable (ReleaseImage), about 7 of
// its 10 MiB. (Collecting garbage first, or a soft memory limit, each
// cost it more of the runtime's own memory than they saved.)
func GuardMain(in io.Reader) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	ReleaseImage()
	left := guarded(in)
	for _, pgid := range left.groups {
		_ = unix.Kill(-pgid, unix.SIGKILL)
	}
	for _, m := range left.scopes {
		sweep(m, 0)
	}
	for _, dir := range left.cgroups {
		killCgroup(dir)
	}
	// Deepest first: the subtree's root is removed after the app cgroups.
	slices.SortFunc(left.cgroups, func(a, b string) int { return len(b) - len(a) })
	code := 0
	for _, dir := range left.cgroups {
		if err := removeCgroup(dir); err != nil {
			fmt.Fprintln(os.Stderr, "rouse guard:", err)
			code = 1
		}
	}
	return code
}

// guardedSet is what the guard still has to kill when rouse is gone.
type guardedSet struct {
	groups  []int
	cgroups []string
	scopes  []string
}

// guarded reads the guard protocol until EOF and returns what is still
// registered. Malformed lines and pgids below 2 are ignored: kill(-1)
// would kill every process rouse may signal, kill(0) rouse's own group.
// A cgroup is an absolute path without "..", a scope "=NAME=VALUE".
func guarded(in io.Reader) guardedSet {
	set := map[string]bool{}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 2 || (line[0] != '+' && line[0] != '-') {
			continue
		}
		if !validGuarded(line[1:]) {
			continue
		}
		if line[0] == '+' {
			set[line[1:]] = true
		} else {
			delete(set, line[1:])
		}
	}
	var out guardedSet
	for x := range set {
		switch x[0] {
		case '/':
			out.cgroups = append(out.cgroups, x)
		case '=':
			out.scopes = append(out.scopes, x[1:])
		default:
			pgid, _ := strconv.Atoi(x)
			out.groups = append(out.groups, pgid)
		}
	}
	return out
}

func validGuarded(x string) bool {
	switch x[0] {
	case '/':
		return !slices.Contains(strings.Split(x, "/"), "..")
	case '=':
		return strings.HasPrefix(x[1:], ScopeEnv+"=")
	}
	pgid, err := strconv.Atoi(x)
	return err == nil && pgid >= 2 && strconv.Itoa(pgid) == x
}
