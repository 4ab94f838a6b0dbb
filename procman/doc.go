// Package procman owns one child process of rouse at a time per Process:
// it spawns it, tells when it is ready, stops it and samples its resource use.
//
// Invariants:
//   - Every child runs in its own process group (pgid == pid) and is always
//     signalled as a group, so helpers, daemons and shell-wrapped grandchildren
//     share its fate.
//   - Exactly one goroutine per child reaps it. When the leader exits, the
//     rest of its group is SIGKILLed before the leader is reaped, so the pgid
//     cannot have been reused by an unrelated process when it is signalled.
//   - No signal is sent to a group after its leader was reaped.
//   - Done is closed only after the child was reaped and its output drained
//     (bounded in time), so StderrTail then holds its last words.
//   - With Spec.Notify a child gets its own abstract NOTIFY_SOCKET, read by one
//     goroutine of its Process. Only its group, its uid and root are heard;
//     every fd a message carries is closed at once (sd_notify barriers wait
//     for that). Done is closed only after what was queued was read, the
//     reader returned and the socket was closed.
//   - A child never outlives rouse for long: Pdeathsig kills the leader and a
//     Guard process kills whole groups when rouse dies without stopping them.
//   - Nothing a child started outlives it, setsid or not. With a Guard that
//     has a cgroup v2 subtree, each child is spawned straight into a cgroup
//     of its own (CLONE_INTO_CGROUP), which is killed (cgroup.kill) once the
//     leader exited and removed before Done is closed; the guard kills and
//     removes those left when rouse dies. Without one, rouse is a child
//     subreaper, each child carries a ScopeEnv mark, and what carries it
//     (with its descendants and sessions) is killed the same way; adopted
//     orphans are reaped, never a child os/exec waits for.
//   - A child's environment is small unless Spec.InheritEnv: PATH, LANG,
//     its user's HOME, USER and LOGNAME, then Spec.Env.
//   - procman keeps no package-level state and logs nothing; the child's own
//     output goes to Spec.Output.
package procman
