package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/procman"
)

// The defaults of DESIGN.md, for keys neither [defaults] nor the app sets.
const (
	defaultControl        = "/run/rouse/control.sock"
	defaultDrainTimeout   = 10 * time.Second
	defaultMode           = activator.ModeHTTP
	defaultStartTimeout   = 30 * time.Second
	defaultIdleTimeout    = 15 * time.Minute
	defaultStopTimeout    = 10 * time.Second
	defaultStopSignal     = syscall.SIGTERM
	defaultQueueTimeout   = 30 * time.Second
	defaultMaxQueued      = 1024
	defaultRequestBuffer  = 1 << 20
	defaultRetryTries     = 3
	defaultRetryTimeout   = 10 * time.Second
	defaultMaxFails       = 3
	defaultFailTimeout    = 30 * time.Second
	defaultBackoffMax     = 5 * time.Minute
	defaultResponseTime   = 60 * time.Second
	defaultStartPageAfter = time.Second
	defaultAccessLog      = accessOff
	defaultAccessFormat   = "combined"
	defaultUpstream       = "127.0.0.1:{port}"
)

// parseFunc checks the raw value of one key and turns it into its Go type.
// dir is the absolute directory of the file the key is written in, for
// relative paths.
type parseFunc func(v any, dir string) (any, error)

// rouseKeys are the keys of [rouse]; it is never modified.
var rouseKeys = map[string]parseFunc{
	"control":       parseControl,
	"include":       parseInclude,
	"max_running":   intKey(0, math.MaxInt32),
	"max_starting":  intKey(0, math.MaxInt32),
	"memory_budget": sizeKey,
	"metrics":       parseMetrics,
	"drain_timeout": durationKey(0),
	"log_level":     parseLogLevel,
	"procs":         intKey(0, 4096),
	"port_range":    parsePortRangeKey,
	"containment":   parseContainment,

	"access_log":        parseAccessLog(false),
	"access_log_format": parseAccessLogFormat(false),
}

// appKeys are the keys of an [apps.NAME] table and of [defaults]; it is
// never modified. The value types are those buildApp reads back.
var appKeys = map[string]parseFunc{
	"listen":   func(v any, _ string) (any, error) { return asStrings(v) },
	"command":  parseCommand,
	"dir":      parseDir,
	"env":      parseEnv,
	"user":     func(v any, _ string) (any, error) { return asString(v) },
	"upstream": parseUpstream,
	"port":     intKey(0, 65535),
	"hosts":    parseHosts,

	"mode":                 parseMode,
	"ready":                parseReady,
	"start_timeout":        durationKey(time.Nanosecond),
	"idle_timeout":         durationKey(0),
	"freeze_after":         durationKey(0),
	"stop_timeout":         durationKey(time.Nanosecond),
	"stop_signal":          parseSignal,
	"queue_timeout":        durationKey(time.Nanosecond),
	"max_queued":           intKey(0, math.MaxInt32),
	"max_conns":            intKey(0, math.MaxInt32),
	"request_buffer":       sizeKey,
	"retry_tries":          intKey(1, math.MaxInt32),
	"retry_timeout":        durationKey(time.Nanosecond),
	"retry_non_idempotent": func(v any, _ string) (any, error) { return asBool(v) },
	"max_fails":            intKey(0, math.MaxInt32),
	"fail_timeout":         durationKey(time.Nanosecond),
	"backoff_max":          durationKey(time.Second),
	"response_timeout":     durationKey(0),
	"header_timeout":       durationKey(time.Nanosecond),
	"body_timeout":         durationKey(time.Nanosecond),
	"send_timeout":         durationKey(time.Nanosecond),
	"trusted_proxies":      parseTrustedProxies,
	"keep_warm":            func(v any, _ string) (any, error) { return asBool(v) },
	"start_page":           func(v any, _ string) (any, error) { return asBool(v) },
	"start_page_after":     durationKey(0),
	"inherit_env":          func(v any, _ string) (any, error) { return asBool(v) },
	"memory_max":           parseMemoryMax,
	"cpu_max":              parseCPUMax,
	"tasks_max":            intKey(1, math.MaxInt32),
	"access_log":           parseAccessLog(true),
	"access_log_format":    parseAccessLogFormat(true),
	"server_timing":        func(v any, _ string) (any, error) { return asBool(v) },
}

