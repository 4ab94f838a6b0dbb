package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rouse-dev/rouse/internal/testbackend"
)

func TestReloadUnderTraffic(t *testing.T) {
	keepPort, webPort, gonePort, newPort, hupPort := freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	apps := func(webName string, withGone, withNew, withHup bool) string {
		s := fmt.Sprintf(`
[apps.keep]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]

[apps.web]
mode = "http"
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-name", %q, "-listen", "127.0.0.1:{port}"]
`, keepPort, webPort, webName)
		if withGone {
			s += fmt.Sprintf("\n[apps.gone]\nlisten = [\"127.0.0.1:%d\"]\ncommand = [\"@BIN@\", \"__backend\", \"-proto\", \"echo\", \"-listen\", \"127.0.0.1:{port}\"]\n", gonePort)
		}
		if withNew {
			s += fmt.Sprintf("\n[apps.fresh]\nlisten = [\"127.0.0.1:%d\"]\ncommand = [\"@BIN@\", \"__backend\", \"-proto\", \"echo\", \"-listen\", \"127.0.0.1:{port}\"]\n", newPort)
		}
		if withHup {
			s += fmt.Sprintf("\n[apps.hup]\nlisten = [\"127.0.0.1:%d\"]\ncommand = [\"@BIN@\", \"__backend\", \"-proto\", \"echo\", \"-listen\", \"127.0.0.1:{port}\"]\n", hupPort)
		}
		return s
	}
	file, control := writeConfig(t, apps("web-v1", true, false, false))
	rewrite := func(body string) {
		t.Helper()
		f2, _ := writeConfig(t, body)
		b, err := os.ReadFile(f2)
		if err != nil {
			t.Fatal(err)
		}
		// Same control socket as the running daemon's.
		b = bytes.Replace(b, []byte(f2[:len(f2)-len("rouse.toml")]+"control.sock"), []byte(control), 1)
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := startRouse(t, file, control)
	if got := echoOnce(t, keepPort, "x"); got != "x" {
		t.Fatalf("keep: %q", got)
	}
	if got := echoOnce(t, gonePort, "x"); got != "x" {
		t.Fatalf("gone: %q", got)
	}
	keepPid := r.app(t, "keep").pid

	// Traffic on the apps that stay, all along.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var lastWeb atomic.Value
	var errs sync.Map
	client := &http.Client{Timeout: 30 * time.Second}
	for range 2 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if got := echoOnce(t, keepPort, "ping"); got == "ping" {
					ok.Add(1)
				} else {
					failed.Add(1)
					errs.Store("keep: "+got, true)
				}
			}
		}()
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", webPort))
				if err != nil {
					failed.Add(1)
					errs.Store("web: "+err.Error(), true)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					errs.Store(fmt.Sprintf("web: %d %s", resp.StatusCode, body), true)
					continue
				}
				lastWeb.Store(string(body))
				ok.Add(1)
			}
		}()
	}
	waitFor(t, "traffic", func() bool { return ok.Load() > 50 })

	rouse := func(args ...string) (string, int) {
		var out, errb bytes.Buffer
		code := run(t.Context(), args, func(string) string { return "" }, nil, &out, &errb)
		return out.String() + errb.String(), code
	}
	// 1: web's command changes, gone goes, fresh comes.
	rewrite(apps("web-v2", false, true, false))
	if out, code := rouse("reload", "--control", control); code != 0 {
		t.Fatalf("rouse reload: %d %s", code, out)
	}
	waitFor(t, "web to answer from its new command", func() bool {
		s, _ := lastWeb.Load().(string)
		return strings.HasPrefix(s, "hello from web-v2")
	})
	if got := echoOnce(t, newPort, "new"); got != "new" {
		t.Errorf("added app: %q", got)
	}
	waitFor(t, "the removed app's socket to close", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", gonePort))
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// 2: a broken config is rejected whole; everything keeps serving.
	os.WriteFile(file, []byte("[defaults]\nidle_timeout = 300\n"), 0o644)
	out, code := rouse("reload", "--control", control)
	if code != exitConfig || !strings.Contains(out, file+":2: defaults.idle_timeout") {
		t.Errorf("reload of a broken config: %d %q, want a refusal naming file:line: key", code, out)
	}
	if got := echoOnce(t, newPort, "still"); got != "still" {
		t.Errorf("after a rejected reload, the added app: %q", got)
	}
	// 3: SIGHUP reloads too.
	rewrite(apps("web-v2", false, true, true))
	r.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the app added by SIGHUP to answer", func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", hupPort), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	before := ok.Load()
	waitFor(t, "traffic after the reloads", func() bool { return ok.Load() > before+50 })
	stop()
	wg.Wait()

	if n := failed.Load(); n != 0 {
		errs.Range(func(k, _ any) bool { t.Errorf("failure: %v", k); return true })
		t.Errorf("%d of %d requests failed across reloads", n, n+ok.Load())
	}
	if pid := r.app(t, "keep").pid; pid != keepPid {
		t.Errorf("unchanged app's pid went from %d to %d", keepPid, pid)
	}
	t.Logf("%d requests, %d failed, across 3 reloads", ok.Load(), failed.Load())
}

