package activator

import (
	"bytes"
	"errors"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The waiting page (start_page): a person who opens a cold app in a
// browser sees, after start_page_after, a small page saying the app is
// starting, which reloads itself every second; the reload is held like any
// request and gets the app's own answer once it is ready. Only a GET that
// accepts text/html gets it, on its first attempt; every other request
// (an API client, a HEAD, a retry) is held exactly as without it. The page
// is a 503 with Retry-After, never cached, so that nothing keeps it.

// wantsStartPage reports whether rq is a browser's request that gets the
// waiting page instead of being held past start_page_after.
func (a *App) wantsStartPage(rq Request) bool {
	return a.config().StartPage && rq.Method() == http.MethodGet && strings.Contains(rq.Accept(), "text/html")
}

// startPageData is what the page shows.
type startPageData struct {
	App     string
	Waited  string
	Failed  bool
	Retry   int    // seconds until the page reloads
	Error   string // the last error, when the start failed
	LastOut string // the app's last stderr line, when the start failed
}

var startPage = template.Must(template.New("start").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{{.Retry}}">
<title>{{.App}} is starting</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center;background:#f6f7f9;color:#222}
main{max-width:32em;padding:2em;text-align:center}
h1{font-size:1.4em;margin:.2em 0}
.spin{width:2em;height:2em;margin:0 auto 1em;border:.25em solid #ccd;border-top-color:#4a7;border-radius:50%;animation:s 1s linear infinite}
@keyframes s{to{transform:rotate(360deg)}}
.err{color:#b22}
pre{text-align:left;white-space:pre-wrap;word-break:break-all;background:#eee;padding:.6em;border-radius:.3em;font-size:.85em}
small{color:#667}
</style></head>
<body><main>
{{if .Failed}}<h1 class="err" id="state">{{.App}} failed to start</h1>
<p>rouse tries again; this page reloads in {{.Retry}} s.</p>
<pre id="error">{{.Error}}</pre>{{if .LastOut}}
<p><small>its last output</small></p><pre id="stderr">{{.LastOut}}</pre>{{end}}
{{else}}<div class="spin"></div>
<h1 id="state">{{.App}} is starting</h1>
<p>Waiting for {{.Waited}} so far. This page reloads by itself and shows the app as soon as it is ready.</p>
{{end}}<p><small>rouse</small></p>
</main></body></html>
`))

// writeStartPage writes the waiting page: the app is still starting
// (failure nil), or its start failed and it is in back-off.
func (a *App) writeStartPage(w http.ResponseWriter, start time.Time, failure *BackoffError) {
	d := startPageData{App: a.config().Name, Waited: a.now().Sub(start).Round(100 * time.Millisecond).String(), Retry: 1}
	if failure != nil {
		d.Failed, d.Error = true, failure.Last
		d.Retry = int(max(roundUp(failure.Until.Sub(a.now())), time.Second) / time.Second)
		a.mu.Lock()
		if n := len(a.lastTail); n > 0 {
			d.LastOut = a.lastTail[n-1]
		}
		a.mu.Unlock()
	}
	var body bytes.Buffer
	if err := startPage.Execute(&body, d); err != nil {
		a.writeError(w, http.StatusServiceUnavailable, time.Second, "destination_unavailable", "the app is starting")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	h.Set("Proxy-Status", "rouse; error=destination_unavailable")
	h.Set("Retry-After", strconv.Itoa(d.Retry))
	h.Set("Content-Length", strconv.Itoa(body.Len()))
	a.metrics.outcome("rouse_503")
	w.WriteHeader(http.StatusServiceUnavailable)
	w.Write(body.Bytes())
}

// holdForPage is acquire for a request that may get the waiting page: it
// waits until start_page_after at most, then answers with the page if the
// app is not ready yet (or failed to start); done reports that.
func (a *App) holdForPage(rq Request, start, deadline time.Time) (inst *instance, done bool, err error) {
	early := start.Add(a.config().StartPageAfter)
	if !early.Before(deadline) {
		inst, err = a.acquire(rq.Context(), deadline, false)
		return inst, false, err
	}
	inst, err = a.acquire(rq.Context(), early, false)
	var be *BackoffError
	switch {
	case err == nil:
		return inst, false, nil
	case errors.Is(err, ErrQueueTimeout):
		a.writeStartPage(rq.ErrorWriter(), start, nil)
		return nil, true, nil
	case errors.As(err, &be):
		a.writeStartPage(rq.ErrorWriter(), start, be)
		return nil, true, nil
	}
	return nil, false, err
}
