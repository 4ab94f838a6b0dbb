package listeners

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
)

// Set owns the sockets systemd passed to rouse until a Listen call claims
// them or CloseUnused closes them, and binds every other address on demand.
//
// Listen and CloseUnused are safe to call from several goroutines; the
// internal lock is never held across a bind or a dial.
type Set struct {
	logger *slog.Logger

	mu        sync.Mutex
	inherited []*inheritedFD // in LISTEN_FDS order
	store     *net.UnixConn  // systemd's notify socket, for the fd store; nil: store nothing
}

// NewSet takes over the sockets systemd passed (LISTEN_FDS/LISTEN_FDNAMES),
// consuming the environment variables: it calls activation.Files(true) once,
// which unsets them whether or not they were meant for this process.
// Without them the set is empty. A nil logger discards the warnings.
//
// Each socket is known by its LISTEN_FDNAMES entry: FileDescriptorName=,
// which systemd defaults to the socket unit's name ("rouse.socket"). A
// socket passed without a name (no LISTEN_FDNAMES, as some non-systemd
// launchers do) is called LISTEN_FD_<fd>, after go-systemd's activation
// package.
func NewSet(logger *slog.Logger) *Set {
	return newSet(logger, activation.Files(true))
}

// newSet builds a Set over already-opened files, each named by f.Name() as
// activation.Files names them (the LISTEN_FDNAMES entry, or LISTEN_FD_N).
func newSet(logger *slog.Logger, files []*os.File) *Set {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Set{logger: logger}
	for _, f := range files {
		s.inherited = append(s.inherited, &inheritedFD{name: f.Name(), fd: fdOf(f), file: f})
	}
	return s
}

// Listen returns the listeners for a: one socket bound now for TCP and Unix
// addresses, or every socket systemd passed with the name a.Address, which
// are then claimed: a second Listen of the same systemd name fails. For
// Unix, opts.UnixMode applies. The caller owns the listeners and closes them.
//
// Errors name the address: "listen unix:/run/x.sock: ...". When the
// sockets of a systemd name cannot be used (not listening stream sockets),
// they are closed and the error says why.
func (s *Set) Listen(a Addr, opts Options) ([]net.Listener, error) {
	ls, err := s.listen(a, opts)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	return ls, nil
}

func (s *Set) listen(a Addr, opts Options) ([]net.Listener, error) {
	switch a.Kind {
	case TCP, Unix:
		name, keep := StoreName(a)
		keep = keep && opts.Keep
		if keep {
			if l, ok := s.restore(a, name); ok {
				return []net.Listener{l}, nil
			}
		}
		l, err := bind(a, opts)
		if err != nil {
			return nil, err
		}
		if keep {
			s.keep(a, name, l)
		}
		return []net.Listener{l}, nil
	case Systemd:
		if err := checkFDName(a.Address); err != nil {
			return nil, err
		}
		return s.claim(a.Address)
	}
	return nil, fmt.Errorf("unknown address kind %v", a.Kind)
}

// CloseUnused closes every inherited socket no Listen call claimed, logging
// a warning with its name and fd for each: systemd keeps the other end, so a
// socket left open would queue connections nobody ever accepts. Later
// Listen calls for those names fail. Call it once every address is listened.
func (s *Set) CloseUnused() {
	s.mu.Lock()
	var unused []inheritedFD
	for _, in := range s.inherited {
		if in.state == fdPending {
			unused = append(unused, *in)
			in.state = fdUnused
			in.file = nil
		}
	}
	s.mu.Unlock()

	for _, in := range unused {
		if strings.HasPrefix(in.name, storePrefix) {
			// Stored by an earlier rouse for an address no longer listened on.
			in.file.Close()
			s.dropStored(in.name)
			s.logger.Info("closed stored socket of an address no longer listened on", "name", in.name, "fd", in.fd)
			continue
		}
		if err := in.file.Close(); err != nil {
			s.logger.Warn("closing unused socket passed by systemd", "name", in.name, "fd", in.fd, "err", err)
			continue
		}
		s.logger.Warn("closed socket passed by systemd that no listen address names", "name", in.name, "fd", in.fd)
	}
}
