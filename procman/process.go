package procman

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults for the zero values of Spec.
const (
	DefaultStopSignal  = syscall.SIGTERM
	DefaultStopTimeout = 10 * time.Second
)

// Spec describes one child process to run.
type Spec struct {
	Name        string         // app name: used in errors and passed to Output
	Argv        []string       // program and arguments (no shell); Argv[0] looked up in rouse's PATH
	Shell       string         // when set, run "/bin/sh -c Shell" instead of Argv
	Dir         string         // working directory; "" = rouse's
	Env         []string       // KEY=VALUE pairs added to the base environment (later ones win)
	User        string         // user name or numeric uid to run as; "" = rouse's own user
	StopSignal  syscall.Signal // first signal of Stop; 0 = SIGTERM
	StopTimeout time.Duration  // Stop waits this long before SIGKILL; 0 = 10s
	ExtraFiles  []*os.File     // become fd 3, 4, ... in the child; still owned by the caller
	// Output receives every line the process writes, stream is Stdout or
	// Stderr. Called from procman's reader goroutines, never concurrently;
	// a slow Output slows the child's writes down. nil discards stdout
	// (stderr is still kept for StderrTail).
	Output func(stream, line string)
	// Guard, when set, is told about the process group so that it is killed
	// if rouse itself dies without stopping it.
	Guard *Guard
	// Notify gives the process its own NOTIFY_SOCKET (an abstract unix
	// socket, which overrides one in Env) to report readiness the systemd
	// way (sd_notify(3)): READY=1, STATUS=, STOPPING=1, EXTEND_TIMEOUT_USEC=
	// and so on, in datagrams of up to 4 KiB. WaitReady then waits for
	// READY=1 instead of probing. See Ready and NotifyState. Without Notify
	// the process gets no NOTIFY_SOCKET (rouse's own is not passed on)
	// unless Env sets one.
	Notify bool
	// InheritEnv makes rouse's environment (without NOTIFY_SOCKET) the
	// base the process's environment is built on. Without it the base is
	// small: PATH and LANG from rouse (PATH defaults to DefaultPath), and
	// HOME, USER and LOGNAME of the user the process runs as. Env is added
	// to either; a process with a Guard on the subreaper fallback also gets
	// ScopeEnv.
	InheritEnv bool
	// Limits caps what the process and everything it starts may use, in
	// its cgroup (with a Guard that has a cgroup subtree).
	Limits Limits
}

// DefaultPath is the PATH of a process started without InheritEnv when
// rouse has none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ErrRoot is returned by Start when rouse runs as root and Spec.User is empty.
var ErrRoot = errors.New("refusing to run an app as root")

// Process is one running child in its own process group. All its methods are
// safe to call concurrently, before and after the child exited.
type Process struct {
	name        string
	pid         int
	startedAt   time.Time
	stopSignal  syscall.Signal
	stopTimeout time.Duration
	cmd         *exec.Cmd
	guard       *Guard
	scope       *scope // the process's cgroup or fallback mark; nil without a guard
	output      func(stream, line string)

	outputMu sync.Mutex // serializes calls to output
	tail     lineRing   // last stderr lines

	notify *notifier // nil unless Spec.Notify

	done chan struct{}
	err  error // written before done is closed

	mu       sync.Mutex
	reaped   bool      // the leader is being or was reaped: its pid may be reused
	stopSent time.Time // when Stop sent stopSignal; zero before
	frozen   bool      // Freeze was asked and Thaw not since (freeze.go)

	stats statsState
}

