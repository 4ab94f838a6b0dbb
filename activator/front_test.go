package activator_test

import (
	"log/slog"
	"net"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/activator/httpfront"
)

// The tests of package activator run their http apps behind the real
// front, which they cannot import themselves.
func init() {
	activator.SetTestFront(func(ln net.Listener, apps []*activator.App, log *slog.Logger) (activator.Front, error) {
		return httpfront.NewHTTPFront(ln, apps, log)
	})
}
