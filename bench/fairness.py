"""Fair share between owners: how long single jobs wait behind another owner's sweep.

Starts `sagan api` (tokens on) and two `sagan worker`s against Postgres (a throwaway schema), Redis (db 8,
flushed) and a local artifact folder. Two scenarios, one after the other, on the same service:
  - "two_owners": alice submits a --sweep-run sweep, then bob submits 3 single jobs (the issue's case);
  - "one_owner": alice submits both (fair share has nobody to share with: what first-in, first-out gave
    every owner before).
Every run is the same short CPU training. Waiting time = started_at - created_at of each single job, in
seconds and in run lengths (the median started_at -> finished_at of the sweep's runs). Prints one JSON line.
    python bench/fairness.py [--sweep-runs 20] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from services import free_port, start, stop, throwaway_schema, wait_until

REDIS = os.environ.get("SAGAN_BENCH_REDIS", "redis://127.0.0.1:6379/8")
ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def scenario(sweeper: httpx.Client, single: httpx.Client, config: dict[str, Any], sweep_runs: int) -> dict:
    sweep = sweeper.post("/jobs", json={"kind": "sweep", "base": config, "arms": [{"name": "run"}],
                                        "seeds": list(range(sweep_runs))}).raise_for_status().json()
    singles = [single.post("/jobs", json={"kind": "train", "config": config}).raise_for_status().json()["id"]
               for _ in range(3)]

    def done(client: httpx.Client, job_id: str) -> dict | None:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        return job if job["status"] in TERMINAL else None

    finished = wait_until(lambda: (s := done(sweeper, sweep["id"])) and s, 3600, "the sweep to end", 1.0)
    children = [sweeper.get(f"/jobs/{child['id']}").json() for child in finished["children"]]
    jobs = [wait_until(lambda job_id=job_id: done(single, job_id), 600, "a single job to end", 1.0)
            for job_id in singles]
    if any(job["status"] != "succeeded" for job in [*children, *jobs]):
        raise RuntimeError("a job did not succeed")
    run_s = statistics.median(seconds(c["started_at"], c["finished_at"]) for c in children)
    waits = [round(seconds(job["created_at"], job["started_at"]), 1) for job in jobs]
    return {"run_s": round(run_s, 1), "single_waits_s": waits,
            "single_waits_runs": [round(wait / run_s, 2) for wait in waits],
            "sweep_runs_started_before_last_single": sum(c["started_at"] < jobs[-1]["started_at"]
                                                         for c in children)}


def token(env: dict[str, str], name: str) -> str:
    made = subprocess.run([sys.executable, "-m", "sagan_core.cli", "token", "create", "--name", name],
                          env=env, capture_output=True, text=True, check=True)
    return made.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    config = {"preset": "debug32", "dataset": "synthetic:64", "device": "cpu", "steps": args.steps,
              "sample_every": args.steps, "checkpoint_every": args.steps, "num_workers": 0}
    temp = Path(tempfile.mkdtemp(prefix="fair"))
    with throwaway_schema() as database_url:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGAN_HOME": str(temp / "home"),
               "SAGAN_BROKER_URL": REDIS,
               "SAGAN_ARTIFACTS_URL": (temp / "artifacts").as_uri(), "SAGAN_DATABASE_URL": database_url}
        sagan = [sys.executable, "-m", "sagan_core.cli"]
        port = free_port()
        processes = [start([*sagan, "api", "--port", str(port)], env, temp / "api.log")]
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 120, "the API")
            alice, bob = (httpx.Client(base_url=url, timeout=30,
                                       headers={"Authorization": f"Bearer {token(env, name)}"})
                          for name in ("alice", "bob"))
            processes += [start([*sagan, "worker", "--queues", "cpu", *flags], env,
                                temp / f"worker-{index}.log")
                          for index, flags in enumerate(([], ["--no-reaper"]))]
            result = {"two_owners": scenario(alice, bob, config, args.sweep_runs),
                      "one_owner": scenario(alice, alice, config, args.sweep_runs)}
        finally:
            for process in reversed(processes):
                stop(process)
            import redis

            redis.Redis.from_url(REDIS).flushdb()
    shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps({"bench": "fairness", "workers": 2, "sweep_runs": args.sweep_runs, "steps": args.steps,
                      "cpus": os.cpu_count(), **result}))


if __name__ == "__main__":
    main()
