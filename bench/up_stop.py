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
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from services import free_port, start, stop, wait_until

ROOT = Path(__file__).resolve().parents[1]


def one_stop(home: Path, settle_s: float) -> float:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("SAGAN_")}
    env.update(SAGAN_HOME=str(home), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    log = home.parent / f"{home.name}.log"
    up = start([sys.executable, "-m", "sagan_core.cli", "up", "--port", str(port)], env, log)
    try:
        def healthy() -> bool:
            if up.poll() is not None:
                raise SystemExit(f"sagan up exited before it answered /healthz: {log}")
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

        wait_until(healthy, 120, "sagan up to answer /healthz")
        time.sleep(settle_s)  # the worker's consumer is up a little after the API answers
        began = time.perf_counter()
        up.send_signal(signal.SIGINT)
        up.wait(120)
        return time.perf_counter() - began
    finally:
        if up.poll() is None:
            stop(up)


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
