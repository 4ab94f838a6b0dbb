package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/listeners"
	"github.com/rouse-dev/rouse/procman"
)

// Config is a loaded, validated rouse configuration. Load builds it; it is
// a plain value afterwards.
type Config struct {
	File         string              // absolute path of the main file
	Control      string              // [rouse].control, default "/run/rouse/control.sock"; relative paths are relative to the config file's dir
	MaxRunning   int                 // [rouse].max_running, 0 = no limit
	MemoryBudget int64               // [rouse].memory_budget in bytes, 0 = none
	MaxStarting  int                 // [rouse].max_starting, concurrent spawns, 0 = no limit
	Metrics      string              // [rouse].metrics, "" = none
	DrainTimeout time.Duration       // [rouse].drain_timeout, default 10s: how long shutdown waits for open connections
	Procs        int                 // [rouse].procs, 0 = half the CPUs: see setProcs
	LogLevel     slog.Level          // [rouse].log_level: "debug"|"info"|"warn"|"error", default info
	PortRange    portRange           // [rouse].port_range: where port = 0 picks app ports
	Containment  procman.Containment // [rouse].containment: "auto" (cgroup when possible) | "subreaper"
	AccessLog    string              // [rouse].access_log: "off" (default) | "stderr" | "journal" | an absolute file path
	AccessFormat string              // [rouse].access_log_format: "combined" (default) | "json"
	Apps         []App               // sorted by name
	// Warnings are things that are allowed but likely wrong (an include
	// pattern that matches no file); `rouse check --strict` fails on them.
	Warnings []Problem

	picker portPicker // picks ports in PortRange: at load, and when an app's port must move
}

// App is one [apps.NAME] table with [defaults] applied and every
// placeholder substituted: ready to hand to the activator.
type App struct {
	activator.Config                  // fully filled in, defaults applied
	Addrs            []listeners.Addr // parsed listen addresses, same order as Listen
	Port             int              // the app's port ({port}, $PORT): as written, picked when 0 and needed, or 0
	Source           string           // "file:line" of its [apps.NAME] table
	// Where its access log goes and how, the [rouse] ones filled in:
	// as Config.AccessLog and AccessFormat (Config.AccessLog is whether
	// it is on).
	AccessTarget, AccessFormat string

	tmpl portTemplate // what holds {port}, to move the app to another picked port
}

// LoadOptions are what Load needs from its caller besides the file.
type LoadOptions struct {
	Euid int // os.Geteuid() normally: when 0, apps need user
	// PickPort returns a free port for an app with port = 0 that needs one.
	// nil: a port of port_range outside the kernel's ephemeral range that
	// nothing listens on or holds.
	PickPort func() (int, error)
	// Ephemeral returns the kernel's ephemeral port range, which port_range
	// must stay out of. nil: read /proc/sys/net/ipv4/ip_local_port_range.
	Ephemeral func() (portRange, error)
	// Ports are the ports picked for apps before (by name), kept when the
	// app still needs a picked one: a reload must not move a running app.
	Ports map[string]int
	// CheckStart also reports what each app's first start would run into
	// (procman.Check: its user, dir and command, as the system is now):
	// `rouse check` sets it.
	CheckStart bool
}

// Problem is one thing wrong in a configuration.
type Problem struct {
	File string // the file as the user named it (or the include pattern's directory joined with the match)
	Line int    // 1-based
	Key  string // full dotted key, e.g. apps.blog.idle_timeout
	Msg  string
}

// String formats the problem as `FILE:LINE: KEY: MSG`, on one line.
func (p Problem) String() string {
	return oneLine(fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Key, p.Msg))
}

// ConfigError is the error Load returns for a configuration that has
// problems: Error is one line per problem, sorted by file (the main file
// first, then the included ones in the order they were read) and line.
// `rouse check` exits 2 on it (errors.As).
type ConfigError struct {
	Problems []Problem
}

