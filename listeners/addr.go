package listeners

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Kind tells where a listening socket comes from.
type Kind int

// The kinds of listen address.
const (
	TCP     Kind = iota // "HOST:PORT", IPv4 or [IPv6]; bound by Listen
	Unix                // "unix:PATH"; bound by Listen
	Systemd             // "systemd:NAME", FileDescriptorName=NAME; bound by systemd
)

// String returns the kind's lower-case name: "tcp", "unix" or "systemd".
func (k Kind) String() string {
	switch k {
	case TCP:
		return "tcp"
	case Unix:
		return "unix"
	case Systemd:
		return "systemd"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

const (
	unixPrefix    = "unix:"
	systemdPrefix = "systemd:"

	// maxUnixPath is the longest path bind(2) takes: sun_path holds 108
	// bytes, the terminating NUL included.
	maxUnixPath = 107
	// maxFDName is systemd's FDNAME_MAX.
	maxFDName = 255
	maxHost   = 253
)

// Addr is one parsed listen address. It is a comparable value: two Addrs
// are equal when they name the same socket in the same words.
type Addr struct {
	Kind Kind
	// Address is "host:port" for TCP (IPv6 hosts in brackets, an empty host
	// for all interfaces), the absolute socket path for Unix, or the
	// FileDescriptorName for Systemd.
	Address string
}

// ParseAddr parses "HOST:PORT", "[V6]:PORT", ":PORT" (all interfaces),
// "unix:PATH" or "systemd:NAME".
//
// A TCP port must be a decimal number from 0 to 65535; 0 lets the kernel
// pick one. HOST is an IP address or a host name. A unix PATH must be
// absolute and at most 107 bytes long. A systemd NAME is what systemd
// accepts as FileDescriptorName=: 1 to 255 printable ASCII characters other
// than ':' and space. The prefixes win: "unix:80" is a (relative, so
// rejected) unix path, not host "unix" port 80.
func ParseAddr(s string) (Addr, error) {
	a, err := parseAddr(s)
	if err != nil {
		return Addr{}, fmt.Errorf("parse address %q: %w", s, err)
	}
	return a, nil
}

// String returns the address in the form ParseAddr accepts; ParseAddr of it
// returns a.
func (a Addr) String() string {
	switch a.Kind {
	case Unix:
		return unixPrefix + a.Address
	case Systemd:
		return systemdPrefix + a.Address
	}
	return a.Address
}

func parseAddr(s string) (Addr, error) {
	switch {
	case s == "":
		return Addr{}, errors.New("empty address")
	case strings.HasPrefix(s, unixPrefix):
		a := Addr{Kind: Unix, Address: s[len(unixPrefix):]}
		return a, checkUnixPath(a.Address)
	case strings.HasPrefix(s, systemdPrefix):
		a := Addr{Kind: Systemd, Address: s[len(systemdPrefix):]}
		return a, checkFDName(a.Address)
	}
	return parseTCP(s)
}

// parseTCP validates host:port and writes it back canonically ("[1.2.3.4]:080"
// becomes "1.2.3.4:80"), so that equal sockets give equal Addrs.
func parseTCP(s string) (Addr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if !errors.As(err, &ae) {
			return Addr{}, err
		}
		if strings.Contains(ae.Err, "too many colons") {
			return Addr{}, errors.New("too many colons: write an IPv6 address as [ADDR]:PORT")
		}
		return Addr{}, errors.New(ae.Err)
	}
	if strings.HasPrefix(port, "/") {
		return Addr{}, fmt.Errorf("unknown prefix %q: want unix:PATH, systemd:NAME or HOST:PORT", host+":")
	}
	n, err := parsePort(port)
	if err != nil {
		return Addr{}, err
	}
	if err := checkHost(host); err != nil {
		return Addr{}, err
	}
	return Addr{Kind: TCP, Address: net.JoinHostPort(host, strconv.Itoa(n))}, nil
}

func parsePort(port string) (int, error) {
	if port == "" {
		return 0, errors.New("missing port")
	}
	for i := 0; i < len(port); i++ {
		if port[i] < '0' || port[i] > '9' {
			return 0, fmt.Errorf("port %q is not a decimal number", port)
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("port %s is out of range 0-65535", port)
	}
	return n, nil
}

// checkHost accepts an empty host (all interfaces), an IP address (IPv6 with
// an optional zone) or something shaped like a host name; whether the name
// resolves is for Listen to find out.
func checkHost(host string) error {
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if len(host) > maxHost {
		return fmt.Errorf("host is %d bytes long; the limit is %d", len(host), maxHost)
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_'
		if !ok {
			return fmt.Errorf("invalid host %q: not an IP address or host name", host)
		}
	}
	return nil
}

func checkUnixPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty unix socket path")
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("unix socket path %q is not absolute", p)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("unix socket path %q contains a NUL byte", p)
	case len(p) > maxUnixPath:
		return fmt.Errorf("unix socket path is %d bytes long; the limit is %d", len(p), maxUnixPath)
	}
	return nil
}

// checkFDName applies systemd's fdname_is_valid, minus the empty name, which
// systemd allows but which cannot select a socket.
func checkFDName(name string) error {
	if name == "" {
		return errors.New("empty systemd socket name")
	}
	if len(name) > maxFDName {
		return fmt.Errorf("systemd socket name is %d bytes long; the limit is %d", len(name), maxFDName)
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == ':':
			return fmt.Errorf("systemd socket name %q contains ':', the LISTEN_FDNAMES separator", name)
		case c <= ' ' || c >= 0x7f:
			return fmt.Errorf("systemd socket name %q contains byte %#02x at offset %d: FileDescriptorName= takes printable ASCII other than space", name, c, i)
		}
	}
	return nil
}
