// Package h1 parses and frames HTTP/1.1 for rouse's HTTP front: pure
// functions over byte slices, no I/O, no allocation per request on the
// front's fast path (each result is a slice of the caller's buffer or
// appended to a buffer the caller owns). Whatever it does not recognise as
// plainly valid it refuses, and the front passes the request to net/http's
// server or answers 502 for a response.
//
// Each rule has one owner here, which every path of the front calls:
//   - end of a head (request or response): HeadEnd; a client's first line
//     that no request begins with (not HTTP at all): NotARequest.
//   - which requests the front parses itself (HTTP/1.1, origin form, one
//     Host, at most one Content-Length, no Transfer-Encoding, Expect,
//     Upgrade or obs-fold, no bare LF): ParseRequest.
//   - a Host, or the host of an absolute-form target, before it is routed
//     or becomes X-Forwarded-Host: ValidHost.
//   - request framing RFC 9112 6.1 calls faulty (Transfer-Encoding with
//     Content-Length, or before HTTP/1.1), answered 400 and closed:
//     AmbiguousFraming, with AmbiguousFramingText.
//   - headers a client may not set (X-Forwarded-*, Forwarded, any '_'
//     spelling of them): ForwardedHeader.
//   - hop-by-hop headers (RFC 9110 7.6.1) and those Connection names:
//     hopByHop for raw heads, RemoveHopHeaders for an http.Header.
//   - the head sent to the app, with rouse's X-Forwarded-For/-Proto/-Host:
//     AppendOutgoing.
//   - response framing, and which responses are answered 502 rather than
//     passed on (malformed, Content-Length twice with different values,
//     Transfer-Encoding other than one chunked, both, Transfer-Encoding in
//     HTTP/1.0, 101); no body for 1xx, 204, 304: AppendResponseHead.
//   - whether an app connection may serve another request after a
//     response: Response.KeepsConn (and then only with nothing unread,
//     which the front checks); a body that ends when the app closes:
//     Response.BodyUntilClose.
//   - chunked bodies (sizes, extensions, trailers, bare CR, control
//     characters, bounds): ChunkScanner.
//
// FuzzH1Heads compares ParseRequest and AppendOutgoing with net/http's
// reading of the same bytes; FuzzChunkScanner compares ChunkScanner with
// net/http's chunked reader.
package h1
