package main

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/testbackend"
)

// TestStatusPageInChromium runs a real daemon with three apps (a Python
// http.server that is started, an app nobody connected to, and one that
// fails with markup in its stderr), loads the status page at / of its
// metrics address in headless Chromium, and checks what the browser made
// of it: the DOM names every app with its state and shows the failure's
// stderr as text, and screenshots at desktop and phone widths are drawn,
// with the ready badge and the last error in their colours.
func TestStatusPageInChromium(t *testing.T) {
	chromium := requireTool(t, "chromium")
	python := testbackend.Python3(t)
	pyPort, idlePort, crashPort, metricsPort := freePort(t), freePort(t), freePort(t), freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.py]
mode = "http"
listen = ["127.0.0.1:%d"]
command = [%q, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
dir = "@DIR@"

[apps.idle]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]

[apps.crash]
listen = ["127.0.0.1:%d"]
command = "echo 'config <b>broken</b> & <script>document.title=\"injected\"</script>' >&2; exit 3"
backoff_max = "1m"
`, pyPort, python, idlePort, crashPort))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort)
	setRouseKeys(t, file, fmt.Sprintf("metrics = %q", metricsAddr))
	r := startRouse(t, file, control)

	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/", pyPort))
	if err != nil {
		t.Fatalf("GET the python app: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", crashPort)); err == nil {
		io.Copy(io.Discard, c) // closed by rouse once the start failed
		c.Close()
	}
	waitFor(t, "py ready and crash in back-off", func() bool {
		return r.app(t, "py").state == "ready" && r.app(t, "crash").state == "backoff"
	})

	page := "http://" + metricsAddr + "/"
	dom := runChromium(t, chromium, "--dump-dom", page)
	for _, want := range []string{
		`id="app-py"`, `id="app-idle"`, `id="app-crash"`,
		`<span class="state s-ready">ready</span>`, `<span class="state s-idle">idle</span>`,
		// crash is in back-off for a second, then idle: its failure stays.
		`<td class="n" data-label="failures">1</td>`,
		"exit status 3",                // crash's last error
		"&lt;script&gt;document.title", // crash's stderr, as text
		`"GET / HTTP/1.1" 200`,         // py's stderr: http.server logs each request there
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page Chromium loaded has no %q", want)
		}
	}
	if strings.Contains(dom, "<script") || strings.Contains(dom, "<b>broken") || strings.Contains(dom, "<title>injected") {
		t.Errorf("the app's stderr became markup in the page:\n%s", dom)
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	dir := os.Getenv("ROUSE_SCREENSHOTS") // set to keep the PNGs for a look
	if dir == "" {
		dir = t.TempDir()
	}
	for _, size := range []struct {
		name string
		w, h int
	}{{"desktop", 1280, 720}, {"phone", 390, 1800}} { // the phone's: the whole page, scrolled
		shot := filepath.Join(dir, "status-"+size.name+".png")
		runChromium(t, chromium, fmt.Sprintf("--window-size=%d,%d", size.w, size.h), "--screenshot="+shot, page)
		img := readPNG(t, shot)
		if b := img.Bounds(); b.Dx() != size.w || b.Dy() != size.h {
			t.Errorf("%s screenshot is %dx%d, want %dx%d", size.name, b.Dx(), b.Dy(), size.w, size.h)
		}
		inked, green, red := countPixels(img)
		t.Logf("%s screenshot %s: %.1f%% of pixels drawn, %d of the ready badge's green, %d of the error's red",
			size.name, shot, 100*inked, green, red)
		if inked < 0.02 {
			t.Errorf("%s screenshot is blank: %.2f%% of pixels differ from the background", size.name, 100*inked)
		}
		if green < 50 || red < 50 {
			t.Errorf("%s screenshot lacks the ready badge or the last error: %d green, %d red pixels", size.name, green, red)
		}
	}
}

// runChromium runs headless Chromium with a fresh profile on args, for at
// most a minute, and returns its stdout. As root it needs --no-sandbox. It
// runs in a process group of its own, killed afterwards, so that no
// renderer or zygote outlives the test.
func runChromium(t *testing.T, chromium string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	args = append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-extensions", "--hide-scrollbars", "--user-data-dir=" + t.TempDir()}, args...)
	cmd := exec.CommandContext(ctx, chromium, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if cmd.Process != nil {
		if kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
			t.Errorf("kill chromium's process group: %v", kerr)
		}
	}
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, lastLines(stderr.String(), 30))
	}
	return string(out)
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	return img
}

// countPixels returns the share of pixels that differ from the top-left
// one (the background), and how many are the ready badge's green (#2a2)
// and the red (#c33) of a last error and the back-off badge, give or take
// a little.
func countPixels(img image.Image) (inked float64, green, red int) {
	b := img.Bounds()
	bg := img.At(b.Min.X, b.Min.Y)
	near := func(c, want [3]uint32) bool {
		for i := range c {
			if d := int(c[i]) - int(want[i]); d < -24 || d > 24 {
				return false
			}
		}
		return true
	}
	var n int
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := img.At(x, y)
			if c != bg {
				n++
			}
			r, g, bl, _ := c.RGBA()
			rgb := [3]uint32{r >> 8, g >> 8, bl >> 8}
			switch {
			case near(rgb, [3]uint32{0x22, 0xaa, 0x22}):
				green++
			case near(rgb, [3]uint32{0xcc, 0x33, 0x33}):
				red++
			}
		}
	}
	return float64(n) / float64(b.Dx()*b.Dy()), green, red
}
