package httpfront

import (
	"bytes"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/rouse-dev/rouse/activator"
)

// The waiting page (start_page), as App.Proxy decides to show it
// (activator.StartPage): this file only renders it.

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

// writeStartPage writes the waiting page of a's request to w.
func writeStartPage(a *activator.App, w http.ResponseWriter, p activator.StartPage) {
	d := startPageData{App: a.Config().Name, Waited: p.Waited.Round(100 * time.Millisecond).String(),
		Retry: int(p.Retry / time.Second), LastOut: p.LastOut}
	if p.Failure != nil {
		d.Failed, d.Error = true, p.Failure.Last
	}
	var body bytes.Buffer
	if err := startPage.Execute(&body, d); err != nil {
		a.WriteAnswer(w, http.StatusServiceUnavailable, time.Second, "destination_unavailable", "the app is starting")
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
	a.CountAnswer(http.StatusServiceUnavailable)
	w.WriteHeader(http.StatusServiceUnavailable)
	w.Write(body.Bytes())
}

// StartPage writes the waiting page (activator.Request).
func (q *rawRequest) StartPage(p activator.StartPage) { writeStartPage(q.a, q.ErrorWriter(), p) }

// StartPage writes the waiting page (activator.Request).
func (q *httpRequest) StartPage(p activator.StartPage) { writeStartPage(q.a, q.w, p) }
