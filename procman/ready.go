package procman

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrExited is wrapped by WaitReady when the process exited before it became
// ready, and by Stats once the process is gone.
var ErrExited = errors.New("process exited")

// ErrNotReady is wrapped by WaitReady when the timeout passed.
var ErrNotReady = errors.New("not ready in time")

// Probing starts fast, because most apps are ready within milliseconds of
// binding, and backs off so a slow starter is not hammered. The cap is what
// a client may wait after the app is ready (half of it on average): a
// probe is a connect on loopback, so even a 30 s start costs only a few
// thousand of them.
const (
	firstProbeInterval = 250 * time.Microsecond
	maxProbeInterval   = 4 * time.Millisecond
	probeAttemptLimit  = time.Second // one attempt of a probe
	httpProbeTimeout   = 2 * time.Second
)

// Probe reports nil once the app is ready; it is called repeatedly, one call
// at a time, with a context bounding that attempt.
type Probe func(ctx context.Context) error

// TCPProbe is ready when network/address accepts a connection. network is
// anything net.Dial takes ("tcp", "unix", ...).
func TCPProbe(network, address string) Probe {
	return func(ctx context.Context) error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, address)
		if err != nil {
			return err
		}
		return conn.Close()
	}
}

// HTTPProbe is ready when GET path on network/address answers with a status
// < 500 (redirects are not followed). network is "tcp" or "unix". Every
// attempt uses a new connection and leaves none open.
func HTTPProbe(network, address, path string) Probe {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	host := address
	if network == "unix" {
		host = "localhost"
	}
	url := "http://" + host + path
	client := &http.Client{
		Timeout: httpProbeTimeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil, // never send a probe to $HTTP_PROXY
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, address)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "rouse-probe")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return nil
	}
}

// ExecProbe is ready when the shell command (run as /bin/sh -c command)
// exits 0, e.g. "pg_isready -h 127.0.0.1 -p 5432": for servers that open
// their port before they take sessions. Each run is as p's user, in p's
// directory, with p's environment (without the LISTEN_* and NOTIFY_SOCKET
// that were meant for p alone), in a process group of its own that is
// killed when the attempt's context ends, so a probe that hangs is cut
// after probeAttemptLimit. Each line the command prints is passed to
// output (nil: dropped).
func ExecProbe(p *Process, command string, output func(line string)) Probe {
	env := slices.DeleteFunc(slices.Clone(p.cmd.Env), func(kv string) bool {
		return strings.HasPrefix(kv, "LISTEN_") || strings.HasPrefix(kv, "NOTIFY_SOCKET=")
	})
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if p.cmd.SysProcAttr != nil {
		attr.Credential = p.cmd.SysProcAttr.Credential
	}
	return func(ctx context.Context) error {
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
		cmd.Env, cmd.Dir, cmd.SysProcAttr = env, p.cmd.Dir, attr
		out := &probeOutput{}
		cmd.Stdout, cmd.Stderr = out, out
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = probeAttemptLimit // for pipes held by what it started
		err := cmd.Run()
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if output != nil {
			for _, l := range lines {
				if l != "" {
					output(l)
				}
			}
		}
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("exec %q: killed after %s: %w", command, probeAttemptLimit, ctx.Err())
		case lines[len(lines)-1] != "":
			return fmt.Errorf("exec %q: %w: %s", command, err, lines[len(lines)-1])
		}
		return fmt.Errorf("exec %q: %w", command, err)
	}
}

// probeOutput keeps the first 4 KiB an exec probe prints.
type probeOutput struct {
	mu  sync.Mutex
	buf []byte
}

func (o *probeOutput) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, b[:min(len(b), 4096-len(o.buf))]...)
	return len(b), nil
}

func (o *probeOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.buf)
}