// Error returns one `FILE:LINE: KEY: MSG` line per problem.
func (e *ConfigError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// appNameRE is what an app name may be: it becomes a log tag and a journal
// identifier.
var appNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// Load reads the config file at path and the files it includes, applies the
// defaults and checks everything. A file that has problems gives a
// *ConfigError listing all of them. Failing to read the main file itself is
// a plain error wrapping the *fs.PathError (errors.Is(err, fs.ErrNotExist)
// works); an included file that cannot be read is a Problem of the include
// key instead. Load calls opts.PickPort, binds nothing else and is safe for
// concurrent use.
func Load(path string, opts LoadOptions) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("load config %s: %w", path, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	l := &loader{opts: opts, rank: map[string]int{}, listenPorts: map[int]bool{}}
	if l.opts.Ephemeral == nil {
		l.opts.Ephemeral = kernelEphemeral
	}
	cfg := l.load(path, abs, data)
	if len(l.problems) > 0 {
		return nil, l.err()
	}
	cfg.Warnings = l.warnings
	return cfg, nil
}

// LoadControl reads only the main file at path and returns its control
// socket ([rouse].control, else the default): the verbs that talk to a
// running daemon need nothing else, so they work while an included file,
// or any other table of the main file, is broken. A main file that is not
// valid TOML, or whose control key is bad, gives a *ConfigError.
func LoadControl(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("load config %s: %w", path, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("load config: %w", err)
	}
	l := &loader{rank: map[string]int{}}
	control := defaultControl
	f, doc := l.parse(path, filepath.Dir(abs), data)
	if t, ok := doc["rouse"].(map[string]any); ok && t["control"] != nil {
		key := []string{"rouse", "control"}
		if v, err := parseControl(t["control"], f.dir); err != nil {
			l.report(f, key, err)
		} else {
			control = v.(string)
		}
	}
	if len(l.problems) > 0 {
		return "", l.err()
	}
	return control, nil
}

// loader carries one Load call's state.
type loader struct {
	opts        LoadOptions
	problems    []Problem
	warnings    []Problem
	rank        map[string]int // file name -> order it was read in, for sorting problems
	listenPorts map[int]bool   // TCP ports rouse listens on, which a picked port must avoid
	picker      portPicker     // set once [rouse] is read
	noPicks     bool           // port_range has a problem: no port is picked, so no problem follows from it
}

// srcFile is one parsed file.
type srcFile struct {
	name  string // as shown in problems
	dir   string // absolute directory, for relative paths written in the file
	lines keyLines
}

// appDef is one validated [apps.NAME] table, or [defaults].
type appDef struct {
	name string
	file *srcFile
	key  []string        // ["apps", name] or ["defaults"]
	vals map[string]any  // key -> value of the type appKeys gives
	bad  map[string]bool // keys that had a problem, so no "required" on top
}

// keyOf returns the full key of one of the table's keys.
func (a *appDef) keyOf(k ...string) []string {
	return append(append([]string(nil), a.key...), k...)
}

func (a *appDef) source() string {
	return fmt.Sprintf("%s:%d", a.file.name, a.file.lines.line(a.key...))
}

func (l *loader) add(f *srcFile, line int, key []string, msg string) {
	if line < 1 {
		line = 1
	}
	l.problems = append(l.problems, Problem{File: f.name, Line: line, Key: keyString(key), Msg: msg})
}

// addAt reports a problem of key at the line where it is written.
func (l *loader) addAt(f *srcFile, key []string, msg string) {
	l.add(f, f.lines.line(key...), key, msg)
}

func (l *loader) err() error {
	sort.SliceStable(l.problems, func(i, j int) bool {
		a, b := l.problems[i], l.problems[j]
		if l.rank[a.File] != l.rank[b.File] {
			return l.rank[a.File] < l.rank[b.File]
		}
		return a.Line < b.Line
	})
	out := l.problems[:0]
	for i, p := range l.problems {
		if i == 0 || p != l.problems[i-1] {
			out = append(out, p)
		}
	}
	return &ConfigError{Problems: out}
}

// parse decodes one file; nil when it is not valid TOML (a problem is added).
func (l *loader) parse(name, dir string, data []byte) (f *srcFile, doc map[string]any) {
	if _, ok := l.rank[name]; !ok {
		l.rank[name] = len(l.rank)
	}
	f = &srcFile{name: name, dir: dir}
	defer func() {
		// BurntSushi/toml recovers its own parse errors; anything else
		// escaping it is its bug, and must not take rouse down.
		if r := recover(); r != nil {
			l.add(f, 1, []string{"toml"}, fmt.Sprintf("cannot parse: %v", r))
			doc = nil
		}
	}()
	_, err := toml.Decode(string(data), &doc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			key := pe.LastKey
			if key == "" {
				key = "toml"
			}
			l.problems = append(l.problems, Problem{File: name, Line: max(pe.Position.Line, 1), Key: key, Msg: "syntax error: " + pe.Message})
		} else {
			l.add(f, 1, []string{"toml"}, err.Error())
		}
		return f, nil
	}
	f.lines = indexKeys(string(data))
	return f, doc
}

