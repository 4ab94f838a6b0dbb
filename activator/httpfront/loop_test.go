package httpfront

import (
	"bufio"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/leakcheck"
	"github.com/rouse-dev/rouse/internal/testbackend"
)

// loopState returns how many connections the front's event loops serve,
// how many its goroutines serve, and how many loops run.
func loopState(f *HTTPFront) (inLoops, onGoroutines, loops int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loopConns, len(f.conns), len(f.loops)
}

// Plain requests with a whole response are served by the event loop, with
// no goroutine per connection, pipelined ones in order.
func TestLoopServesPlainRequests(t *testing.T) {
	ta, hits := newHTTPTestApp(t, nil, nil)
	var conns []*rawClient
	for range 4 {
		conns = append(conns, dialRaw(t, ta.addr))
	}
	for i := range 20 {
		for _, rc := range conns {
			rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp, body := rc.response("GET"); resp.StatusCode != 200 || !strings.Contains(body, "hello from") {
				t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
			}
		}
	}
	rc := conns[0]
	rc.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("POST"); resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("pipelined POST: %d %q", resp.StatusCode, body)
	}
	if resp, body := rc.response("HEAD"); resp.StatusCode != 200 || body != "" || resp.ContentLength <= 0 {
		t.Fatalf("pipelined HEAD: %d %q, length %d", resp.StatusCode, body, resp.ContentLength)
	}
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("pipelined GET: %d", resp.StatusCode)
	}
	// An exchange that took the app longer than watchAfter (a slow
	// machine, the race detector) moved its connection to a goroutine.
	inLoops, onGoroutines, loops := loopState(ta.front)
	if inLoops == 0 || inLoops+onGoroutines != 4 || loops == 0 {
		t.Errorf("%d connections in loops, %d on goroutines, %d loops; want most of 4 in loops", inLoops, onGoroutines, loops)
	}
	if n := testbackend.HitCount(t, hits, "/"); n != 81 { // and the HEAD
		t.Errorf("the app got %d requests for /, want 81", n)
	}
	if n := ta.front.handedOff.Load(); n != 0 {
		t.Errorf("%d connections handed to net/http", n)
	}
}

// An exchange the loop cannot finish at once (a slow app, a response
// larger than its buffer or without a length) goes on on a goroutine,
// without the request being sent twice; then the connection goes back to
// the loop, and keeps working.
func TestLoopHandsLongExchangesToAGoroutine(t *testing.T) {
	ta, hits := newHTTPTestApp(t, nil, nil)
	rc := dialRaw(t, ta.addr)
	rc.send("GET /sleep?d=200ms HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("GET"); resp.StatusCode != 200 || body != "slept 200ms\n" {
		t.Fatalf("slow GET: %d %q", resp.StatusCode, body)
	}
	if n := testbackend.HitCount(t, hits, "/sleep"); n != 1 {
		t.Errorf("the app got the slow request %d times, want 1", n)
	}
	// Once it is over, the connection is the loop's again.
	leakcheck.WaitFor(t, "the connection back in a loop", func() bool {
		inLoops, onGoroutines, _ := loopState(ta.front)
		return inLoops == 1 && onGoroutines == 0
	})
	for _, n := range []int{loopUpBuf - 100, 200 << 10} {
		rc.send("GET /bytes?n=" + strconv.Itoa(n) + " HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := rc.response("GET"); resp.StatusCode != 200 || len(body) != n {
			t.Fatalf("GET %d bytes: %d, %d bytes", n, resp.StatusCode, len(body))
		}
	}
	rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET after: %d", resp.StatusCode)
	}

	// A large response on a connection still in the loop.
	rc = dialRaw(t, ta.addr)
	rc.send("GET /bytes?n=100000 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("GET"); resp.StatusCode != 200 || len(body) != 100000 {
		t.Fatalf("large GET: %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET pipelined behind a large one: %d", resp.StatusCode)
	}
}

