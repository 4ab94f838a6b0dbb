package activator

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// With start_page, a browser's GET held past start_page_after gets the
// waiting page (a 503 that reloads itself); an API client's GET and a
// browser's HEAD are held and served as ever; once the app is ready the
// browser's next GET gets the app's answer.
func TestStartPageForBrowsersOnly(t *testing.T) {
	ta := newPyApp(t, "http", []string{"--boot", "1.5"}, func(c *Config) {
		c.StartPage, c.StartPageAfter = true, 200*time.Millisecond
	})
	url := "http://" + ta.addr + "/"
	do := func(method, accept string) (*http.Response, string) {
		req, _ := http.NewRequest(method, url, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, accept, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	const browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	var wg sync.WaitGroup
	wg.Go(func() {
		if resp, body := do("GET", "application/json"); resp.StatusCode != 200 {
			t.Errorf("API client: %s %q, want the app's 200", resp.Status, body)
		}
	})
	wg.Go(func() {
		// Python's handler has no do_HEAD: its 501 is the app's answer.
		if resp, _ := do("HEAD", browser); resp.Header.Get("Proxy-Status") != "" {
			t.Errorf("browser HEAD: %s from rouse, want the app's answer", resp.Status)
		}
	})
	start := time.Now()
	resp, body := do("GET", browser)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("browser GET of a cold app: %s %s, want the waiting page", resp.Status, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{`<meta http-equiv="refresh" content="1">`, "<title>t is starting</title>"} {
		if !strings.Contains(body, want) {
			t.Errorf("waiting page lacks %q:\n%s", want, body)
		}
	}
	if resp.Header.Get("Retry-After") != "1" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("waiting page headers: %v", resp.Header)
	}
	if took := time.Since(start); took > 1200*time.Millisecond {
		t.Errorf("the waiting page came after %s, want about start_page_after (200ms)", took)
	}
	// As the page's refresh does, until the app answers.
	waitFor(t, "the app's answer to the browser", func() bool {
		resp, _ := do("GET", browser)
		return resp.StatusCode == 200
	})
	wg.Wait()
	onePid(t, ta)
}

// A browser asking for an app whose start fails gets a page saying so,
// with the app's last stderr line, escaped.
func TestStartPageShowsAFailedStart(t *testing.T) {
	ta := newTestApp(t, nil, func(c *Config) {
		c.Mode = ModeHTTP
		c.Process.Argv = nil
		c.Process.Shell = `echo 'cannot read <config.toml>' >&2; exit 3`
		c.StartPage, c.StartPageAfter = true, 5*time.Second
	})
	req, _ := http.NewRequest("GET", "http://"+ta.addr+"/", nil)
	req.Header.Set("Accept", "text/html")
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(b)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("got %s, want 503", resp.Status)
	}
	for _, want := range []string{"t failed to start", "exit status 3", "cannot read &lt;config.toml&gt;"} {
		if !strings.Contains(body, want) {
			t.Errorf("failure page lacks %q:\n%s", want, body)
		}
	}
}
