#!/usr/bin/env python3
"""An app as users run them, not written in Go, with bugs on purpose.

Python's own servers with their defaults: socketserver listens with a
backlog of 5 (request_queue_size), and BaseHTTPRequestHandler speaks
HTTP/1.0, closing the connection after each response. rouse's tests and
examples/bench use it; nothing here is needed to run rouse.

    pyapp.py http --port N [--boot S] [--exit-after-ready S]
        GET /            200, the pid as the body
        GET /drop        a broken route: the handler drops the connection
                         without a response, while the process lives
        GET /close-listener
                         200, then the listening socket is closed (the
                         process lives on, listening on nothing)
        GET /alloc?mib=N 200 after touching N MiB more, held until exit
    pyapp.py stream --port N [--size BYTES]
        tcp: sends BYTES bytes to every connection, then closes it
--starts FILE appends "PID UNIXNANO" to FILE at start (as rouse's Go test
backend does), --listening FILE appends UNIXNANO once it listens; --boot S sleeps S seconds before listening (a slow boot); with
--exit-after-ready S the process exits with status 0, S seconds after it
began to listen, whatever it is doing.
"""

import argparse
import http.server
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

hoard = []  # what /alloc touched, kept until exit


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/drop":
            # As a worker that dies mid-request: no response at all.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if url.path == "/alloc":
            mib = int(urllib.parse.parse_qs(url.query).get("mib", ["0"])[0])
            block = bytearray(mib << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            hoard.append(block)
        body = ("%d\n" % os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if url.path == "/close-listener":
            threading.Thread(target=self.server.socket.close, daemon=True).start()

    def log_message(self, fmt, *args):
        pass


class Stream(socketserver.BaseRequestHandler):
    def handle(self):
        chunk = b"x" * 65536
        left = self.server.size
        try:
            while left > 0:
                n = min(left, len(chunk))
                self.request.sendall(chunk[:n])
                left -= n
        except OSError:
            pass  # the client went away: its business


class ThreadingTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["http", "stream"])
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    p.add_argument("--boot", type=float, default=0)
    p.add_argument("--exit-after-ready", type=float, default=-1)
    p.add_argument("--size", type=int, default=8 << 20)
    p.add_argument("--starts", help='append "PID UNIXNANO" to this file at start')
    p.add_argument("--listening", help="append UNIXNANO to this file once it listens")
    a = p.parse_args()
    if a.starts:
        with open(a.starts, "a") as f:
            f.write("%d %d\n" % (os.getpid(), time.time_ns()))
    time.sleep(a.boot)
    if a.kind == "http":
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    else:
        srv = ThreadingTCP(("127.0.0.1", a.port), Stream)
        srv.size = a.size
    if a.listening:
        with open(a.listening, "a") as f:
            f.write("%d\n" % time.time_ns())
    if a.exit_after_ready >= 0:
        threading.Timer(a.exit_after_ready, lambda: os._exit(0)).start()
    try:
        srv.serve_forever()
    except OSError:
        # /close-listener: the socket is gone; live on, listening on
        # nothing, until stopped.
        threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
