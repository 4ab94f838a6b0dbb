package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rouseCLI runs rouse's command line in this process and returns its
// stdout and stderr together, and the exit code.
func rouseCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := run(t.Context(), args, func(string) string { return "" }, nil, &out, &out)
	return out.String(), code
}

// The verbs that talk to the daemon find its control socket in the main
// file alone, so they work while an included file is broken; reload and
// check name the broken file and line and exit 2.
func TestControlWithBrokenInclude(t *testing.T) {
	dir := t.TempDir()
	control := filepath.Join(dir, "control.sock")
	user := ""
	if os.Geteuid() == 0 {
		user = `user = "root"`
	}
	main := filepath.Join(dir, "rouse.toml")
	os.WriteFile(main, fmt.Appendf(nil, `[rouse]
control = "control.sock"
include = ["apps.d/*.toml"]
drain_timeout = "2s"

[defaults]
mode = "tcp"
%s
env = { ROUSE_TEST_MAIN = "1", GORACE = "atexit_sleep_ms=0" }
`, user), 0o644)
	os.Mkdir(filepath.Join(dir, "apps.d"), 0o755)
	port := freePort(t)
	os.WriteFile(filepath.Join(dir, "apps.d", "echo.toml"), fmt.Appendf(nil, `[apps.echo]
listen = ["127.0.0.1:%d"]
command = [%q, "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]
`, port, os.Args[0]), 0o644)
	startRouse(t, main, control)

	broken := filepath.Join(dir, "apps.d", "broken.toml")
	os.WriteFile(broken, []byte("[apps.broken]\nlisten = [\"127.0.0.1:9\"]\ncommand = [\"/bin/true\"\n"), 0o644)
	for _, args := range [][]string{
		{"start", "echo"}, {"status"}, {"status", "echo", "--json"}, {"restart", "echo"}, {"stop", "echo"},
	} {
		out, code := rouseCLI(t, append(args, "-c", main)...)
		if code != 0 {
			t.Errorf("rouse %s with a broken include: exit %d\n%s", strings.Join(args, " "), code, out)
		}
	}
	out, code := rouseCLI(t, "reload", "-c", main)
	if code != exitConfig || !strings.Contains(out, broken+":3: apps.broken.command: ") {
		t.Errorf("rouse reload with a broken include: exit %d, want %d naming %s:3\n%s", code, exitConfig, broken, out)
	}
	if out, code := rouseCLI(t, "check", "-c", main); code != exitConfig || !strings.Contains(out, broken+":3: apps.broken.command: ") {
		t.Errorf("rouse check with a broken include: exit %d\n%s", code, out)
	}
	if out, code := rouseCLI(t, "status", "echo", "-c", main); code != 0 || !strings.Contains(out, "idle") {
		t.Errorf("status after the rejected reload: exit %d\n%s", code, out)
	}
	// A broken main file is another matter: nothing says where the socket is.
	os.WriteFile(main, []byte("[rouse]\ncontrol = 3\n"), 0o644)
	if out, code := rouseCLI(t, "status", "-c", main); code != exitConfig || !strings.Contains(out, main+":2: rouse.control: ") {
		t.Errorf("status with a bad [rouse].control: exit %d\n%s", code, out)
	}
}

// `rouse check` fails a command the app's user may not run: a program
// under a directory only root may enter (a pyenv shim under /root for
// user nobody). Not as root, rouse's own user with a directory it may not
// search.
func TestCheckCommandUserCannotRun(t *testing.T) {
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	os.Mkdir(home, 0o700)
	shim := filepath.Join(home, "python3")
	os.WriteFile(shim, []byte("#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n"), 0o755)
	user := `user = "nobody"`
	if os.Geteuid() != 0 {
		user = ""
		os.Chmod(home, 0o600)
		t.Cleanup(func() { os.Chmod(home, 0o700) })
	}
	file := filepath.Join(dir, "rouse.toml")
	os.WriteFile(file, fmt.Appendf(nil, "[apps.py]\nlisten = [\"127.0.0.1:9\"]\ncommand = [%q, \"-m\", \"http.server\", \"{port}\"]\n%s\n", shim, user), 0o644)
	out, code := rouseCLI(t, "check", "-c", file)
	if code != exitConfig || !strings.Contains(out, file+":3: apps.py.command: ") || !strings.Contains(out, "cannot reach "+shim) {
		t.Errorf("check of a command the user cannot reach: exit %d\n%s", code, out)
	}
	// On the PATH the app gets, the same.
	os.WriteFile(file, fmt.Appendf(nil, "[apps.py]\nlisten = [\"127.0.0.1:9\"]\ncommand = [\"python3\"]\n%s\n", user), 0o644)
	t.Setenv("PATH", home+":/usr/bin:/bin")
	out, code = rouseCLI(t, "check", "-c", file)
	if code != exitConfig || !strings.Contains(out, "apps.py.command: python3 is "+shim+" on PATH: ") {
		t.Errorf("check of a command found on PATH that the user cannot reach: exit %d\n%s", code, out)
	}
}

// An include pattern that matches nothing is a warning (a daemon with no
// apps would say nothing otherwise), and an error with --strict.
func TestCheckIncludeMatchesNothing(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "rouse.toml")
	os.WriteFile(file, []byte("[rouse]\ncontrol = \"c.sock\"\ninclude = [\"apps.d/*.toml\"]\n"), 0o644)
	want := file + ":3: rouse.include: " + filepath.Join(dir, "apps.d/*.toml") + " matches no file"
	out, code := rouseCLI(t, "check", "-c", file)
	if code != 0 || !strings.Contains(out, "warning: "+want) {
		t.Errorf("check: exit %d, want 0 and a warning %q\n%s", code, want, out)
	}
	out, code = rouseCLI(t, "check", "--strict", "-c", file)
	if code != exitConfig || !strings.Contains(out, want) || strings.Contains(out, "warning:") {
		t.Errorf("check --strict: exit %d, want %d and %q\n%s", code, exitConfig, want, out)
	}
}
