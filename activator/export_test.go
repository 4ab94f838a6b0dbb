package activator

import (
	"log/slog"
	"net"
)

// SetTestFront gives this package's tests the HTTP front they run http
// apps behind (front_test.go).
func SetTestFront(f func(ln net.Listener, apps []*App, log *slog.Logger) (Front, error)) {
	newFront = f
}
