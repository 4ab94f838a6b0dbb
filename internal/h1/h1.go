package h1

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"
)

// ErrBadResponse is what ChunkScanner returns for a body whose framing is
// not to be passed on; callers also return it for a malformed head.
var ErrBadResponse = errors.New("the app sent a malformed response")

// tchar reports whether c may appear in a token (RFC 9110 5.6.2).
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// NotARequest reports whether b, the start of what a client sent, has a
// first line that no request can begin with: complete (it ends in LF),
// not empty, and not method SP target SP HTTP/d.d. A client that is not
// speaking HTTP (a Redis or SMTP client pointed at an http app) is then
// answered 400 at once instead of after header_timeout; whatever may
// still be a request is left to the head's end.
func NotARequest(b []byte) bool {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return false
	}
	line := bytes.TrimSuffix(b[:i], []byte("\r"))
	if len(line) == 0 {
		return false // an empty line before the request line: the head's rules
	}
	sp := bytes.IndexByte(line, ' ')
	last := bytes.LastIndexByte(line, ' ')
	if sp <= 0 || last == sp {
		return true
	}
	for _, c := range line[:sp] {
		if !tchar[c] {
			return true
		}
	}
	v := line[last+1:]
	return len(v) != 8 || string(v[:5]) != "HTTP/" || v[5] < '0' || v[5] > '9' || v[6] != '.' || v[7] < '0' || v[7] > '9'
}

// HeadEnd returns the length of the head at the start of b: up to and
// including its empty line ("\n\r\n" or "\n\n" ends it). It returns -1 when
// b holds no complete head. from is where to start looking, for a caller
// that searched part of b before.
func HeadEnd(b []byte, from int) int {
	for i := from; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		}
	}
	return -1
}

// Request is what the front needs to know of a request head it parsed.
type Request struct {
	Method, Target, Host []byte // slices of the head
	Referer, UserAgent   []byte // for the access log
	ContentLength        int64
	Close                bool // Connection: close
	TETrailers           bool // TE: trailers, forwarded as the app may send trailers
	Forwarded            bool // the client sent X-Forwarded-* or Forwarded
	Lines                int  // header lines
}

// IsHead reports whether the request is a HEAD, whose response has no
// body whatever its head says.
func (h *Request) IsHead() bool { return string(h.Method) == http.MethodHead }

