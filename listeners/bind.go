package listeners

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Options tune how Listen binds a socket. The zero value is ready to use.
type Options struct {
	// UnixMode is the permission of a unix socket file, set by chmod right
	// after bind; 0 means 0666. Only the permission bits are used. Until the
	// chmod the file has the process umask's permissions.
	UnixMode os.FileMode
	// NoKeepAlive leaves TCP keep-alive off on accepted connections (Go
	// turns it on by default, at three setsockopt calls per connection);
	// for a protocol that times idle connections out itself, as HTTP does.
	// It does not apply to sockets from systemd, nor to stored ones taken
	// back after a restart.
	NoKeepAlive bool
	// Keep keeps a TCP or unix socket in systemd's file descriptor store
	// across restarts of rouse, when the Set has one (Set.UseFDStore), and
	// takes it back from there instead of binding it again.
	Keep bool
}

const (
	defaultUnixMode os.FileMode = 0o666
	// probeTimeout bounds the dial that tells a stale unix socket file from
	// a live one. Connecting to a unix socket does not wait for the peer,
	// so this only guards against the unexpected.
	probeTimeout = 2 * time.Second
)

// bind binds a TCP or unix address.
func bind(a Addr, opts Options) (net.Listener, error) {
	if a.Kind == TCP {
		return listenTCP(a.Address, opts)
	}
	if err := checkUnixPath(a.Address); err != nil {
		return nil, err
	}
	return listenUnix(a.Address, opts.UnixMode)
}

// listenTCP binds address. An IPv4 literal binds IPv4 only and an IPv6
// literal IPv6 only, as written, so "0.0.0.0:80" and "[::]:80" can both be
// listened on; an empty host ("":80") binds every address of both families,
// and a host name binds its first address. SO_REUSEADDR is set, as Go does.
// The socket is plain TCP: since Go 1.24 a listener is MPTCP by default
// where the kernel has it, which nothing on loopback gains from, which the
// apps of a handoff would get, and which refuses socket filters (Quiesce).
func listenTCP(address string, opt Options) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	if opt.NoKeepAlive {
		lc.KeepAlive = -1
	}
	l, err := lc.Listen(context.Background(), tcpNetwork(address), address)
	if err != nil {
		return nil, unwrapOp(err)
	}
	return l, nil
}

func tcpNetwork(address string) string {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return "tcp"
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return "tcp"
	case ip.Is4() || ip.Is4In6():
		return "tcp4"
	}
	return "tcp6"
}

// listenUnix binds a unix stream socket at path, replacing a stale socket
// file, and sets its permissions. Closing the listener removes the file.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, unwrapOp(err)
	}
	if mode == 0 {
		mode = defaultUnixMode
	}
	if err := os.Chmod(path, mode.Perm()); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// removeStale makes way for a bind at path. It removes a socket file only
// when connecting to it is refused, which means no process listens on it
// (rouse, say, was killed before it could remove its socket). A live socket
// is an EADDRINUSE error and anything that is not a socket is left alone.
// The parent directory must exist: creating it, with which owner and mode,
// is the packaging's job.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		dir := filepath.Dir(path)
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (mode %v); not removing it", path, fi.Mode())
	}
	d := net.Dialer{Timeout: probeTimeout}
	c, err := d.Dial("unix", path)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("another process is listening on %s: %w", path, syscall.EADDRINUSE)
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
		return nil
	}
	return fmt.Errorf("probe existing socket %s: %w", path, unwrapOp(err))
}

// unwrapOp drops the *net.OpError layer, whose text repeats the address that
// Listen's error already names; errors.Is still sees the errno.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err
	}
	return err
}
