// Package backend is a tiny, configurable app for rouse to start: the demo
// backend of `rouse demo` and the child process of rouse's tests, which
// re-execute themselves (or rouse) and call Main. Its flags let a test ask
// for the behaviours rouse must cope with: slow start, exit before ready,
// never ready, ignoring SIGTERM, a forked grandchild, a crash after a while.
package backend

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Main runs the backend with args (without the program name) and returns
// its exit code. It never returns while serving unless the listener fails or
// the process is told to stop (SIGTERM/SIGINT, unless -ignore-term).
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", `address: "HOST:PORT" or "unix:PATH" (default 127.0.0.1:$PORT)`)
	proto := fs.String("proto", "http", "http | echo")
	name := fs.String("name", "backend", "name used in replies")
	banner := fs.Bool("banner", false, `echo: write "NAME PID\n" first on every connection`)
	delay := fs.Duration("delay", 0, "wait this long before listening")
	exitCode := fs.Int("exit", -1, "exit at once with this code, before listening")
	neverListen := fs.Bool("never-listen", false, "run but never listen")
	ignoreTerm := fs.Bool("ignore-term", false, "ignore SIGTERM")
	grandchild := fs.Bool("grandchild", false, "fork a `sleep 3600` that stays in the process group")
	startsFile := fs.String("starts", "", `append "PID UNIXNANO" to FILE at start`)
	crashAfter := fs.Duration("crash-after", 0, "exit with status 1 this long after listening")
	readyFile := fs.String("ready-file", "", "append UNIXNANO to FILE the moment the socket listens")
	allocMB := fs.Int("alloc", 0, "allocate and touch this many MiB at start, held for the life of the process")
	notify := fs.Bool("notify", false, "send READY=1 to $NOTIFY_SOCKET once listening (sd_notify)")
	hits := fs.String("hits", "", `http: append "METHOD PATH" to FILE for every request, before handling it`)
	plain := fs.Bool("plain", false, "http: answer every path with the hello line: no route that crashes, stalls or allocates (fuzzing)")
	listenFDs := fs.Bool("listen-fds", false, "serve on the sockets passed as LISTEN_FDS (fd 3, ...) instead of -listen; exit 3 unless LISTEN_PID is this process and they are in blocking mode, as systemd passes them. echo -banner names each NAME/FDNAME")
	inetd := fs.Bool("inetd", false, `serve the one connection on stdin and stdout (inetd): write "NAME REMOTE_ADDR REMOTE_PORT PID\n", then echo; exit 3 unless LISTEN_FDS=1 and LISTEN_PID is this process`)
	stopDelay := fs.Duration("stop-delay", 0, "on SIGTERM stop accepting at once, but exit only this long after (a slow shutdown)")
	endsFile := fs.String("ends", "", `append "PID UNIXNANO" to FILE when exiting by itself`)
	keepalive := fs.Duration("keepalive", 0, "http: close keep-alive connections idle this long (0: net/http's default)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	if *endsFile != "" {
		defer func() {
			if err := appendLine(*endsFile, fmt.Sprintf("%d %d", os.Getpid(), time.Now().UnixNano())); err != nil {
				logf("ends file: %v", err)
			}
		}()
	}

	if *startsFile != "" {
		if err := appendLine(*startsFile, fmt.Sprintf("%d %d", os.Getpid(), time.Now().UnixNano())); err != nil {
			logf("starts file: %v", err)
			return 1
		}
	}
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	if *grandchild {
		cmd := exec.Command("sleep", "3600")
		if err := cmd.Start(); err != nil {
			logf("grandchild: %v", err)
			return 1
		}
		fmt.Fprintf(stdout, "grandchild %d\n", cmd.Process.Pid)
	}
	if *allocMB > 0 {
		hold = append(hold, touch(*allocMB<<20))
	}
	if *exitCode >= 0 {
		logf("%s: exiting with status %d as asked", *name, *exitCode)
		return *exitCode
	}
	time.Sleep(*delay) // the slow start being simulated, not a wait for a condition
	if *neverListen {
		logf("%s: running, never listening", *name)
		select {}
	}

	if *inetd {
		return serveInetd(*name, os.Stdin, stdout, logf)
	}
	lns, fdNames, code := listenOn(*listen, *listenFDs, logf)
	if lns == nil {
		return code
	}
	ln := lns[0]
	if *readyFile != "" {
		if err := appendLine(*readyFile, fmt.Sprint(time.Now().UnixNano())); err != nil {
			logf("ready file: %v", err)
			return 1
		}
	}
	logf("%s: pid %d listening on %s", *name, os.Getpid(), ln.Addr())
	if *notify {
		if err := sdNotify("READY=1\nSTATUS=serving on " + ln.Addr().String()); err != nil {
			logf("sd_notify: %v", err)
			return 1
		}
	}

	stopOn := []os.Signal{syscall.SIGINT, syscall.SIGTERM}
	if *ignoreTerm {
		stopOn = stopOn[:1] // Notify would undo signal.Ignore
	}
	ctx, stop := signal.NotifyContext(context.Background(), stopOn...)
	defer stop()
	if *stopDelay > 0 {
		defer func() {
			if ctx.Err() != nil {
				logf("%s: exiting in %s", *name, *stopDelay)
				time.Sleep(*stopDelay) // the slow shutdown being simulated
			}
		}()
	}
	if *crashAfter > 0 {
		time.AfterFunc(*crashAfter, func() {
			logf("%s: crashing as asked", *name)
			os.Exit(1)
		})
	}
	switch *proto {
	case "echo":
		return serveEchoAll(ctx, lns, fdNames, *name, *banner, logf)
	case "http":
		if len(lns) > 1 {
			logf("-proto http serves one socket, got %d", len(lns))
			return 2
		}
		return serveHTTP(ctx, ln, *name, *hits, *plain, *keepalive, logf)
	default:
		logf("unknown -proto %q", *proto)
		return 2
	}
}

