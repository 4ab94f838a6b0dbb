// Command bench compares rouse with what users would otherwise run in
// front of their apps, side by side on loopback, and writes a markdown
// report (BENCHMARKS.md):
//
//   - tcp mode vs systemd-socket-proxyd vs a naive Go io.Copy proxy vs direct;
//   - http mode vs nginx proxy_pass (upstream keepalive) vs direct;
//   - cold start: the app's socket listening -> the client's first byte,
//     and what proxyd does when the backend is not listening yet;
//   - density: many configured idle apps (RSS, start-up time, idle CPU).
//
// Every throughput figure comes from wrk rounds interleaved across the
// contenders (A B C A B C ...), because the machine is shared and noisy:
// the report gives medians, min-max and ratios to direct measured within
// the same rounds. It installs nothing; `make deps` installs the tools.
//
//	go run ./examples/bench -out BENCHMARKS.md        # the full run (make bench-compare)
//	go run ./examples/bench -quick                    # a short run, report to stdout
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// The helper processes (proxies, the SIGPIPE wrapper) keep the default
	// signal actions: SIGTERM ends them at once.
	if code, ok := helperMain(os.Args[1:], os.Stderr); ok {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
