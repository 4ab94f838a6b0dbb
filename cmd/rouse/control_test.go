package main

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// writeStatus streams the very bytes writeJSON writes for the same reply.
func TestWriteStatusAsWriteJSON(t *testing.T) {
	until := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	full := []activator.Status{
		{Name: "a", State: activator.Idle, Mode: activator.ModeTCP, Listen: []string{"127.0.0.1:1"}, Command: []string{"/bin/app", "<&>"}},
		{Name: "b", State: activator.Backoff, BackoffUntil: &until, LastError: "exit status 3\n\"quoted\"", StderrTail: []string{"x"}},
		{Name: "c", State: activator.Ready, PID: 42, RSSBytes: 1 << 20, CPUPercent: 1.5},
	}
	budget := &activator.BudgetStatus{Budget: 1 << 30, Used: 3 << 20, Counted: 5 << 20, Exceeded: 2, Reason: "b holds \"more\""}
	for _, r := range []statusReply{{}, {Apps: []activator.Status{}}, {Apps: full[:1]}, {Apps: full}, {Budget: budget}, {Apps: full, Budget: budget}} {
		want := httptest.NewRecorder()
		writeJSON(want, 200, r)
		got := httptest.NewRecorder()
		writeStatus(got, r)
		if got.Body.String() != want.Body.String() || got.Code != want.Code || got.Header().Get("Content-Type") != want.Header().Get("Content-Type") {
			t.Errorf("%d apps, budget %v:\ngot  %d %q\n%s\nwant %d %q\n%s", len(r.Apps), r.Budget != nil, got.Code, got.Header().Get("Content-Type"), got.Body, want.Code, want.Header().Get("Content-Type"), want.Body)
		}
	}
}
