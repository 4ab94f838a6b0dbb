package activator

import (
	"bufio"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkTCPThroughput moves data through an echo app, once through
// rouse and once directly, in the same iteration, and reports both rates
// and their ratio: the machine is shared, so only the ratio is comparable
// between runs.
func BenchmarkTCPThroughput(b *testing.B) {
	ta := newTestApp(b, []string{"-proto", "echo"}, nil)
	direct := ta.config().UpstreamAddress
	const chunk = 4 << 20
	buf := make([]byte, chunk)
	var viaRouse, viaDirect time.Duration
	b.SetBytes(2 * chunk)
	for b.Loop() {
		viaRouse += roundTrip(b, ta.addr, buf)
		viaDirect += roundTrip(b, direct, buf)
	}
	n := float64(b.N)
	b.ReportMetric(chunk*n/viaRouse.Seconds()/1e6, "rouse-MB/s")
	b.ReportMetric(chunk*n/viaDirect.Seconds()/1e6, "direct-MB/s")
	b.ReportMetric(viaDirect.Seconds()/viaRouse.Seconds(), "ratio")
}

// roundTrip sends buf to an echo server at addr, reads it back and returns
// how long that took.
func roundTrip(b *testing.B, addr string, buf []byte) time.Duration {
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(buf)
		c.(*net.TCPConn).CloseWrite()
		errc <- err
	}()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != int64(len(buf)) {
		b.Fatalf("echo via %s: %d bytes, %v", addr, n, err)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkColdStart measures what rouse adds to a cold start: from the
// moment the app's socket listens to the client's first byte (the app
// writes a banner on accept). Reported as p50 and max over the iterations.
func BenchmarkColdStart(b *testing.B) {
	readyFile := filepath.Join(b.TempDir(), "ready")
	ta := newTestApp(b, []string{"-proto", "echo", "-banner", "-ready-file", readyFile}, nil)
	var overheads []time.Duration
	for b.Loop() {
		b.StopTimer()
		if err := ta.Stop(b.Context()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c, err := net.Dial("tcp", ta.addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			b.Fatal(err)
		}
		firstByte := time.Now()
		c.Close()
		overheads = append(overheads, firstByte.Sub(lastReady(b, readyFile)))
	}
	slices.Sort(overheads)
	b.ReportMetric(float64(overheads[len(overheads)/2].Microseconds()), "p50-µs-ready-to-first-byte")
	b.ReportMetric(float64(overheads[len(overheads)-1].Microseconds()), "max-µs-ready-to-first-byte")
}

func lastReady(b *testing.B, file string) time.Time {
	data, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Fields(string(data))
	ns, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return time.Unix(0, ns)
}