// The loop closes a connection that sends nothing within the header
// timeout, and one idle between requests for longer than the idle timeout:
// also one that came back from a goroutine (the first request started the
// app, and waited for it there).
func TestLoopTimesOutIdleConnections(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.HeaderTimeout = 200 * time.Millisecond })
	f := ta.front
	f.mu.Lock() // loops made after this see it (they are made under mu)
	f.loopIdleTimeout = 300 * time.Millisecond
	f.mu.Unlock()

	silent := dialRaw(t, ta.addr)
	idle := dialRaw(t, ta.addr)
	idle.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := idle.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	for name, rc := range map[string]*rawClient{"silent": silent, "idle": idle} {
		start := time.Now()
		rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := rc.br.Read(make([]byte, 1))
		if n != 0 || err != io.EOF {
			t.Errorf("%s connection: read %d bytes, %v; want it closed", name, n, err)
		}
		// A scan runs every scanIdle: the close comes up to that late.
		if took := time.Since(start); took > 3*scanIdle {
			t.Errorf("%s connection closed after %s", name, took)
		}
	}
}

// A loop with no connection left ends, so an unused front costs nothing;
// the next connection gets a new one.
func TestLoopEndsWhenUnused(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := dialRaw(t, ta.addr)
	rc.send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	leakcheck.WaitFor(t, "the loops ended", func() bool {
		inLoops, _, loops := loopState(ta.front)
		return inLoops == 0 && loops == 0
	})
	rc = dialRaw(t, ta.addr)
	rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET on a new loop: %d", resp.StatusCode)
	}
	if _, _, loops := loopState(ta.front); loops != 1 {
		t.Errorf("%d loops, want 1", loops)
	}
}

// The front sets TCP_NODELAY once, on the listener; the sockets it
// accepts inherit it, so a small response is not held back by Nagle's
// algorithm waiting for the client's ACK.
func TestLoopSocketsHaveNoDelay(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	var rc *rawClient
	for range 2 {
		// The first, held while the app starts, goes through a goroutine,
		// where net sets TCP_NODELAY itself; the second stays in a loop.
		rc = dialRaw(t, ta.addr)
		rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
			t.Fatalf("GET: %d", resp.StatusCode)
		}
	}
	// (Both come back to a loop between requests.)
	leakcheck.WaitFor(t, "the connections in loops", func() bool { inLoops, _, _ := loopState(ta.front); return inLoops == 2 })
	fd := acceptedSocket(t, rc.c.LocalAddr().(*net.TCPAddr))
	if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v != 1 {
		t.Errorf("rouse's socket of the connection: TCP_NODELAY %d, %v", v, err)
	}
	// The listener the loops accept on hands them connections with their
	// first bytes in (TCP_DEFER_ACCEPT), so the request is read at once.
	ta.front.mu.Lock()
	ln := ta.front.lnFile
	ta.front.mu.Unlock()
	rc2, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var deferSecs int
	rc2.Control(func(fd uintptr) {
		deferSecs, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
	})
	if err != nil || deferSecs == 0 {
		t.Errorf("the front's listener: TCP_DEFER_ACCEPT %d, %v", deferSecs, err)
	}
}

// acceptedSocket is the descriptor of this process whose peer is client:
// the front's end of a connection the test made.
func acceptedSocket(t *testing.T, client *net.TCPAddr) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if sa, err := unix.Getpeername(fd); err == nil {
			if in, ok := sa.(*unix.SockaddrInet4); ok && in.Port == client.Port && net.IP(in.Addr[:]).Equal(client.IP) {
				return fd
			}
		}
	}
	t.Fatalf("no socket of this process has the peer %s", client)
	return -1
}

// clientIPs gives each address its own text, reusing the previous one's
// only for the same address.
func TestClientIPs(t *testing.T) {
	v4 := func(a [4]byte) *unix.RawSockaddrAny {
		var sa unix.RawSockaddrAny
		in := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		in.Family, in.Addr = unix.AF_INET, a
		return &sa
	}
	v6 := func(a string) *unix.RawSockaddrAny {
		var sa unix.RawSockaddrAny
		in := (*unix.RawSockaddrInet6)(unsafe.Pointer(&sa))
		in.Family, in.Addr = unix.AF_INET6, netip.MustParseAddr(a).As16()
		return &sa
	}
	var unixSA unix.RawSockaddrAny
	unixSA.Addr.Family = unix.AF_UNIX
	var ips clientIPs
	for _, c := range []struct {
		sa   *unix.RawSockaddrAny
		want string
	}{
		{v4([4]byte{127, 0, 0, 1}), "127.0.0.1"},
		{v4([4]byte{127, 0, 0, 1}), "127.0.0.1"},
		{v4([4]byte{10, 1, 2, 3}), "10.1.2.3"},
		{v6("::1"), "::1"},
		{v6("::ffff:10.1.2.3"), "10.1.2.3"}, // as net reports it
		{v6("2001:db8::7"), "2001:db8::7"},
		{&unixSA, ""},
		{v4([4]byte{127, 0, 0, 1}), "127.0.0.1"},
	} {
		if got := ips.of(c.sa); got != c.want {
			t.Errorf("address %v: %q, want %q", c.sa.Addr, got, c.want)
		}
	}
}

