package main

import (
	"bytes"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/listeners"
	"github.com/rouse-dev/rouse/procman"
)

var updateConfigGolden = flag.Bool("update", false, "rewrite testdata/config/bad/*.err from Load's output")

// problemLine is what every line of a ConfigError must look like: the key
// has no blanks outside the quotes of a quoted part (apps."my app").
var problemLine = regexp.MustCompile(`^[^:]+:[1-9][0-9]*: (?:[^\s":]|"(?:[^"\\]|\\.)*")+: .+$`)

// fixedPorts returns a PickPort that hands out 41000, 41001, ... and never binds.
func fixedPorts() func() (int, error) {
	next := 41000
	return func() (int, error) {
		next++
		return next - 1, nil
	}
}

// writeFiles creates files (path relative to a new temp dir -> content) and
// returns the dir.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustLoad(t *testing.T, path string, opts LoadOptions) *Config {
	t.Helper()
	if opts.PickPort == nil {
		opts.PickPort = fixedPorts()
	}
	cfg, err := Load(path, opts)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return cfg
}

func app(t *testing.T, cfg *Config, name string) App {
	t.Helper()
	for _, a := range cfg.Apps {
		if a.Name == name {
			return a
		}
	}
	t.Fatalf("no app %q in %v", name, cfg.Apps)
	return App{}
}

// TestConfigBad loads every testdata/config/bad/*.toml (a first line
// "# euid: 0" loads it as root) and compares the error with the golden
// .err file next to it. It proves that each rule of the loader reports
// its problem at the right file, line and key, with every problem of a
// file reported, not just the first.
func TestConfigBad(t *testing.T) {
	goldenConfigs(t, "bad", func(src []byte) LoadOptions {
		opts := LoadOptions{Euid: 1000, PickPort: fixedPorts()}
		if bytes.HasPrefix(src, []byte("# euid: 0\n")) {
			opts.Euid = 0
		}
		return opts
	})
}

// TestConfigCheckStart: `rouse check` fails each app whose first start
// would fail, with file:line: key: reason. PATH is fixed so that the
// messages are the same everywhere.
func TestConfigCheckStart(t *testing.T) {
	t.Setenv("PATH", "/usr/bin:/bin")
	goldenConfigs(t, "check", func([]byte) LoadOptions {
		return LoadOptions{Euid: os.Geteuid(), PickPort: fixedPorts(), CheckStart: true}
	})
}

// goldenConfigs loads each testdata/config/DIR/*.toml, which must fail,
// and compares the error with the .err file beside it (-update writes it).
func goldenConfigs(t *testing.T, dir string, options func(src []byte) LoadOptions) {
	files, err := filepath.Glob(filepath.Join("testdata", "config", dir, "*.toml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test configs: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".toml")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Load(file, options(src))
			if err == nil {
				t.Fatalf("Load succeeded with %d apps; want an error", len(cfg.Apps))
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Load error is %T, not a *ConfigError: %v", err, err)
			}
			got := err.Error() + "\n"
			for _, line := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
				if !problemLine.MatchString(line) {
					t.Errorf("line %q does not read FILE:LINE: KEY: MSG", line)
				}
			}
			if len(ce.Problems) != strings.Count(got, "\n") {
				t.Errorf("%d problems but %d lines", len(ce.Problems), strings.Count(got, "\n"))
			}
			golden := strings.TrimSuffix(file, ".toml") + ".err"
			if *updateConfigGolden {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
			}
			if got != string(want) {
				t.Errorf("Load(%s) error:\n%s\nwant:\n%s", file, got, want)
			}
		})
	}
}

