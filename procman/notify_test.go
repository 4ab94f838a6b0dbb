package procman

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"os/user"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/sys/unix"
)

// helperNotify is an app that speaks sd_notify(3) by writing datagrams to
// $NOTIFY_SOCKET itself. HELPER_NOTIFY holds the datagrams, separated by
// "|", each optionally prefixed by "+DURATION " to wait before sending it.
// Then, with HELPER_BARRIER set, it sends BARRIER=1 with the write end of a
// pipe and prints "barrier ok" once rouse closed it; with HELPER_EXIT set it
// exits with that code. Otherwise it sends "STATUS=usr1 N" on the Nth
// SIGUSR1 and, with HELPER_STOPPING set, "STOPPING=1" and "STATUS=bye" on
// SIGTERM before exiting.
func helperNotify() int {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGUSR1)
	if os.Getenv("HELPER_STOPPING") != "" {
		signal.Notify(sig, syscall.SIGTERM)
	}
	for _, dgram := range strings.Split(os.Getenv("HELPER_NOTIFY"), "|") {
		if rest, ok := strings.CutPrefix(dgram, "+"); ok {
			delay, msg, _ := strings.Cut(rest, " ")
			d, err := time.ParseDuration(delay)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			time.Sleep(d) // the app's own pace, not a test waiting
			dgram = msg
		}
		if err := sendNotify(dgram); err != nil {
			fmt.Fprintln(os.Stderr, "notify:", err)
			return 1
		}
	}
	if os.Getenv("HELPER_BARRIER") != "" {
		if err := notifyBarrier(5 * time.Second); err != nil {
			fmt.Println("barrier", err)
		} else {
			fmt.Println("barrier ok")
		}
	}
	if code := os.Getenv("HELPER_EXIT"); code != "" {
		n, _ := strconv.Atoi(code)
		return n
	}
	for i := 1; ; i++ {
		if s := <-sig; s == syscall.SIGTERM {
			_ = sendNotify("STOPPING=1\nSTATUS=bye")
			return 0
		}
		if err := sendNotify(fmt.Sprintf("STATUS=usr1 %d", i)); err != nil {
			fmt.Fprintln(os.Stderr, "notify:", err)
			return 1
		}
	}
}

// sendNotify sends one datagram, with fds, to $NOTIFY_SOCKET, as
// sd_notify(3) does.
func sendNotify(msg string, fds ...int) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return unix.Sendmsg(fd, []byte(msg), oob, &unix.SockaddrUnix{Name: os.Getenv("NOTIFY_SOCKET")}, 0)
}

// notifyBarrier is sd_notify_barrier(3): it sends BARRIER=1 with the write
// end of a pipe and waits until the receiver closed it.
func notifyBarrier(timeout time.Duration) error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[0])
	err := sendNotify("BARRIER=1", p[1])
	unix.Close(p[1])
	if err != nil {
		return err
	}
	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(timeout.Milliseconds()))
	switch {
	case err != nil:
		return err
	case n == 0:
		return errors.New("timeout: the fd was not closed")
	}
	return nil
}

func notifySpec(t *testing.T, messages string, env ...string) Spec {
	t.Helper()
	spec := helperSpec(t, "notify", append([]string{"HELPER_NOTIFY=" + messages}, env...)...)
	spec.Notify = true
	return spec
}

// isClosed reports whether ch is closed now.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// READY=1 is what makes WaitReady return, not the process running.
func TestNotifyReady(t *testing.T) {
	t.Parallel()
	began := time.Now()
	p := start(t, notifySpec(t, "STATUS=warming up|+300ms READY=1\nSTATUS=serving"))
	if err := WaitReady(testContext(t), p, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Errorf("ready after %s, before the app sent READY=1", took)
	}
	if !isClosed(p.Ready()) {
		t.Error("Ready not closed")
	}
	// Sent in the same datagram as READY=1: already visible.
	if got, want := p.NotifyState(), (NotifyState{Ready: true, Status: "serving"}); got != want {
		t.Errorf("state %+v, want %+v", got, want)
	}
}