// WaitReady polls probe until it succeeds, the process exits, timeout passes
// or ctx ends. The first attempt is made at once and the next ones follow
// within a millisecond or two, slowing down to one every 25ms. An exit is
// noticed at once, even during an attempt: the error wraps ErrExited and
// carries the exit status and the last stderr line. When timeout passes the
// error wraps ErrNotReady and the last probe error; timeout <= 0 means only
// ctx bounds the wait. WaitReady returns only after its probe call returned.
//
// For a process started with Spec.Notify, ready means READY=1 received and
// probe is ignored (it may be nil). EXTEND_TIMEOUT_USEC=N moves the timeout
// to at least N microseconds after the message arrived. Errors are as above,
// with the last STATUS= in place of the probe error.
func WaitReady(ctx context.Context, p *Process, probe Probe, timeout time.Duration) error {
	if p.notify != nil {
		return p.waitNotified(ctx, timeout)
	}
	if probe == nil {
		return fmt.Errorf("ready %s pid %d: no probe and not started with Notify", p.name, p.pid)
	}
	attemptCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}

	result := make(chan error, 1)
	probing := false
	attempt := func() {
		probing = true
		go func() {
			ctx, cancel := context.WithTimeout(attemptCtx, probeAttemptLimit)
			defer cancel()
			result <- probe(ctx)
		}()
	}
	defer func() {
		if probing {
			cancel()
			<-result
		}
	}()

	tick := time.NewTimer(firstProbeInterval)
	tick.Stop() // armed after each failed attempt
	defer tick.Stop()
	interval := firstProbeInterval
	var lastErr error
	attempt()
	for {
		select {
		case err := <-result:
			probing = false
			if err == nil {
				select {
				case <-p.Done(): // whatever answered, it was not this process
					return p.exitedError()
				default:
					return nil
				}
			}
			lastErr = err
			tick.Reset(interval)
			interval = min(interval*3/2, maxProbeInterval)
		case <-tick.C:
			attempt()
		case <-p.Done():
			return p.exitedError()
		case <-expired:
			return fmt.Errorf("ready %s pid %d: %w after %s: %v", p.name, p.pid, ErrNotReady, timeout, lastErr)
		case <-ctx.Done():
			return fmt.Errorf("ready %s pid %d: %w", p.name, p.pid, ctx.Err())
		}
	}
}

// waitNotified is WaitReady for a process started with Spec.Notify.
func (p *Process) waitNotified(ctx context.Context, timeout time.Duration) error {
	began := time.Now()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	expired := timer.C
	if timeout <= 0 {
		timer.Stop()
		expired = nil
	}
	for {
		select {
		case <-p.notify.ready:
			select {
			case <-p.Done(): // it said READY=1 but is gone
				return p.exitedError()
			default:
				return nil
			}
		case <-p.Done():
			return p.exitedError()
		case <-expired:
			// Checked only now: an extension can only move the deadline
			// later, so the timer never fires too late.
			if left := time.Until(p.notify.extendedUntil()); left > 0 {
				timer.Reset(left)
				continue
			}
			err := fmt.Errorf("ready %s pid %d: %w after %s: no READY=1", p.name, p.pid, ErrNotReady, time.Since(began).Round(time.Millisecond))
			if status := p.NotifyStatus(); status != "" {
				err = fmt.Errorf("%w (status: %q)", err, status)
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("ready %s pid %d: %w", p.name, p.pid, ctx.Err())
		}
	}
}

// exitedError describes an exit before ready: the status, what a Notify app
// last sent in STATUS= and ERRNO=, and the last stderr line, which usually
// say why. It wraps ErrExited and the *exec.ExitError.
func (p *Process) exitedError() error {
	status := errors.New("exit status 0")
	if err := p.Err(); err != nil {
		status = errors.Unwrap(err) // without the "run NAME pid PID" prefix
	}
	err := fmt.Errorf("ready %s pid %d: %w: %w", p.name, p.pid, ErrExited, status)
	// Read to the end once Done is closed: what a Notify app said last.
	st := p.NotifyState()
	if st.Status != "" {
		err = fmt.Errorf("%w (status: %q)", err, st.Status)
	}
	if st.Errno != 0 {
		err = fmt.Errorf("%w (errno %d: %v)", err, st.Errno, syscall.Errno(st.Errno))
	}
	if tail := p.StderrTail(1); len(tail) > 0 {
		err = fmt.Errorf("%w (stderr: %q)", err, tail[0])
	}
	return err
}