// stopSignals are the signals stop_signal may name.
var stopSignals = []string{"SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH"}

// command is a parsed command key: argv, or a shell string.
type command struct {
	argv  []string
	shell string
}

// readiness is a parsed ready key.
type readiness struct {
	kind, path string
	cmd        string // for "exec", placeholders not substituted yet
}

// subKeyError is a problem with one key inside a table value (env.FOO).
type subKeyError struct {
	key string
	err error
}

func (e subKeyError) Error() string { return e.key + ": " + e.err.Error() }

// errList is several problems with one key's value, reported one a line.
type errList []error

func (e errList) Error() string { return errors.Join(e...).Error() }

// subKeyErrors are the problems of the keys of a table value.
type subKeyErrors []subKeyError

func (e subKeyErrors) Error() string {
	msgs := make([]string, len(e))
	for i, se := range e {
		msgs[i] = se.Error()
	}
	return strings.Join(msgs, "; ")
}

func durationKey(minimum time.Duration) parseFunc {
	return func(v any, _ string) (any, error) {
		d, err := asDuration(v)
		if err != nil {
			return nil, err
		}
		switch {
		case d >= minimum:
			return d, nil
		case minimum == time.Nanosecond:
			return nil, errors.New("must be more than 0")
		default:
			return nil, fmt.Errorf("must be at least %s, got %s", shortDuration(minimum), shortDuration(d))
		}
	}
}

func intKey(lo, hi int64) parseFunc {
	return func(v any, _ string) (any, error) {
		n, err := asInt(v)
		if err != nil {
			return nil, err
		}
		switch {
		case n < lo && hi == math.MaxInt32: // the upper bound is only there to fit an int
			return nil, errRange(n, lo, math.MaxInt64)
		case n < lo || n > hi:
			return nil, errRange(n, lo, hi)
		}
		return int(n), nil
	}
}

func sizeKey(v any, _ string) (any, error) { return asSize(v) }

func parseControl(v any, dir string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	if s == "" {
		return nil, errEmpty
	}
	if !filepath.IsAbs(s) {
		s = filepath.Join(dir, s)
	}
	return s, nil
}

func parseInclude(v any, _ string) (any, error) {
	pats, err := asStrings(v)
	if err != nil {
		return nil, err
	}
	for _, p := range pats {
		if p == "" {
			return nil, errors.New("a pattern must not be empty")
		}
		if _, err := filepath.Match(p, ""); err != nil {
			return nil, fmt.Errorf("bad pattern %q: %v", p, err)
		}
	}
	return pats, nil
}

func parseMetrics(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil || s == "" {
		return s, err
	}
	if _, port, err := net.SplitHostPort(s); err != nil || !isDigits(port) {
		return nil, fmt.Errorf(`invalid address %q: want HOST:PORT, e.g. "127.0.0.1:9180"`, s)
	}
	return s, nil
}

// parseContainment reads [rouse].containment: "auto" (a cgroup v2 subtree
// when rouse can manage one, else the subreaper fallback) or "subreaper".
func parseContainment(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	switch s {
	case "auto":
		return procman.ContainAuto, nil
	case "subreaper":
		return procman.ContainSubreaper, nil
	}
	return nil, fmt.Errorf("unknown containment %q: want auto or subreaper", s)
}

// parseMemoryMax reads memory_max, a size of at least one page.
func parseMemoryMax(v any, _ string) (any, error) {
	n, err := asSize(v)
	if err != nil {
		return nil, err
	}
	if n < 4096 {
		return nil, fmt.Errorf("must be at least 4KiB, got %d bytes", n)
	}
	return n, nil
}

