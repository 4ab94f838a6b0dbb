package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/listeners"
)

// portRange is an inclusive range of TCP ports, as [rouse].port_range.
type portRange struct{ lo, hi int }

// defaultPortRange is where port = 0 picks app ports (DESIGN.md): below
// Linux's default ephemeral range, 32768-60999.
var defaultPortRange = portRange{20000, 29999}

func (r portRange) String() string { return fmt.Sprintf("%d-%d", r.lo, r.hi) }

func (r portRange) overlaps(o portRange) bool { return r.lo <= o.hi && o.lo <= r.hi }

func (r portRange) contains(p int) bool { return r.lo <= p && p <= r.hi }

// parsePortRange reads "LO-HI": two ports from 1 to 65535, LO <= HI.
func parsePortRange(s string) (portRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	bad := fmt.Errorf("invalid port range %q: want LO-HI, e.g. %q", s, defaultPortRange.String())
	if !ok {
		return portRange{}, bad
	}
	var r portRange
	for _, f := range []struct {
		s string
		p *int
	}{{lo, &r.lo}, {hi, &r.hi}} {
		n, err := strconv.Atoi(strings.TrimSpace(f.s))
		if err != nil {
			return portRange{}, bad
		}
		if n < 1 || n > 65535 {
			return portRange{}, fmt.Errorf("invalid port range %q: port %d is not from 1 to 65535", s, n)
		}
		*f.p = n
	}
	if r.lo > r.hi {
		return portRange{}, fmt.Errorf("invalid port range %q: %d is above %d", s, r.lo, r.hi)
	}
	return r, nil
}

// ephemeralFile is where Linux keeps the range it takes the local ports of
// outgoing connections from.
const ephemeralFile = "/proc/sys/net/ipv4/ip_local_port_range"

// kernelEphemeral reads the kernel's ephemeral port range; the default
// LoadOptions.Ephemeral.
func kernelEphemeral() (portRange, error) {
	b, err := os.ReadFile(ephemeralFile)
	if err != nil {
		return portRange{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return portRange{}, fmt.Errorf("%s: unexpected content %q", ephemeralFile, b)
	}
	r, err := parsePortRange(f[0] + "-" + f[1])
	if err != nil {
		return portRange{}, fmt.Errorf("%s: %w", ephemeralFile, err)
	}
	return r, nil
}

// portPicker picks the ports of apps with port = 0: in port_range, never in
// the kernel's ephemeral range (an outgoing connection could take the port
// while the app is stopped), never one that something listens on or holds,
// and never one of taken.
type portPicker struct {
	r, ephemeral portRange // ephemeral is empty (0-0) when unknown
	free         func(port int) bool
}

var errNoPort = errors.New("no free port")

// pick returns a port that taken (which may be nil) does not hold; the
// search starts at a random port of the range, so that a port an app
// gave up is not the first one offered again.
func (pp portPicker) pick(taken func(int) bool) (int, error) {
	n := pp.r.hi - pp.r.lo + 1
	start := rand.IntN(n)
	for i := range n {
		p := pp.r.lo + (start+i)%n
		if pp.ephemeral.contains(p) || (taken != nil && taken(p)) || !pp.free(p) {
			continue
		}
		return p, nil
	}
	return 0, fmt.Errorf("%w in port_range %s outside the ephemeral range %s", errNoPort, pp.r, pp.ephemeral)
}

// portTemplate is what of an app's config holds {port}, as written: a new
// port gives a new config without reading the files again.
type portTemplate struct {
	name, upstream, dir, user string
	cmd                       command
	env                       map[string]string
	ready                     string // ready = "exec CMD": CMD
}

// apply fills in the parts of cfg that depend on the port. With port 0 an
// upstream that needs it is left unset.
func (t portTemplate) apply(cfg *activator.Config, port int) error {
	var err error
	if t.upstream != "" && !(port == 0 && strings.Contains(t.upstream, "{port}")) {
		up := substitute(t.upstream, t.name, port)
		if p, ok := strings.CutPrefix(up, "unix:"); ok {
			cfg.UpstreamNetwork, cfg.UpstreamAddress = "unix", p
		} else if e := checkHostPort(up); e != nil {
			err = fmt.Errorf("invalid upstream %q: %v", up, e)
		} else {
			cfg.UpstreamNetwork, cfg.UpstreamAddress = "tcp", up
		}
	}
	spec := &cfg.Process
	spec.Dir = substitute(t.dir, t.name, port)
	spec.User = substitute(t.user, t.name, port)
	spec.Shell, spec.Argv, spec.Env = "", nil, nil
	if t.cmd.shell != "" {
		spec.Shell = substitute(t.cmd.shell, t.name, port)
	}
	for _, s := range t.cmd.argv {
		spec.Argv = append(spec.Argv, substitute(s, t.name, port))
	}
	vars := map[string]string{}
	if port != 0 {
		vars["PORT"] = strconv.Itoa(port)
	}
	for k, v := range t.env {
		vars[k] = substitute(v, t.name, port)
	}
	for _, k := range sortedKeys(vars) {
		spec.Env = append(spec.Env, k+"="+vars[k])
	}
	cfg.Ready.Command = substitute(t.ready, t.name, port)
	return err
}

// withPort returns the app moved to port, which rouse picked.
func (a App) withPort(port int) App {
	a.tmpl.apply(&a.Config, port) // the template gave a valid config with the old port: it does with this one
	a.Port, a.PickedPort = port, port
	return a
}

// takenPorts returns the ports of c's apps and the TCP ports rouse
// listens on: what a picked port must not be.
func (c *Config) takenPorts() map[int]bool {
	taken := make(map[int]bool)
	for _, a := range c.Apps {
		if a.Port != 0 {
			taken[a.Port] = true
		}
		for _, addr := range a.Addrs {
			if addr.Kind != listeners.TCP {
				continue
			}
			if _, port, err := net.SplitHostPort(addr.Address); err == nil {
				if p, err := strconv.Atoi(port); err == nil {
					taken[p] = true
				}
			}
		}
	}
	return taken
}