// systemd-notify waits (BARRIER=1) until the fd it sends is closed, for 5s.
// The second one sends only after the first returned: READY=1 within 2s
// proves rouse closes the fds it receives.
func TestNotifySystemdNotify(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/bin/systemd-notify"); err != nil {
		t.Skip(err)
	}
	began := time.Now()
	p := start(t, Spec{
		Name:   "script",
		Shell:  `sleep 0.2; systemd-notify --status=warming; systemd-notify --ready --status="warming done"; exec sleep 1000`,
		User:   currentUser(),
		Notify: true,
	})
	if err := WaitReady(testContext(t), p, nil, 10*time.Second); err != nil {
		t.Fatal(err, p.StderrTail(5))
	}
	// An unclosed barrier fd costs 5 s per systemd-notify call; a loaded
	// machine costs less than that.
	if took := time.Since(began); took > 4*time.Second {
		t.Errorf("ready after %s: a barrier waited for its fd", took)
	}
	if got := p.NotifyStatus(); got != "warming done" {
		t.Errorf("status %q, want %q", got, "warming done")
	}
}

// EXTEND_TIMEOUT_USEC lets a slow starter take longer than the timeout.
func TestNotifyExtendTimeout(t *testing.T) {
	t.Parallel()
	// The start timeout leaves the helper (a race-built binary, on a
	// loaded machine) seconds to send its extension; READY=1 comes after
	// the timeout, so only the extension makes it count.
	const timeout = 3 * time.Second
	p := start(t, notifySpec(t, "EXTEND_TIMEOUT_USEC=20000000|+3500ms READY=1"))
	began := time.Now()
	if err := WaitReady(testContext(t), p, nil, timeout); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < timeout {
		t.Errorf("ready after %s, within the timeout: the extension was not needed", took)
	}
}

// An exit before READY=1 is seen at once; what the app said last (sent just
// before it exited) is in the error.
func TestNotifyExitBeforeReady(t *testing.T) {
	t.Parallel()
	p := start(t, notifySpec(t, "STATUS=cannot bind\nERRNO=98", "HELPER_EXIT=4"))
	var exitedAt time.Time
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		<-p.Done()
		exitedAt = time.Now()
	}()
	err := WaitReady(testContext(t), p, nil, 10*time.Second)
	returnedAt := time.Now()
	<-watched
	if !errors.Is(err, ErrExited) {
		t.Fatalf("got %v, want ErrExited", err)
	}
	for _, want := range []string{"exit status 4", `status: "cannot bind"`, "errno 98: address already in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if lag := returnedAt.Sub(exitedAt); lag > 200*time.Millisecond {
		t.Errorf("WaitReady returned %s after the exit", lag)
	}
	if isClosed(p.Ready()) {
		t.Error("Ready closed")
	}
}

func TestNotifyNeverReady(t *testing.T) {
	t.Parallel()
	p := start(t, notifySpec(t, "STATUS=loading models\nREADY=0"))
	eventually(t, 10*time.Second, "STATUS received", func() bool { return p.NotifyStatus() == "loading models" })
	began := time.Now()
	err := WaitReady(testContext(t), p, nil, 300*time.Millisecond)
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), `status: "loading models"`) {
		t.Fatalf("got %v, want ErrNotReady with the status", err)
	}
	if took := time.Since(began); took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("took %s, want about 300ms", took)
	}
}

// What the app says after READY=1 is kept, up to its last words: those sent
// before it exited are all read when Done is closed.
func TestNotifyAfterReady(t *testing.T) {
	t.Parallel()
	p := start(t, notifySpec(t, "READY=1\nSTATUS=serving", "HELPER_STOPPING=1"))
	if err := WaitReady(testContext(t), p, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if err := unix.Kill(p.Pid(), unix.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("usr1 %d", i)
		eventually(t, 10*time.Second, "status "+want, func() bool { return p.NotifyStatus() == want })
	}
	if p.Stopping() {
		t.Error("stopping before it said so")
	}
	if err := p.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if got, want := p.NotifyState(), (NotifyState{Ready: true, Stopping: true, Status: "bye"}); got != want {
		t.Errorf("state after exit %+v, want %+v", got, want)
	}
	if err := p.Err(); err != nil {
		t.Errorf("exit: %v", err)
	}
}

// The notify socket works whoever the app runs as, and accepts a helper of
// the app's process group running as yet another user.
func TestNotifyOtherUsers(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skip(err)
	}
	for _, tt := range []struct{ name, user, shell, status string }{
		{"app as nobody", "nobody", `systemd-notify --ready --status="as $(id -un)"; exec sleep 1000`, "as nobody"},
		// systemd-notify as nobody cannot claim its parent's pid: the
		// message comes from its own pid, with uid nobody.
		{"group member as nobody", "root", `setpriv --reuid=nobody --regid=nogroup --clear-groups systemd-notify --ready --status=member; exec sleep 1000`, "member"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, Spec{Name: "other", Shell: tt.shell, Dir: "/", User: tt.user, Notify: true})
			if err := WaitReady(testContext(t), p, nil, 10*time.Second); err != nil {
				t.Fatal(err, p.StderrTail(5))
			}
			if got := p.NotifyStatus(); got != tt.status {
				t.Errorf("status %q, want %q", got, tt.status)
			}
		})
	}
}

