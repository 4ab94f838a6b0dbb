package listeners

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// Every path that opens a descriptor, failing ones included, closes it: bind
// and close TCP and unix sockets, replace a stale socket file, refuse a live
// one, and claim, fail to claim and close unused inherited sockets.
func TestNoFDLeak(t *testing.T) {
	dir := t.TempDir()
	set := newSet(nil, nil)
	listen := func(s string) net.Listener {
		a, err := ParseAddr(s)
		if err != nil {
			t.Fatal(err)
		}
		ls, err := set.Listen(a, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return ls[0]
	}
	cycle := func(i int) {
		l := listen("127.0.0.1:0")
		roundTrip(t, l)
		l.Close()

		path := filepath.Join(dir, "s"+strconv.Itoa(i)+".sock")
		stale, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		stale.Close()
		l = listen("unix:" + path)
		roundTrip(t, l)
		if _, err := set.Listen(unixAddr(t, path), Options{}); err == nil {
			t.Fatal("Listen over a live socket succeeded")
		}
		setDeadline(t, l, time.Now().Add(5*time.Second))
		probe, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		probe.Close()
		l.Close()

		inherited := newSet(nil, []*os.File{
			socketFile(t, "good", filepath.Join(dir, "g"+strconv.Itoa(i)+".sock"), unix.SOCK_STREAM, true),
			socketFile(t, "dgram", filepath.Join(dir, "d"+strconv.Itoa(i)+".sock"), unix.SOCK_DGRAM, false),
			socketFile(t, "unused", filepath.Join(dir, "u"+strconv.Itoa(i)+".sock"), unix.SOCK_STREAM, true),
		})
		ls, err := inherited.Listen(Addr{Kind: Systemd, Address: "good"}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, ls[0])
		if _, err := inherited.Listen(Addr{Kind: Systemd, Address: "dgram"}, Options{}); err == nil {
			t.Fatal("claiming a datagram socket succeeded")
		}
		inherited.CloseUnused()
		ls[0].Close()
	}

	cycle(0) // the runtime's poller and the like open their descriptors once
	before := openFDs(t)
	for i := 1; i <= 10; i++ {
		cycle(i)
	}
	var after int
	if !poll(5*time.Second, func() bool { after = openFDs(t); return after == before }) {
		t.Fatalf("%d descriptors open before 10 cycles, %d after", before, after)
	}
}
