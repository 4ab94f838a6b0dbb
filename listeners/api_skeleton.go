package listeners

// THIS FILE IS A SKELETON: the listeners helper replaces it with the real
// implementation (addr.go, set.go, ...). The exported API below is what
// activator and cmd/rouse program against; keep the names and signatures.

import (
	"log/slog"
	"net"
	"os"
)

// Kind tells where a listening socket comes from.
type Kind int

const (
	TCP     Kind = iota // "HOST:PORT", IPv4 or [IPv6]
	Unix                // "unix:PATH"
	Systemd             // "systemd:NAME", FileDescriptorName=NAME
)

// Addr is one parsed listen address.
type Addr struct {
	Kind    Kind
	Address string // host:port, socket path, or the systemd fd name
}

// ParseAddr parses "HOST:PORT", "[V6]:PORT", "unix:PATH" or "systemd:NAME".
func ParseAddr(s string) (Addr, error) { panic("unimplemented") }

// String returns the address in the form ParseAddr accepts.
func (a Addr) String() string { panic("unimplemented") }

// Options tune how a socket is bound.
type Options struct {
	UnixMode os.FileMode // permissions of a unix socket file; 0 = 0666
}

// Set owns the sockets systemd passed to rouse and binds the others.
type Set struct{}

// NewSet takes over the sockets systemd passed (LISTEN_FDS/LISTEN_FDNAMES),
// consuming the environment variables. Without them the set is empty.
func NewSet(logger *slog.Logger) *Set { panic("unimplemented") }

// Listen returns the listeners for a: bound now, or the inherited ones named so.
func (s *Set) Listen(a Addr, opts Options) ([]net.Listener, error) { panic("unimplemented") }

// CloseUnused closes inherited sockets no Listen call claimed, with a warning each.
func (s *Set) CloseUnused() { panic("unimplemented") }
