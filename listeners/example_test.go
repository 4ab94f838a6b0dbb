package listeners_test

import (
	"fmt"
	"log/slog"
	"net"

	"github.com/rouse-dev/rouse/listeners"
)

// A launcher makes one Set at start-up, listens on every configured address
// and then lets go of the sockets systemd passed that no address names.
func ExampleSet() {
	set := listeners.NewSet(slog.Default())
	var all []net.Listener
	for _, s := range []string{"127.0.0.1:0", "systemd:blog"} {
		a, err := listeners.ParseAddr(s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		ls, err := set.Listen(a, listeners.Options{})
		if err != nil {
			fmt.Println(err)
			continue
		}
		all = append(all, ls...)
	}
	set.CloseUnused()
	fmt.Println(len(all), "listening")
	for _, l := range all {
		l.Close()
	}
	// Output:
	// listen systemd:blog: systemd passed no socket named "blog" (it passed no sockets: LISTEN_FDS unset, or LISTEN_PID not this process)
	// 1 listening
}
