package httpfront

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/h1"
)

// The front's side of an exchange with the app: keep-alive connections of
// its own (upConn), the request written whole, and the response passed on
// as it comes, flushed to the client whenever the app makes it wait.

const (
	upReadBuffer    = 16 << 10
	maxIdleUpstream = 128       // kept per app; more are closed
	maxResponseHead = 1 << 20   // as net/http's Transport, about
	spliceMin       = 64 << 10  // body bytes left for which splice(2) pays
	spliceStep      = 256 << 10 // spliced at most at once: send_timeout is per step
)

var errClientGone = errors.New("the client went away")

// upConn is a keep-alive connection to an app's process.
type upConn struct {
	c      net.Conn
	raw    syscall.RawConn
	br     *bufio.Reader
	inst   *activator.Instance // the process it goes to
	reused bool                // it served a request before: the quiet retry applies
}

// upPool is an app's idle upConns.
type upPool struct {
	mu      sync.Mutex
	idle    []*upConn
	retired bool // a reload replaced the upstream: keep nothing more
}

// get returns an idle connection to inst's process, or dials a new one.
// New connections are paced (see activator.DialGate); a request waiting for its turn
// to dial takes a kept connection that comes back meanwhile.
func (up *httpUpstream) get(ctx context.Context, inst *activator.Instance) (*upConn, error) {
	var c net.Conn
	for c == nil {
		if uc := up.popIdle(inst); uc != nil {
			return uc, nil
		}
		slot, err := up.gate.Enter(ctx)
		if err != nil {
			return nil, err
		}
		if !slot {
			continue
		}
		if c, err = up.gate.Dial(ctx, up.network, up.address); err != nil {
			return nil, err
		}
	}
	uc := &upConn{c: c, br: bufio.NewReaderSize(c, upReadBuffer), inst: inst}
	if sc, ok := c.(syscall.Conn); ok {
		uc.raw, _ = sc.SyscallConn()
	}
	return uc, nil
}

// takeIdleFD takes a kept connection to inst's process out of the pool and
// out of Go's netpoller, for an event loop; -1 if there is none. A
// connection an exchange moved from a loop to a goroutine comes back this
// way, instead of the loop dialing anew.
func (up *httpUpstream) takeIdleFD(inst *activator.Instance) int {
	uc := up.popIdle(inst)
	if uc == nil {
		return -1
	}
	fd := dupFD(uc.raw) // reusable: raw is set, and nothing is buffered
	uc.c.Close()
	return fd
}

// popIdle takes the newest idle connection to inst's process that may be
// reused (see reusable), closing those that may not; nil if none is left.
func (up *httpUpstream) popIdle(inst *activator.Instance) *upConn {
	for {
		up.pool.mu.Lock()
		n := len(up.pool.idle)
		if n == 0 {
			up.pool.mu.Unlock()
			return nil
		}
		uc := up.pool.idle[n-1]
		up.pool.idle = up.pool.idle[:n-1]
		up.pool.mu.Unlock()
		if uc.inst == inst && uc.reusable() {
			uc.reused = true
			return uc
		}
		uc.c.Close()
	}
}

// dupFD returns a copy of rc's descriptor (close-on-exec), -1 on failure:
// closing rc's connection then takes it out of Go's netpoller, and leaves
// the copy open.
func dupFD(rc syscall.RawConn) int {
	fd := -1
	rc.Control(func(s uintptr) {
		if d, err := unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0); err == nil {
			fd = d
		}
	})
	return fd
}

// put keeps uc for the next request.
func (up *httpUpstream) put(uc *upConn) {
	up.pool.mu.Lock()
	if !up.pool.retired && len(up.pool.idle) < maxIdleUpstream {
		up.pool.idle = append(up.pool.idle, uc)
		uc = nil
	}
	up.pool.mu.Unlock()
	if uc != nil {
		uc.c.Close()
		return
	}
	up.gate.Kick()
}

