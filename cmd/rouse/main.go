// Command rouse is a socket-activation launcher: it holds the listening
// sockets of many small apps, starts an app on its first connection, and
// stops it again when idle. See README.md and `rouse help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// A write to a closed pipe on stderr must fail with EPIPE, not kill
	// rouse (and with it, through the guard, every app): see logQueue.
	// Notify rather than Ignore, so that apps still start with SIGPIPE at
	// its default.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