// A process of another user and another group cannot make an app ready,
// and the fds it sends are closed all the same.
func TestNotifyRejectsStrangers(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skip(err)
	}
	app := start(t, notifySpec(t, "STATUS=genuine")) // runs as root
	eventually(t, 10*time.Second, "the app's status", func() bool { return app.NotifyStatus() == "genuine" })
	// Its barrier returns once the reader went past the forged message.
	stranger := start(t, Spec{
		Name:  "stranger",
		Shell: `systemd-notify --ready --status=forged`,
		Dir:   "/",
		User:  "nobody",
		Env:   []string{"NOTIFY_SOCKET=" + app.notify.addr},
	})
	waitDone(t, stranger, 4*time.Second)
	if err := stranger.Err(); err != nil {
		t.Fatal(err, stranger.StderrTail(5))
	}
	if isClosed(app.Ready()) || app.NotifyStatus() != "genuine" {
		t.Errorf("a stranger changed the app's state: %+v", app.NotifyState())
	}
}

// Rouse's own NOTIFY_SOCKET (from systemd) never reaches an app; with
// Notify, the app's own overrides one in Spec.Env. Not parallel: it sets
// rouse's environment.
func TestNotifySocketEnv(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	tests := []struct {
		name   string
		env    []string
		notify bool
		want   string // "@" = the app's own socket
	}{
		{"inherited", nil, false, ""},
		{"from Spec.Env", []string{"NOTIFY_SOCKET=/from/spec"}, false, "/from/spec"},
		{"notify", []string{"NOTIFY_SOCKET=/from/spec"}, true, "@"},
	}
	for _, tt := range tests {
		var out lines
		p := start(t, Spec{
			Name:   "env",
			Shell:  `echo "ns=$NOTIFY_SOCKET"`,
			User:   currentUser(),
			Env:    tt.env,
			Notify: tt.notify,
			Output: out.output,
		})
		waitDone(t, p, 10*time.Second)
		want := tt.want
		if want == "@" {
			want = p.notify.addr
			if prefix := "@rouse/notify/" + strconv.Itoa(os.Getpid()) + "/"; !strings.HasPrefix(want, prefix) {
				t.Errorf("socket %q, want %s...", want, prefix)
			}
		}
		if got := out.get(); !slices.Equal(got, []string{"stdout: ns=" + want}) {
			t.Errorf("%s: got %q, want ns=%s", tt.name, got, want)
		}
	}
}

// The socket, the fds that came with messages and the reader goroutine are
// all gone when Done is closed. Not parallel: it counts for the whole test
// process.
func TestNotifyNoLeaks(t *testing.T) {
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)

	var out lines
	spec := notifySpec(t, "READY=1", "HELPER_BARRIER=1")
	spec.Output = out.output
	p := start(t, spec)
	if err := WaitReady(testContext(t), p, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if line := out.waitFor(t, "stdout: barrier"); line != "stdout: barrier ok" {
		t.Fatalf("helper: %q", line)
	}
	sock := socketInode(t, p.notify.conn)
	if !slices.Contains(openSockets(t), sock) {
		t.Fatalf("socket %s not among our fds", sock)
	}
	if !notifyReaderRunning() {
		t.Fatal("no reader goroutine")
	}
	if err := p.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
	// At once, not eventually: Done waits for both.
	if slices.Contains(openSockets(t), sock) {
		t.Errorf("socket %s still open after Done", sock)
	}
	// The reader has done its work when Done returns; its goroutine may
	// still be on its way out (the deferred close is its last step).
	eventually(t, time.Second, "the reader goroutine gone after Done", func() bool { return !notifyReaderRunning() })

	eventually(t, 5*time.Second, "goroutines back to the start", func() bool {
		return runtime.NumGoroutine() <= goroutines
	})
	eventually(t, 5*time.Second, "fds back to the start", func() bool {
		return openFDs(t) <= fds
	})
}

// socketInode returns "socket:[INODE]", as /proc/self/fd links name it.
func socketInode(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	f, err := conn.File() // a dup, closed at once
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("socket:[%d]", st.Ino)
}

func openSockets(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var socks []string
	for _, e := range entries {
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(link, "socket:") {
			socks = append(socks, link)
		}
	}
	return socks
}

