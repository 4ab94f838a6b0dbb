package activator

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/procman"
)

// The exec shim: LISTEN_PID must be the pid of the process that uses the
// sockets, which rouse only knows once it forked. So a handoff or inetd app
// is spawned as rouse itself (Options.ExecShim, e.g. "rouse __exec"), which
// sets LISTEN_PID to its own pid and execs the app in place: same pid,
// same process group, no shell in between.

// setupShimmed prepares a handoff or inetd app; other modes need nothing.
func (a *App) setupShimmed(shim []string) error {
	switch a.config().Mode {
	case ModeHandoff, ModeInetd:
	default:
		return nil
	}
	if len(shim) == 0 {
		return fmt.Errorf("mode %s needs the exec shim (Options.ExecShim)", a.config().Mode)
	}
	a.shim = shim
	if a.config().Mode == ModeInetd {
		a.config().KeepWarm = false // nothing runs without a connection
		return nil
	}
	h, lns, err := newHandoff(*a.config(), a.lns)
	if err != nil {
		return err
	}
	a.handoff, a.lns = h, lns
	switch a.config().Ready.Kind {
	case "tcp":
		a.probe = a.handoffReady // the app accepts
	case "http":
		if a.config().UpstreamAddress == "" {
			return errors.New(`ready = "http PATH" needs an upstream in handoff mode; by default a handoff app is ready when it accepts`)
		}
	}
	return nil
}

// spawn starts the process of an instance: through the exec shim with the
// sockets for a handoff app, directly otherwise.
func (a *App) spawn(spec procman.Spec) (*procman.Process, error) {
	if a.handoff != nil {
		return a.spawnHandoff(spec)
	}
	return procman.Start(spec)
}

// shimStdio is the shim's flag to put fd 3 on stdin and stdout (inetd).
const shimStdio = "-stdio"

// shimSpec returns spec changed to run through the exec shim with files as
// fd 3, 4, ... and env added to the app's environment.
func (a *App) shimSpec(spec procman.Spec, files []*os.File, stdio bool, env ...string) (procman.Spec, error) {
	argv := spec.Argv
	if spec.Shell != "" {
		argv = []string{"/bin/sh", "-c", spec.Shell}
	}
	if len(argv) == 0 || argv[0] == "" {
		return spec, fmt.Errorf("start %s: no command", a.config().Name)
	}
	// Look the program up now, in rouse's PATH as procman does, so that a
	// missing one is a spawn error rather than an exit of the shim.
	prog := argv[0]
	if !strings.Contains(prog, "/") {
		p, err := exec.LookPath(prog)
		if err != nil {
			return spec, fmt.Errorf("start %s: %w", a.config().Name, err)
		}
		prog = p
	}
	shim := slices.Clone(a.shim)
	if stdio {
		shim = append(shim, shimStdio)
	}
	shim = append(shim, "--", prog)
	spec.Argv = append(shim, argv[1:]...)
	spec.Shell = ""
	spec.ExtraFiles = files
	// Clipped: appending must never write into the config's array, which
	// concurrent spawns share.
	spec.Env = append(slices.Clip(spec.Env), env...)
	return spec, nil
}

// ExecMain is the exec shim, run by rouse's hidden verb that
// Options.ExecShim names: args are [-stdio] -- PROGRAM [ARGS...]. It sets
// LISTEN_PID to its own pid, puts the LISTEN_FDS sockets (fd 3, ...) in
// blocking mode as systemd passes them, with -stdio also makes fd 3 its
// stdin and stdout, and execs PROGRAM (looked up in PATH when it has no
// slash). It returns only when that fails: 127 when PROGRAM is not found,
// 126 when it cannot be executed, 2 for bad arguments.
func ExecMain(args []string, stderr io.Writer) int {
	stdio := false
	for len(args) > 0 && args[0] != "--" {
		if args[0] != shimStdio {
			fmt.Fprintf(stderr, "rouse exec shim: unknown flag %q\n", args[0])
			return 2
		}
		stdio = true
		args = args[1:]
	}
	if len(args) < 2 {
		fmt.Fprintln(stderr, "rouse exec shim: usage: [-stdio] -- PROGRAM [ARGS...]")
		return 2
	}
	argv := args[1:]
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	for fd := 3; fd < 3+n; fd++ {
		if err := unix.SetNonblock(fd, false); err != nil {
			fmt.Fprintf(stderr, "rouse exec shim: fd %d: %v\n", fd, err)
			return 126
		}
	}
	if stdio {
		for _, fd := range []int{0, 1} {
			if err := unix.Dup3(3, fd, 0); err != nil {
				fmt.Fprintf(stderr, "rouse exec shim: dup fd 3 to %d: %v\n", fd, err)
				return 126
			}
		}
	}
	prog := argv[0]
	if !strings.Contains(prog, "/") {
		p, err := exec.LookPath(prog)
		if err != nil {
			fmt.Fprintf(stderr, "rouse exec shim: %v\n", err)
			return 127
		}
		prog = p
	}
	if err := os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid())); err != nil {
		fmt.Fprintf(stderr, "rouse exec shim: %v\n", err)
		return 126
	}
	err := syscall.Exec(prog, argv, os.Environ())
	fmt.Fprintf(stderr, "rouse exec shim: exec %s: %v\n", prog, err)
	if errors.Is(err, syscall.ENOENT) {
		return 127
	}
	return 126
}
