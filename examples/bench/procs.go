package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs owns every long-running process the harness starts (backends,
// proxies, rouse daemons). Each runs in its own process group with a
// parent-death signal, so stopAll (or the harness's own death) leaves
// nothing behind.
type procs struct {
	mu  sync.Mutex
	all []*proc
}

// proc is one started process. Its Wait runs in a goroutine owned by the
// proc, which closes done; stop waits for it.
type proc struct {
	name string
	argv []string
	cmd  *exec.Cmd
	out  *tail
	done chan struct{}
}

// start runs argv with the harness's environment plus env.
func (ps *procs) start(name string, argv []string, env ...string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out := &tail{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	// Something the process forked may keep the output pipe open; do not
	// wait for it forever once the process itself has exited.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, argv: argv, cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, waits up to grace, then
// SIGKILLs the group; it returns once the process was reaped.
func (p *proc) stop(grace time.Duration) {
	pgid := p.pid()
	if !p.exited() {
		syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case <-p.done:
		case <-t.C:
		}
		t.Stop()
	}
	// Whatever is left of the group (nginx workers, a proxy's children).
	syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// describe says how the process ended, with the tail of its output, for
// error messages.
func (p *proc) describe() string {
	state := "running"
	if p.exited() {
		state = p.cmd.ProcessState.String()
	}
	return fmt.Sprintf("%s (pid %d, %s); last output:\n%s", p.name, p.pid(), state, p.out.last(2000))
}

// stopAll stops every process, newest first (proxies before their
// backends), and reports the process groups still alive afterwards.
func (ps *procs) stopAll() []string {
	ps.mu.Lock()
	all := ps.all
	ps.all = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(all) - 1; i >= 0; i-- {
		wg.Go(func() { all[i].stop(10 * time.Second) })
	}
	wg.Wait()
	var alive []string
	for _, p := range all {
		if err := syscall.Kill(-p.pid(), 0); !errors.Is(err, syscall.ESRCH) {
			alive = append(alive, fmt.Sprintf("%s (pgid %d)", p.name, p.pid()))
		}
	}
	return alive
}

// command runs a short command to completion and returns its combined
// output. It is killed (its whole group) when ctx ends.
func command(ctx context.Context, argv []string, env ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var out tail
	out.max = 1 << 20
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return out.String(), err
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

func (t *tail) last(n int) string {
	s := t.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return strings.TrimRight(s, "\n")
}
