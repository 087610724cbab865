"""Run by tests/test_forkserver.py as a job's command, `python -m tests.forkserver_probe MODE [ARG]`, through
the fork server and the plain way: it reports what a job's process sees, exits, fails or waits."""

import json
import os
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "report":
        cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "probe": os.environ.get("PROBE"),
                          "sigterm": str(signal.getsignal(signal.SIGTERM)), "cmdline": cmdline,
                          "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0)}))
    elif mode == "exit":
        sys.exit(int(sys.argv[2]))
    elif mode == "raise":
        raise RuntimeError("the probe failed")
    elif mode == "wait":
        print("waiting", flush=True)
        time.sleep(600)
