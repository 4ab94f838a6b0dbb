package procman

// THIS FILE IS A SKELETON: the procman helper replaces it with the real
// implementation (split into process.go, ready.go, guard.go, stats.go ...).
// The exported API below is what activator and cmd/rouse program against;
// keep the names and signatures.

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"
	"time"
)

// Spec describes one child process to run.
type Spec struct {
	Name        string         // app name: used in errors and passed to Output
	Argv        []string       // program and arguments (no shell); Argv[0] looked up in PATH
	Shell       string         // when set, run "/bin/sh -c Shell" instead of Argv
	Dir         string         // working directory; "" = rouse's
	Env         []string       // KEY=VALUE pairs added to rouse's environment (later ones win)
	User        string         // user name or numeric uid to run as; "" = rouse's own user
	StopSignal  syscall.Signal // first signal of Stop; 0 = SIGTERM
	StopTimeout time.Duration  // Stop waits this long before SIGKILL; 0 = 10s
	ExtraFiles  []*os.File     // become fd 3, 4, ... in the child
	// Output receives every line the process writes, stream is "stdout" or
	// "stderr". Called from procman's reader goroutines; nil discards.
	Output func(stream, line string)
	// Guard, when set, is told about the process group so that it is killed
	// if rouse itself dies without stopping it.
	Guard *Guard
}

// ErrExited is wrapped by WaitReady when the process exited before it became ready.
var ErrExited = errors.New("process exited")

// ErrNotReady is wrapped by WaitReady when the timeout passed.
var ErrNotReady = errors.New("not ready in time")

// ErrRoot is returned by Start when rouse runs as root and Spec.User is empty.
var ErrRoot = errors.New("refusing to run an app as root")

// Process is one running child in its own process group.
type Process struct{}

// Start spawns the process.
func Start(spec Spec) (*Process, error) { panic("unimplemented") }

// Pid returns the process id (also the process group id).
func (p *Process) Pid() int { panic("unimplemented") }

// StartedAt is when the process was spawned.
func (p *Process) StartedAt() time.Time { panic("unimplemented") }

// Done is closed once the process has exited and was reaped.
func (p *Process) Done() <-chan struct{} { panic("unimplemented") }

// Err returns the exit error once Done is closed (nil for status 0).
func (p *Process) Err() error { panic("unimplemented") }

// Stop stops the process group and blocks until it is gone.
func (p *Process) Stop(ctx context.Context) error { panic("unimplemented") }

// Kill sends SIGKILL to the whole group now, without waiting.
func (p *Process) Kill() { panic("unimplemented") }

// StderrTail returns up to n of the last stderr lines, oldest first.
func (p *Process) StderrTail(n int) []string { panic("unimplemented") }

// Stats is a sample of a process group's resource use.
type Stats struct {
	RSS        uint64  // bytes, summed over the group's processes
	CPUPercent float64 // since the previous Stats call (or since start)
}

// Stats samples the RSS and CPU use of the process group.
func (p *Process) Stats() (Stats, error) { panic("unimplemented") }

// Probe reports nil once the app is ready; it is called repeatedly.
type Probe func(ctx context.Context) error

// TCPProbe is ready when network/address accepts a connection.
func TCPProbe(network, address string) Probe { panic("unimplemented") }

// HTTPProbe is ready when GET path on network/address answers with a status < 500.
func HTTPProbe(network, address, path string) Probe { panic("unimplemented") }

// WaitReady polls probe until it succeeds, the process exits, timeout passes or ctx ends.
func WaitReady(ctx context.Context, p *Process, probe Probe, timeout time.Duration) error {
	panic("unimplemented")
}

// Guard is a helper process that SIGKILLs registered process groups when rouse dies.
type Guard struct{}

// StartGuard starts the guard process with argv (a re-exec of rouse in guard mode).
func StartGuard(argv []string) (*Guard, error) { panic("unimplemented") }

// Close tells the guard to exit after killing whatever is still registered.
func (g *Guard) Close() error { panic("unimplemented") }

// GuardMain is the body of the guard process; it returns the exit code.
func GuardMain(in io.Reader) int { panic("unimplemented") }
