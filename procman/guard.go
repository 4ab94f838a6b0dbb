package procman

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
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

// Guard is a helper process that SIGKILLs registered process groups when
// rouse dies. rouse holds the write end of a pipe to the guard's stdin and
// tells it "+PGID" when a group starts and "-PGID" when it is reaped; when
// the pipe reaches EOF, because rouse exited, was killed or called Close,
// the guard kills every group still registered. Pdeathsig only covers the
// leader; the guard also covers what the leader forked and left in its group
// (the app of a shell wrapper, helpers, workers). Its methods are safe to
// call concurrently. Spec.Guard may be nil: nothing is guarded then.
type Guard struct {
	cmd          *exec.Cmd
	closeTimeout time.Duration
	done         chan struct{} // closed once the guard process was reaped
	err          error         // exit error, written before done is closed

	mu     sync.Mutex // serializes writes
	w      *os.File
	closed bool
}

// StartGuard starts the guard process with argv (a re-exec of rouse in guard
// mode, whose main calls GuardMain(os.Stdin)). The guard runs in its own
// process group and does not die with rouse: it outlives it to clean up.
func StartGuard(argv []string) (*Guard, error) {
	if len(argv) == 0 {
		return nil, errors.New("start guard: no command")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start guard: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("start guard: %w", err)
	}
	g := &Guard{cmd: cmd, closeTimeout: guardCloseTimeout, done: make(chan struct{}), w: w}
	go func() {
		g.err = cmd.Wait()
		close(g.done)
	}()
	return g, nil
}

// Pid returns the guard's process id.
func (g *Guard) Pid() int { return g.cmd.Process.Pid }

// Done is closed once the guard process has exited, after Close or because
// it died; from then on nothing is guarded.
func (g *Guard) Done() <-chan struct{} { return g.done }

// Close tells the guard to exit after killing whatever is still registered,
// and blocks until it has exited; a guard that does not exit within 5s is
// SIGKILLed. Stop the processes first to stop them gracefully. Close is
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
	if g.err != nil {
		return fmt.Errorf("guard pid %d: %w", g.Pid(), g.err)
	}
	return nil
}

// add registers a process group; remove forgets it. Both are best effort: a
// guard that is gone or stuck is skipped, the leader still has Pdeathsig.
func (g *Guard) add(pgid int)    { g.send('+', pgid) }
func (g *Guard) remove(pgid int) { g.send('-', pgid) }

func (g *Guard) send(op byte, pgid int) {
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
	// Messages are far below PIPE_BUF, so a write is all or nothing and a
	// timeout cannot leave half a line behind.
	_ = g.w.SetWriteDeadline(time.Now().Add(guardWriteTimeout))
	msg := append(strconv.AppendInt([]byte{op}, int64(pgid), 10), '\n')
	_, _ = g.w.Write(msg)
}

// GuardMain is the body of the guard process; it returns the exit code. It
// ignores SIGINT, SIGTERM and SIGHUP (it must outlive rouse), reads "+PGID"
// and "-PGID" lines from in, and at EOF SIGKILLs every group still
// registered.
func GuardMain(in io.Reader) int {
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	for _, pgid := range guardedGroups(in) {
		_ = unix.Kill(-pgid, unix.SIGKILL)
	}
	return 0
}

// guardedGroups reads the guard protocol until EOF and returns the groups
// still registered. Malformed lines and pgids below 2 are ignored: kill(-1)
// would kill every process rouse may signal, kill(0) rouse's own group.
func guardedGroups(in io.Reader) []int {
	groups := make(map[int]bool)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := sc.Text()
		if len(line) < 2 {
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid < 2 {
			continue
		}
		switch line[0] {
		case '+':
			groups[pgid] = true
		case '-':
			delete(groups, pgid)
		}
	}
	out := make([]int, 0, len(groups))
	for pgid := range groups {
		out = append(out, pgid)
	}
	return out
}