// TestConfigDefaults proves that an app that sets nothing but listen and
// command gets DESIGN.md's defaults, and [rouse] its own.
func TestConfigDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.blog]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/blog", "--port", "{port}"]
`})
	cfg := mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000})
	if cfg.File != filepath.Join(dir, "rouse.toml") || cfg.Control != "/run/rouse/control.sock" ||
		cfg.DrainTimeout != 10*time.Second || cfg.LogLevel != 0 || cfg.MaxRunning != 0 ||
		cfg.MemoryBudget != 0 || cfg.Metrics != "" {
		t.Errorf("daemon defaults: %+v", cfg)
	}
	got := app(t, cfg, "blog")
	want := App{
		Config: activator.Config{
			Name:   "blog",
			Mode:   activator.ModeHTTP,
			Listen: []string{"127.0.0.1:8001"},
			Process: procman.Spec{
				Name:        "blog",
				Argv:        []string{"/usr/bin/blog", "--port", "41000"},
				Env:         []string{"PORT=41000"},
				StopSignal:  syscall.SIGTERM,
				StopTimeout: 10 * time.Second,
			},
			UpstreamNetwork: "tcp",
			UpstreamAddress: "127.0.0.1:41000",
			PickedPort:      41000,
			StartTimeout:    30 * time.Second,
			IdleTimeout:     15 * time.Minute,
			QueueTimeout:    30 * time.Second,
			MaxQueued:       1024,
			RetryTries:      3,
			RetryTimeout:    10 * time.Second,
			MaxFails:        3,
			FailTimeout:     30 * time.Second,
			BackoffMax:      5 * time.Minute,
			RequestBuffer:   1 << 20,
			ResponseTimeout: time.Minute,
			HeaderTimeout:   10 * time.Second,
			BodyTimeout:     time.Minute,
			SendTimeout:     time.Minute,
			StartPageAfter:  time.Second,
			ServerTiming:    true,
		},
		Addrs:        []listeners.Addr{{Kind: listeners.TCP, Address: "127.0.0.1:8001"}},
		Port:         41000,
		Source:       filepath.Join(dir, "rouse.toml") + ":2",
		AccessTarget: "off",
		AccessFormat: "combined",
	}
	want.Ready.Kind = "tcp"
	got.tmpl = portTemplate{} // what moving the port rebuilds from: TestPortTemplate
	if !reflect.DeepEqual(got, want) {
		t.Errorf("app:\n got %+v\nwant %+v", got, want)
	}
}

// TestConfigDefaultsInheritance proves that [defaults] apply to every app,
// that an app's own keys win, and that env tables merge key by key.
func TestConfigDefaultsInheritance(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[rouse]
max_running = 4
memory_budget = "2GiB"
metrics = "127.0.0.1:9180"
drain_timeout = "3s"
log_level = "debug"
procs = 3

[defaults]
mode = "tcp"
idle_timeout = "5m"
stop_signal = "INT"
stop_timeout = "3s"
retry_tries = 5
user = "app-{name}"
env = { SHARED = "1", LEVEL = "default", NAME = "{name}" }

[apps.a]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/a"]

[apps.b]
listen = ["127.0.0.1:8002"]
command = ["/usr/bin/b"]
mode = "http"
idle_timeout = "0"
stop_signal = "SIGQUIT"
user = "bee"
env = { LEVEL = "app", OWN = "x" }
request_buffer = 4096
retry_non_idempotent = true
max_conns = 7
ready = "http /health"
backoff_max = "1m"
`})
	cfg := mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 0})
	if cfg.MaxRunning != 4 || cfg.MemoryBudget != 2<<30 || cfg.Metrics != "127.0.0.1:9180" ||
		cfg.DrainTimeout != 3*time.Second || cfg.LogLevel != -4 || cfg.Procs != 3 {
		t.Errorf("[rouse]: %+v", cfg)
	}
	a, b := app(t, cfg, "a"), app(t, cfg, "b")
	if a.Mode != activator.ModeTCP || a.IdleTimeout != 5*time.Minute || a.Process.StopSignal != syscall.SIGINT ||
		a.Process.StopTimeout != 3*time.Second || a.RetryTries != 5 || a.Process.User != "app-a" {
		t.Errorf("a did not inherit [defaults]: %+v", a)
	}
	if got, want := a.Process.Env, []string{"LEVEL=default", "NAME=a", "PORT=41000", "SHARED=1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("a env = %q, want %q", got, want)
	}
	if b.Mode != activator.ModeHTTP || b.IdleTimeout != 0 || b.Process.StopSignal != syscall.SIGQUIT ||
		b.Process.StopTimeout != 3*time.Second || b.RetryTries != 5 || b.Process.User != "bee" ||
		b.RequestBuffer != 4096 || !b.RetryNonIdempotent || b.MaxConns != 7 ||
		b.Ready.Kind != "http" || b.Ready.Path != "/health" || b.BackoffMax != time.Minute {
		t.Errorf("b's own keys did not win: %+v", b)
	}
	if got, want := b.Process.Env, []string{"LEVEL=app", "NAME=b", "OWN=x", "PORT=41001", "SHARED=1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("b env = %q, want %q", got, want)
	}
}

