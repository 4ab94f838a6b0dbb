package listeners

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The sockets rouse binds itself outlive a restart of rouse in systemd's
// file descriptor store (sd_notify(3), FileDescriptorStoreMax= in the
// unit). Each one asked for with Options.Keep is sent to systemd when it is
// bound, with FDSTORE=1 and a name derived from its address; at the next
// start of the service systemd passes it back in LISTEN_FDS and
// LISTEN_FDNAMES under that name, and Listen takes it instead of binding
// again. In between, systemd's copy keeps the socket listening: the kernel
// queues new connections in its backlog, none is refused or reset.
//
// A stored socket whose address is no longer listened to is closed and
// removed from the store (FDSTOREREMOVE=1): at the next start by
// CloseUnused, during a run by Forget.

// storePrefix starts the names of stored sockets, which share
// LISTEN_FDNAMES with the FileDescriptorName= of socket units.
const storePrefix = "rouse@"

// StoreName returns the name a socket bound for a is stored under:
// "rouse@" and the address as Addr.String writes it, with ':', '%' and
// bytes outside printable ASCII as %XX, so that distinct addresses have
// distinct names that systemd accepts. ok is false for systemd addresses,
// which are never stored, and for a name over systemd's 255 bytes.
func StoreName(a Addr) (name string, ok bool) {
	if a.Kind == Systemd {
		return "", false
	}
	var b strings.Builder
	b.WriteString(storePrefix)
	for _, c := range []byte(a.String()) {
		if c == ':' || c == '%' || c <= ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	if b.Len() > maxFDName {
		return "", false
	}
	return b.String(), true
}

// UseFDStore makes the Set keep the sockets Listen binds with Options.Keep
// in systemd's file descriptor store, through conn: the connected
// NOTIFY_SOCKET of the service. Call it before the first Listen; without it
// nothing is stored (and stored sockets passed back are still taken).
func (s *Set) UseFDStore(conn *net.UnixConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store = conn
}

// Forget removes the socket of a, which nothing listens on any more, from
// the store, and for a unix address removes its socket file, which a stored
// socket's close leaves in place. It does nothing when the Set stores
// nothing.
func (s *Set) Forget(a Addr) {
	name, ok := StoreName(a)
	s.mu.Lock()
	stored := ok && s.store != nil
	s.mu.Unlock()
	if !stored {
		return
	}
	s.unstore(name)
	if a.Kind == Unix {
		removeSocketFile(a.Address, s)
	}
}

// restore takes the stored socket named name that systemd passed back, if
// there is one still pending. A unix socket whose file is gone (its
// directory was emptied while rouse was down: a RuntimeDirectory=, say) can
// never be reached again: it is closed and dropped from the store, and the
// caller binds afresh.
func (s *Set) restore(a Addr, name string) (net.Listener, bool) {
	s.mu.Lock()
	var found *inheritedFD
	for _, in := range s.inherited {
		if in.name == name && in.state == fdPending {
			found = in
			break
		}
	}
	if found == nil {
		s.mu.Unlock()
		return nil, false
	}
	in := *found
	found.state, found.file = fdClaimed, nil
	s.mu.Unlock()

	defer in.file.Close() // the listener holds its own dup
	if a.Kind == Unix {
		if fi, err := os.Lstat(a.Address); err != nil || fi.Mode().Type() != fs.ModeSocket {
			s.logger.Info("stored socket's file is gone; binding it again", "addr", a.String(), "fd", in.fd)
			s.unstore(name)
			return nil, false
		}
	}
	l, err := fileListener(in.file)
	if err != nil {
		s.logger.Warn("stored socket unusable; binding it again", "addr", a.String(), "fd", in.fd, "err", err)
		s.unstore(name)
		return nil, false
	}
	s.logger.Debug("took stored socket back", "addr", a.String(), "fd", in.fd)
	return l, true
}

// keep sends l to the store under name, when the Set stores. A unix
// listener then leaves its file in place when closed: the stored socket
// stays reachable through it while rouse restarts. A socket the store
// refuses is only logged: it works, it just does not outlive rouse.
func (s *Set) keep(a Addr, name string, l net.Listener) {
	s.mu.Lock()
	conn := s.store
	s.mu.Unlock()
	if conn == nil {
		return
	}
	if err := sendFD(conn, "FDSTORE=1\nFDNAME="+name, l); err != nil {
		s.logger.Warn("cannot keep socket in systemd's file descriptor store; a restart of rouse will refuse its connections", "addr", a.String(), "err", err)
		return
	}
	if ul, ok := l.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
}

// unstore asks systemd to close its copy of the socket named name.
func (s *Set) unstore(name string) {
	s.mu.Lock()
	conn := s.store
	s.mu.Unlock()
	if conn == nil {
		return
	}
	if _, err := conn.Write([]byte("FDSTOREREMOVE=1\nFDNAME=" + name)); err != nil {
		s.logger.Warn("cannot remove socket from systemd's file descriptor store", "name", name, "err", err)
	}
}

// sendFD sends state with l's descriptor attached (SCM_RIGHTS). The
// socket is connected, which WriteMsgUnix refuses for datagrams, so the
// message goes out by sendmsg on its raw descriptor.
func sendFD(conn *net.UnixConn, state string, l net.Listener) error {
	lc, err := l.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	cc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	cerr := lc.Control(func(fd uintptr) {
		rights := unix.UnixRights(int(fd))
		werr := cc.Write(func(s uintptr) bool {
			serr = unix.Sendmsg(int(s), []byte(state), rights, nil, 0)
			return !errors.Is(serr, unix.EAGAIN)
		})
		serr = errors.Join(serr, werr)
	})
	return errors.Join(cerr, serr)
}

// removeSocketFile removes path if it is a socket file.
func removeSocketFile(path string, s *Set) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == fs.ModeSocket {
		if err := os.Remove(path); err != nil {
			s.logger.Warn("remove socket file", "path", path, "err", err)
		}
	}
}

// dropStored removes an unused stored socket, already closed, from the
// store, and the socket file of a unix one.
func (s *Set) dropStored(name string) {
	s.unstore(name)
	if a, ok := addrOfStoreName(name); ok && a.Kind == Unix {
		removeSocketFile(a.Address, s)
	}
}

// addrOfStoreName is the inverse of StoreName.
func addrOfStoreName(name string) (Addr, bool) {
	rest, ok := strings.CutPrefix(name, storePrefix)
	if !ok {
		return Addr{}, false
	}
	var b strings.Builder
	for i := 0; i < len(rest); i++ {
		if rest[i] == '%' && i+2 < len(rest) {
			c, err := strconv.ParseUint(rest[i+1:i+3], 16, 8)
			if err != nil {
				return Addr{}, false
			}
			b.WriteByte(byte(c))
			i += 2
			continue
		}
		b.WriteByte(rest[i])
	}
	a, err := ParseAddr(b.String())
	return a, err == nil && a.Kind != Systemd
}
