package activator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPFront serves HTTP/1.1 on one listener and routes every request to
// one of the http apps sharing that address, by Host. Close it before the
// apps it routes to.
type HTTPFront struct {
	ln     net.Listener
	srv    *http.Server
	routes atomic.Pointer[routes] // replaced whole on reload
	log    *slog.Logger

	mu       sync.Mutex
	closed   bool           // Close began: no new handler may join handlers
	handlers sync.WaitGroup // requests being served, also hijacked ones
	started  atomic.Bool
	served   chan struct{} // closed when Serve returned
}

// routes is a front's Host table.
type routes struct {
	apps     []*App
	exact    map[string]*App
	wildcard []hostRoute // "*.example.com" as suffix ".example.com", longest first
	fallback *App        // the app without hosts, if any
}

type hostRoute struct {
	suffix string
	app    *App
}

func newRoutes(apps []*App, addr net.Addr) (*routes, error) {
	r := &routes{apps: apps, exact: make(map[string]*App)}
	for _, a := range apps {
		if a.config().Mode != ModeHTTP {
			return nil, fmt.Errorf("app %s: mode %s cannot be served by an HTTP front", a.config().Name, a.config().Mode)
		}
		if len(a.config().Hosts) == 0 {
			if r.fallback != nil {
				return nil, fmt.Errorf("apps %s and %s share %s without hosts", r.fallback.cfg.Name, a.config().Name, addr)
			}
			r.fallback = a
		}
		for _, h := range a.config().Hosts {
			h = strings.ToLower(h)
			if suffix, ok := strings.CutPrefix(h, "*"); ok {
				r.wildcard = append(r.wildcard, hostRoute{suffix, a})
				continue
			}
			r.exact[h] = a
		}
	}
	sortRoutes(r.wildcard)
	return r, nil
}

// NewHTTPFront returns a front for apps on ln; at most one of them may have
// no hosts (it gets every request no other app claims).
func NewHTTPFront(ln net.Listener, apps []*App, log *slog.Logger) (*HTTPFront, error) {
	if log == nil {
		log = slog.Default()
	}
	f := &HTTPFront{ln: ln, log: log, served: make(chan struct{})}
	if err := f.SetApps(apps); err != nil {
		return nil, err
	}
	f.srv = &http.Server{
		Handler:           f,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10, // beyond: 431
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return f, nil
}

func sortRoutes(r []hostRoute) {
	for i := 1; i < len(r); i++ {
		for j := i; j > 0 && len(r[j].suffix) > len(r[j-1].suffix); j-- {
			r[j], r[j-1] = r[j-1], r[j]
		}
	}
}

// Serve starts serving in the background and returns at once.
func (f *HTTPFront) Serve() {
	f.started.Store(true)
	go func() {
		defer close(f.served)
		if err := f.srv.Serve(f.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			f.log.Error("http front stopped", "addr", f.ln.Addr().String(), "err", err)
		}
	}()
}

// SetApps replaces the apps the front routes to, at once: a request is
// routed by the old table or the new one, never by neither. Safe to call
// while serving.
func (f *HTTPFront) SetApps(apps []*App) error {
	r, err := newRoutes(apps, f.ln.Addr())
	if err != nil {
		return err
	}
	f.routes.Store(r)
	return nil
}

// Apps returns the apps the front routes to.
func (f *HTTPFront) Apps() []*App { return f.routes.Load().apps }

// Addr is the address the front listens on.
func (f *HTTPFront) Addr() net.Addr { return f.ln.Addr() }

// route picks the app for a Host header value.
func (f *HTTPFront) route(host string) *App {
	r := f.routes.Load()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if a, ok := r.exact[host]; ok {
		return a
	}
	for _, w := range r.wildcard {
		if strings.HasSuffix(host, w.suffix) && len(host) > len(w.suffix) {
			return w.app
		}
	}
	return r.fallback
}

// ServeHTTP routes one request.
func (f *HTTPFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		panic(http.ErrAbortHandler) // read as the front closed: nobody will wait for it
	}
	f.handlers.Add(1)
	f.mu.Unlock()
	defer f.handlers.Done()
	a := f.route(r.Host)
	if a == nil {
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, "404 Not Found: rouse: no app for host %q on %s\n", r.Host, f.ln.Addr())
		return
	}
	a.ServeHTTP(w, r)
}

// Shutdown stops accepting, closes idle connections and waits for the
// requests being served until ctx ends; the apps' own Close cuts the rest.
func (f *HTTPFront) Shutdown(ctx context.Context) {
	f.srv.Shutdown(ctx)
}

// Close closes every connection and returns once every request handler,
// including those of upgraded connections, has returned.
func (f *HTTPFront) Close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.srv.Close()
	if !f.started.Load() {
		f.ln.Close()
		return
	}
	<-f.served
	f.handlers.Wait()
}
