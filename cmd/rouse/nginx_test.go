package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The field story: nginx proxies to an app that should start on demand.
// With rouse between them a plain proxy_pass with upstream keepalive just
// works: the first request after every idle stop is a 200, nginx logs no
// failure, and nginx's idle keep-alive connections do not keep the app up.
func TestNginxInFront(t *testing.T) {
	nginx := requireTool(t, "nginx")
	rousePort, nginxPort := freePort(t), freePort(t)
	file, control := writeConfig(t, fmt.Sprintf(`
[apps.web]
mode = "http"
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-name", "web", "-delay", "200ms", "-listen", "127.0.0.1:{port}"]
idle_timeout = "300ms"
`, rousePort))
	r := startRouse(t, file, control)

	dir := t.TempDir()
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`
daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	upstream web {
		server 127.0.0.1:%[2]d max_fails=1;
		keepalive 8;
	}
	server {
		listen 127.0.0.1:%[3]d;
		location / {
			proxy_pass http://web;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_next_upstream error timeout http_500 http_502 http_503;
		}
	}
}
`, dir, rousePort, nginxPort)), 0o644)
	cmd := exec.Command(nginx, "-c", conf, "-p", dir, "-e", filepath.Join(dir, "error.log"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT)
		cmd.Wait()
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/", nginxPort)
	waitFor(t, "nginx to listen", func() bool {
		c, err := (&http.Client{Timeout: time.Second}).Get(url + "broken")
		if err == nil {
			c.Body.Close()
		}
		return err == nil
	})
	client := &http.Client{Timeout: 30 * time.Second}
	for round := range 4 {
		waitFor(t, "the app to be stopped for idleness", func() bool { return r.app(t, "web").state == "idle" })
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "hello from web") {
			t.Fatalf("round %d: first request after idle through nginx: %d %q", round, resp.StatusCode, body)
		}
		// A route that answers 500 is the app's answer: it must not make
		// nginx or rouse give up on the app.
		resp, err = client.Get(url + "broken")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 500 {
			t.Fatalf("round %d: /broken through nginx: %d, want the app's 500", round, resp.StatusCode)
		}
	}
	if st := r.app(t, "web"); st.starts < 4 {
		t.Errorf("app started %d times in 4 idle rounds; nginx's keepalive kept it up", st.starts)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
	for _, bad := range []string{"connect() failed", "no live upstreams", "upstream prematurely closed", "while reading response header"} {
		if strings.Contains(string(log), bad) {
			t.Errorf("nginx error log has %q:\n%s", bad, log)
		}
	}
}