// parseCPUMax reads cpu_max, a share of the CPUs as a percentage of one:
// "50%" is half a CPU, "200%" two.
func parseCPUMax(v any, _ string) (any, error) {
	s, ok := v.(string)
	pct, isPct := strings.CutSuffix(strings.TrimSpace(s), "%")
	n, err := strconv.ParseFloat(pct, 64)
	if !ok || !isPct || err != nil || math.IsNaN(n) || math.IsInf(n, 0) {
		return nil, wrongType(`a percentage of one CPU such as "50%" or "200%"`, v)
	}
	if n < 1 || n > 100000 {
		return nil, fmt.Errorf("must be between 1%% and 100000%%, got %s", s)
	}
	return n / 100, nil
}

func parseLogLevel(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return nil, fmt.Errorf("unknown log level %q: want debug, info, warn or error", s)
}

func parseCommand(v any, _ string) (any, error) {
	if s, ok := v.(string); ok {
		if strings.TrimSpace(s) == "" {
			return nil, errEmpty
		}
		return command{shell: s}, nil
	}
	if _, ok := v.([]any); !ok {
		return nil, wrongType("an array of strings (argv) or a string (run by /bin/sh -c)", v)
	}
	argv, err := asStrings(v)
	if err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, errEmpty
	}
	if argv[0] == "" {
		return nil, errors.New("the program, the first element, must not be empty")
	}
	return command{argv: argv}, nil
}

func parseDir(v any, dir string) (any, error) {
	s, err := asString(v)
	if err != nil || s == "" {
		return s, err
	}
	if !filepath.IsAbs(s) {
		return filepath.Join(dir, s), nil
	}
	return filepath.Clean(s), nil
}

