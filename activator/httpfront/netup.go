package httpfront

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rouse-dev/rouse/activator"
	"github.com/rouse-dev/rouse/internal/h1"
)

// The app's side of a request net/http's server read (httpRequest): it
// goes over the front's own connections to the app (httpUpstream.get, so
// a kept one is taken only when reusable, and new ones are paced by the
// activator.DialGate), its response head is read and checked by the same functions
// as the front's (readResponse, h1.AppendResponseHead, h1.ChunkScanner), and it
// is passed on through net/http's ResponseWriter, which frames it for the
// client.

// syncWriteMax is the largest request written to the app before its
// response is read; a larger one, or a body streamed from the client, is
// written meanwhile, as the app may answer before it read it all.
const syncWriteMax = 64 << 10

// bodyReadError is the client's failure to send its request body, met
// while it was being streamed to the app: answered by App.BodyFailed, not
// held against the app.
type bodyReadError struct{ error }

func (e bodyReadError) Unwrap() error { return e.error }

// netExchange is one attempt of a request net/http's server read, over
// one connection to the app.
type netExchange struct {
	a    *activator.App
	w    http.ResponseWriter
	r    *http.Request
	inst *activator.Instance
	uc   *upConn
	head []byte // the request head to send
	body *requestBody

	mu      sync.Mutex
	sent    bool          // request bytes reached the app
	reading bool          // the response head is being read: a writer done gives it response_timeout
	wrote   chan error    // the writer's end, when the request is written meanwhile
	hard    time.Duration // response_timeout
	stop    func() bool   // stops the watch on the client
}

// exchange sends the request to inst's process once (with the quiet retry
// of a dead kept connection) and passes the response on.
func (q *httpRequest) Exchange(inst *activator.Instance) activator.ExchangeResult {
	head, err := requestHead(q.a, q.r, q.body)
	if err != nil {
		return activator.ExchangeResult{Err: err, Stage: activator.StageRejected}
	}
	attempt := func() (activator.ExchangeResult, bool) {
		uc, err := upstreamOf(q.a).get(q.r.Context(), inst)
		if err != nil {
			return activator.ExchangeResult{Err: err, Stage: activator.StageDial}, false
		}
		reused := uc.reused // read before the exchange may put uc back in the pool
		x := &netExchange{a: q.a, w: q.w, r: q.r, inst: inst, uc: uc, head: head, body: q.body}
		return x.run(), reused
	}
	res, reused := attempt()
	res = q.a.RetryQuietly(q, res, reused, attempt)
	q.cut = res.Cut
	var be bodyReadError
	if res.Err != nil && !res.Answered && errors.As(res.Err, &be) {
		// The client stalled or broke a body streamed to the app: its
		// fault, not the app's.
		q.a.BodyFailed(q.w, be.error)
		return activator.ExchangeResult{Answered: true}
	}
	return res
}

// requestHead builds the head sent to the app: the request line with the
// target as the client sent it (in origin form if it was absolute), Host,
// the headers (outgoingHeader) and the body's framing: Content-Length for
// a body read whole or of a known length, chunked for the rest.
func requestHead(a *activator.App, r *http.Request, body *requestBody) ([]byte, error) {
	switch {
	case r.Host == "":
		return nil, errors.New("no Host in the request") // an HTTP/1.0 one: the app is sent HTTP/1.1
	case r.Method == http.MethodConnect:
		// Its 2xx would make the connection a tunnel, which rouse, in
		// front of one app, does not open.
		return nil, errors.New("CONNECT is for forward proxies")
	}
	target := r.RequestURI
	if absoluteForm(target) {
		target = r.URL.RequestURI()
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, target, r.Host)
	outgoingHeader(a, r).Write(&b)
	switch {
	case body.rest == nil && (len(body.buf) > 0 || len(r.TransferEncoding) > 0 || r.Header.Get("Content-Length") != ""):
		// Read whole: sent with a Content-Length, which every app reads
		// (not all read a chunked request body).
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body.buf))
	case body.rest != nil && r.ContentLength >= 0:
		fmt.Fprintf(&b, "Content-Length: %d\r\n", r.ContentLength)
	case body.rest != nil:
		b.WriteString("Transfer-Encoding: chunked\r\n")
	}
	b.WriteString("\r\n")
	return b.Bytes(), nil
}