// TestConfigPort proves when a port is picked, and that {port}, {name} and
// $PORT are filled in everywhere they may appear.
func TestConfigPort(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.picked]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/{name}", "--port={port}"]
env = { BIND = "127.0.0.1:{port}" }

[apps.fixed]
listen = ["127.0.0.1:8002"]
command = ["/usr/bin/fixed", "{port}"]
port = 9000
upstream = "localhost:{port}"

[apps.literal]
listen = ["127.0.0.1:8003"]
command = ["/usr/bin/literal"]
upstream = "127.0.0.1:9100"

[apps.ownport]
listen = ["127.0.0.1:8004"]
command = "exec /usr/bin/own --listen :$PORT"
env = { PORT = "1234" }

[apps.unixapp]
listen = ["unix:/run/rouse/{name}.sock"]
command = ["/usr/bin/unixapp", "--socket", "/run/{name}/app.sock"]
upstream = "unix:/run/{name}/app.sock"

[apps.handoff]
mode = "handoff"
listen = ["127.0.0.1:8005"]
command = ["/usr/bin/handoff"]

[apps.inetd]
mode = "inetd"
listen = ["127.0.0.1:8006"]
command = ["/usr/bin/inetd", "{port}"]
`})
	cfg := mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000, PickPort: fixedPorts()})
	for _, tc := range []struct {
		app      string
		port     int
		argv     []string
		shell    string
		env      []string
		network  string
		upstream string
	}{
		{"picked", 41000, []string{"/usr/bin/picked", "--port=41000"}, "", []string{"BIND=127.0.0.1:41000", "PORT=41000"}, "tcp", "127.0.0.1:41000"},
		{"fixed", 9000, []string{"/usr/bin/fixed", "9000"}, "", []string{"PORT=9000"}, "tcp", "localhost:9000"},
		{"literal", 9100, []string{"/usr/bin/literal"}, "", []string{"PORT=9100"}, "tcp", "127.0.0.1:9100"},
		{"ownport", 41001, nil, "exec /usr/bin/own --listen :$PORT", []string{"PORT=1234"}, "tcp", "127.0.0.1:41001"},
		{"unixapp", 0, []string{"/usr/bin/unixapp", "--socket", "/run/unixapp/app.sock"}, "", nil, "unix", "/run/unixapp/app.sock"},
		{"handoff", 0, []string{"/usr/bin/handoff"}, "", nil, "", ""},
		{"inetd", 41002, []string{"/usr/bin/inetd", "41002"}, "", []string{"PORT=41002"}, "", ""},
	} {
		a := app(t, cfg, tc.app)
		if a.Port != tc.port || !reflect.DeepEqual(a.Process.Argv, tc.argv) || a.Process.Shell != tc.shell ||
			!reflect.DeepEqual(a.Process.Env, tc.env) || a.UpstreamNetwork != tc.network || a.UpstreamAddress != tc.upstream {
			t.Errorf("%s: port %d argv %q shell %q env %q upstream %s %s; want %d %q %q %q %s %s", tc.app,
				a.Port, a.Process.Argv, a.Process.Shell, a.Process.Env, a.UpstreamNetwork, a.UpstreamAddress,
				tc.port, tc.argv, tc.shell, tc.env, tc.network, tc.upstream)
		}
	}
	if got := app(t, cfg, "unixapp").Listen; !reflect.DeepEqual(got, []string{"unix:/run/rouse/unixapp.sock"}) {
		t.Errorf("unixapp listen = %q", got)
	}
}

// TestConfigPickPortDefault proves that without an injected PickPort a
// free loopback port is found.
func TestConfigPickPortDefault(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.a]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/a", "{port}"]
`})
	cfg, err := Load(filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Apps[0].Port; p <= 0 || p > 65535 {
		t.Errorf("picked port %d", p)
	}
}

