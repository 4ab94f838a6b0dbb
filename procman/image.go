package procman

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReleaseImage drops the pages of the running executable that the process
// only needed to get going (package init, config parsing, setup) from its
// page tables. It returns how many bytes of the executable were unmapped.
// A process that wants its start-up garbage gone too collects it first
// (debug.FreeOSMemory): the collector's code, run after, would be mapped
// back at once.
//
// rouse is one binary re-executed as the daemon and the guard; starting
// either touches about 10 MiB of its code and read-only data, which stay
// resident and counted in RSS although an idle process uses a small part
// of them. Dropped pages stay in the page cache, where the kernel may
// reclaim them (mapped code it keeps), and the few a process needs again
// are mapped back on their next use by a minor fault.
//
// Only read-only mappings of the executable that hold no private copy of
// a page are released: those always read back as they are on disk (a
// relocated RELRO page of a PIE has an anonymous copy and is left alone).
// Errors are ignored: release is an optimisation.
func ReleaseImage() (released uint64) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0
	}
	for _, m := range imageMappings(smaps, exe) {
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_DONTNEED); e == 0 {
			released += uint64(m.rss)
		}
	}
	return released
}

// mapping is an address range of /proc/self/smaps and its resident bytes.
type mapping struct {
	start, end uintptr
	rss        int64
}

// imageMappings returns the mappings of smaps that ReleaseImage may drop:
// of file exe, not writable, no anonymous (copied-on-write) page, and some
// page resident.
func imageMappings(smaps []byte, exe string) []mapping {
	var out []mapping
	var cur mapping
	var ok bool // cur is a read-only mapping of exe
	var anon int64
	flush := func() {
		if ok && anon == 0 && cur.rss > 0 {
			out = append(out, cur)
		}
		ok = false
	}
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, hi, found := strings.Cut(f[0], "-"); found && !strings.HasSuffix(f[0], ":") {
			flush()
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			ok = err1 == nil && err2 == nil && len(f) >= 6 && strings.Join(f[5:], " ") == exe && len(f[1]) == 4 && f[1][1] == '-'
			cur, anon = mapping{start: uintptr(start), end: uintptr(end)}, 0
			continue
		}
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Rss:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			cur.rss = kb << 10
		case "Anonymous:":
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || kb != 0 {
				anon = max(anon, 1)
			}
		}
	}
	flush()
	return out
}