// outgoingHeader is the request's header as the app gets it: minus
// hop-by-hop headers and framing, plus X-Forwarded-*.
func outgoingHeader(a *activator.App, r *http.Request) http.Header {
	h := r.Header.Clone()
	h1.RemoveHopHeaders(h)
	h.Del("Content-Length") // the body's own framing is set apart
	h.Del("Expect")         // rouse already has the body, or streams it now
	if up := upgradeType(r.Header); up != "" {
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", up)
	}
	if r.Header.Get("Te") == "trailers" {
		h.Set("Te", "trailers")
	}
	setForwarded(a, r, h)
	return h
}

// run sends the request and passes the response on; it keeps uc for the
// next request or closes it.
func (x *netExchange) run() (res activator.ExchangeResult) {
	uc, ctx := x.uc, x.r.Context()
	x.hard = x.a.Config().ResponseTimeout
	uc.c.SetDeadline(time.Time{})
	// The client going away ends the exchange: nothing on uc is of use
	// then.
	x.stop = context.AfterFunc(ctx, func() { uc.c.Close() })
	keep := false
	defer func() {
		if !x.stop() {
			keep = false
		}
		if !keep {
			uc.c.Close()
		}
		if x.wrote != nil {
			<-x.wrote // (uc is closed when the writer is not done)
		}
		if keep {
			upstreamOf(x.a).put(uc)
		}
	}()
	if x.body.rest == nil && len(x.head)+len(x.body.buf) <= syncWriteMax {
		if err := x.write(); err != nil {
			return x.failed(err)
		}
		x.reading = true
		x.setHard()
	} else {
		x.wrote = make(chan error, 1)
		x.mu.Lock()
		x.reading = true
		x.mu.Unlock()
		go func() {
			err := x.write()
			var be bodyReadError
			if errors.As(err, &be) {
				uc.c.Close() // the request cannot go whole: nor can a response come
			} else if err == nil {
				x.mu.Lock()
				if x.reading {
					x.setHard()
				}
				x.mu.Unlock()
			}
			x.wrote <- err
		}()
	}
	res, keep = x.relay()
	if res.Err != nil && x.wrote != nil {
		// The writer's error says more (the client's body failed, or the
		// app closed the connection as it came).
		uc.c.Close()
		if err := <-x.wrote; err != nil {
			res.Err = err
		}
		x.wrote = nil
	}
	if res.Err == nil && x.wrote != nil {
		select {
		case err := <-x.wrote:
			x.wrote, keep = nil, keep && err == nil
		default:
			// The app answered before it read the whole request: the
			// rest of it is still on its way, and the writer may wait
			// for the client's next bytes; the answer may not.
			keep = false
			if tb, ok := x.r.Body.(*timedBody); ok {
				tb.end()
			}
		}
	}
	return res
}

// failed is the result of an attempt that got no response.
func (x *netExchange) failed(err error) activator.ExchangeResult {
	x.mu.Lock()
	sent := x.sent
	x.mu.Unlock()
	timeout := activator.IsTimeout(err) && x.r.Context().Err() == nil
	return activator.ExchangeResult{Err: err, Sent: sent, Timeout: timeout, Stage: activator.StageConnected}
}

// setHard gives the app response_timeout from now for its response head.
func (x *netExchange) setHard() {
	if x.hard > 0 {
		x.uc.c.SetReadDeadline(time.Now().Add(x.hard))
	}
}

