package procman

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestOutputAndStderrTail(t *testing.T) {
	t.Parallel()
	var out lines
	spec := helperSpec(t, "print")
	spec.Output = out.output
	p := start(t, spec)
	waitDone(t, p, 10*time.Second)

	var stdout, stderr []string
	for _, line := range out.get() {
		if s, ok := strings.CutPrefix(line, "stdout: "); ok {
			stdout = append(stdout, s)
		} else {
			stderr = append(stderr, strings.TrimPrefix(line, "stderr: "))
		}
	}
	// The 3*MaxLineLength line is cut to MaxLineLength; the reading goes
	// on with the next line, CRLF is trimmed, an unterminated last line
	// is kept.
	wantStdout := []string{"out 1", strings.Repeat("x", MaxLineLength), "out 2", "out 3"}
	if !slices.Equal(stdout, wantStdout) {
		t.Errorf("stdout: got %d lines %.40q, want %.40q", len(stdout), stdout, wantStdout)
	}
	var wantStderr []string
	for i := range 30 {
		wantStderr = append(wantStderr, fmt.Sprint("err ", i))
	}
	if !slices.Equal(stderr, wantStderr) {
		t.Errorf("stderr: got %q, want %q", stderr, wantStderr)
	}

	// Done was closed after the readers drained: the tail is complete.
	tests := []struct {
		n    int
		want []string
	}{
		{0, nil},
		{1, wantStderr[29:]},
		{3, wantStderr[27:]},
		{20, wantStderr[10:]},
		{100, wantStderr[10:]},
	}
	for _, tt := range tests {
		if got := p.StderrTail(tt.n); !slices.Equal(got, tt.want) {
			t.Errorf("StderrTail(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestLineRing(t *testing.T) {
	var r lineRing
	if got := r.last(5); got != nil {
		t.Errorf("empty ring: got %q", got)
	}
	r.add("a")
	r.add("b")
	if got, want := r.last(5), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	for i := range 45 {
		r.add(fmt.Sprint(i))
	}
	if got, want := r.last(2), []string{"43", "44"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := r.last(50); len(got) != stderrTailLines || got[0] != "25" {
		t.Errorf("got %q, want the last %d lines from 25", got, stderrTailLines)
	}
}