// sdNotify sends one sd_notify(3) datagram to $NOTIFY_SOCKET.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return errors.New("no NOTIFY_SOCKET")
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

func appendLine(file, line string) error {
	f, err := os.OpenFile(file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, line)
	if err2 := f.Close(); err == nil {
		err = err2
	}
	return err
}

func resolve(listen string) (network, address string, err error) {
	if listen == "" {
		port := os.Getenv("PORT")
		if port == "" {
			return "", "", errors.New("no -listen and no $PORT")
		}
		return "tcp", net.JoinHostPort("127.0.0.1", port), nil
	}
	if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		return "unix", path, nil
	}
	return "tcp", listen, nil
}

func serveEcho(ctx context.Context, ln net.Listener, name string, banner bool, logf func(string, ...any)) int {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				logf("%s: stopping", name)
				return 0
			}
			if errors.Is(err, net.ErrClosed) {
				logf("accept: %v", err)
				return 1
			}
			// EMFILE and the like pass, as they do for net/http's server.
			logf("accept: %v", err)
			time.Sleep(10 * time.Millisecond) // a pause before trying again, not a wait for a condition
			continue
		}
		go func() {
			defer c.Close()
			if banner {
				fmt.Fprintf(c, "%s %d\n", name, os.Getpid())
			}
			io.Copy(c, c)
			if tc, ok := c.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
		}()
	}
}

func serveHTTP(ctx context.Context, ln net.Listener, name, hits string, plain bool, keepalive time.Duration, logf func(string, ...any)) int {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (pid %d)\n", name, os.Getpid())
	})
	mux.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", os.Getpid())
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "this route is broken on purpose", http.StatusInternalServerError)
	})
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		logf("%s: crashing in a request as asked", name)
		os.Exit(1)
	})
	// /crash/ID is /crash under a path that names the request in the hits
	// file, so a test can tell which of many crashing requests got through.
	mux.HandleFunc("/crash/", func(w http.ResponseWriter, r *http.Request) {
		logf("%s: crashing in request %s as asked", name, r.URL.Path)
		os.Exit(1)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		// Read all first: net/http's HTTP/1 server is not full duplex.
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		w.Write(b)
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
		fmt.Fprintf(w, "slept %s\n", d)
	})
	// /bytes?n=N answers N bytes (benchmarks: large responses), with a
	// Content-Length, chunked with &chunked=1, or until the connection
	// closes with &close=1. &cut=K breaks the response after K bytes: the
	// connection closes (no last chunk). &write=W writes W bytes at a time
	// (64 KiB, at most 256 KiB): with chunked=1, chunks of W bytes.
	chunk := make([]byte, 256<<10)
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n, err := strconv.ParseInt(q.Get("n"), 10, 64)
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "need ?n=BYTES, at most 1 GiB", http.StatusBadRequest)
			return
		}
		write := int64(64 << 10)
		if v := q.Get("write"); v != "" {
			if write, err = strconv.ParseInt(v, 10, 64); err != nil || write < 1 || write > int64(len(chunk)) {
				http.Error(w, "need &write=W, 1 to 256 KiB", http.StatusBadRequest)
				return
			}
		}
		cut := int64(-1)
		if v := q.Get("cut"); v != "" {
			if cut, err = strconv.ParseInt(v, 10, 64); err != nil || cut < 0 || cut >= n {
				http.Error(w, "need &cut=K below n", http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		switch {
		case q.Get("close") != "":
			w.Header().Set("Transfer-Encoding", "identity") // net/http: no framing, close after
		case q.Get("chunked") == "":
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		if cut >= 0 {
			n = cut
		}
		for n > 0 {
			k := min(n, write)
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
		if cut >= 0 {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // net/http closes the connection as it is
		}
	})
	// /raw?r=BYTES answers with exactly BYTES and closes the connection:
	// responses net/http would not make (framing, 1xx, HTTP/1.0, malformed).
	// &after=D waits D first.
	mux.HandleFunc("/raw", func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		if d, err := time.ParseDuration(r.URL.Query().Get("after")); err == nil {
			time.Sleep(d)
		}
		brw.WriteString(r.URL.Query().Get("r"))
		brw.Flush()
	})
	// /trailer answers a chunked body with a trailer.
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		fmt.Fprint(w, "part one, ")
		w.(http.Flusher).Flush()
		fmt.Fprint(w, "part two")
		w.Header().Set("X-Sum", "42")
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		r.Header.Write(w)
	})
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range n {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-time.After(20 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("/alloc", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		hold = append(hold, touch(mb<<20))
		fmt.Fprintf(w, "holding %d MiB more\n", mb)
	})
	mux.HandleFunc("/upgrade", func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "echo") {
			http.Error(w, "need Upgrade: echo", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		sc := bufio.NewScanner(brw)
		for sc.Scan() {
			fmt.Fprintf(c, "%s\n", sc.Text())
		}
	})
	var routes http.Handler = mux
	if plain {
		routes = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s (pid %d)\n", name, os.Getpid())
		})
	}
	handler := routes
	if hits != "" {
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := appendLine(hits, r.Method+" "+r.URL.Path); err != nil {
				logf("hits file: %v", err)
			}
			routes.ServeHTTP(w, r)
		})
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: keepalive}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		logf("serve: %v", err)
		return 1
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
		logf("%s: stopping", name)
		return 0
	}
}

