package listeners

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Quiesce makes the listening socket of c complete no new connection and
// waits, up to wait, until whoever accepts on it has taken the ones the
// kernel queued already. Closing a listener resets the connections in its
// queue, which their clients see as established: a listener that is being
// removed for good (a reload took its address away) is quiesced first, while
// its accept loop still runs, then closed.
//
// A TCP socket gets a socket filter that drops every SYN, so no new
// handshake begins (clients retry their SYN, then find the port closed);
// a Unix socket cannot be kept from connecting and is only drained. A
// listener with TCP_DEFER_ACCEPT (the HTTP front's) loses it, and is
// drained for all of wait: the connections it held outside the queue,
// waiting for their first bytes, join the queue meanwhile. Never
// quiesce a socket that outlives this process (one systemd holds): the
// filter would stay on it.
func Quiesce(c syscall.Conn, wait time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	deferred := false
	err = rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil || domain == unix.AF_UNIX {
			return
		}
		if v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT); err == nil && v > 0 {
			// Connections held for their first bytes are queued when
			// those come, or, from now, when the client acknowledges the
			// SYN-ACK the kernel sends again (after a second).
			deferred = true
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 0)
		}
		ferr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(dropSYN)), Filter: &dropSYN[0]})
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("quiesce: %w", err)
	}
	deadline := time.Now().Add(wait)
	// With TCP_DEFER_ACCEPT, connections no poll can see may still join
	// the queue (a client slow to send its first bytes): drained until
	// wait is over.
	for (deferred || pending(rc)) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // the accept loop takes them meanwhile
	}
	return nil
}

// dropSYN is the socket filter of a quiesced TCP listener: it drops a
// SYN (a new connection) and passes every other packet, so a handshake
// under way completes, and the first bytes of a connection held outside
// the accept queue until they come (TCP_DEFER_ACCEPT, as the HTTP front
// has it) still queue it, to be drained. A socket filter of a TCP socket
// sees the packet from its TCP header: byte 13 holds the flags.
var dropSYN = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 13},
	{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0x12}, // SYN | ACK
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: 0x02, Jt: 0, Jf: 1},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},          // a SYN alone: dropped
	{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff}, // the rest, whole
}

// pending reports whether the listening socket has connections queued.
func pending(rc syscall.RawConn) bool {
	queued := false
	rc.Control(func(fd uintptr) { queued = Queued(fd) })
	return queued
}

// Queued reports whether a connection waits on the listening socket fd,
// without taking it.
func Queued(fd uintptr) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}
