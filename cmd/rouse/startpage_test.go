package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rouse-dev/rouse/internal/testbackend"
)

// TestStartPageInChromium opens a cold app (Python's http.server behind a
// 2 s boot) in headless Chromium with start_page on: the browser first
// gets the waiting page, which reloads itself until the app answers; an
// app whose start fails shows its error and last stderr line instead.
func TestStartPageInChromium(t *testing.T) {
	chromium := requireTool(t, "chromium")
	python := testbackend.Python3(t)
	script, err := filepath.Abs("../../examples/apps/pyapp.py")
	if err != nil {
		t.Fatal(err)
	}
	slowPort, slow2Port, brokenPort := freePort(t), freePort(t), freePort(t)
	app := func(name string, port int) string {
		return fmt.Sprintf(`
[apps.%s]
mode = "http"
listen = ["127.0.0.1:%d"]
command = [%q, %q, "http", "--port", "{port}", "--boot", "2"]
start_page = true
start_page_after = "200ms"
`, name, port, python, script)
	}
	file, control := writeConfig(t, app("slow", slowPort)+app("slow2", slow2Port)+fmt.Sprintf(`
[apps.broken]
mode = "http"
listen = ["127.0.0.1:%d"]
command = "echo 'cannot read /etc/broken.conf: <permission denied>' >&2; exit 4"
start_page = true
backoff_max = "1m"
`, brokenPort))
	r := startRouse(t, file, control)

	// The first load: the page Chromium renders is the waiting page.
	shot := filepath.Join(t.TempDir(), "waiting.png")
	runChromium(t, chromium, "--window-size=390,700", "--screenshot="+shot, fmt.Sprintf("http://127.0.0.1:%d/", slowPort))
	if inked, _, _ := countPixels(readPNG(t, shot)); inked < 0.01 {
		t.Errorf("the waiting page's screenshot is blank (%.3f of pixels drawn)", inked)
	}
	dom := runChromium(t, chromium, "--dump-dom", fmt.Sprintf("http://127.0.0.1:%d/", slow2Port))
	for _, want := range []string{`<h1 id="state">slow2 is starting</h1>`, `http-equiv="refresh"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the first load of a cold app has no %q:\n%s", want, dom)
		}
	}
	// Left to run its timers, the page reloads until the app answers
	// (its body is the pid of the one process rouse started).
	waitFor(t, "slow2 to be ready", func() bool { return r.app(t, "slow2").state == "ready" })
	var out strings.Builder
	if code := run(t.Context(), []string{"stop", "--control", control, "slow2"}, func(string) string { return "" }, nil, &out, &out); code != 0 {
		t.Fatalf("rouse stop slow2: %d %s", code, out.String())
	}
	dom = runChromium(t, chromium, "--virtual-time-budget=20000", "--dump-dom", fmt.Sprintf("http://127.0.0.1:%d/", slow2Port))
	if pid := r.app(t, "slow2").pid; pid == 0 || !strings.Contains(dom, fmt.Sprint(pid)) {
		t.Errorf("after the waiting page's reloads, the browser shows %q, want the app's answer (pid %d)", dom, pid)
	}

	dom = runChromium(t, chromium, "--dump-dom", fmt.Sprintf("http://127.0.0.1:%d/", brokenPort))
	for _, want := range []string{"broken failed to start", "exit status 4", "cannot read /etc/broken.conf: &lt;permission denied&gt;"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page of a failed start has no %q:\n%s", want, dom)
		}
	}
}
