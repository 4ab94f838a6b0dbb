package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/testbackend"
	"github.com/rouse-dev/rouse/listeners"
)

func TestParsePortRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want portRange
		err  string
	}{
		{"20000-29999", portRange{20000, 29999}, ""},
		{"1-65535", portRange{1, 65535}, ""},
		{" 8000 - 8000 ", portRange{8000, 8000}, ""},
		{"20000", portRange{}, `invalid port range "20000": want LO-HI, e.g. "20000-29999"`},
		{"a-b", portRange{}, `invalid port range "a-b": want LO-HI, e.g. "20000-29999"`},
		{"20000-", portRange{}, `invalid port range "20000-": want LO-HI, e.g. "20000-29999"`},
		{"-1-10", portRange{}, `invalid port range "-1-10": want LO-HI, e.g. "20000-29999"`},
		{"0-100", portRange{}, `invalid port range "0-100": port 0 is not from 1 to 65535`},
		{"60000-70000", portRange{}, `invalid port range "60000-70000": port 70000 is not from 1 to 65535`},
		{"30000-20000", portRange{}, `invalid port range "30000-20000": 30000 is above 20000`},
	} {
		got, err := parsePortRange(tc.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if got != tc.want || gotErr != tc.err {
			t.Errorf("parsePortRange(%q) = %v, %q; want %v, %q", tc.in, got, gotErr, tc.want, tc.err)
		}
	}
}

// port_range against the kernel's ephemeral range: a written range that
// overlaps it is an error at its line; a default range inside it is an
// error at [rouse]; a default range partly in it is used outside it.
func TestConfigPortRangeAndEphemeral(t *testing.T) {
	const app = "\n[apps.a]\nlisten = [\"127.0.0.1:8001\"]\ncommand = [\"/usr/bin/a\", \"{port}\"]\n"
	for _, tc := range []struct {
		name, rouse string
		eph         portRange
		err         string // after "FILE:"
		inRange     portRange
	}{
		{"default", "", portRange{32768, 60999}, "", portRange{20000, 29999}},
		{"written", "port_range = \"15000-15099\"\n", portRange{32768, 60999}, "", portRange{15000, 15099}},
		{"overlap", "port_range = \"30000-40000\"\n", portRange{32768, 60999}, "3: rouse.port_range: 30000-40000 overlaps the kernel's ephemeral port range 32768-60999 (/proc/sys/net/ipv4/ip_local_port_range), where outgoing connections take their local ports: one could take an app's port while the app is stopped; choose a range outside it", portRange{}},
		{"default inside", "", portRange{1024, 65535}, "2: rouse.port_range: the default 20000-29999 lies inside the kernel's ephemeral port range 1024-65535 (/proc/sys/net/ipv4/ip_local_port_range): set port_range to a range outside it", portRange{}},
		{"default partly inside", "", portRange{25000, 60999}, "", portRange{20000, 24999}},
		{"bad", "port_range = \"20000:29999\"\n", portRange{32768, 60999}, `3: rouse.port_range: invalid port range "20000:29999": want LO-HI, e.g. "20000-29999"`, portRange{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"rouse.toml": "\n[rouse]\n" + tc.rouse + app})
			path := filepath.Join(dir, "rouse.toml")
			cfg, err := Load(path, LoadOptions{Euid: 1000, Ephemeral: func() (portRange, error) { return tc.eph, nil }})
			if tc.err != "" {
				if err == nil || err.Error() != path+":"+tc.err {
					t.Fatalf("Load: %v\nwant %s:%s", err, path, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p := cfg.Apps[0].Port; !tc.inRange.contains(p) || cfg.Apps[0].PickedPort != p {
				t.Errorf("picked %d (PickedPort %d), want one in %s", p, cfg.Apps[0].PickedPort, tc.inRange)
			}
		})
	}
	// Without /proc, nothing is known to avoid.
	dir := writeFiles(t, map[string]string{"rouse.toml": app})
	if _, err := Load(filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000, Ephemeral: func() (portRange, error) { return portRange{}, errors.New("no /proc") }}); err != nil {
		t.Errorf("Load without the ephemeral range: %v", err)
	}
}

// freeWindow finds n consecutive free ports in the default port_range.
func freeWindow(t *testing.T, n int) portRange {
	t.Helper()
	for lo := 20000 + int(time.Now().UnixNano()%5000); lo+n <= 29999; lo += n {
		ok := true
		for p := lo; p < lo+n && ok; p++ {
			ok = listeners.TCPPortFree(p)
		}
		if ok {
			return portRange{lo, lo + n - 1}
		}
	}
	t.Fatal("no free window of ports in 20000-29999")
	return portRange{}
}