// TestConfigPickPortAvoidsTaken proves that a picked port never collides
// with another app's port.
func TestConfigPickPortAvoidsTaken(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.a]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/a"]

[apps.b]
listen = ["127.0.0.1:8002"]
command = ["/usr/bin/b"]
port = 41001
`})
	ports := []int{41001, 41001, 41002}
	pick := func() (int, error) {
		p := ports[0]
		ports = ports[1:]
		return p, nil
	}
	cfg := mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000, PickPort: pick})
	if a, b := app(t, cfg, "a").Port, app(t, cfg, "b").Port; a != 41002 || b != 41001 {
		t.Errorf("ports a %d b %d, want 41002 41001", a, b)
	}
}

// TestConfigPickPortFails proves that a PickPort error is a problem of the
// app that needed the port.
func TestConfigPickPortFails(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.a]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/a", "{port}"]
`})
	path := filepath.Join(dir, "rouse.toml")
	_, err := Load(path, LoadOptions{Euid: 1000, PickPort: func() (int, error) { return 0, errors.New("no ports today") }})
	var ce *ConfigError
	if !errors.As(err, &ce) || err.Error() != path+":2: apps.a.port: cannot pick a free port: no ports today" {
		t.Errorf("Load: %v", err)
	}
}

// TestConfigIncludes proves that include globs are relative to the main
// file, read in sorted order, that a glob matching nothing is fine, and that
// relative paths in an included file are relative to that file.
func TestConfigIncludes(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"etc/rouse.toml": `
[rouse]
include = ["apps.d/*.toml", "none.d/*.toml", "rouse.toml"]
control = "run/control.sock"

[defaults]
dir = "srv"

[apps.main]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/main"]
`,
		"etc/apps.d/b.toml": `
[apps.bravo]
listen = ["127.0.0.1:8003"]
command = ["./bravo"]
dir = "../bravo"
`,
		"etc/apps.d/a.toml": `
[apps.alpha]
listen = ["127.0.0.1:8002"]
command = ["/usr/bin/alpha"]
`,
		"etc/apps.d/notes.txt": `not toml`,
	})
	main := filepath.Join(dir, "etc", "rouse.toml")
	cfg := mustLoad(t, main, LoadOptions{Euid: 1000})
	var names []string
	for _, a := range cfg.Apps {
		names = append(names, a.Name)
	}
	if !reflect.DeepEqual(names, []string{"alpha", "bravo", "main"}) {
		t.Errorf("apps %q", names)
	}
	if got, want := cfg.Control, filepath.Join(dir, "etc", "run", "control.sock"); got != want {
		t.Errorf("control %s, want %s", got, want)
	}
	if got, want := app(t, cfg, "main").Process.Dir, filepath.Join(dir, "etc", "srv"); got != want {
		t.Errorf("main dir %s, want %s", got, want)
	}
	if got, want := app(t, cfg, "alpha").Process.Dir, filepath.Join(dir, "etc", "srv"); got != want {
		t.Errorf("alpha dir (from [defaults]) %s, want %s", got, want)
	}
	if got, want := app(t, cfg, "bravo").Process.Dir, filepath.Join(dir, "etc", "bravo"); got != want {
		t.Errorf("bravo dir %s, want %s", got, want)
	}
	if got, want := app(t, cfg, "bravo").Source, filepath.Join(dir, "etc", "apps.d", "b.toml")+":2"; got != want {
		t.Errorf("bravo source %s, want %s", got, want)
	}
	// Picked in the order the apps are written: main file, then a.toml, b.toml.
	if a, b, m := app(t, cfg, "alpha").Port, app(t, cfg, "bravo").Port, app(t, cfg, "main").Port; m != 41000 || a != 41001 || b != 41002 {
		t.Errorf("ports main %d alpha %d bravo %d", m, a, b)
	}
}

// TestConfigVirtualHosts proves that http apps with distinct hosts share a
// listen address, an exact name next to a wildcard and the catch-all "*"
// included.
func TestConfigVirtualHosts(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.blog]
listen = ["127.0.0.1:8080"]
hosts = ["Blog.Example.com"]
command = ["/usr/bin/blog"]

