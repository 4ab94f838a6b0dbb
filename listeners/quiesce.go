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
// A TCP socket gets a socket filter that drops every packet, so no
// handshake completes (clients retry their SYN, then find the port closed);
// a Unix socket cannot be kept from connecting and is only drained. Never
// quiesce a socket that outlives this process (one systemd holds): the
// filter would stay on it.
func Quiesce(c syscall.Conn, wait time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil || domain == unix.AF_UNIX {
			return
		}
		drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
		ferr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(drop)), Filter: &drop[0]})
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("quiesce: %w", err)
	}
	deadline := time.Now().Add(wait)
	for pending(rc) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // the accept loop takes them meanwhile
	}
	return nil
}

// pending reports whether the listening socket has connections queued.
func pending(rc syscall.RawConn) bool {
	queued := false
	rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		queued = err == nil && n > 0
	})
	return queued
}