// DropIdle closes every idle connection to the app.
func (up *httpUpstream) DropIdle() {
	up.gen.Add(1) // the event loops' are closed as they come to them
	up.pool.mu.Lock()
	idle := up.pool.idle
	up.pool.idle = nil
	up.pool.mu.Unlock()
	for _, uc := range idle {
		uc.c.Close()
	}
}

// Retire closes the idle connections, and those still in use once they
// are done: a reload replaced the upstream.
func (up *httpUpstream) Retire() {
	up.retired.Store(true)
	up.pool.mu.Lock()
	up.pool.retired = true
	up.pool.mu.Unlock()
	up.DropIdle()
}

// reusable reports whether a kept connection may serve another request
// (see reusable).
func (uc *upConn) reusable() bool {
	if uc.raw == nil {
		return false
	}
	ok := false
	err := uc.raw.Read(func(fd uintptr) bool {
		ok = reusable(uc.br.Buffered(), fd)
		return true
	})
	return err == nil && ok
}

// reusable is the one rule, on every path, for taking a kept connection
// to an app again, checked each time it is taken: nothing is left unread,
// neither in rouse's buffer (buffered bytes) nor in the socket fd, and the
// app has not closed it. Bytes there are the app's after a complete
// response (a HEAD or a 204 answered with a body, a late duplicate):
// another client would get them for its own response. (A connection is
// kept only after a complete response: h1.Response.KeepsConn.)
func reusable(buffered int, fd uintptr) bool {
	return buffered == 0 && quiet(fd)
}

// quiet reports whether the socket fd is open and has nothing to read,
// without blocking: 0 bytes is EOF, and bytes are unasked for.
func quiet(fd uintptr) bool {
	var b [1]byte
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno == syscall.EAGAIN
}

// exchange sends the request to the app over a keep-alive connection and
// passes the response on to the client.
func (q *rawRequest) Exchange(inst *activator.Instance) activator.ExchangeResult {
	var res activator.ExchangeResult
	var reused bool
	if uc := q.resume; uc != nil {
		// The attempt an event loop began.
		q.resume = nil
		reused = uc.reused
		res = q.finish(uc, len(q.fc.out)-q.unsent)
	} else {
		res, reused = q.attempt(inst)
	}
	return q.a.RetryQuietly(q, res, reused, func() (activator.ExchangeResult, bool) { return q.attempt(inst) })
}

// attempt is one exchange; reused reports whether it went over a kept
// connection.
func (q *rawRequest) attempt(inst *activator.Instance) (res activator.ExchangeResult, reused bool) {
	uc, err := upstreamOf(q.a).get(q.fc.ctx, inst)
	if err != nil {
		return activator.ExchangeResult{Err: err, Stage: activator.StageDial}, false
	}
	// Read before finish: it may put uc back in the pool, where another
	// exchange may take it at once.
	reused = uc.reused
	return q.finish(uc, 0), reused
}

// finish sends the request from byte from on (bytes before went already)
// and passes the response on.
func (q *rawRequest) finish(uc *upConn, from int) (res activator.ExchangeResult) {
	fc, a := q.fc, q.a
	keep := false
	n, err := 0, error(nil)
	if from < len(fc.out) {
		n, err = uc.c.Write(fc.out[from:])
	}
	if err != nil {
		// Nothing written means the app had closed the connection before:
		// it cannot have seen the request.
		res = activator.ExchangeResult{Err: err, Sent: from+n > 0, Stage: activator.StageConnected}
	} else {
		res, keep = fc.relay(a, uc.inst, uc)
	}
	if keep {
		upstreamOf(a).put(uc)
	} else {
		uc.c.Close()
	}
	return res
}