// Between requests a keep-alive connection holds no buffers: the
// response it got last does not stay with it.
func TestLoopIdleConnectionsHoldNoBuffers(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	var conns []*rawClient
	for range 8 {
		conns = append(conns, dialRaw(t, ta.addr))
	}
	for i := range 2 {
		for _, rc := range conns {
			rc.send("GET /bytes?n=12000 HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp, body := rc.response("GET"); resp.StatusCode != 200 || len(body) != 12000 {
				t.Fatalf("GET %d: %d, %d bytes", i, resp.StatusCode, len(body))
			}
		}
		leakcheck.WaitFor(t, "every connection idle in a loop, without buffers", func() bool {
			inLoops, _, _ := loopState(ta.front)
			return inLoops == len(conns) && loopBuffers(ta.front) == 0
		})
	}
}

// loopBuffers is how many connections of the front's loops hold buffers.
func loopBuffers(f *HTTPFront) (n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.loops {
		n += int(l.equipped.Load())
	}
	return n
}

// Buffers shed between requests serve the next; those beyond what the
// most connections at once needed since the last trim are let go.
func TestLoopSpareBuffers(t *testing.T) {
	var l evLoop
	cs := make([]*loopConn, 5)
	for i := range cs {
		cs[i] = &loopConn{}
		l.equip(cs[i])
		cs[i].resp = append(cs[i].resp, "response"...)
	}
	for _, c := range cs {
		l.shed(c)
		if c.in != nil || c.resp != nil || c.hasBufs {
			t.Fatal("a connection kept its buffers")
		}
	}
	if len(l.spare) != 5 || l.equipped.Load() != 0 {
		t.Fatalf("%d spare, %d equipped; want 5, 0", len(l.spare), l.equipped.Load())
	}
	in := &l.spare[4].in[0]
	l.equip(cs[0])
	if &cs[0].in[0] != in || len(cs[0].resp) != 0 || cap(cs[0].resp) == 0 {
		t.Error("equip did not take the buffers shed last, emptied")
	}
	now := time.Now()
	l.trimSpare(now) // the most at once was 5, 1 now: 4 spare kept
	if len(l.spare) != 4 {
		t.Fatalf("%d spare after the first trim, want 4", len(l.spare))
	}
	l.trimSpare(now.Add(scanIdle / 2)) // too soon: nothing
	l.trimSpare(now.Add(scanIdle))     // nothing more than the 1 at once since
	if len(l.spare) != 0 {
		t.Fatalf("%d spare after the second trim, want 0", len(l.spare))
	}
	cs[0].in = nil // as when a goroutine reads the rest of it
	l.shed(cs[0])
	l.equip(cs[1])
	if len(cs[1].in) != frontReadBuffer {
		t.Errorf("a connection equipped without an input buffer: %d bytes", len(cs[1].in))
	}
}

