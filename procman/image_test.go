package procman

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestImageMappings(t *testing.T) {
	const smaps = `00400000-009db000 r-xp 00000000 fe:00 99 /usr/bin/rouse
Rss:                4716 kB
Anonymous:             0 kB
009db000-0104e000 r--p 005db000 fe:00 99 /usr/bin/rouse
Rss:                3916 kB
Anonymous:             0 kB
0104e000-010ba000 rw-p 00c4e000 fe:00 99 /usr/bin/rouse
Rss:                 360 kB
Anonymous:           200 kB
010ba000-010c0000 r--p 00cba000 fe:00 99 /usr/bin/rouse
Rss:                   8 kB
Anonymous:             8 kB
010c0000-010d0000 r--p 00cc0000 fe:00 99 /usr/bin/rouse
Rss:                   0 kB
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 12 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 800 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                1000 kB
Anonymous:          1000 kB
`
	got := imageMappings([]byte(smaps), "/usr/bin/rouse")
	want := []mapping{
		{start: 0x400000, end: 0x9db000, rss: 4716 << 10},
		{start: 0x9db000, end: 0x104e000, rss: 3916 << 10},
	}
	if !slices.Equal(got, want) {
		t.Errorf("imageMappings = %+v, want %+v (read-only, resident, no private copy, of the executable only)", got, want)
	}
}

// rssFile is the resident file-backed memory of this process, in KiB.
func rssFile(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

func TestReleaseImageUnmapsStartupPages(t *testing.T) {
	before := rssFile(t)
	released := ReleaseImage()
	after := rssFile(t)
	if released == 0 || after >= before {
		t.Errorf("released %d bytes, RssFile %d -> %d KiB: want some released and less resident", released, before, after)
	}
	// The process goes on: what it needs comes back on use.
	if err := os.WriteFile(t.TempDir()+"/x", []byte("still running"), 0o600); err != nil {
		t.Fatal(err)
	}
}
