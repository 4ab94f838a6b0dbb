package procman

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Limits of the notify socket.
const (
	// notifyMaxMessage is the largest notify datagram read; a longer one is
	// dropped whole, as systemd does.
	notifyMaxMessage = 4096
	// notifyFDs is how many fds one message can carry into rouse, only to be
	// closed. The kernel closes those that do not fit (MSG_CTRUNC).
	notifyFDs = 8
	// notifyDrainLimit bounds the messages read after the process was reaped:
	// a sender that escaped the group must not hold Done. It is above what
	// the kernel queues on one socket (net.unix.max_dgram_qlen: 10 by
	// default, 512 under systemd), so no message sent before the exit is
	// lost.
	notifyDrainLimit = 1024
)

// NotifyState is what a process started with Spec.Notify last said on its
// NOTIFY_SOCKET (see sd_notify(3)).
type NotifyState struct {
	Ready     bool   // READY=1 was received
	Reloading bool   // RELOADING=1 was received and no READY=1 since
	Stopping  bool   // STOPPING=1 was received: the app is shutting down
	Status    string // the last STATUS= value
	Errno     int    // the last ERRNO= value; 0 when none
}

// notifier owns the notify socket of one process and the goroutine reading
// it. Its state is guarded by mu; ready is closed on the first READY=1.
type notifier struct {
	addr string // "@rouse/notify/...", the child's NOTIFY_SOCKET
	conn *net.UnixConn
	raw  syscall.RawConn

	// Set before the reader starts, read-only after.
	pid int    // the app's pid and pgid
	uid uint32 // the uid the app runs as

	ready  chan struct{}
	exited chan struct{} // closed when the reader returned

	mu          sync.Mutex
	state       NotifyState
	readyClosed bool
	extendUntil time.Time // EXTEND_TIMEOUT_USEC: WaitReady's deadline is at least this
}

// newNotifier binds a unixgram socket with SO_PASSCRED in the abstract
// namespace, so that an app running as any user can send to it without file
// permissions. The name ends in 128 random bits: no other process can bind
// it first to make Start fail. The socket is close-on-exec; the child only
// gets its name.
func newNotifier() (*notifier, error) {
	addr := fmt.Sprintf("@rouse/notify/%d/%s", os.Getpid(), rand.Text())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	})
	if err = errors.Join(err, sockErr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("notify socket: SO_PASSCRED: %w", err)
	}
	return &notifier{
		addr:   addr,
		conn:   conn,
		raw:    raw,
		ready:  make(chan struct{}),
		exited: make(chan struct{}),
	}, nil
}

// start runs the reader for the process pid running as uid.
func (n *notifier) start(pid int, uid uint32) {
	n.pid, n.uid = pid, uid
	go n.read()
}

// abort closes the socket of a process that could not be started; nil is
// fine.
func (n *notifier) abort() {
	if n != nil {
		n.conn.Close()
	}
}

// stop ends the reader once the process was reaped: it reads what is still
// queued (what the app said just before it exited), returns, and the socket
// is closed. stop blocks until then.
func (n *notifier) stop() {
	_ = n.conn.SetReadDeadline(time.Now())
	<-n.exited
	n.conn.Close()
}

// read receives messages until stop sets the read deadline, then drains the
// queue without waiting.
func (n *notifier) read() {
	defer close(n.exited)
	buf := make([]byte, notifyMaxMessage)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(notifyFDs*4))
	for {
		// The callback returns false on EAGAIN, which makes Read wait for
		// the socket to be readable; the deadline of stop ends the wait.
		err := n.raw.Read(func(fd uintptr) bool {
			return n.receive(int(fd), buf, oob) != unix.EAGAIN
		})
		if err != nil {
			break
		}
	}
	_ = n.raw.Control(func(fd uintptr) {
		for range notifyDrainLimit {
			if n.receive(int(fd), buf, oob) == unix.EAGAIN {
				return
			}
		}
	})
}

// receive reads and handles one datagram without blocking. It returns
// EAGAIN when none is queued. Every fd a message carries (BARRIER=1 sends
// one and waits for it to be closed, FDSTORE=1 would) is closed at once.
func (n *notifier) receive(fd int, buf, oob []byte) error {
	size, oobn, flags, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range cmsgs {
			if m.Header.Level != unix.SOL_SOCKET {
				continue
			}
			switch m.Header.Type {
			case unix.SCM_RIGHTS:
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					unix.Close(fd)
				}
			case unix.SCM_CREDENTIALS:
				cred, _ = unix.ParseUnixCredentials(&m)
			}
		}
	}
	if flags&unix.MSG_TRUNC != 0 || cred == nil || !n.allowed(cred) {
		return nil
	}
	n.handle(parseNotify(buf[:size]), time.Now())
	return nil
}

