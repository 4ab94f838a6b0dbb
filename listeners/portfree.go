package listeners

import (
	"net"
	"strconv"
)

// TCPPortFree reports whether a TCP server could bind port now: it binds
// the wildcard address (both IPv4 and IPv6 where the host has them) and
// closes at once. A port anything listens on, or a client socket holds,
// on any address is not free. It binds with SO_REUSEADDR, as servers do,
// so a port whose old connections linger in TIME_WAIT is free.
func TCPPortFree(port int) bool {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
