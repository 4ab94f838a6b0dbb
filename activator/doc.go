// Package activator runs apps on demand: it accepts on an app's sockets,
// starts the app's process on the first connection, holds connections
// until the app is ready, proxies them, and stops the process when idle.
//
// Invariants:
//   - Per app, all state lives in App under one mutex that is never held
//     across I/O; waiters wait on a channel that is closed on every change.
//   - Exactly one start per Idle -> Starting transition, whatever the load.
//   - Each process is owned by one goroutine (App.run) from spawn to reaping.
//   - Only failures rouse observes count (spawn error, exit before ready,
//     readiness timeout, unexpected exit, refused or reset by the app); they
//     put the app in back-off (1s, 2s, 4s ... backoff_max).
//   - A connection that arrives while the app stops is held and starts it
//     again: an idle stop never loses a connection.
//   - The capacity queue always moves: its head is granted, dropped when
//     nothing waits for it any more, or refused (BudgetError) when it cannot
//     fit even alone and others wait behind it.
//   - A picked port (Config.PickedPort) that another process holds is not
//     the app's failure: it moves to another (Options.MovePort) and starts.
//   - Close returns only when every goroutine and process of the app is gone.
//
// Mode tcp: no goroutine waits on the listeners of an idle app. A
// ListenWatch (one epoll instance, shared by the daemon's apps) wakes the
// app at the first arrival; a goroutine accepts from then on, until the
// app is idle with no connection left, and hands the listener back armed,
// so a connection that arrives in between is reported at once.
//
// Modes handoff and inetd spawn through the exec shim (Options.ExecShim,
// ExecMain), which sets LISTEN_PID to the app's own pid and execs it.
//   - handoff: rouse never accepts on the sockets it hands over, and never
//     reads or writes them; it only polls them and learns of arrivals
//     through a private epoll instance (the only one of these in the
//     netpoller), so their shared file description may be blocking (as the
//     app gets it) without ever blocking rouse. conns are the connections
//     the app holds (sock_diag, sampled while it runs), queued those in the
//     backlogs.
//
// Mode http: an HTTPFront serves requests on three paths: an event loop
// per P (loop.go) for a plain request it can finish at once, a goroutine
// per connection (frontConn) for the rest of what the front parses itself
// (a held request, a body or head in parts, a slow or large response),
// and net/http's server for requests the front does not parse (a chunked
// body, Expect, an upgrade, HTTP/1.0...), which gets the connection and
// the bytes read so far. All three go to the app over the front's own
// connections (httpUpstream; netExchange for net/http's requests, whose
// responses go through its ResponseWriter). Each rule has one owner that
// every path calls:
//   - holding, retries, 502/503/504: App.proxy.
//   - which requests the front parses: parseRequestHead; end of a head:
//     headEnd; a Host or absolute-form host: validHost.
//   - request framing rejected with 400 and a close (Transfer-Encoding
//     with Content-Length, or before HTTP/1.1): ambiguousFraming.
//   - headers a client may not set (X-Forwarded-*, Forwarded, any '_'
//     spelling): forwardedHeader, in appendOutgoing and setForwarded.
//   - response framing, and 502 for what cannot be passed on:
//     appendResponseHead (reading a head: upConn.readResponse, but in the
//     loop); chunked bodies: chunkScanner (responseBody de-chunks with it
//     for net/http's server).
//   - keeping an app connection: respHead.keepsConn after a response,
//     reusable (nothing unread, still open) each time it is taken again
//     (httpUpstream.popIdle, and the loop's own), on every path.
//   - client timeouts, per app: header_timeout (HTTPFront.headerTimeout,
//     its deadline handed on by startOver and handedConn), body_timeout
//     (frontConn.readBody, timedBody; bodyFailed answers 408),
//     send_timeout (evLoop.writeClient, frontConn.Write, clientWriter).
//   - the quiet retry of a request a dead kept connection lost:
//     App.retryQuietly (in the loop: evLoop.sendFailed, before any byte).
//   - a response the app broke off cuts the client's connection:
//     App.responseCut, from cutRelay, frontConn.relay and
//     netExchange.relay (exchangeResult.cut).
//   - inetd: one process per connection, at most max_conns at once; the
//     state is ready while one runs, idle when none does, never starting
//     or stopping; starts counts spawns; failures count spawn errors (which
//     put the app in back-off) and processes killed by a signal rouse did
//     not send (SIGPIPE aside). There is no idle timer.
package activator
