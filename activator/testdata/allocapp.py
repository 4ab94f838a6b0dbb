"""An HTTP app that holds a known amount of memory, for the capacity tests.

usage: allocapp.py PORT MIB STARTS [DELAY_S]

It appends "PID UNIXNANO" to STARTS as it starts, fills MIB MiB (every page
touched, so it counts in RSS), takes DELAY_S more seconds to start, then
serves: GET /slow/MS answers after MS milliseconds; GET /grow/MIB/MS fills
MIB MiB more, held for good (an app that grows after it is ready, as it
serves), then answers after MS milliseconds; anything else at once. The
body is its pid.
"""
import http.server
import os
import sys
import time

port, mib, starts = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
with open(starts, "a") as f:
    f.write(f"{os.getpid()} {time.time_ns()}\n")
blob = b"x" * (mib << 20)
grown = []
time.sleep(delay)  # a slow start, as the app's own


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow/"):
            time.sleep(int(self.path[len("/slow/"):]) / 1000)
        if self.path.startswith("/grow/"):
            more, ms = self.path[len("/grow/"):].split("/")
            grown.append(b"y" * (int(more) << 20))
            time.sleep(int(ms) / 1000)
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