// hold keeps /alloc's memory alive for the life of the process; the backend
// is a single-purpose program, so a package-level slice is fine here.
var hold [][]byte

func touch(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	return b
}

// listenOn binds -listen, or with fds takes the sockets passed as
// LISTEN_FDS (fd 3, ...) and their LISTEN_FDNAMES. On failure it returns
// nil and the exit code.
func listenOn(listen string, fds bool, logf func(string, ...any)) ([]net.Listener, []string, int) {
	if fds {
		lns, names, err := inheritedListeners()
		if err != nil {
			logf("%v", err)
			return nil, nil, 3
		}
		return lns, names, 0
	}
	network, address, err := resolve(listen)
	if err != nil {
		logf("%v", err)
		return nil, nil, 2
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		logf("listen: %v", err)
		return nil, nil, 1
	}
	return []net.Listener{ln}, nil, 0
}

// inheritedListeners checks the socket-activation environment as a strict
// systemd service would and takes the sockets.
func inheritedListeners() ([]net.Listener, []string, error) {
	if pid := os.Getenv("LISTEN_PID"); pid != strconv.Itoa(os.Getpid()) {
		return nil, nil, fmt.Errorf("LISTEN_PID is %q, not this process's pid %d", pid, os.Getpid())
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 1 {
		return nil, nil, fmt.Errorf("LISTEN_FDS is %q: no sockets passed", os.Getenv("LISTEN_FDS"))
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	if len(names) != n {
		return nil, nil, fmt.Errorf("LISTEN_FDNAMES %q does not name the %d sockets", os.Getenv("LISTEN_FDNAMES"), n)
	}
	var lns []net.Listener
	for fd := 3; fd < 3+n; fd++ {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK != 0 {
			return nil, nil, fmt.Errorf("fd %d: non-blocking (%v): systemd passes sockets in blocking mode", fd, err)
		}
		f := os.NewFile(uintptr(fd), names[fd-3])
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("fd %d: %w", fd, err)
		}
		lns = append(lns, ln)
	}
	return lns, names, nil
}

// serveEchoAll serves echo on every listener, the banner of those with a
// name saying NAME/FDNAME, until ctx ends.
func serveEchoAll(ctx context.Context, lns []net.Listener, fdNames []string, name string, banner bool, logf func(string, ...any)) int {
	codes := make(chan int, len(lns))
	for i, ln := range lns {
		n := name
		if i < len(fdNames) {
			n += "/" + fdNames[i]
		}
		go func() { codes <- serveEcho(ctx, ln, n, banner, logf) }()
	}
	code := 0
	for range lns {
		code = max(code, <-codes)
	}
	return code
}

// serveInetd serves one connection on in and out as an inetd service.
func serveInetd(name string, in io.Reader, out io.Writer, logf func(string, ...any)) int {
	if os.Getenv("LISTEN_FDS") != "1" || os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		logf("%s: LISTEN_FDS=%q LISTEN_PID=%q, want 1 and %d", name, os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID"), os.Getpid())
		return 3
	}
	orDash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	fmt.Fprintf(out, "%s %s %s %d\n", name, orDash(os.Getenv("REMOTE_ADDR")), orDash(os.Getenv("REMOTE_PORT")), os.Getpid())
	if _, err := io.Copy(out, in); err != nil {
		logf("%s: %v", name, err)
		return 1
	}
	return 0
}
