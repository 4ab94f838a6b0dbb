package activator

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sockdiag.go asks the kernel (netlink sock_diag, what ss(8) uses) about
// the connections of a listening socket handed to an app, without touching
// them: how many the app holds and how many still wait to be accepted.

// sockAddr is the local address of a listening socket, as sock_diag
// reports it for the connections accepted from it.
type sockAddr struct {
	family uint8      // AF_INET, AF_INET6 or AF_UNIX
	ip     netip.Addr // TCP: the bound address; unspecified matches any local address
	port   uint16     // TCP
	path   string     // unix: the socket file
}

func sockAddrOf(ln net.Listener) (sockAddr, error) {
	switch addr := ln.Addr().(type) {
	case *net.TCPAddr:
		ap := addr.AddrPort()
		sa := sockAddr{family: unix.AF_INET6, ip: ap.Addr(), port: ap.Port()}
		if ap.Addr().Is4() {
			sa.family = unix.AF_INET
		}
		return sa, nil
	case *net.UnixAddr:
		if addr.Name == "" || addr.Name[0] == '@' {
			return sockAddr{}, fmt.Errorf("unix socket %q: only a socket file can be handed off", addr.Name)
		}
		return sockAddr{family: unix.AF_UNIX, path: addr.Name}, nil
	}
	return sockAddr{}, fmt.Errorf("%s socket %s cannot be handed off", ln.Addr().Network(), ln.Addr())
}

func (s sockAddr) String() string {
	if s.family == unix.AF_UNIX {
		return "unix:" + s.path
	}
	return netip.AddrPortFrom(s.ip, s.port).String()
}

// connCount is what sock_diag says about the connections of one listening
// socket.
type connCount struct {
	accepted int // held open by a process: the app's connections
	queued   int // complete but not accepted yet: waiting in the backlog
}

// Sockets a process holds have an inode; the kernel drops it (reports 0)
// for connections nobody accepted yet and for those every process closed.
// TCP states (include/net/tcp_states.h) that a connection held by the app
// can be in.
const (
	tcpEstablished = 1
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpListen      = 10
	tcpClosing     = 11

	heldStates = 1<<tcpEstablished | 1<<tcpFinWait1 | 1<<tcpFinWait2 | 1<<tcpCloseWait | 1<<tcpLastAck | 1<<tcpClosing
)

// countConns asks the kernel about the connections on s.
func countConns(s sockAddr) (connCount, error) {
	if s.family == unix.AF_UNIX {
		return countUnix(s.path)
	}
	return countTCP(s)
}

// countTCP dumps the TCP sockets of s's family whose local port is s's,
// filtered by the kernel, and counts those on s's address.
func countTCP(s sockAddr) (connCount, error) {
	var c connCount
	req := make([]byte, inetDiagReqLen+inetDiagBytecodeLen)
	req[0] = s.family
	req[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[4:], heldStates)
	putPortFilter(req[inetDiagReqLen:], s.port)
	err := sockDiagDump(req, func(msg []byte) error {
		if len(msg) < inetDiagMsgLen {
			return errors.New("short inet_diag_msg")
		}
		family, state := msg[0], msg[1]
		sport := binary.BigEndian.Uint16(msg[4:])
		if family != s.family || sport != s.port {
			return nil
		}
		if !s.ip.IsUnspecified() {
			src := msg[8:24]
			var local netip.Addr
			if family == unix.AF_INET {
				local = netip.AddrFrom4([4]byte(src[:4]))
			} else {
				local = netip.AddrFrom16([16]byte(src))
			}
			if local != s.ip {
				return nil
			}
		}
		inode := binary.NativeEndian.Uint32(msg[68:])
		switch {
		case inode != 0:
			c.accepted++
		case state == tcpEstablished || state == tcpCloseWait:
			c.queued++ // in the accept queue (closed by its client, maybe)
		}
		return nil
	})
	return c, err
}

// Sizes of the structs of linux/inet_diag.h and linux/unix_diag.h.
const (
	inetDiagReqLen      = 56 // struct inet_diag_req_v2
	inetDiagMsgLen      = 72 // struct inet_diag_msg
	inetDiagBytecodeLen = 4 + 16
	unixDiagReqLen      = 24 // struct unix_diag_req
	unixDiagMsgLen      = 16 // struct unix_diag_msg

	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE
	inetDiagBCSGE       = 2 // INET_DIAG_BC_S_GE
	inetDiagBCSLE       = 3 // INET_DIAG_BC_S_LE

	unixDiagName  = 0    // UNIX_DIAG_NAME
	unixDiagRQLen = 4    // UNIX_DIAG_RQLEN
	udiagShowName = 0x01 // UDIAG_SHOW_NAME
	udiagShowRQ   = 0x10 // UDIAG_SHOW_RQLEN
)

