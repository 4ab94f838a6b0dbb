package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// notifier tells systemd about rouse itself (sd_notify(3)): READY=1 once
// every socket is bound, STATUS= with a one-line summary, RELOADING=1,
// STOPPING=1, and WATCHDOG=1 pings.
//
// It takes NOTIFY_SOCKET and WATCHDOG_* out of rouse's environment when it
// is made, so the apps rouse starts do not inherit them and cannot speak
// for rouse. (go-systemd's SdNotify reads the environment on every call,
// so it cannot be used after that; the protocol is one datagram.)
type notifier struct {
	conn     *net.UnixConn // nil: not run by systemd with Type=notify
	watchdog time.Duration // 0: no watchdog
	log      *slog.Logger

	mu         sync.Mutex
	lastStatus string
}

func newNotifier(log *slog.Logger) *notifier {
	n := &notifier{log: log}
	addr := os.Getenv("NOTIFY_SOCKET")
	wdUsec := os.Getenv("WATCHDOG_USEC")
	wdPid := os.Getenv("WATCHDOG_PID")
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		os.Unsetenv(k)
	}
	if addr != "" {
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
		if err != nil {
			log.Warn("cannot talk to systemd's notify socket", "addr", addr, "err", err)
		} else {
			n.conn = c
		}
	}
	if usec, err := strconv.ParseInt(wdUsec, 10, 64); err == nil && usec > 0 &&
		(wdPid == "" || wdPid == strconv.Itoa(os.Getpid())) {
		n.watchdog = time.Duration(usec) * time.Microsecond
	}
	return n
}

// send sends one notification; without systemd it does nothing.
func (n *notifier) send(state string) {
	if n.conn == nil {
		return
	}
	if _, err := n.conn.Write([]byte(state)); err != nil {
		n.log.Warn("sd_notify", "state", state, "err", err)
	}
}

// status sends STATUS= when the summary changed.
func (n *notifier) status(s string) {
	n.mu.Lock()
	changed := s != n.lastStatus
	n.lastStatus = s
	n.mu.Unlock()
	if changed {
		n.send("STATUS=" + s)
	}
}

// run keeps STATUS= current and pings the watchdog at half its interval,
// each time after checking the supervisor answers, until ctx ends. It costs
// nothing when systemd is not listening.
func (n *notifier) run(ctx context.Context, sup *activator.Supervisor) {
	if n.conn == nil {
		return
	}
	every := 5 * time.Second
	if n.watchdog > 0 {
		every = min(every, n.watchdog/2)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n.status(sup.Summary().String())
		if n.watchdog > 0 {
			n.send("WATCHDOG=1")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *notifier) close() {
	if n.conn != nil {
		n.conn.Close()
	}
}

func (n *notifier) String() string {
	if n.conn == nil {
		return "off"
	}
	return fmt.Sprintf("on, watchdog %s", n.watchdog)
}