// write sends the request: head and body.
func (x *netExchange) write() error {
	c := x.uc.c
	chunked := x.body.rest != nil && x.r.ContentLength < 0
	bufs := net.Buffers{x.head, x.body.buf}
	if chunked && len(x.body.buf) > 0 {
		bufs = net.Buffers{x.head, chunkSize(len(x.body.buf)), x.body.buf, crlf}
	}
	n, err := bufs.WriteTo(c)
	if n > 0 {
		x.mu.Lock()
		x.sent = true
		x.mu.Unlock()
	}
	if err != nil || x.body.rest == nil {
		return err
	}
	rest := consumeReader{x.body}
	bw := bufio.NewWriterSize(c, 32<<10)
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	for {
		n, err := rest.Read(*buf)
		if n > 0 {
			if chunked {
				bw.Write(chunkSize(n))
			}
			bw.Write((*buf)[:n])
			if chunked {
				bw.Write(crlf)
			}
			if werr := bw.Flush(); werr != nil {
				return werr
			}
		}
		switch {
		case err == io.EOF:
			if chunked {
				bw.WriteString("0\r\n")
				x.r.Trailer.Write(bw)
				bw.WriteString("\r\n")
			}
			return bw.Flush()
		case err != nil:
			return bodyReadError{err}
		}
	}
}

var crlf = []byte("\r\n")

// chunkSize is the line that begins a chunk of n bytes.
func chunkSize(n int) []byte { return []byte(strconv.FormatInt(int64(n), 16) + "\r\n") }

// relay reads the app's response and passes it on; keep says uc may
// serve another request (once the writer is done).
func (x *netExchange) relay() (res activator.ExchangeResult, keep bool) {
	a, w, r, uc := x.a, x.w, x.r, x.uc
	upgrade := upgradeType(r.Header) != ""
	var rh h1.Response
	line, out, err := uc.readResponse(nil, nil, &rh, upgrade, func(need int) error {
		_, err := uc.br.Peek(need)
		return err
	})
	x.mu.Lock()
	x.reading = false
	x.mu.Unlock()
	if err != nil {
		return x.failed(err), false
	}
	uc.c.SetReadDeadline(time.Time{})
	a.CountResponse(rh.Status)
	if rh.Status == http.StatusSwitchingProtocols {
		return x.upgrade(line), false
	}
	if r.Method == http.MethodHead {
		rh.NoBody = true
	}
	h := w.Header()
	if !copyResponseHeader(h, out) {
		return x.failed(activator.ErrBadResponse), false
	}
	if rh.BodyUntilClose() {
		h.Set("Connection", "close")
	}
	// A response of unknown length (SSE, streaming) is flushed as it
	// comes; one of known length is left to net/http's buffering.
	dst := clientWriter{w: w, rc: http.NewResponseController(w), timeout: a.Config().EffectiveSendTimeout()}
	dst.flush = rh.Length < 0
	dst.deadline() // for the head, written with the first bytes of the body or at the end
	w.WriteHeader(rh.Status)
	body := &responseBody{br: uc.br, left: rh.Length, chunked: rh.Chunked && !rh.NoBody}
	switch {
	case rh.NoBody:
		body.left = 0
	case rh.BodyUntilClose():
		body.left = -1
	}
	buf := copyBufs.Get().(*[]byte)
	_, err = io.CopyBuffer(dst, body, *buf)
	copyBufs.Put(buf)
	if err != nil {
		if r.Context().Err() == nil && !activator.IsWriteError(err) {
			// The app broke the response halfway: the client must see a
			// cut connection, not a complete-looking short body.
			a.ResponseCut(x.inst, r.Method, r.URL.Path, err)
		}
		return activator.ExchangeResult{Answered: true, Cut: true}, false
	}
	for k, vv := range body.trailer {
		h[http.TrailerPrefix+k] = vv
	}
	return activator.ExchangeResult{Answered: true}, rh.KeepsConn() && uc.br.Buffered() == 0
}

// copyResponseHeader puts the headers of a response head from
// h1.AppendResponseHead in h, without its framing (net/http's server frames
// the body its own way); the trailers it announces are announced in turn.
func copyResponseHeader(h http.Header, head []byte) bool {
	_, lines := h1.NextLine(head)
	return h1.EachField(lines, func(name, value []byte) {
		switch k := http.CanonicalHeaderKey(string(name)); k {
		case "Transfer-Encoding":
		case "Trailer":
			for t := range strings.SplitSeq(string(value), ",") {
				if t = http.CanonicalHeaderKey(strings.TrimSpace(t)); t != "" {
					h.Add("Trailer", t)
				}
			}
		default:
			h[k] = append(h[k], string(value))
		}
	})
}

