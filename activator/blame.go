package activator

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
)

// Whose fault a failed attempt was. DESIGN.md ("States and failures"):
// only evidence that the app's process is unhealthy counts toward
// max_fails and back-off; everything else is counted apart, by kind, and
// never held against the process. blame is the one place that decides it,
// for every mode and every path.

// Kinds of request-level errors, as counted in Metrics.Errors. None of
// them counts against the app's process.
const (
	// ErrKindAppClosed: the app accepted the connection, then closed or
	// reset it before a whole response, while its process lives: that
	// request's failure (502, or replayed when safe).
	ErrKindAppClosed = "app_closed"
	// ErrKindBadResponse: the app's response could not be passed on
	// (malformed, or framed ambiguously).
	ErrKindBadResponse = "bad_response"
	// ErrKindClient: the client closed, reset or stalled its side.
	ErrKindClient = "client"
	// ErrKindUnforwardable: rouse cannot forward the request as it came
	// (400 from rouse, no attempt).
	ErrKindUnforwardable = "unforwardable"
	// ErrKindLocal: rouse itself ran short of something (fds, memory,
	// local ports).
	ErrKindLocal = "local"
	// ErrKindReset: a tcp connection broke midway, by the client or the
	// app (splice cannot tell which).
	ErrKindReset = "reset"
	// ErrKindBacklog: the app's listen backlog was full (a Unix socket
	// refusing with EAGAIN): it is busy, not unhealthy; paced and retried.
	ErrKindBacklog = "backlog_full"
)

// FailDialTimeout is a failure kind (Metrics.Failures): a connection to
// the app was not accepted within the dial bound while it should listen.
const FailDialTimeout = "dial_timeout"

// Stage is how far an attempt got before it failed.
type Stage int

const (
	StageDial      Stage = iota // no connection to the app was made
	StageConnected              // connected: the app accepted (or kept) it
	StageRejected               // rouse refused to send the request as it came
)

// verdict is what a failed attempt says, and about whom.
type verdict struct {
	// kind is Fail* when the process is to blame (unhealthy), else
	// ErrKind*.
	kind string
	// unhealthy: evidence against the process, counted toward max_fails.
	unhealthy bool
}

// blame classifies the error of one attempt that got as far as stage.
// clientGone reports whether the client had gone away by then (its
// context ended, or a write to it failed).
func blame(err error, stage Stage, clientGone bool) verdict {
	switch {
	case clientGone || IsWriteError(err) || errors.Is(err, context.Canceled):
		return verdict{kind: ErrKindClient}
	case localError(err):
		return verdict{kind: ErrKindLocal}
	case stage == StageRejected:
		return verdict{kind: ErrKindUnforwardable}
	case stage == StageConnected:
		if errors.Is(err, ErrBadResponse) {
			return verdict{kind: ErrKindBadResponse}
		}
		return verdict{kind: ErrKindAppClosed}
	}
	// The dial failed: the process should be listening.
	switch {
	case errors.Is(err, syscall.EAGAIN):
		return verdict{kind: ErrKindBacklog}
	case IsTimeout(err):
		return verdict{kind: FailDialTimeout, unhealthy: true}
	}
	return verdict{kind: FailRefused, unhealthy: true}
}

// IsTimeout reports whether err is a deadline that passed.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// responseCut counts and logs a response the app broke off halfway, on
// every path; the caller cuts the client's connection, so that a short
// body cannot pass for a whole one.
func (a *App) responseCut(inst *instance, method, path string, err error) {
	a.judge(inst, err, blame(err, StageConnected, false))
	a.log.Info("response cut by the app", "method", method, "path", path, "err", err)
}

// judge applies a verdict: an unhealthy one goes to failed (max_fails),
// any other is counted by kind and logged at debug.
func (a *App) judge(inst *instance, err error, v verdict) {
	if v.unhealthy {
		a.failed(inst, v.kind, err)
		return
	}
	a.metrics.requestError(v.kind)
	a.log.Debug("request error, not counted against the app", "kind", v.kind, "err", err)
}