// orderedKeys returns the keys of m, a table at key prefix in f, in the
// order they are written, so that problems and apps come out the same way
// every time.
func orderedKeys(f *srcFile, prefix []string, m map[string]any) []string {
	keys := sortedKeys(m)
	full := append(append([]string(nil), prefix...), "")
	sort.SliceStable(keys, func(i, j int) bool {
		full[len(full)-1] = keys[i]
		li := f.lines.line(full...)
		full[len(full)-1] = keys[j]
		return li < f.lines.line(full...)
	})
	return keys
}

func (l *loader) load(path, abs string, data []byte) *Config {
	cfg := &Config{
		File:         abs,
		Control:      defaultControl,
		DrainTimeout: defaultDrainTimeout,
		LogLevel:     slog.LevelInfo,
		AccessLog:    defaultAccessLog,
		AccessFormat: defaultAccessFormat,
	}
	main, doc := l.parse(path, filepath.Dir(abs), data)
	if doc == nil {
		return nil
	}
	defs := &appDef{file: main, key: []string{"defaults"}, vals: map[string]any{}, bad: map[string]bool{}}
	var apps []*appDef
	var include []string
	for _, k := range orderedKeys(main, nil, doc) {
		switch k {
		case "rouse":
			include = l.rouseTable(cfg, main, doc[k])
		case "defaults":
			if m, err := asTable(doc[k]); err != nil {
				l.addAt(main, []string{k}, err.Error())
			} else {
				l.appTable(defs, m)
			}
		case "apps":
			apps = append(apps, l.appsTable(main, doc[k])...)
		default:
			l.unknownTopKey(main, k)
		}
	}
	l.portRange(cfg, main)
	apps = append(apps, l.includes(main, path, abs, include)...)

	byName := map[string]*appDef{}
	var unique []*appDef
	for _, a := range apps {
		if first, ok := byName[a.name]; ok {
			l.addAt(a.file, a.key, fmt.Sprintf("app %q is already defined at %s", a.name, first.source()))
			continue
		}
		byName[a.name] = a
		unique = append(unique, a)
	}
	cfg.Apps = l.buildApps(unique, defs)
	sort.Slice(cfg.Apps, func(i, j int) bool { return cfg.Apps[i].Name < cfg.Apps[j].Name })
	for i := range cfg.Apps {
		a := &cfg.Apps[i]
		if a.AccessTarget == "" {
			a.AccessTarget = cfg.AccessLog
		}
		if a.AccessFormat == "" {
			a.AccessFormat = cfg.AccessFormat
		}
		a.Config.AccessLog = a.AccessTarget != accessOff && a.Mode != activator.ModeHandoff
	}
	return cfg
}

// rouseTable fills cfg from [rouse] and returns its include patterns.
func (l *loader) rouseTable(cfg *Config, f *srcFile, v any) []string {
	m, err := asTable(v)
	if err != nil {
		l.addAt(f, []string{"rouse"}, err.Error())
		return nil
	}
	var include []string
	for _, k := range orderedKeys(f, []string{"rouse"}, m) {
		key := []string{"rouse", k}
		parse, ok := rouseKeys[k]
		if !ok {
			l.unknownKey(f, key, "rouse")
			continue
		}
		val, err := parse(m[k], f.dir)
		if err != nil {
			l.report(f, key, err)
			continue
		}
		switch k {
		case "control":
			cfg.Control = val.(string)
		case "include":
			include = val.([]string)
		case "max_running":
			cfg.MaxRunning = val.(int)
		case "memory_budget":
			cfg.MemoryBudget = val.(int64)
		case "max_starting":
			cfg.MaxStarting = val.(int)
		case "metrics":
			cfg.Metrics = val.(string)
		case "drain_timeout":
			cfg.DrainTimeout = val.(time.Duration)
		case "procs":
			cfg.Procs = val.(int)
		case "log_level":
			cfg.LogLevel = val.(slog.Level)
		case "port_range":
			cfg.PortRange = val.(portRange)
		case "containment":
			cfg.Containment = val.(procman.Containment)
		case "access_log":
			cfg.AccessLog = val.(string)
		case "access_log_format":
			cfg.AccessFormat = val.(string)
		}
	}
	return include
}