// responseBody reads a response body off the app's connection, as framed
// by its head: left bytes (-1: until the app closes), or chunked, which it
// de-chunks (h1.ChunkScanner checks the framing), keeping the trailers.
type responseBody struct {
	br      *bufio.Reader
	left    int64
	chunked bool
	s       h1.ChunkScanner
	trail   []byte
	trailer http.Header
}

func (b *responseBody) Read(p []byte) (int, error) {
	switch {
	case b.chunked:
		return b.readChunked(p)
	case b.left == 0:
		return 0, io.EOF
	case b.left > 0 && int64(len(p)) > b.left:
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	if n > 0 {
		return n, nil
	}
	return n, err
}

// readChunked reads the data of the chunks.
func (b *responseBody) readChunked(p []byte) (int, error) {
	for {
		if b.s.Done() {
			return 0, io.EOF
		}
		if left := b.s.DataLeft(); left > 0 {
			n, err := b.br.Read(p[:min(int64(len(p)), left)])
			b.s.Passed(int64(n))
			if n > 0 {
				return n, nil
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if _, err := b.br.Peek(1); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		// The framing between data, a byte at a time: a few bytes.
		buf, _ := b.br.Peek(b.br.Buffered())
		i := 0
		for ; i < len(buf) && b.s.DataLeft() == 0 && !b.s.Done(); i++ {
			trailer := b.s.InTrailer()
			if _, _, err := b.s.Feed(buf[i : i+1]); err != nil {
				return 0, activator.ErrBadResponse
			}
			if trailer {
				b.trail = append(b.trail, buf[i])
			}
		}
		b.br.Discard(i)
		if b.s.Done() {
			if err := b.parseTrailer(); err != nil {
				return 0, err
			}
		}
	}
}

// parseTrailer reads the trailer lines (checked by h1.ChunkScanner) into
// b.trailer.
func (b *responseBody) parseTrailer() error {
	b.trailer = make(http.Header)
	if !h1.EachField(b.trail, func(name, value []byte) { b.trailer.Add(string(name), string(value)) }) {
		return activator.ErrBadResponse
	}
	return nil
}

// upgrade connects a client whose request the app answered with 101
// Switching Protocols (WebSocket and the like) to the app, byte for byte.
// The open connection counts as activity until both sides are done.
func (x *netExchange) upgrade(head []byte) activator.ExchangeResult {
	a, w, r, uc := x.a, x.w, x.r, x.uc
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), r)
	if err != nil {
		return x.failed(activator.ErrBadResponse)
	}
	if x.wrote != nil || !x.stop() {
		// A request streamed to the app does not switch protocols; a
		// client gone needs no tunnel.
		return x.failed(activator.ErrBadResponse)
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return activator.ExchangeResult{Answered: true}
	}
	defer conn.Close()
	// The request's slot stays taken while the connection is open: it
	// keeps the app up, and the caller releases it when this returns.
	if !a.Adopt(x.inst, conn, uc.c) {
		return activator.ExchangeResult{Answered: true}
	}
	defer a.Forget(x.inst, conn, uc.c)
	proto := resp.Header.Get("Upgrade")
	h1.RemoveHopHeaders(resp.Header)
	resp.Header.Set("Connection", "Upgrade")
	resp.Header.Set("Upgrade", proto)
	if tw, ok := w.(*trackedWriter); ok {
		tw.addServerTiming(resp.Header) // the 101 is written here, not by w
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	resp.Header.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		return activator.ExchangeResult{Answered: true}
	}
	conn.SetDeadline(time.Time{})
	// The upgraded connection to the app cannot be half-closed, so when
	// either side is done both are closed.
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(uc.c, brw) // brw first holds what the client sent after its request
		uc.c.Close()
	}()
	io.Copy(conn, uc.br) // uc.br first holds what the app sent after its 101
	conn.Close()
	uc.c.Close()
	<-done
	return activator.ExchangeResult{Answered: true}
}