// Start spawns the process described by spec in a new process group. The
// process is reaped by a goroutine Start leaves running until it exited; use
// Stop or Kill and Done to end it.
//
// The kernel sends Pdeathsig when the OS thread that forked the child exits,
// not only when rouse does. Go keeps its threads, except one locked by
// runtime.LockOSThread whose goroutine ends: do not call Start from such a
// goroutine.
func Start(spec Spec) (*Process, error) {
	p := &Process{
		name:        spec.Name,
		stopSignal:  spec.StopSignal,
		stopTimeout: spec.StopTimeout,
		guard:       spec.Guard,
		output:      spec.Output,
		done:        make(chan struct{}),
	}
	if p.stopSignal == 0 {
		p.stopSignal = DefaultStopSignal
	}
	if p.stopTimeout <= 0 {
		p.stopTimeout = DefaultStopTimeout
	}

	cmd, err := command(spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	cred, env, err := credential(os.Geteuid(), spec.User)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	if spec.Dir != "" {
		// The child's chdir error would read "fork/exec PROGRAM: no such
		// file or directory", blaming the program.
		if _, err := os.Stat(spec.Dir); err != nil {
			return nil, fmt.Errorf("start %s: dir: %w", spec.Name, err)
		}
	}
	cmd.Dir = spec.Dir
	cmd.Env = append(baseEnv(spec.InheritEnv, cred != nil, env), spec.Env...)
	cmd.ExtraFiles = spec.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: cred,
	}

	if spec.Notify {
		if p.notify, err = newNotifier(); err != nil {
			return nil, fmt.Errorf("start %s: %w", spec.Name, err)
		}
		cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+p.notify.addr)
	}

	readers, err := p.attachOutput(cmd)
	if err != nil {
		p.notify.abort()
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	cmd, err = p.spawn(cmd, spec)
	if err != nil {
		readers.abort()
		p.notify.abort()
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	readers.started()
	if p.notify != nil {
		uid := uint32(os.Getuid())
		if cred != nil {
			uid = cred.Uid
		}
		p.notify.start(cmd.Process.Pid, uid)
	}

	p.cmd = cmd
	p.pid = cmd.Process.Pid
	p.stats.prevAt = p.startedAt
	// Registered before the reaper runs, so the guard always sees "+" before "-".
	p.guard.add(p.pid)
	go p.reap(readers)
	return p, nil
}

// spawn starts cmd in a new scope of the guard: straight into its cgroup
// (clone3 with CLONE_INTO_CGROUP) when it has one; when the kernel refuses
// that, stopped at its exec, moved there, then let run (startStopped).
// Without a guard it just starts cmd.
func (p *Process) spawn(cmd *exec.Cmd, spec Spec) (*exec.Cmd, error) {
	sc, cgfd, err := p.guard.newScope(spec.Name, spec.Limits)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(cmd.Env, sc.env()...)
	p.startedAt = time.Now()
	if cgfd < 0 {
		err = cmd.Start()
	} else {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgfd
		err = cmd.Start()
		if err != nil && retryOutsideCgroup(err) {
			again := exec.Command(cmd.Path)
			again.Args, again.Env, again.Dir = cmd.Args, cmd.Env, cmd.Dir
			again.Stdin, again.Stdout, again.Stderr, again.ExtraFiles = cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.ExtraFiles
			attr := *cmd.SysProcAttr
			attr.UseCgroupFD, attr.CgroupFD = false, 0
			again.SysProcAttr = &attr
			cmd = again
			err = startStopped(cmd, func(pid int) error { return sc.spawned(pid, true) })
		}
		unix.Close(cgfd)
	}
	if err != nil {
		_ = sc.release()
		return nil, err
	}
	p.scope = sc
	return cmd, nil
}

// startStopped starts cmd stopped at its exec (traced), calls moved with
// its pid, and only then lets it run: a process moved into its cgroup after
// it started could fork a daemon first, which would stay outside. ptrace
// requests come from the thread that forked, hence the locked thread. If
// moved fails the process is killed and the error returned.
func startStopped(cmd *exec.Cmd, moved func(pid int) error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd.SysProcAttr.Ptrace = true
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	var ws unix.WaitStatus
	// The SIGTRAP stop at exec, waited for with __WALL and without
	// WNOWAIT: the stop is consumed here, the exit later by cmd.Wait.
	_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
	if err == nil && !ws.Stopped() {
		err = fmt.Errorf("pid %d did not stop at exec: status %#x", pid, ws)
	}
	if err == nil {
		err = moved(pid)
	}
	if derr := unix.PtraceDetach(pid); err == nil && derr != nil {
		err = fmt.Errorf("release pid %d: %w", pid, derr)
	}
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return err
	}
	return nil
}