// portRange checks [rouse].port_range against the kernel's ephemeral port
// range and sets up the picker. A written range must stay out of it; of
// the default one, what is out of it is used.
func (l *loader) portRange(cfg *Config, f *srcFile) {
	eph, err := l.opts.Ephemeral()
	if err != nil {
		eph = portRange{} // unknown (no /proc): nothing to avoid
	}
	key := []string{"rouse", "port_range"}
	switch {
	case cfg.PortRange != portRange{}:
		if cfg.PortRange.overlaps(eph) {
			l.noPicks = true
			l.addAt(f, key, fmt.Sprintf("%s overlaps the kernel's ephemeral port range %s (%s), where outgoing connections take their local ports: one could take an app's port while the app is stopped; choose a range outside it",
				cfg.PortRange, eph, ephemeralFile))
		}
	case eph.lo <= defaultPortRange.lo && defaultPortRange.hi <= eph.hi:
		l.noPicks = true
		l.add(f, f.lines.line("rouse"), key, fmt.Sprintf("the default %s lies inside the kernel's ephemeral port range %s (%s): set port_range to a range outside it",
			defaultPortRange, eph, ephemeralFile))
		fallthrough
	default:
		cfg.PortRange = defaultPortRange
	}
	cfg.picker = portPicker{r: cfg.PortRange, ephemeral: eph, free: listeners.TCPPortFree}
	l.picker = cfg.picker
}

// includes reads the files the include patterns match, in pattern order
// and sorted within a pattern, and returns their apps.
func (l *loader) includes(main *srcFile, path, abs string, patterns []string) []*appDef {
	key := []string{"rouse", "include"}
	seen := map[string]bool{abs: true} // the main file never includes itself
	var apps []*appDef
	for _, pat := range patterns {
		if !filepath.IsAbs(pat) {
			pat = filepath.Join(filepath.Dir(path), pat)
		}
		matches, err := filepath.Glob(pat)
		if err != nil {
			l.addAt(main, key, fmt.Sprintf("bad pattern %q: %v", pat, err))
			continue
		}
		if len(matches) == 0 {
			l.warnings = append(l.warnings, Problem{File: main.name, Line: max(main.lines.line(key...), 1), Key: keyString(key), Msg: fmt.Sprintf("%s matches no file", pat)})
		}
		sort.Strings(matches)
		for _, name := range matches {
			fabs, err := filepath.Abs(name)
			if err != nil || seen[fabs] {
				continue
			}
			seen[fabs] = true
			// Only regular files: a glob that catches a FIFO or a device
			// must not hang or flood `rouse check`.
			if fi, err := os.Stat(name); err == nil && !fi.Mode().IsRegular() {
				l.addAt(main, key, fmt.Sprintf("%s matches %s, which is not a regular file", pat, name))
				continue
			}
			data, err := os.ReadFile(name)
			if err != nil {
				l.addAt(main, key, err.Error())
				continue
			}
			f, doc := l.parse(name, filepath.Dir(fabs), data)
			if doc == nil {
				continue
			}
			for _, k := range orderedKeys(f, nil, doc) {
				switch k {
				case "apps":
					apps = append(apps, l.appsTable(f, doc[k])...)
				case "rouse", "defaults":
					l.addAt(f, []string{k}, fmt.Sprintf("[%s] is only allowed in the main config file %s; an included file holds [apps.NAME] tables", k, main.name))
				default:
					l.unknownTopKey(f, k)
				}
			}
		}
	}
	return apps
}

// appsTable checks the [apps] table of f and returns its apps in the order
// they are written.
func (l *loader) appsTable(f *srcFile, v any) []*appDef {
	m, err := asTable(v)
	if err != nil {
		l.addAt(f, []string{"apps"}, fmt.Sprintf("expected [apps.NAME] tables, got %s", describe(v)))
		return nil
	}
	var apps []*appDef
	for _, name := range orderedKeys(f, []string{"apps"}, m) {
		a := &appDef{name: name, file: f, key: []string{"apps", name}, vals: map[string]any{}, bad: map[string]bool{}}
		t, ok := m[name].(map[string]any)
		if !ok {
			msg := fmt.Sprintf("expected an [apps.%s] table, got %s", keyString([]string{name}), describe(m[name]))
			if _, isKey := appKeys[name]; isKey {
				msg += fmt.Sprintf("; %s goes inside an [apps.NAME] table", name)
			}
			l.addAt(f, a.key, msg)
			continue
		}
		if !appNameRE.MatchString(name) {
			l.addAt(f, a.key, fmt.Sprintf("invalid app name %q: use letters, digits, '_', '.' and '-'", name))
		}
		l.appTable(a, t)
		apps = append(apps, a)
	}
	return apps
}

