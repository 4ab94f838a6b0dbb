package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Hidden verbs: the harness re-executes itself as the naive proxy and as
// the wrapper that starts proxyd with SIGPIPE ignored.
const (
	naiveProxyVerb  = "__naive-proxy"
	goHTTPProxyVerb = "__go-reverse-proxy"
	noSigpipeVerb   = "__nosigpipe"
)

// naiveProxyMain is the naive Go proxy contender: accept, dial, io.Copy
// both ways (which splices between two TCP connections), nothing else. It
// runs until it is killed.
func naiveProxyMain(args []string, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "usage: bench __naive-proxy LISTEN UPSTREAM")
		return 2
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	upstream := args[1]
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				io.Copy(u, c)
				u.(*net.TCPConn).CloseWrite()
			}()
			io.Copy(c, u)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// goHTTPProxyMain is the stock Go reverse proxy contender: net/http's
// server and httputil.ReverseProxy with a keep-alive Transport and pooled
// copy buffers, setting X-Forwarded-* as rouse does. It shows what a Go
// HTTP proxy built on net/http costs, rouse's features aside.
func goHTTPProxyMain(args []string, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "usage: bench __go-reverse-proxy LISTEN UPSTREAM")
		return 2
	}
	target := &url.URL{Scheme: "http", Host: args[1]}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
		},
		Transport: &http.Transport{
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		BufferPool: &bufferPool{},
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintln(stderr, srv.Serve(ln))
	return 1
}

// bufferPool recycles ReverseProxy's 32 KiB copy buffers.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// noSigpipeMain executes args with SIGPIPE ignored, as systemd starts
// services (IgnoreSIGPIPE=yes): an ignored signal stays ignored across
// execve, while a handled one is reset.
func noSigpipeMain(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: bench __nosigpipe PROGRAM [ARGS...]")
		return 2
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 127
	}
	signal.Ignore(syscall.SIGPIPE)
	err = syscall.Exec(path, args, os.Environ())
	fmt.Fprintln(stderr, "exec:", err)
	return 127
}

// freePorts returns n distinct loopback ports that were free a moment ago:
// all are bound at once, then released. They are taken below the kernel's
// ephemeral range, counting down from it, as an operator's fixed ports
// would be: rouse picks its apps' upstream ports (port = 0) from the
// ephemeral range, and a listen port there could be picked again.
func freePorts(n int) ([]int, error) {
	low := 32768
	if f := strings.Fields(readFile("/proc/sys/net/ipv4/ip_local_port_range")); len(f) == 2 {
		if v, err := strconv.Atoi(f[0]); err == nil {
			low = v
		}
	}
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for port := low - 1; port >= 1024 && len(ports) < n; port-- {
		ln, err := net.Listen("tcp", addr(port))
		if err != nil {
			continue // in use
		}
		lns = append(lns, ln)
		ports = append(ports, port)
	}
	if len(ports) < n {
		return nil, fmt.Errorf("found only %d free loopback ports below %d, need %d", len(ports), low, n)
	}
	return ports, nil
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// poll calls ok every interval until it returns true, ctx ends or timeout
// passes.
func poll(ctx context.Context, what string, timeout, interval time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
	return nil
}

// waitListening waits until something accepts on address, or p exits.
func waitListening(ctx context.Context, p *proc, address string) error {
	err := poll(ctx, address+" to listen", 15*time.Second, 5*time.Millisecond, func() bool {
		if p != nil && p.exited() {
			return true
		}
		c, err := net.DialTimeout("tcp", address, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if err == nil && p != nil && p.exited() {
		return fmt.Errorf("%s exited instead of listening: %s", p.name, p.describe())
	}
	if err != nil && p != nil {
		return fmt.Errorf("%w: %s", err, p.describe())
	}
	return err
}

// fetch GETs url and returns the status and body length.
func fetch(ctx context.Context, client *http.Client, url string) (int, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, n, err
}

// controlClient talks HTTP to a rouse daemon's control socket (GET
// /v1/status is what `rouse status --json` asks).
func controlClient(socket string) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			DisableKeepAlives: true,
		},
	}
}

// errKind names a client-side failure for the late-backend table.
func errKind(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed without answer"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	return "other: " + err.Error()
}
