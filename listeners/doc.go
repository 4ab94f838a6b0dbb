// Package listeners owns rouse's listening sockets: it binds TCP and unix
// addresses, and it takes over the sockets systemd passed by socket
// activation (LISTEN_FDS, LISTEN_FDNAMES), or kept for rouse across a
// restart in its file descriptor store.
//
// Invariants:
//   - NewSet calls activation.Files exactly once, and that call unsets
//     LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, so no child process ever
//     sees them. Make one Set per process: a second NewSet finds nothing.
//   - Inherited sockets are matched by name (FileDescriptorName=), never by
//     position. Every socket that carries a name goes to the one Listen call
//     that asks for that name; several sockets may share a name.
//   - Every inherited socket is either handed out by exactly one Listen call
//     or closed: a failed claim closes its sockets, and CloseUnused closes
//     the ones no Listen call asked for, with a warning each.
//   - A listener returned by Listen belongs to the caller, who closes it.
//     Its file descriptor is non-blocking, so Close interrupts Accept.
//   - A unix socket file is removed only when it is a socket nobody accepts
//     connections on; anything else at that path is left alone.
//   - With a file descriptor store (UseFDStore), every socket bound with
//     Options.Keep is sent to systemd under StoreName of its address, and a
//     stored socket passed back under that name is taken instead of a new
//     bind. A stored socket no Listen asks for is closed and removed from
//     the store by CloseUnused, and Forget removes one during a run: the
//     store never keeps listening an address rouse no longer serves.
//   - There is no package-level mutable state.
package listeners
