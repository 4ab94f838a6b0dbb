// Package testport hands out loopback TCP ports for the apps that rouse's
// tests start. A port picked with ":0" and released comes from the kernel's
// ephemeral range, where the tests' own outgoing connections take their
// local ports: one could take it before the app binds it. These come from
// 10000-19999, below that range and below rouse's default port_range, and
// never twice in one test process.
package testport

import (
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
)

var handed struct {
	sync.Mutex
	used map[int]bool
}

// Free returns a port nothing listens on now, which Free has not returned
// before in this process. It is safe for concurrent use.
func Free(t testing.TB) int {
	t.Helper()
	handed.Lock()
	defer handed.Unlock()
	if handed.used == nil {
		handed.used = make(map[int]bool)
	}
	for range 1000 {
		port := 10000 + rand.IntN(10000)
		if handed.used[port] {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		ln.Close()
		handed.used[port] = true
		return port
	}
	t.Fatal("no free port in 10000-19999")
	return 0
}