// A front on a Unix socket (a proxy in front of rouse on the same box)
// is served by the event loops as a TCP one is, and its socket file is
// removed when it closes.
func TestLoopServesAUnixSocketFront(t *testing.T) {
	path := filepath.Join(t.TempDir(), "front.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	a := newTestAppNoListen(t, "u", nil, nil)
	f, err := NewHTTPFront(ln, []*activator.App{a}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Serve()
	closed := false
	defer func() {
		if !closed {
			f.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	rc := &rawClient{t: t, c: c, br: bufio.NewReader(c)}
	for i, path := range []string{"/", "/headers", "/sleep?d=150ms", "/bytes?n=1048576", "/pid"} {
		rc.send("GET " + path + " HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
		resp, body := rc.response("GET")
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %q", path, resp.StatusCode, body)
		}
		if path == "/headers" && strings.Contains(body, "X-Forwarded-For") {
			// No address to give for a Unix client, and the client's own
			// claim is dropped, as on the goroutine path.
			t.Errorf("request %d, from a Unix socket, reached the app with:\n%s", i, body)
		}
		if path == "/bytes?n=1048576" && len(body) != 1<<20 {
			t.Errorf("1 MiB response: %d bytes", len(body))
		}
		// Cold start, a slow answer and a large one go through a
		// goroutine; the connection comes back to a loop after each.
		leakcheck.WaitFor(t, "the connection back in a loop", func() bool { inLoops, _, _ := loopState(f); return inLoops == 1 })
	}
	f.Close()
	closed = true
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the front's socket file after Close: %v", err)
	}
}

// movedFromLoops returns a func that checks how many exchanges the
// front's loops gave to a goroutine since this call.
func movedFromLoops(t *testing.T, f *HTTPFront) func(want int64) {
	mark := f.leftLoops.Load()
	return func(want int64) {
		t.Helper()
		if n := f.leftLoops.Load() - mark; n != want {
			t.Errorf("%d exchanges moved from a loop to a goroutine, want %d", n, want)
		}
	}
}

// warmLoopConn starts the app of ta with a first request and returns a
// connection to the front that is in an event loop.
func warmLoopConn(t *testing.T, ta *testApp, dial func() *rawClient) *rawClient {
	t.Helper()
	rc := dial()
	rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n") // held while the app starts: via a goroutine
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("first GET: %d", resp.StatusCode)
	}
	leakcheck.WaitFor(t, "the connection back in a loop", func() bool { inLoops, _, _ := loopState(ta.front); return inLoops == 1 })
	return rc
}

// A response that does not come whole at once (longer than the loop's
// buffer, chunked, a stream of events, or until the app closes) is passed
// on by the loop as it comes, without a goroutine; one with a
// Content-Length beyond relayMax goes to a goroutine, which splices it.
func TestLoopRelaysResponsesAsTheyCome(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := warmLoopConn(t, ta, func() *rawClient { return dialRaw(t, ta.addr) })
	moved := movedFromLoops(t, ta.front)
	for _, tc := range []struct {
		path    string
		n       int
		chunked bool
	}{
		{"/bytes?n=20000", 20000, false},
		{"/bytes?n=" + strconv.Itoa(relayMax), relayMax, false},
		{"/bytes?n=20000&chunked=1", 20000, true},
		{"/bytes?n=3000000&chunked=1", 3000000, true},
	} {
		rc.send("GET " + tc.path + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, body := rc.response("GET")
		if resp.StatusCode != 200 || len(body) != tc.n || (resp.ContentLength < 0) != tc.chunked || resp.Close {
			t.Fatalf("GET %s: %d, %d bytes, length %d, close %v", tc.path, resp.StatusCode, len(body), resp.ContentLength, resp.Close)
		}
	}
	rc.send("GET /trailer HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("GET"); body != "part one, part two" || resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("chunked with a trailer: %q, trailer %v", body, resp.Trailer)
	}
	rc.send("GET /sse?n=5 HTTP/1.1\r\nHost: x\r\n\r\n") // 5 events 20ms apart
	if resp, body := rc.response("GET"); resp.StatusCode != 200 || body != "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n" {
		t.Errorf("event stream: %d %q", resp.StatusCode, body)
	}
	rc.send("GET /bytes?n=40000&close=1 HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("GET"); resp.StatusCode != 200 || len(body) != 40000 || !resp.Close || resp.ContentLength >= 0 {
		t.Errorf("a body until the app closes: %d, %d bytes, close %v, length %d", resp.StatusCode, len(body), resp.Close, resp.ContentLength)
	}
	moved(0)

	rc = warmLoopConn(t, ta, func() *rawClient { return dialRaw(t, ta.addr) })
	moved = movedFromLoops(t, ta.front)
	rc.send("GET /bytes?n=" + strconv.Itoa(relayMax+1) + " HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := rc.response("GET"); resp.StatusCode != 200 || len(body) != relayMax+1 {
		t.Fatalf("GET beyond relayMax: %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("the GET pipelined behind it: %d", resp.StatusCode)
	}
	moved(1)
}

// A client slower than the app: while its socket is full the loop stops
// reading from the app, and nothing is lost; the app's connection serves
// the next request.
func TestLoopRelayFollowsASlowClient(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := warmLoopConn(t, ta, func() *rawClient { return dialSmallWindow(t, ta.addr) })
	moved := movedFromLoops(t, ta.front)
	for _, tc := range []struct {
		n       int
		chunked string
	}{{relayMax, ""}, {2 << 20, "&chunked=1"}} {
		n := tc.n
		path := "/bytes?n=" + strconv.Itoa(n) + tc.chunked
		rc.send("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, buf := 0, make([]byte, 4<<10)
		for i := 0; ; i++ {
			k, err := resp.Body.Read(buf)
			got += k
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: after %d bytes: %v", path, got, err)
			}
			if i%64 == 0 {
				time.Sleep(time.Millisecond) // the slow reader is the point of the test
			}
		}
		if got != n {
			t.Errorf("%s: %d bytes, want %d", path, got, n)
		}
	}
	rc.send("GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Errorf("GET after: %d", resp.StatusCode)
	}
	moved(0)
}

// dialSmallWindow connects with a small receive buffer: rouse's writes
// fill it at once, and wait for the client to read.
func dialSmallWindow(t *testing.T, addr string) *rawClient {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<10) })
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReaderSize(c, 4<<10)}
}