[apps.rest]
listen = ["127.0.0.1:8080", "127.0.0.1:8081"]
hosts = ["*.example.com", "example.com"]
command = ["/usr/bin/rest"]

[apps.other]
listen = ["127.0.0.1:8080"]
hosts = ["*"]
command = ["/usr/bin/other"]
`})
	cfg := mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000})
	if got := app(t, cfg, "blog").Hosts; !reflect.DeepEqual(got, []string{"blog.example.com"}) {
		t.Errorf("hosts %q, want them lower-cased", got)
	}
	if got := app(t, cfg, "other").Hosts; !reflect.DeepEqual(got, []string{"*"}) {
		t.Errorf("catch-all hosts %q, want [*]", got)
	}
}

// TestConfigRootUser proves that as root an app may run as root when it
// says so.
func TestConfigRootUser(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[apps.admin]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/admin"]
user = "root"
`})
	if got := app(t, mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 0}), "admin").Process.User; got != "root" {
		t.Errorf("user %q", got)
	}
}

// TestConfigMissingFile proves that an unreadable main file is a plain
// error, not a ConfigError, so the CLI can tell the two apart.
func TestConfigMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"), LoadOptions{Euid: 1000})
	var ce *ConfigError
	if !errors.Is(err, fs.ErrNotExist) || errors.As(err, &ce) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// TestConfigExamples proves that the shipped examples load.
