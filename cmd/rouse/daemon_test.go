package main

import (
	"io"
	"log/slog"
	"runtime"
	"testing"
)

func TestSetProcs(t *testing.T) {
	all := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(all)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	setProcs(0, false, log)
	if got, want := runtime.GOMAXPROCS(0), (all+1)/2; got != want {
		t.Errorf("procs = 0 with %d CPUs: GOMAXPROCS %d, want %d", all, got, want)
	}
	setProcs(3, false, log)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("procs = 3: GOMAXPROCS %d", got)
	}
	runtime.GOMAXPROCS(all)
	setProcs(1, true, log)
	if got := runtime.GOMAXPROCS(0); got != all {
		t.Errorf("with GOMAXPROCS in the environment: %d, want it left at %d", got, all)
	}
}