// The picker skips a port of the range that something listens on, and
// reports a range with no free port.
func TestPortPickerSkipsPortsInUse(t *testing.T) {
	w := freeWindow(t, 2)
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(w.lo))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pp := portPicker{r: w, free: listeners.TCPPortFree}
	for range 10 { // the search starts at a random port
		if p, err := pp.pick(nil); p != w.hi || err != nil {
			t.Fatalf("pick in %s with %d listened on: %d %v, want %d", w, w.lo, p, err, w.hi)
		}
	}
	if p, err := pp.pick(func(p int) bool { return p == w.hi }); !errors.Is(err, errNoPort) {
		t.Errorf("pick with every port taken: %d %v", p, err)
	}
	if p, err := (portPicker{r: w, ephemeral: portRange{w.hi, w.hi}, free: func(int) bool { return true }}).pick(nil); p != w.lo || err != nil {
		t.Errorf("pick with %d ephemeral: %d %v, want %d", w.hi, p, err, w.lo)
	}
}

// Moving an app's port rebuilds every place {port} and $PORT were
// substituted, from the config as written.
func TestPortTemplate(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.a]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/a", "--port={port}"]
dir = "/srv/{port}"
env = { BIND = "127.0.0.1:{port}" }
`})
	cfg := mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000})
	a := cfg.Apps[0].withPort(41234)
	if a.Port != 41234 || a.PickedPort != 41234 || a.UpstreamAddress != "127.0.0.1:41234" || a.Process.Dir != "/srv/41234" ||
		strings.Join(a.Process.Argv, " ") != "/usr/bin/a --port=41234" || strings.Join(a.Process.Env, " ") != "BIND=127.0.0.1:41234 PORT=41234" {
		t.Errorf("moved: port %d picked %d upstream %s dir %s argv %q env %q", a.Port, a.PickedPort, a.UpstreamAddress, a.Process.Dir, a.Process.Argv, a.Process.Env)
	}
	if cfg.Apps[0].Port == 41234 {
		t.Error("withPort changed the app it was called on")
	}
}

// End to end, with Python's http.server: a client socket holds the port
// rouse picked before the first request; the app starts on another port
// and the request is served; a reload keeps the port it moved to.
func TestPickedPortHeldByAClientE2E(t *testing.T) {
	py := testbackend.Python3(t)
	w := freeWindow(t, 20)
	listen := freePort(t)
	dir := t.TempDir()
	control := filepath.Join(dir, "control.sock")
	user := ""
	if os.Geteuid() == 0 {
		user = `user = "root"`
	}
	file := filepath.Join(dir, "rouse.toml")
	os.WriteFile(file, []byte(fmt.Sprintf(`[rouse]
control = %q
drain_timeout = "2s"
port_range = "%s"

[apps.web]
mode = "http"
listen = ["127.0.0.1:%d"]
command = [%q, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
dir = %q
%s
`, control, w, listen, py, dir, user)), 0o644)
	r := startRouse(t, file, control)
	upstreamPort := func() int {
		t.Helper()
		reply, err := r.status()
		if err != nil || len(reply.Apps) != 1 {
			t.Fatalf("status: %v %v", reply, err)
		}
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(reply.Apps[0].Upstream, "tcp:"))
		p, _ := strconv.Atoi(port)
		return p
	}
	picked := upstreamPort()
	if !w.contains(picked) {
		t.Fatalf("picked port %d, not in port_range %s", picked, w)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: picked, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}

	get := func() {
		t.Helper()
		c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", listen))
		if err != nil {
			t.Fatalf("GET: %v\n%s", err, lastLines(r.log.String(), 30))
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte("Directory listing")) {
			t.Fatalf("GET: %d %q", resp.StatusCode, b)
		}
	}
	get()
	moved := upstreamPort()
	if moved == picked || !w.contains(moved) {
		t.Errorf("app on port %d after %d was held, want another one of %s", moved, picked, w)
	}
	if app := r.app(t, "web"); app.starts != 1 {
		t.Errorf("%d starts, want 1 (moved before it started)", app.starts)
	}

	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"reload", "--control", control}, func(string) string { return "" }, nil, &out, &errb); code != 0 {
		t.Fatalf("reload: %d %s%s", code, out.String(), errb.String())
	}
	if p := upstreamPort(); p != moved {
		t.Errorf("after a reload the app is on %d, want %d where it moved", p, moved)
	}
	get()
}