func parseEnv(v any, _ string) (any, error) {
	m, err := asTable(v)
	if err != nil {
		return nil, wrongType("a table of strings, e.g. { RAILS_ENV = \"production\" }", v)
	}
	env := make(map[string]string, len(m))
	var errs subKeyErrors
	for _, k := range sortedKeys(m) {
		s, err := asString(m[k])
		switch {
		case err != nil:
			errs = append(errs, subKeyError{k, err})
		case strings.ContainsAny(k, "=\x00"):
			errs = append(errs, subKeyError{k, errors.New("invalid variable name: contains '=' or NUL")})
		case strings.ContainsRune(s, 0):
			errs = append(errs, subKeyError{k, errors.New("the value contains a NUL byte")})
		default:
			env[k] = s
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return env, nil
}

func parseUpstream(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	if s == "" {
		return nil, errEmpty
	}
	if p, ok := strings.CutPrefix(s, "unix:"); ok && !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("unix socket path %q is not absolute", p)
	}
	return s, nil
}

// parseTrustedProxies reads addresses or CIDR prefixes ("127.0.0.1",
// "10.0.0.0/8", "::1") of clients whose X-Forwarded-* headers are kept.
func parseTrustedProxies(v any, _ string) (any, error) {
	items, err := asStrings(v)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	var errs errList
	for _, it := range items {
		if p, err := netip.ParsePrefix(it); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(it); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		errs = append(errs, fmt.Errorf("invalid address or prefix %q: want e.g. \"127.0.0.1\" or \"10.0.0.0/8\"", it))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}

func parseHosts(v any, _ string) (any, error) {
	hosts, err := asStrings(v)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(hosts))
	var errs errList
	for i, h := range hosts {
		h = strings.ToLower(h)
		switch {
		case !validHost(h):
			errs = append(errs, fmt.Errorf(`invalid host %q: want a name such as "blog.example.com", "*.example.com", or "*" for every host`, hosts[i]))
		case seen[h]:
			errs = append(errs, fmt.Errorf("host %q is listed twice", hosts[i]))
		}
		seen[h] = true
		hosts[i] = h
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return hosts, nil
}

// validHost accepts a lower-case host name (IPv4 addresses included),
// optionally with a leading "*." wildcard label, or "*" alone: the catch-all
// that gets every request no other app of the address claims.
func validHost(h string) bool {
	if h == "*" {
		return true
	}
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func parseMode(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	switch m := activator.Mode(s); m {
	case activator.ModeHTTP, activator.ModeTCP, activator.ModeHandoff, activator.ModeInetd:
		return m, nil
	}
	return nil, fmt.Errorf("unknown mode %q: want http, tcp, handoff or inetd", s)
}

func parseReady(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	if cmd, ok := strings.CutPrefix(strings.TrimSpace(s), "exec"); ok && (cmd == "" || cmd[0] == ' ' || cmd[0] == '\t') {
		if cmd = strings.TrimSpace(cmd); cmd == "" {
			return nil, fmt.Errorf(`invalid ready %q: needs a command, e.g. "exec pg_isready -h 127.0.0.1 -p {port}"`, s)
		}
		return readiness{kind: "exec", cmd: cmd}, nil
	}
	f := strings.Fields(s)
	switch {
	case len(f) == 1 && (f[0] == "tcp" || f[0] == "notify"):
		return readiness{kind: f[0]}, nil
	case len(f) == 2 && f[0] == "http" && strings.HasPrefix(f[1], "/"):
		return readiness{kind: "http", path: f[1]}, nil
	case len(f) == 2 && f[0] == "http":
		return nil, fmt.Errorf("invalid ready %q: the path must start with /, e.g. \"http /health\"", s)
	case len(f) == 1 && f[0] == "http":
		return nil, fmt.Errorf("invalid ready %q: needs a path, e.g. \"http /health\"", s)
	}
	return nil, fmt.Errorf(`invalid ready %q: want "tcp", "http /PATH", "notify" or "exec COMMAND"`, s)
}

func parseSignal(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	for _, ok := range stopSignals {
		if name == ok {
			return unix.SignalNum(name), nil
		}
	}
	return nil, fmt.Errorf("unknown signal %q: want one of %s", s, strings.Join(stopSignals, ", "))
}

// suggest returns the known name closest to key when it is close enough to
// be a typo, else "".
func suggest(key string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		d := editDistance(strings.ToLower(key), k)
		if d < bestDist && d <= (len(k)+1)/2 {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// shortDuration writes d without the zero units time.Duration.String adds:
// 15m rather than 15m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// substitute replaces {port} and {name} in s.
func substitute(s, name string, port int) string {
	if !strings.Contains(s, "{") {
		return s
	}
	return strings.NewReplacer("{port}", strconv.Itoa(port), "{name}", name).Replace(s)
}

func parsePortRangeKey(v any, _ string) (any, error) {
	s, err := asString(v)
	if err != nil {
		return nil, err
	}
	return parsePortRange(s)
}

// parseAccessLog reads access_log: "off", "stderr", "journal" or a file
// (relative to the config file's directory); in an app (orRouseWide) also
// "", the [rouse] one.
func parseAccessLog(orRouseWide bool) parseFunc {
	return func(v any, dir string) (any, error) {
		s, err := asString(v)
		if err != nil {
			return nil, err
		}
		switch s {
		case accessOff, accessStderr, accessJournal:
			return s, nil
		case "":
			if orRouseWide {
				return s, nil
			}
			return nil, errors.New(`want "off", "stderr", "journal" or a file path`)
		}
		if strings.HasSuffix(s, "/") || strings.ContainsRune(s, 0) {
			return nil, fmt.Errorf(`invalid file %q: want "off", "stderr", "journal" or a file path`, s)
		}
		if !filepath.IsAbs(s) {
			s = filepath.Join(dir, s)
		}
		return filepath.Clean(s), nil
	}
}

// parseAccessLogFormat reads access_log_format: "combined" or "json"; in
// an app (orRouseWide) also "", the [rouse] one.
func parseAccessLogFormat(orRouseWide bool) parseFunc {
	return func(v any, _ string) (any, error) {
		s, err := asString(v)
		if err != nil {
			return nil, err
		}
		if s == "combined" || s == "json" || (s == "" && orRouseWide) {
			return s, nil
		}
		return nil, fmt.Errorf("unknown format %q: want combined or json", s)
	}
}