func TestConfigExamples(t *testing.T) {
	cfg := mustLoad(t, filepath.Join("..", "..", "examples", "rouse.toml"), LoadOptions{Euid: 1000})
	var names []string
	for _, a := range cfg.Apps {
		names = append(names, a.Name)
	}
	if !reflect.DeepEqual(names, []string{"blog", "redis", "wiki"}) {
		t.Errorf("example apps %q", names)
	}
	var out bytes.Buffer
	cfg.Describe(&out)
	for _, want := range []string{
		"blog (http)  ../../examples/apps.d/blog.toml:4\n",
		"  listen    127.0.0.1:8080, unix:/run/rouse/blog.sock\n",
		"  hosts     blog.example.com, www.blog.example.com\n",
		"  upstream  127.0.0.1:41002\n",
		"  command   /usr/bin/blog --port 41002\n",
		"  ready     http /up, idle_timeout 30m\n",
		"redis (tcp)  ../../examples/rouse.toml:29\n",
		"  command   /usr/bin/redis-server --port 41000 --bind 127.0.0.1 --save ''\n",
		"  command   /bin/sh -c 'exec /srv/wiki/bin/server --listen 127.0.0.1:$PORT'\n",
		": 3 apps, 4 listen addresses, control /run/rouse/control.sock\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Describe output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestConfigKeyLines proves the line index on the TOML forms that could
// fool a line scanner: multi-line strings and arrays, inline tables, dotted
// and quoted keys.
func TestConfigKeyLines(t *testing.T) {
	src := `# comment [not.a.table]
top = 1
[apps."my app"]   # trailing comment
listen = [
  "127.0.0.1:8001", # a = 1
  "unix:/x",
]
command = """
not = a key
[not.a.table]
"""
env = { A = "1", "B.C" = { D = 2 },
  E = 'x' }
[ apps . blog ]
dotted.key = 'it''s'
'lit' = '''
x = 1'''
str = "a \" b = c"
[[arr]]
x = 1
`
	kl := indexKeys(src)
	for key, want := range map[string]int{
		"top":                       2,
		`apps."my app"`:             3,
		`apps."my app".listen`:      4,
		`apps."my app".command`:     8,
		`apps."my app".env`:         12,
		`apps."my app".env.A`:       12,
		`apps."my app".env."B.C".D`: 12,
		`apps."my app".env.E`:       13,
		"apps":                      3,
		"apps.blog":                 14,
		"apps.blog.dotted":          15,
		"apps.blog.dotted.key":      15,
		"apps.blog.lit":             16,
		"apps.blog.str":             18,
		"arr.x":                     20,
	} {
		if got := kl[key]; got != want {
			t.Errorf("line of %s = %d, want %d", key, got, want)
		}
	}
	for _, key := range []string{"not", "not.a.table", "a", "x", "b"} {
		if l, ok := kl[key]; ok {
			t.Errorf("%s indexed at line %d; it is inside a string", key, l)
		}
	}
	if got := kl.line("apps", "blog", "nothing"); got != 14 {
		t.Errorf("fallback to the table's line: %d", got)
	}
	if got := kl.line("zzz"); got != 1 {
		t.Errorf("fallback to line 1: %d", got)
	}
}

// TestConfigDuration proves the duration rules, bare integers above all.
func TestConfigDuration(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want time.Duration
		err  string
	}{
		{"30s", 30 * time.Second, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"0", 0, ""},
		{int64(0), 0, ""},
		{"250ms", 250 * time.Millisecond, ""},
		{int64(300), 0, `invalid duration 300: needs a unit, e.g. "300s"`},
		{"300", 0, `invalid duration 300: needs a unit, e.g. "300s"`},
		{"5 minutes", 0, `invalid duration "5 minutes": want a number and a unit (ms, s, m, h), e.g. "90s" or "1h30m"`},
		{"-5s", 0, `invalid duration "-5s": must not be negative`},
		{"", 0, `invalid duration "": want a number and a unit (ms, s, m, h), e.g. "90s" or "1h30m"`},
		{1.5, 0, `expected a duration such as "30s", got float 1.5`},
	} {
		got, err := asDuration(tc.in)
		if msg := errString(err); got != tc.want || msg != tc.err {
			t.Errorf("asDuration(%#v) = %v, %q; want %v, %q", tc.in, got, msg, tc.want, tc.err)
		}
	}
}

// TestConfigSize proves the size units.
func TestConfigSize(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want int64
		err  string
	}{
		{"1MiB", 1 << 20, ""},
		{"512KiB", 512 << 10, ""},
		{"2GiB", 2 << 30, ""},
		{"10MB", 10e6, ""},
		{"1GB", 1e9, ""},
		{"100B", 100, ""},
		{"1 gib", 1 << 30, ""},
		{int64(4096), 4096, ""},
		{"", 0, ""},
		{"1.5GiB", 0, `invalid size "1.5GiB": want bytes or a number and a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. "512KiB"`},
		{"-1", 0, `invalid size "-1": must not be negative`},
		{"9999999999TiB", 0, `invalid size "9999999999TiB": too large`},
		{true, 0, `expected a size such as "1MiB", got boolean true`},
	} {
		got, err := asSize(tc.in)
		if msg := errString(err); got != tc.want || msg != tc.err {
			t.Errorf("asSize(%#v) = %v, %q; want %v, %q", tc.in, got, msg, tc.want, tc.err)
		}
	}
}

// TestConfigSuggest proves the "did you mean" hints.
func TestConfigSuggest(t *testing.T) {
	known := sortedKeys(appKeys)
	for in, want := range map[string]string{
		"idle_timout":  "idle_timeout",
		"Idle_Timeout": "idle_timeout",
		"lisen":        "listen",
		"comand":       "command",
		"frobnicate":   "",
		"x":            "",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// FuzzLoad proves that Load never panics and that every problem it reports
// names the file and a line.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"",
		"[apps.a]\nlisten = [\"127.0.0.1:1\"]\ncommand = [\"/bin/true\"]\n",
		"[rouse]\ninclude = [\"*.toml\"]\n[apps.b]\nlisten = [\"unix:/x\"]\ncommand = \"x {port}\"\nport = 0\n",
		"[defaults]\nenv = { A = \"1\" }\n[apps.\"x y\"]\nhosts = [\"*.a\"]\nmode = \"tcp\"\n",
		"apps.a.listen = []\napps = 1\n",
		"a = \"\"\"\n[x]\n\"\"\"\n[apps.q]\nidle_timeout = 300\n",
		"[apps.a]\nlisten=[\"127.0.0.1:1\"]\ncommand=[\"a\"]\n[apps.b]\nlisten=[\"127.0.0.1:1\"]\ncommand=[\"b\"]\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "rouse.toml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(path, LoadOptions{Euid: 1000, PickPort: fixedPorts()})
		if err == nil {
			cfg.Describe(&bytes.Buffer{})
			return
		}
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Fatalf("not a ConfigError: %v", err)
		}
		linePrefix := regexp.MustCompile(`^` + regexp.QuoteMeta(dir) + `/[^:\n]+:[1-9][0-9]*: [^\n]*\S: .+$`)
		for _, line := range strings.Split(err.Error(), "\n") {
			if !linePrefix.MatchString(line) {
				t.Errorf("problem line %q does not start with the file and a line", line)
			}
		}
	})
}