// appTable checks the keys of an app table or [defaults] into a.
func (l *loader) appTable(a *appDef, m map[string]any) {
	for _, k := range orderedKeys(a.file, a.key, m) {
		key := a.keyOf(k)
		parse, ok := appKeys[k]
		if !ok {
			l.unknownKey(a.file, key, "app")
			continue
		}
		val, err := parse(m[k], a.file.dir)
		if err != nil {
			a.bad[k] = true
			l.report(a.file, key, err)
			continue
		}
		a.vals[k] = val
	}
}

// report adds the problems a parseFunc found with key.
func (l *loader) report(f *srcFile, key []string, err error) {
	var subs subKeyErrors
	var list errList
	switch {
	case errors.As(err, &subs):
		for _, se := range subs {
			l.addAt(f, append(append([]string(nil), key...), se.key), se.err.Error())
		}
	case errors.As(err, &list):
		for _, e := range list {
			l.addAt(f, key, e.Error())
		}
	default:
		l.addAt(f, key, err.Error())
	}
}

// unknownKey reports key, found in a table of kind "rouse" or "app", with
// a hint when it is a typo or belongs in another table.
func (l *loader) unknownKey(f *srcFile, key []string, kind string) {
	k := key[len(key)-1]
	own, other, where := appKeys, rouseKeys, "the [rouse] table"
	if kind == "rouse" {
		own, other, where = rouseKeys, appKeys, "[defaults] or an [apps.NAME] table"
	}
	msg := "unknown key"
	if _, ok := other[k]; ok {
		msg += fmt.Sprintf("; %s belongs in %s", k, where)
	} else if s := suggest(k, sortedKeys(own)); s != "" {
		msg += fmt.Sprintf("; did you mean %s?", s)
	}
	l.addAt(f, key, msg)
}

func (l *loader) unknownTopKey(f *srcFile, k string) {
	msg := "unknown key"
	if _, ok := rouseKeys[k]; ok {
		msg += fmt.Sprintf("; %s belongs in the [rouse] table", k)
	} else if _, ok := appKeys[k]; ok {
		msg += fmt.Sprintf("; %s belongs in [defaults] or an [apps.NAME] table", k)
	} else if s := suggest(k, []string{"apps", "defaults", "rouse"}); s != "" {
		msg += fmt.Sprintf("; did you mean [%s]?", s)
	}
	l.addAt(f, []string{k}, msg)
}

// builder builds one app from its table merged over [defaults].
type builder struct {
	l    *loader
	a    *appDef
	defs *appDef
	m    map[string]any  // merged values
	bad  map[string]bool // merged bad keys
}

func newBuilder(l *loader, a, defs *appDef) *builder {
	b := &builder{l: l, a: a, defs: defs, m: map[string]any{}, bad: map[string]bool{}}
	for _, from := range []*appDef{defs, a} {
		for k, v := range from.vals {
			b.m[k] = v
		}
		for k := range from.bad {
			b.bad[k] = true
		}
	}
	if de, ok := defs.vals["env"].(map[string]string); ok {
		env := map[string]string{}
		for k, v := range de {
			env[k] = v
		}
		if ae, ok := a.vals["env"].(map[string]string); ok {
			for k, v := range ae {
				env[k] = v
			}
		}
		b.m["env"] = env
	}
	return b
}

// problem reports msg about the app's key k: at the line of the app's k,
// else of [defaults]' k when the app inherits it, else of the app's table.
func (b *builder) problem(k, msg string) {
	_, set := b.a.vals[k]
	_, inherited := b.defs.vals[k]
	if !set && !b.a.bad[k] && inherited {
		b.l.add(b.defs.file, b.defs.file.lines.line(b.defs.keyOf(k)...), b.a.keyOf(k), msg+" (inherited from [defaults])")
		return
	}
	b.l.addAt(b.a.file, b.a.keyOf(k), msg)
}

// has tells whether the merged app sets k; a key that had a problem counts
// as set, so that it is not also reported missing.
func (b *builder) has(k string) bool {
	_, ok := b.m[k]
	return ok || b.bad[k]
}

// val returns m[k] when it is a T (appKeys decides the types), else def.
func val[T any](m map[string]any, k string, def T) T {
	if v, ok := m[k].(T); ok {
		return v
	}
	return def
}

// built is a built app and its builder, which the cross-app checks report through.
type built struct {
	App
	b *builder
}

