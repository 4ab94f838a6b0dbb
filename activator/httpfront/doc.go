// Package httpfront is rouse's HTTP front: it serves HTTP/1.1 on an http
// address, routes each request by Host to one of the apps
// (activator.App) that share the address, and proxies it over its own
// keep-alive connections to the app's process. The per-app rules
// (holding while the app starts, retries, rouse's own 502/503/504 answers,
// whose fault a failure was) are the app's: every request goes through
// App.Proxy, and this package reports each attempt back
// (activator.ExchangeResult, App.ResponseCut, App.LogAccess). The pure
// HTTP/1.1 rules (parsing, framing, forwarding headers) are package
// internal/h1's.
//
// A request takes one of three paths: an event loop per P (loop.go) for a
// plain request it can finish at once; a goroutine per connection
// (frontConn) for the rest of what the front parses itself (a held
// request, a body or head in parts, a slow or large response); and
// net/http's server for the requests the front does not parse (a chunked
// body, Expect, an upgrade, HTTP/1.0...), which gets the connection and
// the bytes read so far (handedConn). All three go to the app over the
// front's own connections (httpUpstream, the app's activator.Upstream;
// netExchange for net/http's requests, whose responses go through its
// ResponseWriter). Each rule has one owner that every path calls:
//   - which requests the front parses, end of a head, Host, ambiguous
//     request framing, X-Forwarded-* and hop-by-hop headers, response
//     framing and 502, chunked bodies, whether a response leaves the app
//     connection reusable: internal/h1 (its doc names each function).
//     X-Forwarded-* on net/http's requests: setForwarded, with
//     h1.ForwardedHeader; trusted_proxies: trusted.
//   - reading a response head: upConn.readResponse, and evLoop.receive in
//     the loop; responseBody de-chunks with h1.ChunkScanner for net/http's
//     server.
//   - keeping an app connection: h1.Response.KeepsConn after a response,
//     reusable (nothing unread, still open) each time it is taken again
//     (httpUpstream.popIdle, and the loop's own), on every path; all are
//     dropped when the app says so (httpUpstream.DropIdle, Retire).
//   - new connections to the app: paced by the app's activator.DialGate
//     (httpUpstream.get, evLoop.connect).
//   - client timeouts, per app: header_timeout (HTTPFront.headerTimeout,
//     its deadline handed on by startOver and handedConn), body_timeout
//     (frontConn.readBody, timedBody; App.BodyFailed answers 408),
//     send_timeout (evLoop.writeClient, frontConn.Write, clientWriter).
//   - the quiet retry of a request a dead kept connection lost:
//     App.RetryQuietly (in the loop: evLoop.sendFailed, before any byte).
//   - a response the app broke off cuts the client's connection:
//     App.ResponseCut, from cutRelay, frontConn.relay and
//     netExchange.relay (ExchangeResult.Cut).
//   - the access log and Server-Timing: loopConn.logAccess,
//     frontConn.logAccess, trackedWriter (accesslog.go).
//   - the waiting page, which App.Proxy decides to show: writeStartPage.
//   - accepting on a TCP or Unix listener: one event loop at a time,
//     which reads each request as soon as it accepted it
//     (loopListener.event), while the front has loops; the accept
//     goroutine (acceptToLoops) only waits while none has, and owns the
//     pause after a failed accept. Out of descriptors, a request the loop
//     cannot move to a goroutine gets a 503, or a 502 if it went to the
//     app (outOfFDs503, outOfFDs502, lastWord).
//
// An HTTPFront's methods are safe to call concurrently; Close returns when
// every goroutine and connection it owns is gone.
package httpfront
