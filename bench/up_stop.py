"""How long an idle `sagan up` takes to stop on SIGINT (Ctrl-C), from the signal to its exit: the API and
the embedded worker (its Celery warm shutdown, reaper and fork server), each run in a fresh home folder.
Prints one JSON line.
    python bench/up_stop.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_stop(home: Path, settle_s: float) -> float:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("SAGAN_")}
    env.update(SAGAN_HOME=str(home), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    with open(home.parent / f"{home.name}.log", "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "sagan_core.cli", "up", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sagan up did not answer /healthz: {(home.parent / f'{home.name}.log')}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        time.sleep(settle_s)  # the worker's consumer is up a little after the API answers
        began = time.perf_counter()
        up.send_signal(signal.SIGINT)
        up.wait(120)
        return time.perf_counter() - began
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between /healthz and the SIGINT")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sagan-up-stop-"))
    seconds = [one_stop(folder / f"home-{index}", args.settle) for index in range(args.repeats)]
    print(json.dumps({"bench": "up_stop", "repeats": args.repeats, "stop_s": [round(s, 2) for s in seconds],
                      "median_stop_s": round(statistics.median(seconds), 2)}))


if __name__ == "__main__":
    main()