func (l *loader) buildApps(defs []*appDef, dflt *appDef) []App {
	bs := make([]*builder, len(defs))
	ports := map[int]string{} // port -> app, explicit ones first so picks avoid them
	for i, a := range defs {
		bs[i] = newBuilder(l, a, dflt)
		if p, key := bs[i].fixedPort(); p != 0 {
			if other, ok := ports[p]; ok {
				bs[i].problem(key, fmt.Sprintf("port %d is also the port of app %s", p, other))
			} else {
				ports[p] = a.name
			}
		}
	}
	// A picked port must not be one rouse listens on itself, for any app:
	// the app could not bind it (and the config would proxy to itself).
	for _, b := range bs {
		listen, _ := b.m["listen"].([]string)
		for _, s := range listen {
			if addr, err := listeners.ParseAddr(substitute(s, b.a.name, 0)); err == nil && addr.Kind == listeners.TCP {
				if _, port, err := net.SplitHostPort(addr.Address); err == nil {
					if p, _ := strconv.Atoi(port); p > 0 {
						l.listenPorts[p] = true
					}
				}
			}
		}
	}
	apps := make([]*built, len(bs))
	for i, b := range bs {
		apps[i] = b.build(ports)
	}
	l.checkShared(apps)
	out := make([]App, len(apps))
	for i, a := range apps {
		out[i] = a.App
	}
	return out
}

// upstream returns the upstream as written, or the default one for the
// modes that proxy, placeholders not substituted yet; "" for none.
func (b *builder) upstream() string {
	if s, ok := b.m["upstream"].(string); ok {
		return s
	}
	mode := val(b.m, "mode", defaultMode)
	if (mode == activator.ModeHTTP || mode == activator.ModeTCP) && !b.bad["upstream"] {
		return defaultUpstream
	}
	return ""
}

// fixedPort returns the port the config fixes for the app and the key that
// does: port, else the literal port of a TCP upstream; 0 when neither does.
func (b *builder) fixedPort() (port int, key string) {
	if p := val(b.m, "port", 0); p != 0 {
		return p, "port"
	}
	up := b.upstream()
	if up == "" || strings.HasPrefix(up, "unix:") || strings.Contains(up, "{port}") {
		return 0, ""
	}
	_, p, err := net.SplitHostPort(strings.ReplaceAll(up, "{name}", b.a.name))
	if n, err2 := strconv.Atoi(p); err == nil && err2 == nil && n > 0 && n <= 65535 {
		return n, "upstream"
	}
	return 0, ""
}