func notifyReaderRunning() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Contains(buf, []byte("procman.(*notifier).read("))
}

// Exact timing of WaitReady for a Notify process, in fake time: READY=1,
// exit, timeout, and EXTEND_TIMEOUT_USEC, which can only move the deadline
// later.
func TestWaitNotifiedSchedule(t *testing.T) {
	type event struct {
		at   time.Duration
		msg  string
		exit bool // the process exits first
	}
	tests := []struct {
		name   string
		events []event
		want   error
		at     time.Duration
	}{
		{"ctx", nil, context.Canceled, 700 * time.Millisecond}, // canceled at 700ms
		{"ready", []event{{500 * time.Millisecond, "READY=1", false}}, nil, 500 * time.Millisecond},
		{"ready=0 is not ready", []event{{500 * time.Millisecond, "READY=0", false}}, ErrNotReady, time.Second},
		{"exit", []event{{300 * time.Millisecond, "", true}}, ErrExited, 300 * time.Millisecond},
		{"ready and exit", []event{{300 * time.Millisecond, "READY=1", true}}, ErrExited, 300 * time.Millisecond},
		{"timeout", nil, ErrNotReady, time.Second},
		{"extended", []event{{800 * time.Millisecond, "EXTEND_TIMEOUT_USEC=1000000", false}}, ErrNotReady, 1800 * time.Millisecond},
		{"extended twice", []event{
			{800 * time.Millisecond, "EXTEND_TIMEOUT_USEC=1000000", false},
			{1500 * time.Millisecond, "EXTEND_TIMEOUT_USEC=1000000", false},
		}, ErrNotReady, 2500 * time.Millisecond},
		{"not shortened", []event{
			{200 * time.Millisecond, "EXTEND_TIMEOUT_USEC=300000", false},
			{300 * time.Millisecond, "EXTEND_TIMEOUT_USEC=5000000", false},
			{400 * time.Millisecond, "EXTEND_TIMEOUT_USEC=1000", false},
		}, ErrNotReady, 5300 * time.Millisecond},
		{"shorter than the timeout", []event{{200 * time.Millisecond, "EXTEND_TIMEOUT_USEC=300000", false}}, ErrNotReady, time.Second},
		{"ready when extended", []event{
			{800 * time.Millisecond, "EXTEND_TIMEOUT_USEC=1000000", false},
			{1500 * time.Millisecond, "READY=1", false},
		}, nil, 1500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &Process{name: "app", pid: 42, done: make(chan struct{}), notify: &notifier{ready: make(chan struct{})}}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				if tt.want == context.Canceled {
					time.AfterFunc(700*time.Millisecond, cancel)
				}
				began := time.Now()
				for _, e := range tt.events {
					time.AfterFunc(e.at, func() {
						if e.exit {
							close(p.done)
						}
						p.notify.handle(parseNotify([]byte(e.msg)), time.Now())
					})
				}
				err := WaitReady(ctx, p, nil, time.Second)
				if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
					t.Fatalf("got %v, want %v", err, tt.want)
				}
				if took := time.Since(began); took != tt.at {
					t.Errorf("returned after %s, want %s", took, tt.at)
				}
			})
		})
	}
}

func TestWaitReadyNeedsProbe(t *testing.T) {
	p := &Process{name: "app", pid: 42, done: make(chan struct{})}
	if err := WaitReady(t.Context(), p, nil, time.Second); err == nil || !strings.Contains(err.Error(), "no probe") {
		t.Errorf("got %v, want a no probe error", err)
	}
}

func TestParseNotify(t *testing.T) {
	tests := []struct {
		msg  string
		want []notifyVar
	}{
		{"READY=1", []notifyVar{{"READY", "1"}}},
		{"READY=1\n", []notifyVar{{"READY", "1"}}},
		{"READY=1\nSTATUS=a = b\n\nMAINPID=7", []notifyVar{{"READY", "1"}, {"STATUS", "a = b"}, {"MAINPID", "7"}}},
		{"STATUS=", []notifyVar{{"STATUS", ""}}},
		{"X_1=y", []notifyVar{{"X_1", "y"}}},
		{"garbage\n=1\n1A=2\nA B=3\nA\x00=4\nS=a\x00b\nREADY=1", []notifyVar{{"READY", "1"}}},
		{"STATUS=crlf\r", []notifyVar{{"STATUS", "crlf\r"}}},
		{"", nil},
	}
	for _, tt := range tests {
		if got := parseNotify([]byte(tt.msg)); !slices.Equal(got, tt.want) {
			t.Errorf("parseNotify(%q) = %q, want %q", tt.msg, got, tt.want)
		}
	}
}

