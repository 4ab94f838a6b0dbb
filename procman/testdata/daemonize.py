#!/usr/bin/python3
# An app that starts a daemon the classic way (fork, setsid, fork again),
# prints "daemon PID" and then runs until stopped. Arguments:
#   exit        the app itself exits once the daemon runs (a launcher)
#   ignoreterm  the daemon ignores SIGTERM
#   clearenv    the daemon runs with an empty environment
import os
import signal
import sys
import time

args = sys.argv[1:]
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.close(r)
        os.write(w, ("%d\n" % os.getpid()).encode())
        os.close(w)
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if "ignoreterm" in args:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        env = {} if "clearenv" in args else os.environ
        os.execve("/bin/sleep", ["sleep", "1000"], env)
    os._exit(0)
os.close(w)
pid = os.read(r, 64).decode().strip()
os.wait()
print("daemon", pid, flush=True)
if "exit" in args:
    sys.exit(0)
while True:
    time.sleep(1000)
