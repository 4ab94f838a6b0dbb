package procman

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

func TestStatsRSS(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Two processes in one group, each allocating mib: Stats sums over the
	// group. The same group allocating nothing is the baseline.
	group := func(mib int) (*Process, *lines) {
		var out lines
		p := start(t, Spec{
			Name:   fmt.Sprint("alloc-", mib),
			Shell:  fmt.Sprintf(`'%s' & exec '%s'`, exe, exe),
			Env:    []string{"PROCMAN_HELPER=alloc", fmt.Sprint("HELPER_MIB=", mib)},
			User:   currentUser(),
			Output: out.output,
		})
		return p, &out
	}
	const mib = 32
	alloc, allocOut := group(mib)
	base, baseOut := group(0)
	for _, out := range []*lines{allocOut, baseOut} {
		eventually(t, 10*time.Second, "both processes allocated", func() bool {
			return slices.Equal(out.get(), []string{"stdout: allocated", "stdout: allocated"})
		})
	}
	got, err := alloc.Stats()
	if err != nil {
		t.Fatal(err)
	}
	baseline, err := base.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := int64(2 * mib << 20)
	if raceEnabled {
		want *= 2
	}
	if diff := int64(got.RSS) - int64(baseline.RSS); diff < want-8<<20 || diff > want+16<<20 {
		t.Errorf("RSS %d MiB, %d MiB above the baseline, want %d MiB above", got.RSS>>20, diff>>20, want>>20)
	}

	// Memory, the budget's cheap sample of several processes at once,
	// agrees with Stats (the two samples are a moment apart).
	mem := Memory([]*Process{alloc, nil, base})
	for i, st := range []Stats{got, {}, baseline} {
		if d := int64(mem[i]) - int64(st.RSS); d < -4<<20 || d > 4<<20 {
			t.Errorf("Memory[%d] = %d MiB, Stats %d MiB", i, mem[i]>>20, st.RSS>>20)
		}
	}

	if err := alloc.Stop(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := alloc.Stats(); !errors.Is(err, ErrExited) {
		t.Errorf("Stats after exit: got %v, want ErrExited", err)
	}
	if mem := Memory([]*Process{alloc}); mem[0] != 0 {
		t.Errorf("Memory after exit: %d, want 0", mem[0])
	}
}

func TestStatsCPU(t *testing.T) {
	t.Parallel()
	idle := start(t, helperSpec(t, "sleep"))
	spin := start(t, helperSpec(t, "spin"))
	// The machine may be busy with other work: ask only for a clear
	// difference between a spinning and a sleeping process.
	eventually(t, 10*time.Second, "a spinning process uses CPU", func() bool {
		s, err := spin.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s.CPUPercent > 20
	})
	if _, err := idle.Stats(); err != nil {
		t.Fatal(err)
	}
	// Between two samples of a sleeping process: next to nothing.
	eventually(t, 5*time.Second, "an idle process uses no CPU", func() bool {
		s, err := idle.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s.CPUPercent < 5
	})
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		data string
		want procStat
		ok   bool
	}{
		{
			name: "plain",
			data: "4242 (sleep) S 1 4240 4240 0 -1 4194560 99 0 0 0 7 3 0 0 20 0 1 0 100 5000000 250 18446744073709551615\n",
			want: procStat{state: 'S', ppid: 1, pgrp: 4240, session: 4240, rss: 250},
			ok:   true,
		},
		{
			name: "command with spaces and parentheses",
			data: "7 (a) (b c)) Z 1 7 7 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 100 0 0 0",
			want: procStat{state: 'Z', ppid: 1, pgrp: 7, session: 7},
			ok:   true,
		},
		{name: "short", data: "7 (x) S 1 7", ok: false},
		{name: "garbage", data: "hello", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseStat([]byte(tt.data))
			if ok != tt.ok || got != tt.want {
				t.Errorf("got %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}