// What each message does to the state, one message after the other.
func TestNotifyHandle(t *testing.T) {
	n := &notifier{ready: make(chan struct{})}
	steps := []struct {
		msg  string
		want NotifyState
	}{
		{"STATUS=starting\nMAINPID=1\nWATCHDOG=1", NotifyState{Status: "starting"}},
		{"READY=yes\nERRNO=x\nERRNO=-1", NotifyState{Status: "starting"}},
		{"READY=1", NotifyState{Ready: true, Status: "starting"}},
		{"RELOADING=1\nSTATUS=reloading", NotifyState{Ready: true, Reloading: true, Status: "reloading"}},
		{"READY=1\nSTATUS=", NotifyState{Ready: true}},
		{"ERRNO=13", NotifyState{Ready: true, Errno: 13}},
		{"STOPPING=1\nSTATUS=bye", NotifyState{Ready: true, Stopping: true, Status: "bye", Errno: 13}},
	}
	for _, s := range steps {
		n.handle(parseNotify([]byte(s.msg)), time.Now())
		if got := n.snapshot(); got != s.want {
			t.Errorf("after %q: %+v, want %+v", s.msg, got, s.want)
		}
	}
	if !isClosed(n.ready) {
		t.Error("ready not closed")
	}
	now := time.Now()
	n.handle(parseNotify([]byte("EXTEND_TIMEOUT_USEC=18446744073709551615")), now)
	if until := n.extendedUntil(); until.Sub(now) < 100*365*24*time.Hour {
		t.Errorf("huge extension clamped to %s", until.Sub(now))
	}
}

// formatNotify is what parseNotify reads back.
func formatNotify(vars []notifyVar) []byte {
	var b bytes.Buffer
	for _, v := range vars {
		b.WriteString(v.key + "=" + v.value + "\n")
	}
	return b.Bytes()
}

func FuzzParseNotify(f *testing.F) {
	for _, seed := range []string{
		"READY=1",
		"READY=1\nSTATUS=Processing requests...\n",
		"STATUS=a=b=c\nMAINPID=4711\nERRNO=2\nBUSERROR=org.freedesktop.DBus.Error.TimedOut",
		"EXTEND_TIMEOUT_USEC=18446744073709551615\nEXTEND_TIMEOUT_USEC=-1\nEXTEND_TIMEOUT_USEC=5000000",
		"RELOADING=1\nMONOTONIC_USEC=123\nSTOPPING=1\nBARRIER=1\nFDSTORE=1\nFDNAME=x\nWATCHDOG=1",
		"ERRNO=99999999999999999999\nERRNO=-5",
		"\n\n=\n==\nA\nA=\x00\n\xff\xfe=1\n1=1\n_=_",
		"STATUS=\xff\xfe invalid utf-8 \r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		vars := parseNotify(msg)
		for _, v := range vars {
			if !validNotifyKey([]byte(v.key)) || strings.ContainsAny(v.value, "\n\x00") {
				t.Fatalf("parseNotify(%q) gave %q", msg, v)
			}
		}
		if again := parseNotify(formatNotify(vars)); !slices.Equal(again, vars) {
			t.Fatalf("round trip of %q: %q, then %q", msg, vars, again)
		}
		n := &notifier{ready: make(chan struct{})}
		n.handle(vars, time.Now())
		if n.snapshot().Ready != isClosed(n.ready) {
			t.Fatal("Ready and the channel disagree")
		}
	})
}

// stop reads what is queued before it closes the socket: the last words of
// an app are not lost when the reader is behind at the exit. Holding the
// lock keeps the reader behind.
func TestNotifierDrainsAtStop(t *testing.T) {
	t.Parallel()
	n, err := newNotifier()
	if err != nil {
		t.Fatal(err)
	}
	n.start(os.Getpid(), uint32(os.Getuid()))
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const messages = 5 // below net.unix.max_dgram_qlen (10 by default): no send blocks
	n.mu.Lock()
	for i := range messages {
		if err := unix.Sendmsg(fd, fmt.Appendf(nil, "STATUS=%d", i), nil, &unix.SockaddrUnix{Name: n.addr}, 0); err != nil {
			n.mu.Unlock()
			t.Fatal(err)
		}
	}
	_ = n.conn.SetReadDeadline(time.Now()) // what stop does first
	n.mu.Unlock()
	n.stop()
	if got, want := n.snapshot().Status, strconv.Itoa(messages-1); got != want {
		t.Errorf("status %q after stop, want %q", got, want)
	}
}
