package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// The sizes of the larger responses: GET /bytes?n=SIZE. 64 KiB is a web
// page or an API answer, longer than rouse's event-loop buffer; 1 MiB a
// download.
const (
	midSize = 64 << 10
	bigSize = 1 << 20
)

// bytesPath is the URL path of an n-byte response on either backend.
func bytesPath(n int) string { return "/bytes?n=" + strconv.Itoa(n) }

// backendArgv returns the command of a backend of kind ("go" or "nginx")
// listening on 127.0.0.1:port; both answer GET / with a short text and
// GET /bytes?n=SIZE with SIZE bytes, for midSize and bigSize, with a
// Content-Length. For nginx it writes the config file.
func (h *harness) backendArgv(kind string, port int) ([]string, error) {
	switch kind {
	case "go":
		return []string{h.rouse, "__backend", "-proto", "http", "-name", "bench", "-listen", addr(port)}, nil
	case "nginx":
		www := filepath.Join(h.dir, "www")
		if err := os.MkdirAll(www, 0o755); err != nil {
			return nil, err
		}
		for _, n := range []int{midSize, bigSize} {
			file := filepath.Join(www, "bytes-"+strconv.Itoa(n))
			if _, err := os.Stat(file); err != nil {
				if err := os.WriteFile(file, bytes.Repeat([]byte("x"), n), 0o644); err != nil {
					return nil, err
				}
			}
		}
		name := fmt.Sprintf("backend-%d", port)
		conf := fmt.Sprintf(`# nginx as the backend: "return 200" and static files of 64 KiB and 1 MiB
daemon off;
worker_processes 1;
pid %[1]s/%[2]s.pid;
error_log %[1]s/%[2]s.err warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
%[3]s
	server {
		listen 127.0.0.1:%[4]d backlog=4096;
		location = /bytes { alias %[5]s/bytes-$arg_n; default_type application/octet-stream; }
		location / { default_type text/plain; return 200 "hello from nginx\n"; }
	}
}
`, h.dir, name, nginxTempPaths(h.dir, name), port, www)
		return h.nginxArgv(name, conf)
	}
	return nil, fmt.Errorf("unknown backend %q", kind)
}

// nginxArgv writes conf as DIR/NAME.conf and returns the command that runs
// nginx on it in the foreground.
func (h *harness) nginxArgv(name, conf string) ([]string, error) {
	if err := os.MkdirAll(filepath.Join(h.dir, name+"-tmp"), 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(h.dir, name+".conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return []string{h.tools.nginx, "-c", file, "-p", h.dir, "-e", filepath.Join(h.dir, name+".err")}, nil
}

func nginxTempPaths(dir, name string) string {
	var b bytes.Buffer
	for _, k := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&b, "\t%s_temp_path %s/%s-tmp/%s;\n", k, dir, name, k)
	}
	return b.String()
}

// nginxProxyArgv is the nginx contender: proxy_pass to the backend with an
// upstream keepalive pool, setting the same X-Forwarded-* headers rouse sets.
func (h *harness) nginxProxyArgv(port, backend int) ([]string, error) {
	name := "nginx-proxy"
	conf := fmt.Sprintf(`# nginx as the reverse proxy contender
daemon off;
worker_processes %[3]s;
pid %[1]s/%[2]s.pid;
error_log %[1]s/%[2]s.err warn;
events { worker_connections 16384; }
http {
	%[7]s
	keepalive_requests 1000000;
%[4]s
	upstream backend {
		server 127.0.0.1:%[6]d;
		keepalive 64;
		keepalive_requests 1000000;
	}
	server {
		listen 127.0.0.1:%[5]d backlog=4096;
		location / {
			proxy_pass http://backend;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $http_host;
			proxy_set_header X-Forwarded-For $remote_addr;
			proxy_set_header X-Forwarded-Proto $scheme;
			proxy_set_header X-Forwarded-Host $http_host;
		}
	}
}
`, h.dir, name, h.o.nginxWorkers, nginxTempPaths(h.dir, name), port, backend, h.nginxAccessLog(name))
	return h.nginxArgv(name, conf)
}

// nginxAccessLog is the proxy contender's access_log directive: off, or
// with -access-log a file written through a buffer, as rouse's is.
func (h *harness) nginxAccessLog(name string) string {
	if !h.o.accessLog {
		return "access_log off;"
	}
	return fmt.Sprintf("access_log %s/%s-access.log combined buffer=64k flush=1s;", h.dir, name)
}

// haproxyProxyArgv is the HAProxy contender: mode http, nbthread threads,
// kept connections to the backend shared between clients (http-reuse
// always), the same X-Forwarded-* headers rouse sets.
func (h *harness) haproxyProxyArgv(port, backend, threads int) ([]string, error) {
	file := filepath.Join(h.dir, "haproxy-proxy.cfg")
	conf := fmt.Sprintf(`# HAProxy as the reverse proxy contender
global
	nbthread %[3]d
defaults
	mode http
	timeout connect 5s
	timeout client 60s
	timeout server 60s
	timeout http-keep-alive 60s
	http-reuse always
frontend proxy
	bind 127.0.0.1:%[1]d backlog 4096
	option forwardfor
	http-request set-header X-Forwarded-Proto http
	http-request set-header X-Forwarded-Host %%[req.hdr(host)]
	default_backend app
backend app
	server app 127.0.0.1:%[2]d
`, port, backend, threads)
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return []string{h.tools.haproxy, "-db", "-f", file}, nil
}

// proxydArgv runs systemd-socket-proxyd as a socket-activated service
// would run: systemd-socket-activate binds the socket and passes it, and
// SIGPIPE is ignored (systemd's IgnoreSIGPIPE=yes) by the wrapper.
func (h *harness) proxydArgv(port, backend int) []string {
	return []string{h.self, noSigpipeVerb, h.tools.activate, "-l", addr(port), h.tools.proxyd, addr(backend)}
}

func (h *harness) naiveArgv(port, backend int) []string {
	return []string{h.self, naiveProxyVerb, addr(port), addr(backend)}
}

func (h *harness) goHTTPProxyArgv(port, backend int) []string {
	return []string{h.self, goHTTPProxyVerb, addr(port), addr(backend)}
}
