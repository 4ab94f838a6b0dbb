package listeners

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

type fdState int

const (
	fdPending fdState = iota // held by the Set until a Listen call asks for its name
	fdClaimed                // handed out by Listen, or closed because it could not be
	fdUnused                 // closed by CloseUnused
)

// inheritedFD is one socket systemd passed. file is nil once the Set no
// longer owns it.
type inheritedFD struct {
	name  string
	fd    int // the number it was passed as, for logs and errors
	file  *os.File
	state fdState
}

// claim hands out every inherited socket named name, as listeners. The
// files are taken under the lock and converted outside it.
func (s *Set) claim(name string) ([]net.Listener, error) {
	taken, err := s.take(name)
	if err != nil {
		return nil, err
	}
	var ls []net.Listener
	for _, in := range taken {
		l, err := fileListener(in.file)
		if err == nil {
			ls = append(ls, l)
			continue
		}
		for _, l := range ls {
			l.Close()
		}
		for _, in := range taken {
			in.file.Close()
		}
		return nil, fmt.Errorf("fd %d: %w", in.fd, err)
	}
	// The listeners hold their own dups of the sockets.
	for _, in := range taken {
		in.file.Close()
	}
	return ls, nil
}

// take marks every socket named name as claimed and returns copies of their
// entries, which now own the files.
func (s *Set) take(name string) ([]inheritedFD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var taken []inheritedFD
	for _, in := range s.inherited {
		if in.name != name {
			continue
		}
		switch in.state {
		case fdClaimed:
			return nil, fmt.Errorf("systemd socket %q was already claimed by an earlier listen", name)
		case fdUnused:
			return nil, fmt.Errorf("systemd socket %q was closed as unused", name)
		}
		taken = append(taken, *in)
		in.state = fdClaimed
		in.file = nil
	}
	if len(taken) == 0 {
		return nil, fmt.Errorf("systemd passed no socket named %q (%s)", name, s.describePassed())
	}
	return taken, nil
}

// describePassed lists the names systemd passed, for an error about a
// missing one. Callers hold s.mu.
func (s *Set) describePassed() string {
	if len(s.inherited) == 0 {
		return "it passed no sockets: LISTEN_FDS unset, or LISTEN_PID not this process"
	}
	var names []string
	seen := map[string]bool{}
	for _, in := range s.inherited {
		if !seen[in.name] {
			seen[in.name] = true
			names = append(names, strconv.Quote(in.name))
		}
	}
	return "it passed " + strings.Join(names, ", ")
}

// fileListener turns an inherited socket into a net.Listener on a dup of its
// fd; the caller still closes f. net.FileListener puts the dup in
// non-blocking mode and registers it with the runtime poller, so Close
// interrupts Accept. It would also accept a unix datagram socket, so the
// socket type is checked first.
func fileListener(f *os.File) (net.Listener, error) {
	if err := checkListening(f); err != nil {
		return nil, err
	}
	return net.FileListener(f)
}

// checkListening reports whether f is a listening stream socket.
func checkListening(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var typ, accepting int
	var serr error
	err = rc.Control(func(fd uintptr) {
		typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if serr == nil {
			accepting, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		}
	})
	switch {
	case err != nil:
		return err
	case errors.Is(serr, unix.ENOTSOCK):
		return errors.New("not a socket: want a listening stream socket (ListenStream=)")
	case serr != nil:
		return fmt.Errorf("getsockopt: %w", serr)
	case typ != unix.SOCK_STREAM:
		return fmt.Errorf("%s socket: want a listening stream socket (ListenStream=)", sockTypeName(typ))
	case accepting == 0:
		return errors.New("stream socket is not listening (Accept=yes passes connections, rouse needs Accept=no)")
	}
	return nil
}

func sockTypeName(typ int) string {
	switch typ {
	case unix.SOCK_DGRAM:
		return "datagram (SOCK_DGRAM)"
	case unix.SOCK_SEQPACKET:
		return "sequential packet (SOCK_SEQPACKET)"
	case unix.SOCK_RAW:
		return "raw (SOCK_RAW)"
	}
	return "type " + strconv.Itoa(typ)
}

// fdOf returns f's descriptor without f.Fd's side effect of switching it to
// blocking mode.
func fdOf(f *os.File) int {
	fd := -1
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}