// TestConfigIncludeNotRegular proves that an include glob matching a
// directory is reported rather than read.
func TestConfigIncludeNotRegular(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"rouse.toml":       "[rouse]\ninclude = [\"apps.d/*.toml\"]\n",
		"apps.d/x.toml/ok": "",
	})
	path := filepath.Join(dir, "rouse.toml")
	_, err := Load(path, LoadOptions{Euid: 1000})
	want := path + ":2: rouse.include: " + filepath.Join(dir, "apps.d/*.toml") + " matches " +
		filepath.Join(dir, "apps.d/x.toml") + ", which is not a regular file"
	if err == nil || err.Error() != want {
		t.Errorf("Load: %v\nwant %s", err, want)
	}
}

// A picked port is never one that rouse itself listens on for an app:
// the picker may offer it (it was free when asked), the loader asks again.
func TestConfigPickAvoidsListenPorts(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "rouse.toml")
	os.WriteFile(file, []byte(`
[apps.a]
listen = ["127.0.0.1:30001"]
command = ["/bin/true"]

[apps.b]
listen = ["127.0.0.1:30002"]
command = ["/bin/true", "{port}"]
`), 0o644)
	offers := []int{30001, 30002, 30003, 30001, 30003, 30004}
	pick := func() (int, error) {
		p := offers[0]
		offers = offers[1:]
		return p, nil
	}
	cfg, err := Load(file, LoadOptions{Euid: 1000, PickPort: pick})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.Apps {
		if a.Port == 30001 || a.Port == 30002 {
			t.Errorf("app %s got port %d, which rouse listens on", a.Name, a.Port)
		}
	}
}

// TestConfigAccessLog: access_log and access_log_format in [rouse] are
// every app's unless it (or [defaults]) says otherwise; "" is the [rouse]
// one; a relative file is relative to the config file; handoff apps log
// nothing (rouse never sees their connections).
func TestConfigAccessLog(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rouse.toml": `
[rouse]
access_log = "logs/access.log"
access_log_format = "json"

[defaults]
server_timing = false

[apps.a]
listen = ["127.0.0.1:8001"]
command = ["/usr/bin/a"]

[apps.b]
listen = ["127.0.0.1:8002"]
command = ["/usr/bin/b"]
access_log = "stderr"
access_log_format = "combined"
server_timing = true

[apps.c]
listen = ["127.0.0.1:8003"]
command = ["/usr/bin/c"]
access_log = "off"

[apps.d]
listen = ["127.0.0.1:8004"]
command = ["/usr/bin/d"]
access_log = ""
access_log_format = ""

[apps.h]
mode = "handoff"
listen = ["127.0.0.1:8005"]
command = ["/usr/bin/h"]
`})
	cfg := mustLoad(t, filepath.Join(dir, "rouse.toml"), LoadOptions{Euid: 1000})
	file := filepath.Join(dir, "logs", "access.log")
	for _, want := range []struct {
		name, target, format string
		on, timing           bool
	}{
		{"a", file, "json", true, false},
		{"b", "stderr", "combined", true, true},
		{"c", "off", "json", false, false},
		{"d", file, "json", true, false},
		{"h", file, "json", false, false},
	} {
		a := app(t, cfg, want.name)
		if a.AccessTarget != want.target || a.AccessFormat != want.format || a.Config.AccessLog != want.on || a.ServerTiming != want.timing {
			t.Errorf("app %s: access_log %q format %q on %v server_timing %v; want %+v", a.Name, a.AccessTarget, a.AccessFormat, a.Config.AccessLog, a.ServerTiming, want)
		}
	}
}