// build turns the merged values into an App. ports holds the ports taken
// so far; a picked port is added.
func (b *builder) build(ports map[int]string) *built {
	l, m, name := b.l, b.m, b.a.name
	before := len(l.problems)

	mode := val(m, "mode", defaultMode)
	cfg := activator.Config{
		Name:               name,
		Mode:               mode,
		StartTimeout:       val(m, "start_timeout", defaultStartTimeout),
		IdleTimeout:        val(m, "idle_timeout", defaultIdleTimeout),
		FreezeAfter:        val[time.Duration](m, "freeze_after", 0),
		QueueTimeout:       val(m, "queue_timeout", defaultQueueTimeout),
		MaxQueued:          val(m, "max_queued", defaultMaxQueued),
		MaxConns:           val(m, "max_conns", 0),
		RetryTries:         val(m, "retry_tries", defaultRetryTries),
		RetryTimeout:       val(m, "retry_timeout", defaultRetryTimeout),
		MaxFails:           val(m, "max_fails", defaultMaxFails),
		FailTimeout:        val(m, "fail_timeout", defaultFailTimeout),
		BackoffMax:         val(m, "backoff_max", defaultBackoffMax),
		Hosts:              val[[]string](m, "hosts", nil),
		RequestBuffer:      val[int64](m, "request_buffer", defaultRequestBuffer),
		RetryNonIdempotent: val(m, "retry_non_idempotent", false),
		ResponseTimeout:    val(m, "response_timeout", defaultResponseTime),
		HeaderTimeout:      val(m, "header_timeout", activator.DefaultHeaderTimeout),
		BodyTimeout:        val(m, "body_timeout", activator.DefaultBodyTimeout),
		SendTimeout:        val(m, "send_timeout", activator.DefaultSendTimeout),
		KeepWarm:           val(m, "keep_warm", false),
		TrustedProxies:     val[[]netip.Prefix](m, "trusted_proxies", nil),
		StartPage:          val(m, "start_page", false),
		StartPageAfter:     val(m, "start_page_after", defaultStartPageAfter),
		ServerTiming:       val(m, "server_timing", true),
	}
	rd := val(m, "ready", readiness{kind: "tcp"})
	cfg.Ready.Kind, cfg.Ready.Path = rd.kind, rd.path

	// listen
	listen, ok := m["listen"].([]string)
	switch {
	case !b.has("listen"):
		b.problem("listen", `required: the addresses rouse listens on for this app, e.g. ["127.0.0.1:8001"]`)
	case ok && len(listen) == 0:
		b.problem("listen", "must not be empty")
	}
	var addrs []listeners.Addr
	seen := map[string]bool{}
	for _, s := range listen {
		s = strings.ReplaceAll(s, "{name}", name)
		addr, err := listeners.ParseAddr(s)
		if err != nil {
			b.problem("listen", err.Error())
			continue
		}
		if seen[addr.String()] {
			b.problem("listen", fmt.Sprintf("%s is listed twice", addr))
			continue
		}
		seen[addr.String()] = true
		cfg.Listen = append(cfg.Listen, s)
		addrs = append(addrs, addr)
	}

	if cfg.FreezeAfter > 0 && mode == activator.ModeInetd && !b.bad["mode"] {
		b.problem("freeze_after", "not valid in inetd mode: its processes live for one connection each")
	}
	if len(cfg.Hosts) > 0 && mode != activator.ModeHTTP && !b.bad["mode"] {
		b.problem("hosts", fmt.Sprintf("only valid in http mode; this app's mode is %s", mode))
	}

	cmd, _ := m["command"].(command)
	if !b.has("command") {
		b.problem("command", `required: the program to run, e.g. ["/usr/bin/blog", "--port", "{port}"] or a string for /bin/sh -c`)
	}
	user := val(m, "user", "")
	if b.l.opts.Euid == 0 && user == "" && !b.bad["user"] {
		b.problem("user", `required when rouse runs as root (apps never run as root unless user = "root")`)
	}
	env := val[map[string]string](m, "env", nil)
	dir := val(m, "dir", "")

	// The port: as written; else the literal port of a TCP upstream;
	// else picked, when something refers to it.
	upstream := b.upstream()
	port, _ := b.fixedPort()
	mentions := strings.Contains(upstream, "{port}") || strings.Contains(dir, "{port}") || strings.Contains(user, "{port}") || strings.Contains(rd.cmd, "{port}")
	for _, s := range append(append([]string{cmd.shell}, cmd.argv...), mapValues(env)...) {
		mentions = mentions || strings.Contains(s, "{port}")
	}
	if port == 0 && mentions && len(l.problems) == before && len(b.bad) == 0 && !l.noPicks {
		p, err := b.pick(ports)
		if err != nil {
			b.problem("port", fmt.Sprintf("cannot pick a free port: %v", err))
		} else {
			port = p
			ports[p] = name
			cfg.PickedPort = p
		}
	}

	// upstream and process
	cfg.Process = procman.Spec{
		Name:        name,
		StopSignal:  val(m, "stop_signal", defaultStopSignal),
		StopTimeout: val(m, "stop_timeout", defaultStopTimeout),
		InheritEnv:  val(m, "inherit_env", false),
		Limits: procman.Limits{
			MemoryMax: val(m, "memory_max", int64(0)),
			CPUMax:    val(m, "cpu_max", 0.0),
			TasksMax:  val(m, "tasks_max", 0),
		},
	}
	tmpl := portTemplate{name: name, upstream: upstream, dir: dir, user: user, cmd: cmd, env: env, ready: rd.cmd}
	if err := tmpl.apply(&cfg, port); err != nil {
		b.problem("upstream", err.Error())
	}
	if l.opts.CheckStart && len(l.problems) == before && len(b.bad) == 0 {
		for _, p := range procman.Check(cfg.Process, l.opts.Euid) {
			b.problem(p.Key, p.Msg)
		}
	}
	return &built{App: App{Config: cfg, Addrs: addrs, Port: port, Source: b.a.source(), tmpl: tmpl,
		AccessTarget: val(m, "access_log", ""), AccessFormat: val(m, "access_log_format", "")}, b: b}
}

// pick asks PickPort for a port no other app has, unless the app had one
// picked before (LoadOptions.Ports) that is still free of other apps.
func (b *builder) pick(ports map[int]string) (int, error) {
	if p, ok := b.l.opts.Ports[b.a.name]; ok && p > 0 {
		if _, taken := ports[p]; !taken && !b.l.listenPorts[p] {
			return p, nil
		}
	}
	if b.l.opts.PickPort == nil {
		return b.l.picker.pick(func(p int) bool {
			_, taken := ports[p]
			return taken || b.l.listenPorts[p]
		})
	}
	var last int
	for range 10 {
		p, err := b.l.opts.PickPort()
		if err != nil {
			return 0, err
		}
		if p <= 0 || p > 65535 {
			return 0, fmt.Errorf("got port %d", p)
		}
		if _, taken := ports[p]; !taken && !b.l.listenPorts[p] {
			return p, nil
		}
		last = p
	}
	return 0, fmt.Errorf("got port %d, taken by app %s, 10 times", last, ports[last])
}