// relay reads the app's response and passes it on. reuse reports whether
// uc may serve another request.
func (fc *frontConn) relay(a *activator.App, inst *activator.Instance, uc *upConn) (res activator.ExchangeResult, reuse bool) {
	var hard time.Time
	if rt := a.Config().ResponseTimeout; rt > 0 {
		hard = time.Now().Add(rt)
	}
	var r h1.Response
	var err error
	fc.line, fc.resp, err = uc.readResponse(fc.line, fc.resp, &r, false, func(need int) error { return fc.fill(uc, need, hard) })
	if err != nil {
		timeout := errors.Is(err, os.ErrDeadlineExceeded) && !fc.gone()
		return activator.ExchangeResult{Err: err, Sent: true, Timeout: timeout, Stage: activator.StageConnected}, false
	}
	if fc.head.IsHead() {
		r.NoBody = true
	}
	a.CountResponse(r.Status)
	if r.BodyUntilClose() || fc.closeAfter || fc.f.shutting.Load() {
		fc.closeAfter = true
		fc.resp = append(fc.resp, "Connection: close\r\n"...)
	}
	fc.resp = append(fc.appendServerTiming(fc.resp), '\r', '\n')
	_, err = fc.bw.Write(fc.resp)
	if err != nil {
		err = activator.WriteError{Err: err}
	}
	fc.headWritten(r.Status)
	switch {
	case err != nil, r.NoBody:
	case r.Chunked:
		err = fc.copyChunked(uc)
	case r.Length >= 0:
		err = fc.copyN(uc, r.Length)
	default:
		err = fc.copyToEOF(uc)
	}
	if err != nil {
		switch {
		case !activator.IsWriteError(err) && !fc.gone():
			// The app broke the response halfway: the client must see a
			// cut connection, not a complete-looking short body.
			a.ResponseCut(inst, fc.rq.Method(), fc.rq.Path(), err)
		case errors.Is(err, os.ErrDeadlineExceeded):
			a.Logger().Info("client cut: it took none of its response", "for", a.Config().EffectiveSendTimeout(), "client", fc.ip)
		}
		fc.cut = true
		return activator.ExchangeResult{Answered: true}, false
	}
	return activator.ExchangeResult{Answered: true}, r.KeepsConn() && uc.br.Buffered() == 0
}

// fill waits until uc has need bytes buffered (need <= its size). Before
// it blocks, what the client is owed is flushed; when the wait is long,
// the client is watched, and its going away ends the wait. hard bounds the
// wait (zero: no bound).
func (fc *frontConn) fill(uc *upConn, need int, hard time.Time) error {
	if uc.br.Buffered() >= need {
		return nil
	}
	if err := fc.bw.Flush(); err != nil {
		return activator.WriteError{Err: err}
	}
	soft := time.Now().Add(watchAfter)
	if !hard.IsZero() && hard.Before(soft) {
		soft = hard
	}
	uc.c.SetReadDeadline(soft)
	_, err := uc.br.Peek(need)
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || soft.Equal(hard) {
		return err
	}
	stop := fc.watch(uc.c)
	uc.c.SetReadDeadline(hard)
	_, err = uc.br.Peek(need)
	stop()
	if err != nil && fc.gone() {
		return errClientGone
	}
	return err
}

// readResponse reads the app's response head off uc, 1xx interim
// responses dropped (as nginx and net/http's Transport do), and appends
// what the client gets to out (h1.AppendResponseHead, whose false is
// activator.ErrBadResponse). With upgrade (the request asked for one), a 101 is
// returned as it came, in line, with r.status 101 and out untouched. fill
// waits until uc has need bytes buffered. It is how every path but the
// event loop reads a response head.
func (uc *upConn) readResponse(line, out []byte, r *h1.Response, upgrade bool, fill func(need int) error) (_, _ []byte, err error) {
	for {
		if line, err = uc.readHead(line[:0], fill); err != nil {
			return line, out, err
		}
		if upgrade && len(line) >= 12 && string(line[:9]) == "HTTP/1.1 " && string(line[9:12]) == "101" {
			*r = h1.Response{Status: 101, NoBody: true, Length: -1}
			return line, out, nil
		}
		var ok bool
		if out, ok = h1.AppendResponseHead(out[:0], line, r); !ok {
			return line, out, activator.ErrBadResponse
		}
		if r.Status >= 200 {
			return line, out, nil
		}
	}
}

