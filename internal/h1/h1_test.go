package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strings"
	"testing"
)

// FuzzH1Heads checks the front's own HTTP/1.1 parsing. A request head it
// accepts must reach the app as the same request, as net/http reads it
// (same method, target, Host and body length, nothing smuggled in); a
// response head from an app must never make it panic, and what it passes
// on must be a well-formed head.
func FuzzH1Heads(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x?y=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 3\r\nConnection: close\r\nTe: trailers\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nForwarded: for=x\r\nKeep-Alive: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
		"HTTP/1.0 204\nTransfer-Encoding: gzip, chunked\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		var r Response
		if out, ok := AppendResponseHead(nil, head, &r); ok {
			if !strings.HasPrefix(string(out), "HTTP/1.1 ") || !strings.HasSuffix(string(out), "\r\n") {
				t.Fatalf("response head %q passed on as %q", head, out)
			}
			for line := range strings.Lines(string(out)) {
				if !strings.HasSuffix(line, "\r\n") || strings.ContainsAny(strings.TrimSuffix(line, "\r\n"), "\r\n") {
					t.Fatalf("response head %q passed on with line %q", head, line)
				}
			}
		}
		n := HeadEnd(head, 0)
		if n < 0 {
			return
		}
		// A head net/http's server would read with Transfer-Encoding and
		// Content-Length, or Transfer-Encoding in HTTP/1.0, the front
		// rejects before it gets there.
		if req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head[:n]))); err == nil {
			tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head[:n])))
			tp.ReadLine()
			hdr, _ := tp.ReadMIMEHeader()
			_, te := hdr["Transfer-Encoding"]
			_, cl := hdr["Content-Length"]
			if te && (cl || !req.ProtoAtLeast(1, 1)) && !AmbiguousFraming(head[:n]) {
				t.Fatalf("request %q: net/http reads Transfer-Encoding with Content-Length or in HTTP/1.0, the front does not", head[:n])
			}
		}
		var h Request
		if !ParseRequest(head[:n], &h) {
			return
		}
		out := AppendOutgoing(nil, head[:n], &h, "127.0.0.1")
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(out)))
		if err != nil {
			t.Fatalf("request %q accepted, sent as %q, which net/http rejects: %v", head[:n], out, err)
		}
		if req.Method != string(h.Method) || req.RequestURI != string(h.Target) || req.Host != string(h.Host) ||
			req.ContentLength != h.ContentLength || len(req.TransferEncoding) > 0 {
			t.Fatalf("request %q sent as %q: read back as %s %s host %q length %d %v", head[:n], out,
				req.Method, req.RequestURI, req.Host, req.ContentLength, req.TransferEncoding)
		}
		if got := req.Header.Values("X-Forwarded-For"); len(got) != 1 || got[0] != "127.0.0.1" {
			t.Fatalf("request %q sent as %q: X-Forwarded-For %q", head[:n], out, got)
		}
	})
}

// FuzzChunkScanner checks the loop's chunked-body follower: fed all at
// once or in pieces it finds the same end; and every chunked body that
// net/http's reader reads whole, followed by an empty trailer section, it
// follows to exactly that end (it may accept more: bare LF after a chunk's
// data, longer lines).
func FuzzChunkScanner(f *testing.F) {
	for _, seed := range []string{
		"3\r\nabc\r\n0\r\n\r\n",
		"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nnext",
		"A\nabcdefghij\n0\n\n",
		"0000000000000003\r\nabc\r\n0\r\n\r\n",
		"3 \t;ext\r\nabc\r\n0\r\n\r\n",
		"zz\r\n",
		"3\r\nabcX",
		"ffffffffffffffff\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		whole := feedPieces(p, len(p)+1)
		for _, size := range []int{1, 3, 16} {
			if got := feedPieces(p, size); got != whole {
				t.Fatalf("%q in pieces of %d: %+v; whole: %+v", p, size, got, whole)
			}
		}
		if whole.n > len(p) || (whole.done && whole.failed) {
			t.Fatalf("%q: %+v", p, whole)
		}
		rd := bytes.NewReader(p)
		br := bufio.NewReader(rd)
		if _, err := io.Copy(io.Discard, httputil.NewChunkedReader(br)); err != nil {
			return
		}
		end := len(p) - rd.Len() - br.Buffered() // past the last chunk's size line
		if !bytes.HasPrefix(p[end:], []byte("\r\n")) {
			return // trailers, or the body is not over: not compared
		}
		if whole.failed && whole.n < len(p) && isCTL(p[whole.n]) {
			return // a control byte in a size line, which net/http lets pass in an extension: refused, as RFC 9112 7.1.1 has it
		}
		if !whole.done || whole.n != end+2 {
			t.Fatalf("%q: net/http reads a body of %d bytes, the scanner %+v", p, end+2, whole)
		}
	})
}