// checkShared reports apps that share a listen address (allowed only for
// http apps with hosts, whose hosts then must not overlap) and upstreams
// that are some app's listen address.
func (l *loader) checkShared(apps []*built) {
	byAddr := map[string][]*built{}
	for _, a := range apps {
		for _, addr := range a.Addrs {
			s := addr.String()
			prev := byAddr[s]
			byAddr[s] = append(prev, a)
			if len(prev) == 0 {
				continue
			}
			if !vhosted(a) || !allVhosted(prev) {
				a.b.problem("listen", fmt.Sprintf("%s is also a listen address of app %s (%s); apps share an address only when all are http apps with hosts", s, prev[0].Name, prev[0].Source))
				continue
			}
			for _, h := range a.Hosts {
				for _, p := range prev {
					if vhosted(p) && contains(p.Hosts, h) {
						a.b.problem("hosts", fmt.Sprintf("host %s on %s is also served by app %s (%s)", h, s, p.Name, p.Source))
						break
					}
				}
			}
		}
	}
	for _, a := range apps {
		if a.UpstreamNetwork != "tcp" || (a.Mode != activator.ModeHTTP && a.Mode != activator.ModeTCP) {
			continue
		}
		up, err := listeners.ParseAddr(a.UpstreamAddress)
		if err != nil {
			continue
		}
		if owners := byAddr[up.String()]; len(owners) > 0 {
			a.b.problem("upstream", fmt.Sprintf("%s is a listen address of app %s: rouse would proxy to itself", up, owners[0].Name))
		}
	}
}

func vhosted(a *built) bool { return a.Mode == activator.ModeHTTP && len(a.Hosts) > 0 }

func allVhosted(as []*built) bool {
	for _, a := range as {
		if !vhosted(a) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// oneLine escapes line breaks so that a problem always takes one line.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(s)
}

// Describe writes what `rouse check` prints: a short block per app and a
// summary line.
func (c *Config) Describe(w io.Writer) {
	nAddrs := 0
	for _, a := range c.Apps {
		nAddrs += len(a.Addrs)
		fmt.Fprintf(w, "%s (%s)  %s\n", a.Name, a.Mode, a.Source)
		fmt.Fprintf(w, "  listen    %s\n", strings.Join(a.Listen, ", "))
		if len(a.Hosts) > 0 {
			fmt.Fprintf(w, "  hosts     %s\n", strings.Join(a.Hosts, ", "))
		}
		switch a.UpstreamNetwork {
		case "unix":
			fmt.Fprintf(w, "  upstream  unix:%s\n", a.UpstreamAddress)
		case "tcp":
			fmt.Fprintf(w, "  upstream  %s\n", a.UpstreamAddress)
		}
		if a.Process.Shell != "" {
			fmt.Fprintf(w, "  command   /bin/sh -c %s\n", shellQuote(a.Process.Shell))
		} else {
			q := make([]string, len(a.Process.Argv))
			for i, s := range a.Process.Argv {
				q[i] = shellQuote(s)
			}
			fmt.Fprintf(w, "  command   %s\n", strings.Join(q, " "))
		}
		ready := a.Ready.Kind
		switch a.Ready.Kind {
		case "http":
			ready += " " + a.Ready.Path
		case "exec":
			ready += " " + a.Ready.Command
		}
		idle := shortDuration(a.IdleTimeout)
		if a.IdleTimeout == 0 {
			idle = "never"
		}
		if a.FreezeAfter > 0 {
			idle += ", freeze_after " + shortDuration(a.FreezeAfter)
		}
		fmt.Fprintf(w, "  ready     %s, idle_timeout %s\n", ready, idle)
	}
	apps := "apps"
	if len(c.Apps) == 1 {
		apps = "app"
	}
	fmt.Fprintf(w, "%s: %d %s, %d listen addresses, control %s\n", c.File, len(c.Apps), apps, nAddrs, c.Control)
}

// shellQuote quotes s for a POSIX shell when it needs it, so that a
// printed command can be pasted.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,:/=@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