// readHead reads one response head off uc and appends it to line.
func (uc *upConn) readHead(line []byte, fill func(need int) error) ([]byte, error) {
	for {
		if err := fill(1); err != nil {
			return line, err
		}
		buf, _ := uc.br.Peek(uc.br.Buffered())
		m := len(line)
		if m == 0 {
			if n := h1.HeadEnd(buf, 0); n >= 0 {
				line = append(line, buf[:n]...)
				uc.br.Discard(n)
				return line, nil
			}
		}
		line = append(line, buf...)
		if n := h1.HeadEnd(line, max(0, m-2)); n >= 0 {
			uc.br.Discard(n - m)
			return line[:n], nil
		}
		uc.br.Discard(len(buf))
		if len(line) > maxResponseHead {
			return line, activator.ErrBadResponse
		}
	}
}

// copyN passes n body bytes on; a large body goes with splice(2), from
// socket to socket, once the buffered part is out.
func (fc *frontConn) copyN(uc *upConn, n int64) error {
	for n > 0 {
		if uc.br.Buffered() == 0 && n >= spliceMin {
			if dst, ok := fc.c.(*net.TCPConn); ok {
				if _, ok := uc.c.(*net.TCPConn); ok {
					return fc.splice(dst, uc, n)
				}
			}
		}
		if err := fc.fill(uc, 1, time.Time{}); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		k := int(min(n, int64(uc.br.Buffered())))
		p, _ := uc.br.Peek(k)
		if _, err := fc.bw.Write(p); err != nil {
			return activator.WriteError{Err: err}
		}
		uc.br.Discard(k)
		n -= int64(k)
	}
	return nil
}

// splice passes the last n bytes of a body on, from the app's socket to the
// client's without copying them through rouse. The client is watched all
// along: the copy ends when it goes away.
func (fc *frontConn) splice(dst *net.TCPConn, uc *upConn, n int64) error {
	if err := fc.bw.Flush(); err != nil {
		return activator.WriteError{Err: err}
	}
	uc.c.SetReadDeadline(time.Time{})
	stop := fc.watch(uc.c)
	src := &io.LimitedReader{R: uc.c}
	var err error
	for n > 0 && err == nil {
		// In steps, each with sendTimeout: a client that takes nothing
		// for that long is cut, a slow one is not.
		step := min(n, spliceStep)
		src.N = step
		dst.SetWriteDeadline(time.Now().Add(fc.sendTimeout()))
		_, err = dst.ReadFrom(src)
		n -= step - src.N
		fc.sent += step - src.N
		if src.N > 0 {
			break // the app closed early
		}
	}
	stop()
	switch {
	case fc.gone():
		return errClientGone
	case err != nil:
		// The error does not say whose side failed: not counted against
		// the app.
		return activator.WriteError{Err: err}
	case n > 0:
		return io.ErrUnexpectedEOF // the app closed early
	}
	return nil
}

// copyToEOF passes on a body that ends when the app closes the connection.
func (fc *frontConn) copyToEOF(uc *upConn) error {
	for {
		if err := fc.fill(uc, 1, time.Time{}); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if err := fc.copyN(uc, int64(uc.br.Buffered())); err != nil {
			return err
		}
	}
}

// copyChunked passes on a chunked body as it comes, unchanged, trailers
// included: h1.ChunkScanner finds its end, as in the event loop. The data of
// a large chunk goes with copyN (spliced).
func (fc *frontConn) copyChunked(uc *upConn) error {
	var s h1.ChunkScanner
	for {
		if n := s.DataLeft(); n >= spliceMin && uc.br.Buffered() == 0 {
			if err := fc.copyN(uc, n); err != nil {
				return err
			}
			s.Passed(n)
		}
		if err := fc.fill(uc, 1, time.Time{}); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		p, _ := uc.br.Peek(uc.br.Buffered())
		n, done, err := s.Feed(p)
		if _, werr := fc.bw.Write(p[:n]); werr != nil {
			return activator.WriteError{Err: werr}
		}
		uc.br.Discard(n)
		switch {
		case err != nil:
			return activator.ErrBadResponse
		case done:
			return nil
		}
	}
}
