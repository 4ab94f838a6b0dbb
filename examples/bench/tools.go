package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// tools are the programs the harness drives, found on this machine. An
// empty path means missing: the sections that need it are skipped and the
// report says so.
type tools struct {
	wrk      string
	nginx    string
	haproxy  string
	proxyd   string // systemd-socket-proxyd
	activate string // systemd-socket-activate
	perf     string
	missing  []string // one line per missing tool: what it is for, which package has it
}

// findTools looks for the tools; it installs nothing.
func findTools() tools {
	var t tools
	look := func(names ...string) string {
		for _, n := range names {
			if strings.Contains(n, "/") {
				if st, err := os.Stat(n); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
					return n
				}
				continue
			}
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
		return ""
	}
	t.wrk = look("wrk")
	t.nginx = look("nginx", "/usr/sbin/nginx")
	t.haproxy = look("haproxy", "/usr/sbin/haproxy")
	t.proxyd = look("/lib/systemd/systemd-socket-proxyd", "/usr/lib/systemd/systemd-socket-proxyd")
	t.activate = look("systemd-socket-activate")
	t.perf = look("perf")
	if t.wrk == "" {
		t.missing = append(t.missing, "wrk (Debian package `wrk`): every throughput table is skipped")
	}
	if t.nginx == "" {
		t.missing = append(t.missing, "nginx (Debian package `nginx-light`): no nginx backend and no nginx proxy contender")
	}
	if t.haproxy == "" {
		t.missing = append(t.missing, "haproxy (Debian package `haproxy`): no HAProxy proxy contender")
	}
	if t.proxyd == "" || t.activate == "" {
		t.missing = append(t.missing, "systemd-socket-proxyd / systemd-socket-activate (Debian package `systemd`): no proxyd contender, no late-backend test")
	}
	return t
}

// versions returns "tool: version" pairs for the report.
func (t tools) versions(ctx context.Context, rouse string) [][2]string {
	first := func(argv ...string) string {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, _ := command(ctx, argv) // wrk --version exits 1 after printing it
		line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return strings.TrimSpace(line)
	}
	goVersion := first("go", "env", "GOVERSION")
	out := [][2]string{
		{"Go (builds rouse)", goVersion},
		{"rouse", first(rouse, "version")},
	}
	add := func(name, path string, args ...string) {
		if path == "" {
			out = append(out, [2]string{name, "missing"})
			return
		}
		out = append(out, [2]string{name, first(append([]string{path}, args...)...)})
	}
	add("wrk", t.wrk, "--version")
	add("nginx", t.nginx, "-v")
	add("haproxy", t.haproxy, "-v")
	add("systemd-socket-proxyd", t.proxyd, "--version")
	add("perf", t.perf, "--version")
	for i := range out {
		// wrk appends its copyright to the version line.
		out[i][1], _, _ = strings.Cut(out[i][1], " Copyright")
	}
	return out
}

// perfUsable reports whether perf can record another process here.
func (t tools) perfUsable() error {
	if t.perf == "" {
		return errors.New("perf is missing (Debian package linux-perf)")
	}
	paranoid, err := strconv.Atoi(strings.TrimSpace(readFile("/proc/sys/kernel/perf_event_paranoid")))
	if os.Geteuid() != 0 && (err != nil || paranoid > 1) {
		return errors.New("perf needs root or kernel.perf_event_paranoid <= 1")
	}
	return nil
}
