"""The same training through Ray and through local torchrun, side by side: time from submission to the first
step, and steady img/s.

Starts a local Ray head (CPU workers, gloo), `sagan api` (SAGAN_AUTH=none) and two `sagan worker`s against
Postgres (a throwaway schema), Redis (db 7, flushed) and a local artifact folder: one worker serves the local
queues, the other (SAGAN_LAUNCHER=ray) the `ray` queue. Then it submits, one after the other and alternating,
the same seed64 CPU training as 2 processes on one machine (`nproc: 2`: the local worker's torchrun) and as
2 nodes × 1 process (`nodes: 2`: Ray Train's workers on the Ray head), --pairs times. From each job's
metrics (log_every 1): `to_first_step_s` is the first step's wall-clock time minus the POST's, `img_per_s` the
median over the steps after --warmup. Prints one JSON line.
    python bench/ray_launcher.py [--pairs 2] [--steps 40] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from services import free_port, start, stop, throwaway_schema, wait_until

REDIS = os.environ.get("SAGAN_BENCH_REDIS", "redis://127.0.0.1:6379/7")
ROOT = Path(__file__).resolve().parents[1]


def run_job(client: httpx.Client, config: dict[str, Any], warmup: int) -> dict[str, float]:
    submitted = time.time()
    job = client.post("/jobs", json={"kind": "train", "config": config}).raise_for_status().json()
    done = wait_until(lambda: (j := client.get(f"/jobs/{job['id']}").json())["status"] in
                      ("succeeded", "failed", "cancelled") and j, 1200, "the job to end")
    if done["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {done['status']}: {done.get('error')}")
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()["items"]
    return {"to_first_step_s": round(metrics[0]["time"] - submitted, 2),
            "img_per_s": round(statistics.median(m["img_per_s"] for m in metrics if m["step"] > warmup), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the img/s median")
    args = parser.parse_args()

    temp = Path(tempfile.mkdtemp(prefix="rayb", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    with throwaway_schema() as database_url:
        runs = measure(args, temp, database_url)
    shutil.rmtree(temp, ignore_errors=True)
    ratio = statistics.mean(r["img_per_s"] for r in runs["ray"]) / statistics.mean(
        r["img_per_s"] for r in runs["torchrun"])
    print(json.dumps({"bench": "ray_launcher", "preset": "seed64", "batch_size": args.batch_size,
                      "steps": args.steps, "processes": 2, "cpus": os.cpu_count(), **runs,
                      "ray_over_torchrun_img_per_s": round(ratio, 3)}))


def measure(args: argparse.Namespace, temp: Path, database_url: str) -> dict[str, list[dict[str, float]]]:
    api_port, ray_port, dashboard = free_port(), free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SAGAN_HOME": str(temp / "home"), "SAGAN_AUTH": "none", "SAGAN_BROKER_URL": REDIS,
           "SAGAN_ARTIFACTS_URL": (temp / "artifacts").as_uri(), "RAY_USAGE_STATS_ENABLED": "0",
           "SAGAN_RAY_ADDRESS": f"http://127.0.0.1:{dashboard}",
           "SAGAN_DATABASE_URL": database_url}
    sagan = [sys.executable, "-m", "sagan_core.cli"]
    processes = [start([str(bin_dir / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port",
                        str(ray_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                        "--include-dashboard", "true", "--temp-dir", str(temp / "t")], env, temp / "ray.log")]
    try:
        wait_until(lambda: httpx.get(f"{env['SAGAN_RAY_ADDRESS']}/api/version").status_code == 200, 120,
                   "Ray")
        processes.append(start([*sagan, "api", "--port", str(api_port)], env, temp / "api.log"))
        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)
        wait_until(lambda: client.get("/healthz").status_code == 200, 120, "the API")
        processes.append(start([*sagan, "worker", "--queues", "default,cpu,gpu", "--no-reaper"], env,
                               temp / "worker-local.log"))
        processes.append(start([*sagan, "worker", "--queues", "ray", "--no-reaper"],
                               {**env, "SAGAN_LAUNCHER": "ray"}, temp / "worker-ray.log"))
        base = {"preset": "seed64", "dataset": "synthetic:512", "device": "cpu",
                "batch_size": args.batch_size,
                "steps": args.steps, "log_every": 1, "sample_every": args.steps,
                "checkpoint_every": args.steps, "num_workers": 0}
        arms = {"torchrun": {**base, "nproc": 2}, "ray": {**base, "nodes": 2, "nproc": 1}}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
        for _ in range(args.pairs):
            for name, config in arms.items():
                runs[name].append(run_job(client, config, args.warmup))
    finally:
        for process in reversed(processes):
            stop(process)
        import redis

        redis.Redis.from_url(REDIS).flushdb()
    return runs


if __name__ == "__main__":
    main()
