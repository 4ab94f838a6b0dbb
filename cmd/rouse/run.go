package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/examples/backend"
	"github.com/rouse-dev/rouse/procman"
)

// version is set at build time with -ldflags "-X main.version=..."; without
// it the module version from the build info is used.
var version = ""

const usage = `rouse: start apps on their first connection, stop them when idle.

Usage:
  rouse run [-c FILE]                 run the daemon in the foreground
  rouse check [-c FILE] [--strict]    validate the config and list the apps
  rouse status [APP] [--json]         show the apps of the running daemon
  rouse start|stop|restart APP        act on one app of the running daemon
  rouse reload                        re-read the config (as SIGHUP does)
  rouse demo                          run a self-contained example
  rouse version                       print the version

FILE defaults to $ROUSE_CONFIG, then /etc/rouse/rouse.toml. The verbs that
talk to a running daemon find its control socket in FILE ([rouse].control)
or take it as --control SOCKET.
`

// exitConfig is the exit code for a bad config or bad usage.
const exitConfig = 2

// run is rouse's whole command line; main only adds the process around it.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitConfig
	}
	verb, rest := args[0], args[1:]
	switch verb {
	case "run":
		return cmdRun(ctx, rest, getenv, stderr)
	case "check":
		return cmdCheck(rest, getenv, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, getenv, stdout, stderr)
	case "start", "stop", "restart":
		return cmdAppAction(ctx, verb, rest, getenv, stdout, stderr)
	case "reload":
		return cmdReload(ctx, rest, getenv, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, getenv, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "rouse", buildVersion())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case guardVerb:
		return procman.GuardMain(stdin)
	case backendVerb:
		return backend.Main(rest, stdout, stderr)
	case execVerb:
		return activator.ExecMain(rest, stderr)
	}
	fmt.Fprintf(stderr, "rouse: unknown command %q\n\n%s", verb, usage)
	return exitConfig
}

// Hidden verbs: rouse re-executes itself as the guard that kills app
// process groups if rouse dies, as the demo's backend, and as the exec
// shim that sets LISTEN_PID for handoff and inetd apps.
const (
	guardVerb   = "__guard"
	backendVerb = "__backend"
	execVerb    = "__exec" // the exec shim of handoff and inetd apps
)

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "devel"
}

// configFlag adds -c/--config to fs and returns a function giving the
// chosen file: the flag, else $ROUSE_CONFIG, else /etc/rouse/rouse.toml.
func configFlag(fs *flag.FlagSet, getenv func(string) string) func() string {
	var file string
	fs.StringVar(&file, "c", "", "config `FILE`")
	fs.StringVar(&file, "config", "", "config `FILE`")
	return func() string {
		switch {
		case file != "":
			return file
		case getenv("ROUSE_CONFIG") != "":
			return getenv("ROUSE_CONFIG")
		}
		return "/etc/rouse/rouse.toml"
	}
}

// parseFlags parses args, allowing flags after positional arguments
// ("rouse status blog --json"), and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func loadConfig(file string, stderr io.Writer) (*Config, int) {
	cfg, err := Load(file, LoadOptions{Euid: os.Geteuid()})
	if err != nil {
		return nil, reportLoad(err, stderr)
	}
	return cfg, 0
}

// reportLoad prints a Load error and returns the exit code: exitConfig for
// a bad config, 1 for a file that cannot be read.
func reportLoad(err error, stderr io.Writer) int {
	fmt.Fprintln(stderr, err)
	var ce *ConfigError
	if errors.As(err, &ce) {
		return exitConfig
	}
	return 1
}

func cmdCheck(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rouse check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := configFlag(fs, getenv)
	strict := fs.Bool("strict", false, "fail on warnings too (an include pattern that matches no file)")
	if pos, err := parseFlags(fs, args); err != nil || len(pos) > 0 {
		return exitConfig
	}
	// What the first start of each app would hit counts too: its user,
	// dir and command, as the system is now.
	cfg, err := Load(file(), LoadOptions{Euid: os.Geteuid(), CheckStart: true})
	if err != nil {
		return reportLoad(err, stderr)
	}
	for _, w := range cfg.Warnings {
		if *strict {
			fmt.Fprintln(stderr, w)
		} else {
			fmt.Fprintln(stderr, "warning:", w)
		}
	}
	if *strict && len(cfg.Warnings) > 0 {
		return exitConfig
	}
	cfg.Describe(stdout)
	return 0
}
