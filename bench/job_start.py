"""How long a short training job's process tree takes from start to exit, started by the worker's launcher the
plain way (a fresh interpreter imports torch and the trainer) and through the worker's fork server (a fork of
a process that imported them once): interleaved, the same tiny CPU training each time. CPU seconds are those
of the whole tree (the launcher's children, waited for). Prints one JSON line.
    python bench/job_start.py [--repeats 5] [--steps 1] [--nproc 2]

With --nproc N > 1 each way also starts the job's N ranks both ways: torchrun's own (`-m torch.distributed.run
-m sagan_core.train`: every rank a fresh interpreter) and the service's (sagan_core.rank_launcher: every rank
a fork of the launcher, which imported the trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sagan_core.config import build_config  # noqa: E402  (after the path: the bench runs from a checkout)
from sagan_core.launch import training_launch  # noqa: E402
from worker.launcher import LocalLauncher  # noqa: E402
from worker.processes import stop_group  # noqa: E402


def tree_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_job(folder: Path, launch: Callable[[Path], list[str]], forkserver: Path | None,
            server_pid: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one job's tree: a plain tree's CPU adds to this process's children's
    once the launcher reaped its guard; a served one's to the server's children's once it reaped it."""
    command = launch(folder / f"run-{time.monotonic_ns()}")
    cpu_before = server_children_cpu(server_pid) if server_pid else tree_cpu_seconds()
    began = time.perf_counter()
    launcher = LocalLauncher.start(command, env=dict(os.environ), log_path=folder / "job.log", cwd=folder,
                                   grace_seconds=5, forkserver=forkserver)
    while launcher.poll() is None:
        time.sleep(0.01)
    wall = time.perf_counter() - began
    if launcher.returncode != 0:
        raise SystemExit(f"the job failed ({launcher.returncode}): {(folder / 'job.log').read_text()[-500:]}")
    if server_pid:
        while Path(f"/proc/{launcher.process.pid}").exists():  # until the server reaped the guard
            time.sleep(0.01)
        return wall, server_children_cpu(server_pid) - cpu_before
    return wall, tree_cpu_seconds() - cpu_before


def server_children_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=1, help="ranks per job (more than 1: both launches)")
    args = parser.parse_args()
    config = build_config({"preset": "debug32", "dataset": "synthetic:64", "device": "cpu",
                           "steps": args.steps, "checkpoint_every": 100000, "nproc": args.nproc,
                           "batch_size": 8 * args.nproc})
    with tempfile.TemporaryDirectory(prefix="sagan-bench-") as tmp:
        folder = Path(tmp)
        config_path = folder / "config.json"
        config_path.write_text(json.dumps(config.to_dict()))

        def service(out: Path) -> list[str]:  # device cpu: forked ranks where nproc > 1
            return training_launch(config_path, out, config).command

        def spawned_ranks(out: Path) -> list[str]:
            # The launch the service gives ranks that may use a GPU (and gave every rank until 2026-12-05):
            # torchrun's own, each rank a new interpreter. The config file still says cpu.
            return replace(training_launch(config_path, out, config), device="auto").command

        launches = {"service": service} | ({"spawned_ranks": spawned_ranks} if args.nproc > 1 else {})
        socket_path = folder / "forkserver.sock"
        server = subprocess.Popen([sys.executable, "-m", "worker.forkserver", "--socket", str(socket_path)],
                                  cwd=ROOT, start_new_session=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            while not socket_path.exists():
                time.sleep(0.01)
            # the server imports at its first job
            one_job(folder, service, socket_path, server.pid)
            runs: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.repeats):
                for name, launch in launches.items():
                    runs.setdefault(f"plain/{name}", []).append(one_job(folder, launch, None, None))
                    runs.setdefault(f"forkserver/{name}", []).append(
                        one_job(folder, launch, socket_path, server.pid))
        finally:
            stop_group(server, 5)

    def median_wall(name: str) -> float:
        return statistics.median(w for w, _ in runs[name])

    summary = {name: {"wall_s_median": round(median_wall(name), 3),
                      "cpu_s_median": round(statistics.median(c for _, c in times), 3)}
               for name, times in runs.items()}
    speedup = median_wall("plain/service") / median_wall("forkserver/service")
    print(json.dumps({"bench": "job_start", "steps": args.steps, "repeats": args.repeats, "nproc": args.nproc,
                      **summary, "speedup_wall": round(speedup, 2)}))


if __name__ == "__main__":
    main()