// ParseRequest parses head (as found by HeadEnd) into h. It returns
// false for anything the front leaves to net/http: an HTTP version other
// than 1.1, a target not in origin form, bare LF or obsolete line folding,
// a body framed other than by one Content-Length, Expect, Upgrade, and
// Connection options other than close and keep-alive.
func ParseRequest(head []byte, h *Request) bool {
	*h = Request{}
	line, rest, ok := cutLine(head)
	if !ok {
		return false
	}
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return false
	}
	h.Method, line = line[:sp], line[sp+1:]
	sp = bytes.IndexByte(line, ' ')
	if sp <= 0 || string(line[sp+1:]) != "HTTP/1.1" {
		return false
	}
	h.Target = line[:sp]
	for _, c := range h.Method {
		if !tchar[c] {
			return false
		}
	}
	if h.Target[0] != '/' {
		return false
	}
	for _, c := range h.Target {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	sawHost, sawLength := false, false
	for {
		if line, rest, ok = cutLine(rest); !ok {
			return false
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := splitHeader(line)
		if !ok {
			return false
		}
		h.Lines++
		switch {
		case foldEq(name, "host"):
			if sawHost || !ValidHost(value) {
				return false
			}
			sawHost, h.Host = true, value
		case foldEq(name, "content-length"):
			n, ok := parseLength(value)
			if sawLength || !ok {
				return false
			}
			sawLength, h.ContentLength = true, n
		case foldEq(name, "connection"):
			if !connectionTokens(value, &h.Close) {
				return false
			}
		case foldEq(name, "te"):
			h.TETrailers = foldEq(value, "trailers")
		case foldEq(name, "referer"):
			h.Referer = value
		case foldEq(name, "user-agent"):
			h.UserAgent = value
		case foldEq(name, "transfer-encoding"), foldEq(name, "expect"), foldEq(name, "upgrade"):
			return false
		case ForwardedHeader(name):
			h.Forwarded = true
		}
	}
	return sawHost && len(rest) == 0
}

// AmbiguousFraming reports whether a request head (whole, as HeadEnd
// found it) frames its body in a way RFC 9112 6.1 says to treat as
// faulty: Transfer-Encoding with Content-Length, or before HTTP/1.1 (which
// net/http's server ignores there, reading what follows as the next
// request). The front answers those 400 and closes the connection before
// net/http's server would see them; and it closes the connection after any
// chunked request that server reads itself.
func AmbiguousFraming(head []byte) bool {
	line, rest := NextLine(head)
	major, minor, ok := http.ParseHTTPVersion(string(line[bytes.LastIndexByte(line, ' ')+1:]))
	old := !ok || major < 1 || (major == 1 && minor < 1)
	te, cl := false, false
	for {
		if line, rest = NextLine(rest); len(line) == 0 {
			return te && (cl || old)
		}
		if i := bytes.IndexByte(line, ':'); i > 0 {
			name := bytes.TrimRight(line[:i], " \t")
			te = te || foldEq(name, "transfer-encoding")
			cl = cl || foldEq(name, "content-length")
		}
	}
}

// AmbiguousFramingText is the body of the 400 that answers AmbiguousFraming.
const AmbiguousFramingText = "400 Bad Request: rouse: a request with Transfer-Encoding must be HTTP/1.1 and have no Content-Length\n"

// AppendOutgoing appends the head to send to the app: h's request line and
// headers without the hop-by-hop ones and the client's X-Forwarded-*, then
// rouse's X-Forwarded-* (ip is the client's, "" for a unix socket).
func AppendOutgoing(out, head []byte, h *Request, ip string) []byte {
	out = append(out, h.Method...)
	out = append(out, ' ')
	out = append(out, h.Target...)
	out = append(out, " HTTP/1.1\r\n"...)
	_, rest, _ := cutLine(head)
	for {
		var line []byte
		line, rest, _ = cutLine(rest)
		if len(line) == 0 {
			break
		}
		name, _, _ := splitHeader(line)
		if hopByHop(name) || ForwardedHeader(name) {
			continue
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	if h.TETrailers {
		out = append(out, "Te: trailers\r\n"...)
	}
	if ip != "" {
		out = append(out, "X-Forwarded-For: "...)
		out = append(out, ip...)
		out = append(out, '\r', '\n')
	}
	out = append(out, "X-Forwarded-Proto: http\r\nX-Forwarded-Host: "...)
	out = append(out, h.Host...)
	return append(out, "\r\n\r\n"...)
}

// hopHeaders are meant for one connection, not to be forwarded (RFC 9110
// 7.6.1), as in net/http/httputil.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// RemoveHopHeaders deletes from h the hop-by-hop headers and those its
// Connection header names: the rule of hopByHop for a parsed http.Header
// (net/http's server's requests).
func RemoveHopHeaders(h http.Header) {
	for _, f := range h.Values("Connection") {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = http.CanonicalHeaderKey(strings.TrimSpace(sf)); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// hopByHop reports whether a header is one of hopHeaders, which are meant
// for one connection only.
func hopByHop(name []byte) bool {
	for _, h := range hopHeadersLower {
		if foldEq(name, h) {
			return true
		}
	}
	return false
}

var hopHeadersLower = func() []string {
	l := make([]string, len(hopHeaders))
	for i, h := range hopHeaders {
		l[i] = strings.ToLower(h)
	}
	return l
}()

// ForwardedHeader is the one rule, on every path, for the request headers
// a client may not set: those rouse replaces with its own
// (X-Forwarded-For/-Proto/-Host) or drops (Forwarded). It reads '_' as '-':
// servers of the CGI convention (PHP, WSGI, Rack) map both to one variable
// (HTTP_X_FORWARDED_FOR), so X_Forwarded_For would pass for rouse's own.
func ForwardedHeader[S string | []byte](name S) bool {
	return cgiEq(name, "x-forwarded-for") || cgiEq(name, "x-forwarded-proto") ||
		cgiEq(name, "x-forwarded-host") || cgiEq(name, "forwarded")
}

// cgiEq reports whether name equals the lower-case s, ignoring case and
// reading '_' as '-'.
func cgiEq[S string | []byte](name S, s string) bool {
	if len(name) != len(s) {
		return false
	}
	for i := range len(s) {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '_':
			c = '-'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// RequestLine returns the method, the target and the protocol of a
// request head's first line.
func RequestLine(head []byte) (method, target, proto []byte) {
	line, _, _ := cutLine(head)
	if i := bytes.IndexByte(line, ' '); i >= 0 {
		method, target = line[:i], line[i+1:]
	}
	if i := bytes.IndexByte(target, ' '); i >= 0 {
		target, proto = target[:i], target[i+1:]
	}
	return method, target, proto
}

// HeaderValue returns the value of the first header called name (lower
// case) in the request head, as a slice of head; nil if there is none.
func HeaderValue(head []byte, name string) []byte {
	_, rest, _ := cutLine(head) // the request line
	for {
		line, more, ok := cutLine(rest)
		if !ok || len(line) == 0 {
			return nil
		}
		if n, v, ok := splitHeader(line); ok && foldEq(n, name) {
			return v
		}
		rest = more
	}
}

// EachField calls f with each field of header lines (a head past its
// first line, or trailers) up to an empty one; false if one is malformed.
func EachField(lines []byte, f func(name, value []byte)) bool {
	for {
		var line []byte
		if line, lines = NextLine(lines); len(line) == 0 {
			return true
		}
		name, value, ok := splitHeader(line)
		if !ok {
			return false
		}
		f(name, value)
	}
}

// cutLine cuts the first CRLF-terminated line off b. A bare LF is not
// accepted.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	return b[:i-1], b[i+1:], true
}

// splitHeader splits "Name: value" and trims the value; it rejects a name
// that is not a token (also one followed by white space), a folded line
// and control characters in the value.
func splitHeader(line []byte) (name, value []byte, ok bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return nil, nil, false
	}
	name, value = line[:i], line[i+1:]
	for _, c := range name {
		if !tchar[c] {
			return nil, nil, false
		}
	}
	for _, c := range value {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return nil, nil, false
		}
	}
	return name, trimOWS(value), true
}

// trimOWS trims spaces and tabs off both ends of b (bytes.Trim builds its
// set of bytes on every call: this is on every header line).
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// foldEq reports whether b equals the lower-case ASCII s, ignoring case.
func foldEq(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// ValidHost accepts a plain host name or address with an optional port:
// the one rule for a Host (and an absolute-form target's host), on every
// path, before it is routed or becomes X-Forwarded-Host.
func ValidHost[S string | []byte](v S) bool {
	if len(v) == 0 {
		return false
	}
	for i := range len(v) {
		switch c := v[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}

// parseLength parses a Content-Length value: digits only.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// connectionTokens reads a request's Connection header: close and
// keep-alive are understood, anything else (upgrade, or names of other
// hop-by-hop headers) is not.
func connectionTokens(v []byte, close *bool) bool {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			tok, v = v, nil
		}
		tok = trimOWS(tok)
		switch {
		case len(tok) == 0, foldEq(tok, "keep-alive"):
		case foldEq(tok, "close"):
			*close = true
		default:
			return false
		}
	}
	return true
}

// Response is what the front needs to know of a response head from an app.
type Response struct {
	Status  int
	HTTP10  bool
	Length  int64 // -1: none given
	Chunked bool
	Close   bool // Connection: close
	NoBody  bool // set by the caller for HEAD, and here for 1xx, 204, 304
}

// KeepsConn reports whether the app's connection may serve another request
// once this response is through (and then only with nothing unread after
// it: see reusable).
func (r *Response) KeepsConn() bool {
	return !r.Close && !r.HTTP10 && !r.BodyUntilClose()
}

// BodyUntilClose reports whether the body ends only when the app closes.
func (r *Response) BodyUntilClose() bool {
	return !r.NoBody && !r.Chunked && r.Length < 0
}

// AppendResponseHead parses a response head from an app (lenient about
// bare LF, like net/http's Transport) and appends what the client gets:
// the status line as HTTP/1.1 and the headers without the hop-by-hop ones.
// Content-Length (once) and Transfer-Encoding are kept: the body is passed
// on as it comes; a response without a body (1xx, 204, 304) loses both.
// The closing empty line is not appended.
//
// It is the one rule for the framing of responses on the front's paths,
// and returns false for what must be answered 502, never passed on:
// a malformed head, a Content-Length that is invalid or given twice with
// different values, Transfer-Encoding other than one "chunked", both
// (RFC 9112 6.3: ambiguous), Transfer-Encoding in HTTP/1.0, and 101 (the
// front never forwards an upgrade: net/http's server has those).
func AppendResponseHead(out, head []byte, r *Response) ([]byte, bool) {
	*r = Response{Length: -1}
	lines := head
	status, lines := NextLine(lines)
	if len(status) < 12 || string(status[:7]) != "HTTP/1." || (status[7] != '1' && status[7] != '0') || status[8] != ' ' {
		return out, false
	}
	r.HTTP10 = status[7] == '0'
	code, err := strconv.Atoi(string(status[9:12]))
	if err != nil || code < 100 || code > 599 || (len(status) > 12 && status[12] != ' ') {
		return out, false
	}
	for _, c := range status[12:] {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return out, false
		}
	}
	r.Status = code
	r.NoBody = code < 200 || code == 204 || code == 304
	out = append(out, "HTTP/1.1 "...)
	out = append(out, status[9:]...)
	out = append(out, '\r', '\n')
	// The Connection header may name other headers to drop, and may come
	// after them: read it first.
	var dropped [][]byte
	hasTE := false
	for l := lines; ; {
		var line []byte
		if line, l = NextLine(l); len(line) == 0 {
			break
		}
		if c := line[0] | 0x20; c != 'c' && c != 't' {
			continue // neither Connection nor Transfer-Encoding (each line is checked below)
		}
		name, value, ok := splitHeader(line)
		if !ok {
			return out, false
		}
		hasTE = hasTE || foldEq(name, "transfer-encoding")
		if foldEq(name, "connection") {
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = trimOWS(tok)
				switch {
				case foldEq(tok, "close"):
					r.Close = true
				case len(tok) > 0 && !foldEq(tok, "keep-alive"):
					dropped = append(dropped, tok)
				}
			}
		}
	}
	if r.Status == 101 || (hasTE && r.HTTP10) {
		return out, false
	}
	for {
		var line []byte
		if line, lines = NextLine(lines); len(line) == 0 {
			break
		}
		name, value, ok := splitHeader(line)
		if !ok {
			return out, false
		}
		switch {
		case foldEq(name, "content-length"):
			n, ok := parseLength(value)
			if !ok || (r.Length >= 0 && r.Length != n) || hasTE {
				return out, false
			}
			first := r.Length < 0
			r.Length = n
			if !first || r.NoBody {
				continue
			}
		case foldEq(name, "transfer-encoding"):
			if r.Chunked || !foldEq(value, "chunked") {
				return out, false // twice, or a coding rouse cannot frame, as nginx
			}
			r.Chunked = true
			if r.NoBody {
				continue
			}
		case droppedHeader(name, dropped):
			continue
		case hopByHop(name) && !foldEq(name, "trailer"):
			continue // Trailer stays: the chunked body passes with its trailers
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	if r.NoBody {
		r.Length, r.Chunked = -1, false
	}
	return out, true
}

func droppedHeader(name []byte, dropped [][]byte) bool {
	if len(dropped) == 0 || foldEq(name, "content-length") || foldEq(name, "transfer-encoding") {
		return false
	}
	for _, d := range dropped {
		if bytes.EqualFold(name, d) {
			return true
		}
	}
	return false
}

// NextLine cuts a line ending in LF or CRLF off b, without its ending.
func NextLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// ChunkScanner follows a chunked body as it passes through unchanged, to
// find where it ends: chunk-size lines (extensions allowed), the data of
// each chunk, and the trailer lines after the last, up to an empty one.
// Both the event loop and the goroutine path pass chunked bodies with it.
// As NextLine, it takes a bare LF for a line end; a CR anywhere but
// before a LF, and control characters in extensions and trailers, are
// errors: passed byte for byte, they could be read another way further on.
type ChunkScanner struct {
	state  int
	size   int64 // csSize: the size so far; csData: bytes of the chunk still to come
	digits int   // csSize: hex digits so far
	ext    bool  // csSizeLine: past a ';'
	line   int   // csSizeLine, csTrailer: bytes of the line so far, CR aside
	crlf   bool  // csDataEnd, csSizeLine, csTrailer: the CR came
	trail  int   // csTrailer: bytes of the trailers so far
}

const (
	csSize     = iota // hex digits of a chunk size
	csSizeLine        // the rest of the size line: spaces, extensions
	csData
	csDataEnd // the line end after a chunk's data
	csTrailer // lines after the last chunk, up to an empty one
	csDone
)

const (
	// maxChunkLine bounds a size line and the trailers, so that an
	// endless one is an error rather than a response that never ends.
	maxChunkLine = 64 << 10
	// maxChunkSize keeps a size in an int64; 16 hex digits are allowed,
	// as net/http reads them, leading zeros and all.
	maxChunkSize = 1<<62 - 1
)

// Feed takes the next bytes of the body; n of them belong to it, and done
// says they end it (any after n are not the body's).
func (s *ChunkScanner) Feed(p []byte) (n int, done bool, err error) {
	for n < len(p) {
		b := p[n]
		switch s.state {
		case csSize:
			if d, ok := hexDigit(b); ok {
				if s.digits == 16 || s.size > maxChunkSize>>4 {
					return n, false, ErrBadResponse
				}
				s.size, s.digits = s.size<<4|int64(d), s.digits+1
				n++
				continue
			}
			if s.digits == 0 {
				return n, false, ErrBadResponse
			}
			s.state, s.ext, s.line, s.crlf = csSizeLine, false, 0, false
		case csSizeLine:
			n++
			if s.line++; s.line > maxChunkLine || !s.lineByte(b) {
				return n - 1, false, ErrBadResponse
			}
			switch {
			case b == '\n':
				if s.size == 0 {
					s.state, s.line = csTrailer, 0
				} else {
					s.state = csData
				}
			case b == ';':
				s.ext = true
			case !s.ext && b != ' ' && b != '\t' && b != '\r':
				return n - 1, false, ErrBadResponse
			}
		case csData:
			k := min(int64(len(p)-n), s.size)
			n += int(k)
			s.Passed(k)
		case csDataEnd:
			switch {
			case b == '\r' && !s.crlf:
				s.crlf = true
			case b == '\n':
				s.state, s.size, s.digits = csSize, 0, 0
			default:
				return n, false, ErrBadResponse
			}
			n++
		case csTrailer:
			n++
			if !s.lineByte(b) {
				return n - 1, false, ErrBadResponse
			}
			switch b {
			case '\n':
				if s.line == 0 {
					s.state = csDone
					return n, true, nil
				}
				s.line = 0
			case '\r':
			default:
				s.line++
			}
			if s.trail++; s.trail > maxChunkLine {
				return n, false, ErrBadResponse
			}
		case csDone:
			return n, true, nil
		}
	}
	return n, s.state == csDone, nil
}

// lineByte takes the next byte of a size line or a trailer line: false
// for a CR not followed by LF, and for other control characters.
func (s *ChunkScanner) lineByte(b byte) bool {
	cr := s.crlf
	s.crlf = b == '\r'
	switch {
	case cr:
		return b == '\n'
	case b == '\r', b == '\n', b == '\t':
		return true
	}
	return b >= ' ' && b != 0x7f
}

// DataLeft is how many bytes of the current chunk's data are still to
// come, for a caller that passes them by some other way (a copy, a splice)
// and then says how many went with Passed.
func (s *ChunkScanner) DataLeft() int64 {
	if s.state != csData {
		return 0
	}
	return s.size
}

// Done reports whether the body's end was found.
func (s *ChunkScanner) Done() bool { return s.state == csDone }

// InTrailer reports whether the next byte belongs to the trailer section.
func (s *ChunkScanner) InTrailer() bool { return s.state == csTrailer }

// Passed says n bytes of the current chunk's data went by without Feed.
func (s *ChunkScanner) Passed(n int64) {
	if s.size -= n; s.size == 0 {
		s.state, s.crlf = csDataEnd, false
	}
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