// A client that takes none of its response for the send timeout is cut,
// on both paths (the loop passing a response on, a goroutine splicing
// one), and the app's slot is freed; one that reads slowly but keeps
// reading is not.
func TestSendTimeoutCutsAClientThatTakesNothing(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ta, _ := newHTTPTestApp(t, nil, func(c *activator.Config) { c.SendTimeout = timeout })
	paths := []string{"/bytes?n=50000000&chunked=1", "/bytes?n=50000000"} // relayed; spliced
	for _, path := range paths {
		rc := warmLoopConn(t, ta, func() *rawClient { return dialSmallWindow(t, ta.addr) })
		rc.send("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		start := time.Now()
		leakcheck.WaitFor(t, "the client cut and the slot freed", func() bool { return ta.Status().Conns == 0 })
		if took := time.Since(start); took < timeout {
			t.Errorf("%s: cut after %s, before the send timeout", path, took)
		}
		if n, err := io.Copy(io.Discard, resp.Body); err == nil {
			t.Errorf("%s: read %d bytes and a clean end", path, n)
		}
		rc.c.Close()
		leakcheck.WaitFor(t, "the connection gone", func() bool { inLoops, onGoroutines, _ := loopState(ta.front); return inLoops+onGoroutines == 0 })
	}
	for _, n := range []int{100 << 10, relayMax + 1} {
		rc := warmLoopConn(t, ta, func() *rawClient { return dialSmallWindow(t, ta.addr) })
		rc.send("GET /bytes?n=" + strconv.Itoa(n) + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, buf := 0, make([]byte, 4<<10)
		for {
			k, err := resp.Body.Read(buf)
			got += k
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%d bytes, read slowly: cut after %d: %v", n, got, err)
			}
			time.Sleep(timeout / 15) // a slow reader, never idle for the timeout: the point of the test
		}
		if got != n {
			t.Errorf("read slowly: %d bytes, want %d", got, n)
		}
		rc.c.Close()
		leakcheck.WaitFor(t, "the connection gone", func() bool { inLoops, onGoroutines, _ := loopState(ta.front); return inLoops+onGoroutines == 0 })
	}
}

// An app that breaks a response the loop is passing on: the client's
// connection is cut, so that it cannot take the short body for a whole
// one. A client that leaves in the middle of a stream ends the exchange:
// the app's request ends, its slot is free.
func TestLoopRelayCutShort(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	for _, path := range []string{"/bytes?n=100000&cut=30000", "/bytes?n=100000&chunked=1&cut=30000"} {
		rc := warmLoopConn(t, ta, func() *rawClient { return dialRaw(t, ta.addr) })
		moved := movedFromLoops(t, ta.front)
		rc.send("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil || len(b) != 30000 {
			t.Errorf("%s: %d bytes, %v; want the 30000 sent, then an error", path, len(b), err)
		}
		moved(0)
		rc.c.Close()
		leakcheck.WaitFor(t, "the connection closed", func() bool { inLoops, _, _ := loopState(ta.front); return inLoops == 0 })
	}

	rc := warmLoopConn(t, ta, func() *rawClient { return dialRaw(t, ta.addr) })
	rc.send("GET /sse?n=100000 HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if line != "data: 0\n" {
		t.Fatalf("first event: %q, %v", line, err)
	}
	if c := ta.Status().Conns; c != 1 {
		t.Errorf("%d requests in the app during the stream, want 1", c)
	}
	rc.c.Close()
	leakcheck.WaitFor(t, "the slot to be freed", func() bool { return ta.Status().Conns == 0 })
	leakcheck.WaitFor(t, "the connection gone", func() bool { inLoops, _, _ := loopState(ta.front); return inLoops == 0 })
}

// A response the app pauses in the middle of, right after a full buffer:
// the client gets every byte sent before the pause without waiting for
// the rest, and the whole of it after. What the loop wrote with MSG_MORE
// must not wait in the kernel for the next write: left there, it goes
// out only after about 200 ms (the kernel's own limit), so the median
// wait over several pauses tells the two apart. (The app is pyExtraBytes.)
func TestLoopRelayPushesWhatCameBeforeAPause(t *testing.T) {
	ta := newPythonHTTPApp(t, pyExtraBytes, false, nil)
	dir := filepath.Dir(ta.starts)
	rc := dialRaw(t, ta.addr)
	moved := movedFromLoops(t, ta.front)
	const total, first = 100000, 3*loopUpBuf - len("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
	var waits []time.Duration
	for i := range 10 {
		if i == 1 {
			// The first was held while the app started: on a goroutine.
			leakcheck.WaitFor(t, "the connection back in a loop", func() bool { inLoops, _, _ := loopState(ta.front); return inLoops == 1 })
			moved = movedFromLoops(t, ta.front)
		}
		sent := time.Now()
		rc.send("GET /pause/" + strconv.Itoa(i) + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, total)
		if n, err := io.ReadFull(resp.Body, got[:first]); err != nil {
			t.Fatalf("request %d: %d of the %d bytes sent before the pause: %v", i, n, first, err)
		}
		if i > 0 {
			waits = append(waits, time.Since(sent))
		}
		if err := os.WriteFile(filepath.Join(dir, "go-"+strconv.Itoa(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if n, err := io.ReadFull(resp.Body, got[first:]); err != nil {
			t.Fatalf("request %d: %d of the %d bytes after the pause: %v", i, n, total-first, err)
		}
		if want := strings.Repeat("a", first) + strings.Repeat("b", total-first); string(got) != want {
			t.Fatalf("request %d: the body is not what the app sent", i)
		}
	}
	slices.Sort(waits)
	if w := waits[len(waits)/2]; w > 100*time.Millisecond {
		t.Errorf("the bytes before a pause took %s (median) to reach the client: held back", w)
	}
	moved(0)
	if i, _, _ := loopState(ta.front); i != 1 {
		t.Errorf("%d connections in the loops, want 1", i)
	}
}

// A client that says Connection: close and then sends more while the app
// answers (a pipelined request, a stray CRLF) gets its response whole.
// The loop serves such a connection without watching it until it has to
// wait for the client, so no edge told it of those bytes: were the last
// write held back (MSG_MORE) for the close, the close over unread bytes
// would reset the connection and drop it.
func TestLoopCloseAfterResponseWithBytesUnread(t *testing.T) {
	ta, _ := newHTTPTestApp(t, nil, nil)
	rc := dialRaw(t, ta.addr)
	rc.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n") // the app starts; the connection comes back to a loop
	if resp, _ := rc.response("GET"); resp.StatusCode != 200 {
		t.Fatalf("GET /: %d", resp.StatusCode)
	}
	for i := range 20 {
		rc := dialRaw(t, ta.addr)
		rc.send("GET /sleep?d=20ms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		// While the app sleeps: the loop has read the request once it is
		// in flight.
		leakcheck.WaitFor(t, "the request in flight", func() bool { return ta.Status().Conns > 0 })
		rc.send("GET /more HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("try %d: no response: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "slept 20ms\n" || err != nil {
			t.Fatalf("try %d: %d %q %v", i, resp.StatusCode, body, err)
		}
	}
}