// baseEnv is the environment Spec.Env is added to. With inherit it is
// rouse's without NOTIFY_SOCKET (that one is how rouse talks to its own
// service manager, never the app's), plus userEnv when the process switches
// user; else PATH, LANG and the user's HOME, USER and LOGNAME.
func baseEnv(inherit, switched bool, userEnv []string) []string {
	if inherit {
		env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "NOTIFY_SOCKET=") })
		if switched {
			env = append(env, userEnv...)
		}
		return env
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = DefaultPath
	}
	env := []string{"PATH=" + path}
	if lang, ok := os.LookupEnv("LANG"); ok {
		env = append(env, "LANG="+lang)
	}
	return append(env, userEnv...)
}

// command builds the exec.Cmd for argv or the shell string of spec.
func command(spec Spec) (*exec.Cmd, error) {
	if spec.Shell != "" {
		return exec.Command("/bin/sh", "-c", spec.Shell), nil
	}
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, errors.New("no command")
	}
	// exec.Command looks Argv[0] up in PATH (exec.LookPath) unless it holds a
	// slash; a lookup failure surfaces here rather than from Start.
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	if cmd.Err != nil {
		return nil, cmd.Err
	}
	return cmd, nil
}

// reap waits for the leader to exit, kills what is left of its group while the
// pgid is still reserved by the unreaped leader, and of its scope (cgroup or
// mark), reaps it, removes its cgroup, drains its output and notify socket
// and only then publishes the result.
func (p *Process) reap(readers *outputReaders) {
	var err error
	for {
		var info unix.Siginfo
		err = unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.mu.Lock()
	if err == nil { // else (ECHILD) the leader is already gone and so is our claim on the pgid
		_ = unix.Kill(-p.pid, unix.SIGKILL)
	}
	p.reaped = true
	p.mu.Unlock()
	p.scope.kill(p.pid)

	err = p.cmd.Wait()
	p.guard.remove(p.pid)
	if serr := p.scope.release(); serr != nil && err == nil {
		err = serr
	}
	readers.drain()
	if p.notify != nil {
		p.notify.stop()
	}

	if err != nil {
		p.err = fmt.Errorf("run %s pid %d: %w", p.name, p.pid, err)
	}
	close(p.done)
}

// Pid returns the process id (also the process group id).
func (p *Process) Pid() int { return p.pid }

// StartedAt is when the process was spawned.
func (p *Process) StartedAt() time.Time { return p.startedAt }

// Done is closed once the process has exited, was reaped, the rest of its
// group was killed and its output was read to the end (or for at most
// OutputDrainTimeout after the leader exited). With Spec.Notify, the
// messages queued on the notify socket were read too and it is closed.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err returns the exit error once Done is closed (nil for status 0 and
// before Done is closed). It wraps the *exec.ExitError.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Stop sends the stop signal to the process group (thawing it first if it
// is frozen, or the signal would wait), waits up to the stop timeout for the
// process to exit, then SIGKILLs the group, and blocks until Done is closed. It is idempotent: concurrent and repeated calls share one
// stop signal and one deadline, and Stop after exit returns nil at once.
// When ctx ends first, the group is SIGKILLed and an error wrapping
// ctx.Err() is returned without waiting further.
func (p *Process) Stop(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	timer := time.NewTimer(time.Until(p.sendStopSignal()))
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		p.Kill()
	case <-ctx.Done():
		p.Kill()
		return fmt.Errorf("stop %s pid %d: %w", p.name, p.pid, ctx.Err())
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s pid %d: %w", p.name, p.pid, ctx.Err())
	}
}

// sendStopSignal signals the group on the first call and returns when the
// grace period of Stop ends.
func (p *Process) sendStopSignal() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopSent.IsZero() {
		p.stopSent = time.Now()
		p.thawForStopLocked()
		p.signalLocked(p.stopSignal)
	}
	return p.stopSent.Add(p.stopTimeout)
}

// Kill sends SIGKILL to the whole group now, without waiting. It does
// nothing once the process was reaped.
func (p *Process) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signalLocked(syscall.SIGKILL)
}

// signalLocked signals the group unless the leader was reaped: from then on
// the pgid may belong to someone else. p.mu must be held.
func (p *Process) signalLocked(sig syscall.Signal) {
	if !p.reaped {
		_ = unix.Kill(-p.pid, sig)
	}
}
