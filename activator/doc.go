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
//   - memory_budget: a start is granted only once what it reserves (its
//     last run's peak; never run: memory_max, else the mean of the apps
//     measured, else 64 MiB) fits beside what the running apps count;
//     apps that grow past it are met by stopping idle apps, frozen first,
//     never one that serves (capacity.go, reservation).
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
//   - inetd: one process per connection, at most max_conns at once; the
//     state is ready while one runs, idle when none does, never starting
//     or stopping; starts counts spawns; failures count spawn errors (which
//     put the app in back-off) and processes killed by a signal rouse did
//     not send (SIGPIPE aside). There is no idle timer.
//
// Mode http: the HTTP front (package httpfront) parses, forwards and
// relays the requests; the app owns what is about the app, and the front
// reaches it through a small seam (frontseam.go): App.Proxy takes each
// request, TryAcquire and Release lease the process, ExchangeResult,
// ResponseCut and LogAccess report what happened, and the app tells the
// front's Upstream when kept connections must go (DropIdle: the process
// stops, exited or froze; Retire: a reload moved the app). The rules it
// owns there:
//   - holding, retries, 502/503/504 (App.Proxy, refuse, WriteAnswer),
//     and who gets the waiting page while the app starts (wantsStartPage,
//     holdForPage; the front renders it: Request.StartPage).
//   - whether a request may be replayed: App.replayable; the quiet retry
//     of a request a dead kept connection lost: App.RetryQuietly.
//   - a body the client did not send in time: App.BodyFailed (408).
//   - whose fault a failed attempt was: blame.
package activator
