package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/rouse-dev/rouse/activator"
)

// demoConfig is the embedded default `rouse demo` runs. Its apps are rouse
// itself re-executed as the example backend, so nothing else is needed.
//
//go:embed demo.toml
var demoConfig string

func cmdDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rouse demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hello := fs.String("hello", "127.0.0.1:7070", "listen `ADDR` of the hello app (HTTP)")
	echo := fs.String("echo", "127.0.0.1:7071", "listen `ADDR` of the echo app (TCP)")
	if pos, err := parseFlags(fs, args); err != nil || len(pos) > 0 {
		return exitConfig
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "rouse demo:", err)
		return 1
	}
	u, err := user.Current()
	if err != nil {
		fmt.Fprintln(stderr, "rouse demo:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "rouse-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "rouse demo:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	text := strings.NewReplacer(
		"@EXE@", self, "@DIR@", dir, "@USER@", u.Username, "@HELLO@", *hello, "@ECHO@", *echo,
	).Replace(demoConfig)
	file := filepath.Join(dir, "rouse.toml")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		fmt.Fprintln(stderr, "rouse demo:", err)
		return 1
	}
	cfg, code := loadConfig(file, stderr)
	if cfg == nil {
		return code
	}
	fmt.Fprintln(stdout, "rouse demo: binding 2 sockets; the apps start on their first connection")
	logs := newLogger(stderr, cfg.LogLevel)
	defer logs.Close()
	err = serve(ctx, cfg, logs, func(*activator.Supervisor) {
		fmt.Fprintf(stdout, `
rouse demo is running. Nothing runs behind these sockets until you connect:

  curl http://%[1]s/
  echo hi | nc -N %[2]s

The first starts the hello app (HTTP), the second the echo app (TCP).
Both stop again after 10 seconds without connections. Watch them with

  %[3]s status --control %[4]s

Ctrl-C stops the demo and its apps.

`, *hello, strings.Replace(*echo, ":", " ", 1), selfCommand(os.Args[0]), cfg.Control)
	})
	if err != nil {
		logs.Logger().Error("rouse demo", "err", err)
		return 1
	}
	return 0
}

// selfCommand is how to run this rouse again as the user ran it: "go run
// ./cmd/rouse" when it was built by go run (into go-build*/.../exe/ under
// the temporary directory, gone once it exits), the path it was started
// by when that has a slash, else "rouse" from $PATH.
func selfCommand(arg0 string) string {
	dir := filepath.Dir(arg0)
	switch {
	case filepath.Base(dir) == "exe" && strings.Contains(dir, string(filepath.Separator)+"go-build"):
		return "go run ./cmd/rouse"
	case strings.ContainsRune(arg0, filepath.Separator):
		return arg0
	}
	return "rouse"
}
