"""How long a short training job's process tree takes from start to exit, started by the worker's launcher the
plain way (a fresh interpreter imports torch and the trainer) and through the worker's fork server (a fork of
a process that imported them once): interleaved, the same tiny CPU training each time. CPU seconds are those
of the whole tree (the launcher's children, waited for). Prints one JSON line.
    python bench/job_start.py [--repeats 5] [--steps 1]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.launcher import LocalLauncher  # noqa: E402  (after the path: the bench runs from a checkout)
from worker.processes import stop_group  # noqa: E402


def tree_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_job(folder: Path, config: Path, forkserver: Path | None,
            server_pid: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one job's tree: a plain tree's CPU adds to this process's children's
    once the launcher reaped its guard; a served one's to the server's children's once it reaped it."""
    out = folder / f"run-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "sagan_core.train", "--config", str(config), "--out", str(out)]
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sagan-bench-") as tmp:
        folder = Path(tmp)
        config = folder / "config.json"
        config.write_text(json.dumps({"preset": "debug32", "dataset": "synthetic:64", "device": "cpu",
                                      "steps": args.steps, "checkpoint_every": 100000}))
        socket_path = folder / "forkserver.sock"
        server = subprocess.Popen([sys.executable, "-m", "worker.forkserver", "--socket", str(socket_path)],
                                  cwd=ROOT, start_new_session=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            while not socket_path.exists():
                time.sleep(0.01)
            one_job(folder, config, socket_path, server.pid)  # the server imports at its first job
            plain: list[tuple[float, float]] = []
            served: list[tuple[float, float]] = []
            for _ in range(args.repeats):
                plain.append(one_job(folder, config, None, None))
                served.append(one_job(folder, config, socket_path, server.pid))
        finally:
            stop_group(server, 5)

    def summary(runs: list[tuple[float, float]]) -> dict[str, float]:
        return {"wall_s_median": round(statistics.median(w for w, _ in runs), 3),
                "cpu_s_median": round(statistics.median(c for _, c in runs), 3)}

    print(json.dumps({"bench": "job_start", "steps": args.steps, "repeats": args.repeats,
                      "plain": summary(plain), "forkserver": summary(served),
                      "speedup_wall": round(statistics.median(w for w, _ in plain)
                                            / statistics.median(w for w, _ in served), 2)}))


if __name__ == "__main__":
    main()