// putPortFilter writes an INET_DIAG_REQ_BYTECODE attribute that keeps the
// sockets whose local port is port: "sport >= port && sport <= port" (the
// kernel's S_EQ is younger than some kernels rouse runs on). Each test is
// an inet_diag_bc_op {code, yes, no} followed by one holding the port in
// its no field; yes jumps to the next test, no jumps past the end, which
// rejects.
func putPortFilter(b []byte, port uint16) {
	binary.NativeEndian.PutUint16(b[0:], uint16(len(b)))
	binary.NativeEndian.PutUint16(b[2:], inetDiagReqBytecode)
	ops := b[4:]
	for i, code := range []byte{inetDiagBCSGE, inetDiagBCSLE} {
		op := ops[8*i:]
		left := len(ops) - 8*i
		op[0], op[1] = code, 8
		binary.NativeEndian.PutUint16(op[2:], uint16(left+4))
		binary.NativeEndian.PutUint16(op[6:], port)
	}
}

// countUnix dumps the unix stream sockets and counts the connections of
// the listening socket at path: connections accepted from a listening unix
// socket share its name. Those still in the backlog are the listening
// socket's receive queue.
func countUnix(path string) (connCount, error) {
	var c connCount
	req := make([]byte, unixDiagReqLen)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[4:], 1<<tcpEstablished|1<<tcpListen)
	binary.NativeEndian.PutUint32(req[12:], udiagShowName|udiagShowRQ)
	err := sockDiagDump(req, func(msg []byte) error {
		if len(msg) < unixDiagMsgLen {
			return errors.New("short unix_diag_msg")
		}
		typ, state := msg[1], msg[2]
		inode := binary.NativeEndian.Uint32(msg[4:])
		if typ != unix.SOCK_STREAM {
			return nil
		}
		var name string
		var rqueue uint32
		for attrs := msg[unixDiagMsgLen:]; len(attrs) >= 4; {
			l := int(binary.NativeEndian.Uint16(attrs))
			if l < 4 || l > len(attrs) {
				break
			}
			switch binary.NativeEndian.Uint16(attrs[2:]) {
			case unixDiagName:
				name = strings.TrimRight(string(attrs[4:l]), "\x00") // as bound, maybe with its NUL
			case unixDiagRQLen:
				if l >= 8 {
					rqueue = binary.NativeEndian.Uint32(attrs[4:])
				}
			}
			attrs = attrs[min(nlAlign(l), len(attrs)):]
		}
		if name != path {
			return nil
		}
		switch {
		case state == tcpListen:
			c.queued += int(rqueue)
		case inode != 0:
			c.accepted++
		}
		return nil
	})
	return c, err
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// sockDiagDump sends req as a SOCK_DIAG_BY_FAMILY dump request and calls
// each with the payload of every answer until the dump is done.
func sockDiagDump(req []byte, each func(msg []byte) error) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return os.NewSyscallError("socket netlink", err)
	}
	defer unix.Close(fd)
	// The kernel answers at once; a bound on the wait keeps a surprise
	// from hanging the caller.
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	msg := make([]byte, unix.NLMSG_HDRLEN+len(req))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(msg[8:], 1) // seq
	copy(msg[unix.NLMSG_HDRLEN:], req)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sock_diag request", err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("sock_diag answer", err)
		}
		msgs, err := parseNetlink(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			switch m.typ {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.data)); errno != 0 {
						return os.NewSyscallError("sock_diag", unix.Errno(-errno))
					}
				}
				return nil
			}
			if err := each(m.data); err != nil {
				return err
			}
		}
	}
}

type netlinkMsg struct {
	typ  uint16
	data []byte
}

// parseNetlink splits a netlink datagram into its messages.
func parseNetlink(b []byte) ([]netlinkMsg, error) {
	var msgs []netlinkMsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, errors.New("sock_diag: malformed netlink message")
		}
		msgs = append(msgs, netlinkMsg{typ: binary.NativeEndian.Uint16(b[4:]), data: b[unix.NLMSG_HDRLEN:l]})
		b = b[min(nlAlign(l), len(b)):]
	}
	return msgs, nil
}