// allowed tells whether a message comes from the app: a process of its
// group, whatever uid it has, or one running as the app's uid or as root,
// which could make the app say anything anyway. The sender need not be the
// app itself: systemd-notify run by a shell script sends with its parent's
// pid when root, else with its own, a member of the group.
func (n *notifier) allowed(cred *unix.Ucred) bool {
	if cred.Uid == 0 || cred.Uid == n.uid || int(cred.Pid) == n.pid {
		return true
	}
	if cred.Pid <= 0 { // a sender in another pid namespace
		return false
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/stat")
	if err != nil {
		return false // exited already
	}
	st, ok := parseStat(data)
	return ok && st.pgrp == n.pid
}

// notifyVar is one KEY=VALUE assignment of a notify message.
type notifyVar struct {
	key, value string
}

// parseNotify splits a notify message into its assignments, in order:
// newline-separated KEY=VALUE lines where KEY is an environment variable
// name. Other lines (empty, without "=", with a bad key or a NUL byte) are
// ignored.
func parseNotify(msg []byte) []notifyVar {
	var vars []notifyVar
	for len(msg) > 0 {
		var line []byte
		line, msg, _ = bytes.Cut(msg, []byte("\n"))
		key, value, ok := bytes.Cut(line, []byte("="))
		if !ok || !validNotifyKey(key) || bytes.IndexByte(value, 0) >= 0 {
			continue
		}
		vars = append(vars, notifyVar{string(key), string(value)})
	}
	return vars
}

// validNotifyKey reports whether key is a name systemd accepts for an
// environment variable: [A-Za-z_][A-Za-z0-9_]*.
func validNotifyKey(key []byte) bool {
	if len(key) == 0 || key[0] >= '0' && key[0] <= '9' {
		return false
	}
	for _, c := range key {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// handle applies the assignments of one message received at now. Ready is
// closed last, so a STATUS= sent along with READY=1 is visible when it is.
// MAINPID= is ignored: rouse tracks the process it started and its group.
// Keys rouse does not know (WATCHDOG=1, FDSTORE=1, ...) are ignored, and
// BARRIER=1 needs nothing but its fd closed.
func (n *notifier) handle(vars []notifyVar, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ready := false
	for _, v := range vars {
		switch v.key {
		case "READY":
			if v.value == "1" {
				ready = true
				n.state.Ready = true
				n.state.Reloading = false
			}
		case "RELOADING":
			if v.value == "1" {
				n.state.Reloading = true
			}
		case "STOPPING":
			if v.value == "1" {
				n.state.Stopping = true
			}
		case "STATUS":
			n.state.Status = v.value
		case "ERRNO":
			if errno, err := strconv.Atoi(v.value); err == nil && errno >= 0 {
				n.state.Errno = errno
			}
		case "EXTEND_TIMEOUT_USEC":
			usec, err := strconv.ParseUint(v.value, 10, 64)
			if err != nil {
				break
			}
			d := time.Duration(min(usec, math.MaxInt64/uint64(time.Microsecond))) * time.Microsecond
			if until := now.Add(d); until.After(n.extendUntil) {
				n.extendUntil = until
			}
		}
	}
	if ready && !n.readyClosed {
		n.readyClosed = true
		close(n.ready)
	}
}

// snapshot returns the state under the lock.
func (n *notifier) snapshot() NotifyState {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state
}

// extendedUntil is the latest deadline EXTEND_TIMEOUT_USEC asked for.
func (n *notifier) extendedUntil() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.extendUntil
}

// Ready returns a channel closed when a process started with Spec.Notify
// first sent READY=1 (it stays closed after RELOADING=1 or an exit). It is
// nil, so blocks forever in a select, when Spec.Notify was not set.
func (p *Process) Ready() <-chan struct{} {
	if p.notify == nil {
		return nil
	}
	return p.notify.ready
}

// NotifyState returns what the process last said on its NOTIFY_SOCKET; the
// zero value when Spec.Notify was not set. Messages sent before the process
// exited are all included once Done is closed.
func (p *Process) NotifyState() NotifyState {
	if p.notify == nil {
		return NotifyState{}
	}
	return p.notify.snapshot()
}

// NotifyStatus returns the last STATUS= the process sent ("" when none, or
// when Spec.Notify was not set).
func (p *Process) NotifyStatus() string { return p.NotifyState().Status }

// Stopping reports whether the process said STOPPING=1: it is shutting
// down on its own.
func (p *Process) Stopping() bool { return p.NotifyState().Stopping }