// isCTL reports whether b is a control byte other than HTAB, CR and LF.
func isCTL(b byte) bool { return (b < 0x20 && b != '\t' && b != '\r' && b != '\n') || b == 0x7f }

type scanResult struct {
	n            int
	done, failed bool
}

// feedPieces feeds p to a ChunkScanner size bytes at a time.
func feedPieces(p []byte, size int) scanResult {
	var s ChunkScanner
	var r scanResult
	for len(p) > 0 {
		k := min(size, len(p))
		n, done, err := s.Feed(p[:k])
		r.n += n
		if err != nil {
			r.failed = true
			return r
		}
		if done {
			r.done = true
			return r
		}
		p = p[k:]
	}
	return r
}

func TestChunkScanner(t *testing.T) {
	for _, tc := range []struct {
		body string
		n    int // where the body ends, or fails; -1: not over
		ok   bool
	}{
		{"3\r\nabc\r\n0\r\n\r\n", 13, true},
		{"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK", 13, true}, // what follows is not the body's
		{"3;name=\"v;x\"\r\nabc\r\n0\r\nX-Sum: 42\r\nX-B: 1\r\n\r\n", 43, true},
		{"A\nabcdefghij\n0\n\n", 16, true},
		{"0000000000000003\r\nabc\r\n0\r\n\r\n", 28, true},
		{"3\r\nabc\r\n0\r\nX-Sum: 4", -1, true},
		{"3\r\nab", -1, true},
		{"", -1, true},
		{"zz\r\n", 0, false},
		{"3x\r\nabc\r\n", 1, false},
		{"3\r\nabcX", 6, false},
		{"00000000000000003\r\n", 16, false}, // 17 digits
		{"3\r\nabc\r\n0\r\n" + strings.Repeat("X: y\r\n", maxChunkLine/6+1) + "\r\n", -2, false},
		// A CR is a line's end or an error, never passed on alone.
		{"3\rx\r\nabc\r\n0\r\n\r\n", 2, false},
		{"3;a\rb\r\nabc\r\n0\r\n\r\n", 4, false},
		{"3\r\r\nabc\r\n0\r\n\r\n", 2, false},
		{"3\r\nabc\r\n0\r\n\r\r\n", 12, false},
		{"3\r\nabc\r\n0\r\nX: \x00\r\n\r\n", 14, false},
		{"3;a=\x01\r\nabc\r\n0\r\n\r\n", 4, false},
	} {
		got := feedPieces([]byte(tc.body), len(tc.body)+1)
		switch {
		case !tc.ok && !got.failed, tc.ok && got.failed:
			t.Errorf("%.40q: %+v, want ok %v", tc.body, got, tc.ok)
		case tc.n >= 0 && got.n != tc.n:
			t.Errorf("%.40q: %+v, want n %d", tc.body, got, tc.n)
		case tc.ok && got.done != (tc.n >= 0):
			t.Errorf("%.40q: %+v, want done %v", tc.body, got, tc.n >= 0)
		}
	}
}

func TestNotARequest(t *testing.T) {
	for _, c := range []struct {
		in   string
		want bool
	}{
		{"PING\r\n", true},
		{"*1\r\n$4\r\nPING\r\n", true}, // Redis's protocol
		{"EHLO mail.example\r\n", true},
		{"SSH-2.0-OpenSSH_9.2\r\n", true},
		{"GET / HTTP/1.1\r\n", false},
		{"GET / HTTP/1.1\n", false},
		{"GET http://x/ HTTP/1.0\r\nHost", false},
		{"PRI * HTTP/2.0\r\n", false},
		{"GET / HTTP/1.1", false}, // the line is not complete yet
		{"GET /", false},
		{"\r\nGET / HTTP/1.1\r\n", false}, // an empty line first: the head's rules
		{"GET /a b HTTP/1.1\r\n", false},  // a space in the target: net/http's 400, not this
		{"G@T / HTTP/1.1\r\n", true},
		{"GET / HTTP/1\r\n", true},
		{"GET / http/1.1\r\n", true},
		{"GET /\r\n", true},
		{" GET / HTTP/1.1\r\n", true},
	} {
		if got := NotARequest([]byte(c.in)); got != c.want {
			t.Errorf("NotARequest(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}
