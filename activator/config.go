package activator

import (
	"net/netip"
	"time"

	"github.com/rouse-dev/rouse/procman"
)

// Mode is how an app's connections reach it.
type Mode string

// The modes of DESIGN.md.
const (
	ModeHTTP    Mode = "http"
	ModeTCP     Mode = "tcp"
	ModeHandoff Mode = "handoff"
	ModeInetd   Mode = "inetd"
)

// Readiness says how rouse learns that a started app can take connections.
type Readiness struct {
	Kind    string // "tcp" (the upstream accepts), "http" (GET Path answers < 500), "notify" (READY=1) or "exec" (Command exits 0)
	Path    string // for "http"
	Command string // for "exec": run with /bin/sh -c as the app's user, with its env
}

// Config is everything the activator needs to run one app. cmd/rouse builds
// it from the TOML files; zero durations and counts mean "no limit" only
// where the field says so, so fill in the defaults before calling New.
type Config struct {
	Name    string
	Mode    Mode
	Listen  []string     // the listen addresses as written, for status
	Process procman.Spec // how to spawn the app (Output and Guard are set by the activator)

	UpstreamNetwork string // "tcp" or "unix"
	UpstreamAddress string // host:port or socket path
	PickedPort      int    // the port rouse picked for the app (port = 0), which may move (Options.MovePort); 0 = fixed or none
	Ready           Readiness

	StartTimeout time.Duration // spawn -> ready, else a failure and the process is killed
	IdleTimeout  time.Duration // 0 = never stop for idleness; with FreezeAfter, counted from the freeze
	FreezeAfter  time.Duration // idle this long -> frozen (thawed by the next connection); 0 = never frozen
	QueueTimeout time.Duration // how long a held connection waits for ready or a free slot
	MaxQueued    int           // held connections; beyond, new ones are refused
	MaxConns     int           // concurrent connections; 0 = no limit

	RetryTries   int           // attempts to reach the app per connection, the first included
	RetryTimeout time.Duration // total time across those attempts
	MaxFails     int           // failures while ready within FailTimeout that restart the app; 0 = never
	FailTimeout  time.Duration
	BackoffMax   time.Duration // cap of the crash-loop back-off (1s, 2s, 4s, ...)
	KeepWarm     bool          // started with rouse, never stopped for idleness or to make room
	AccessLog    bool          // each request (http) or connection (tcp, inetd) goes to Options.AccessLog

	// http mode
	Hosts              []string       // Host names routed to this app on a shared listen address ("*.example.com" too)
	RequestBuffer      int64          // bodies up to this many bytes are buffered for replay
	RetryNonIdempotent bool           // replay non-idempotent requests after they reached the app
	ResponseTimeout    time.Duration  // request sent -> response headers, else 504; 0 = no limit
	TrustedProxies     []netip.Prefix // clients whose X-Forwarded-* headers are kept and extended
	// StartPage: a browser's GET still held after StartPageAfter gets a
	// waiting page that reloads itself (startpage.go); other requests are
	// held as ever.
	StartPage      bool
	StartPageAfter time.Duration
	// ServerTiming: a response that waited for the app carries
	// Server-Timing: rouse-start;dur=MS (accesslog.go).
	ServerTiming bool
	// A client's side, on every path, as nginx names them; 0 is the
	// default (DefaultHeaderTimeout, ...).
	HeaderTimeout time.Duration // a request head must arrive within this (the longest of a front's apps)
	BodyTimeout   time.Duration // between two reads of a request body, else 408 and the slot is freed
	SendTimeout   time.Duration // between two writes to a client that takes nothing, else it is cut
}

// The client timeouts an http app gets when its Config leaves them 0.
const (
	DefaultHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout   = 60 * time.Second
	DefaultSendTimeout   = 60 * time.Second
)

func (c *Config) headerTimeout() time.Duration {
	return orDefault(c.HeaderTimeout, DefaultHeaderTimeout)
}
func (c *Config) bodyTimeout() time.Duration { return orDefault(c.BodyTimeout, DefaultBodyTimeout) }
func (c *Config) sendTimeout() time.Duration { return orDefault(c.SendTimeout, DefaultSendTimeout) }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