// An app that a reload removes finishes what rouse accepted for it: every
// request on a connection rouse accepted gets the app's answer; after the
// removal, new connections are refused (the address is closed). Clients
// hammer both an http app (Python's server) and a tcp app as they go.
func TestReloadRemovalFinishesAcceptedRequests(t *testing.T) {
	script, err := filepath.Abs("../../examples/apps/pyapp.py")
	if err != nil {
		t.Fatal(err)
	}
	keepPort, webPort, echoPort := freePort(t), freePort(t), freePort(t)
	for webPort == keepPort || echoPort == keepPort || echoPort == webPort {
		webPort, echoPort = freePort(t), freePort(t) // the kernel may hand out a port twice
	}
	apps := func(withGone bool) string {
		s := fmt.Sprintf("\n[apps.keep]\nlisten = [\"127.0.0.1:%d\"]\ncommand = [\"@BIN@\", \"__backend\", \"-proto\", \"echo\", \"-listen\", \"127.0.0.1:{port}\"]\n", keepPort)
		if withGone {
			s += fmt.Sprintf("\n[apps.web]\nmode = \"http\"\nlisten = [\"127.0.0.1:%d\"]\ncommand = [\"/usr/bin/python3\", %q, \"http\", \"--port\", \"{port}\"]\n", webPort, script)
			s += fmt.Sprintf("\n[apps.echo]\nlisten = [\"127.0.0.1:%d\"]\ncommand = [\"@BIN@\", \"__backend\", \"-proto\", \"echo\", \"-listen\", \"127.0.0.1:{port}\"]\n", echoPort)
		}
		return s
	}
	file, control := writeConfig(t, apps(true))
	startRouse(t, file, control)

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var served, refused atomic.Int64
	var lost sync.Map
	// request sends one request on a new connection: refused is fine (the
	// address is gone), anything else accepted must be answered.
	request := func(port int, req, want string) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			refused.Add(1)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, req)
		if tc, ok := c.(*net.TCPConn); ok && port == echoPort {
			tc.CloseWrite()
		}
		b, err := io.ReadAll(c)
		if !strings.Contains(string(b), want) {
			lost.Store(fmt.Sprintf("port %d (web %d, echo %d): %q %v", port, webPort, echoPort, b, err), true)
			return
		}
		served.Add(1)
	}
	for range 3 {
		wg.Go(func() {
			for ctx.Err() == nil {
				request(webPort, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", " 200 ")
			}
		})
		wg.Go(func() {
			for ctx.Err() == nil {
				request(echoPort, "ping", "ping")
			}
		})
	}
	waitFor(t, "traffic", func() bool { return served.Load() > 100 })
	f2, _ := writeConfig(t, apps(false))
	b, _ := os.ReadFile(f2)
	b = bytes.Replace(b, []byte(filepath.Join(filepath.Dir(f2), "control.sock")), []byte(control), 1)
	os.WriteFile(file, b, 0o644)
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"reload", "--control", control}, func(string) string { return "" }, nil, &out, &errb); code != 0 {
		t.Fatalf("rouse reload: %d %s%s", code, &out, &errb)
	}
	waitFor(t, "connections refused after the removal", func() bool { return refused.Load() > 50 })
	stop()
	wg.Wait()
	n := 0
	lost.Range(func(k, _ any) bool { n++; t.Errorf("accepted, not answered: %v", k); return true })
	t.Logf("%d served, %d refused after the removal, %d lost", served.Load(), refused.Load(), n)
}

// A reload that sets capacity limits puts them in force at once: with two
// apps running and max_running lowered to 1, a third app (Python's own
// http.server) still starts, after rouse stopped both idle ones to make
// room; and a reload that lifts the limit lets all three run again.
func TestReloadChangesCapacityLimits(t *testing.T) {
	py := testbackend.Python3(t)
	aPort, bPort, webPort := freePort(t), freePort(t), freePort(t)
	body := fmt.Sprintf(`
[apps.a]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]

[apps.b]
listen = ["127.0.0.1:%d"]
command = ["@BIN@", "__backend", "-proto", "echo", "-listen", "127.0.0.1:{port}"]

[apps.web]
mode = "http"
listen = ["127.0.0.1:%d"]
command = [%q, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
dir = "@DIR@"
`, aPort, bPort, webPort, py)
	file, control := writeConfig(t, body)
	orig, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := startRouse(t, file, control)
	reload := func(text []byte) {
		t.Helper()
		if err := os.WriteFile(file, text, 0o644); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if code := run(t.Context(), []string{"reload", "--control", control}, os.Getenv, nil, &out, &out); code != 0 {
			t.Fatalf("rouse reload: %d %s", code, &out)
		}
	}
	get := func() {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", webPort))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("web: %s", resp.Status)
		}
	}
	for _, port := range []int{aPort, bPort} {
		if got := echoOnce(t, port, "x"); got != "x" {
			t.Fatalf("echo on %d: %q", port, got)
		}
	}

	reload(bytes.Replace(orig, []byte("[rouse]\n"), []byte("[rouse]\nmax_running = 1\n"), 1))
	waitFor(t, "the reload to be logged", func() bool { return strings.Contains(r.log.String(), "capacity limits changed") })
	get()
	for _, name := range []string{"a", "b"} {
		if st := r.app(t, name).state; st != "idle" {
			t.Errorf("app %s is %s under max_running = 1 with web served; want it stopped to make room", name, st)
		}
	}
	if st := r.app(t, "web").state; st != "ready" {
		t.Errorf("web is %s", st)
	}

	reload(orig)
	for _, port := range []int{aPort, bPort} {
		if got := echoOnce(t, port, "y"); got != "y" {
			t.Fatalf("echo on %d: %q", port, got)
		}
	}
	get()
	for _, name := range []string{"a", "b", "web"} {
		if st := r.app(t, name).state; st != "ready" {
			t.Errorf("app %s is %s with the limit lifted; want all three running", name, st)
		}
	}
}
