"""Service overhead: dispatch latency and training throughput through the service vs `sagan_core.train`.

Runs the same config twice on this machine: once as `python -m sagan_core.train` directly, once as a job
through `sagan up` (the embedded service: SQLite, filesystem broker, local artifacts). Dispatch latency =
(first metrics line - POST) through the service minus (first metrics line - launch) when run directly.
Throughput = mean img/s over the logged steps after the first (warm-up); --repeat alternating pairs,
medians reported. Prints one JSON line.
    python bench/dispatch.py [--steps 60] [--preset debug32] [--sample-every N] [--checkpoint-every N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx


def first_time_and_rate(lines: list[dict]) -> tuple[float, float]:
    rates = [line["img_per_s"] for line in lines[1:]]
    return lines[0]["time"], sum(rates) / len(rates)


def run_direct(config: dict, tmp: Path) -> tuple[float, float]:
    (tmp / "config.json").write_text(json.dumps(config))
    launched = time.time()
    subprocess.run([sys.executable, "-m", "sagan_core.train", "--config", str(tmp / "config.json"),
                    "--out", str(tmp / "direct")], check=True, capture_output=True)
    lines = [json.loads(line) for line in (tmp / "direct" / "metrics.jsonl").read_text().splitlines()]
    first, rate = first_time_and_rate(lines)
    return first - launched, rate


def run_service(config: dict, tmp: Path) -> tuple[float, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "SAGAN_HOME": str(tmp / "home")}
    up = subprocess.Popen([sys.executable, "-m", "sagan_core.cli", "up", "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        while True:
            try:
                if api.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        time.sleep(3)  # let the worker connect to the broker
        posted = time.time()
        job_id = api.post("/jobs", json={"kind": "train", "config": config}).json()["id"]
        while (job := api.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        first, rate = first_time_and_rate(api.get(f"/jobs/{job_id}/metrics").json()["items"])
        return first - posted, rate
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="debug32")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sample-every", type=int, help="default: only at the end")
    parser.add_argument("--checkpoint-every", type=int, help="default: only at the end")
    parser.add_argument("--repeat", type=int, default=3, help="alternating direct/service pairs; medians")
    args = parser.parse_args()
    config = {"preset": args.preset, "steps": args.steps, "log_every": 5,
              "sample_every": args.sample_every or args.steps,
              "checkpoint_every": args.checkpoint_every or args.steps, "dataset": "synthetic:256"}
    direct, service = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.repeat):  # alternating, so a slow spell of the machine hits both sides
            (Path(tmp) / str(index)).mkdir()
            direct.append(run_direct(config, Path(tmp) / str(index)))
            service.append(run_service(config, Path(tmp) / str(index)))
    dispatch = [s[0] - d[0] for d, s in zip(direct, service, strict=True)]
    direct_rate, service_rate = median(d[1] for d in direct), median(s[1] for s in service)
    print(json.dumps({"bench": "dispatch", "preset": args.preset, "steps": args.steps,
                      "sample_every": config["sample_every"], "checkpoint_every": config["checkpoint_every"],
                      "repeat": args.repeat, "dispatch_s": round(median(dispatch), 2),
                      "direct_img_per_s": round(direct_rate, 1), "service_img_per_s": round(service_rate, 1),
                      "overhead_pct": round(100 * (1 - service_rate / direct_rate), 2),
                      "all_direct_img_per_s": [round(d[1], 1) for d in direct],
                      "all_service_img_per_s": [round(s[1], 1) for s in service]}))


if __name__ == "__main__":
    main()
