"""Stopping: a worker's SIGTERM hands its job back at once with a fresh checkpoint; a cancel leaves no
process behind, even ranks that ignore SIGTERM. Real workers, torchrun with two ranks."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.service.conftest import (
    BUCKET,
    TINY,
    WORKER,
    Api,
    S3Server,
    Service,
    Workers,
    pids_mentioning,
    wait_for,
)
from worker.processes import children

STUBBORN_RANKS = Path(__file__).parent / "stubborn_ranks"
RANK_LAUNCHER = f"{sys.executable} -m sagan_core.rank_launcher ".encode()


@pytest.mark.timeout(600)
def test_sigterm_to_a_worker_hands_its_job_back_at_once_with_a_checkpoint_where_it_stopped(
        api: Api, workers: Workers, s3_server: S3Server) -> None:
    # No checkpoint is due before the end: the one the job resumes from is the stop's own.
    config = {**TINY, "nproc": 2, "steps": 60, "checkpoint_every": 1000, "sample_every": 1000}
    job = api.submit({"kind": "train", "config": config})
    wait_for(lambda: api.job(job["id"])["progress"]["step"] >= 3, 240, "training to run a few steps")

    worker = workers.current.process
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)  # what `docker compose stop` does (tini passes it to the worker)
    worker.wait(60)
    took = time.monotonic() - began
    print(f"the worker exited {took:.1f} s after SIGTERM")
    assert took < 30  # a few seconds on an idle machine; well inside compose's 2-minute grace

    handed_back = api.job(job["id"])  # at once: not after the lease, and the attempt does not count
    assert handed_back["status"] == "queued" and handed_back["attempt"] == 0, handed_back
    stopped_at = handed_back["latest_checkpoint_step"]
    assert stopped_at is not None and 3 <= stopped_at < 60
    metrics = api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]
    assert [m["step"] for m in metrics] == list(range(1, stopped_at + 1))
    assert not pids_mentioning(job["id"])

    workers.start()
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=400)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1 and done["resumed_from_step"] == stopped_at
    assert [m["step"]
            for m in api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]] == list(range(1, 61))
    # One log for the attempt, across the two workers.
    attempt_log = s3_server.client().get_object(Bucket=BUCKET,
                                                Key=f"artifacts/jobs/{job['id']}/logs/attempt-1.log")
    assert f"stopped by SIGTERM at step {stopped_at}" in attempt_log["Body"].read().decode()


def ranks_of(job_id: str) -> list[int]:
    """The trainer's ranks: forks of the rank launcher (sagan_core.rank_launcher), so the processes with its
    command line whose parent has it too."""
    def runs_the_launcher(pid: int) -> bool:
        try:
            # NULs between the arguments, or spaces where the fork server set the title
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").startswith(RANK_LAUNCHER)
        except OSError:
            return False

    launchers = {pid for pid in pids_mentioning(job_id) if runs_the_launcher(pid)}
    return [child for pid in launchers for child in children(pid) if child in launchers]


def own_forkserver_folder(worker_pid: int) -> Path:
    """The folder of the socket of the fork server a worker started (under a guard, its child)."""
    for guard in children(worker_pid):
        for server in children(guard):
            command = Path(f"/proc/{server}/cmdline").read_bytes().decode().split("\0")
            if "worker.forkserver" in command:
                return Path(command[command.index("--socket") + 1]).parent
    raise AssertionError(f"worker {worker_pid} runs no fork server")


def ignores_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.timeout(600)
def test_no_process_of_a_job_survives_a_cancel_or_its_worker_even_ranks_ignoring_sigterm(
        api: Api, workers: Workers, service_env: dict[str, str], tmp_path: Path) -> None:
    workers.current.stop()  # these jobs must go to the worker whose ranks ignore SIGTERM
    # Its own fork server, not the session's: the fault goes in where that server starts (sitecustomize).
    env = {name: value for name, value in service_env.items() if name != "SAGAN_FORKSERVER_SOCKET"}
    env.update(SAGAN_TEST_RANKS_IGNORE_SIGTERM="1",
               PYTHONPATH=os.pathsep.join([str(STUBBORN_RANKS), service_env["PYTHONPATH"]]))
    stubborn = Service([*WORKER, "--loglevel", "WARNING"], env, tmp_path / "worker-stubborn.log")
    try:
        config = {**TINY, "nproc": 2, "steps": 100_000}
        job = api.submit({"kind": "train", "config": config})
        wait_for(lambda: api.job(job["id"])["progress"]["step"] > 0, 240, "training to start")
        ranks = ranks_of(job["id"])
        assert len(ranks) == 2 and all(ignores_sigterm(pid) for pid in ranks)  # the fault is in place

        assert api.client.post(f"/jobs/{job['id']}/cancel").status_code == 200
        api.wait_status(job["id"], {"cancelled"}, timeout=60)
        wait_for(lambda: not pids_mentioning(job["id"]), 30, "every process of the cancelled job to exit")

        # The worker killed outright: its guard takes the ranks down too.
        second = api.submit({"kind": "train", "config": config})
        wait_for(lambda: api.job(second["id"])["progress"]["step"] > 0, 240, "training to start")
        assert len(ranks_of(second["id"])) == 2
        socket_folder = own_forkserver_folder(stubborn.process.pid)
        stubborn.signal_group(signal.SIGKILL)
        stubborn.process.wait()
        wait_for(lambda: not pids_mentioning(second["id"]), 45, "every process of the orphaned job to exit")
        # Nor does the worker's fork server leave its socket's folder behind (the worker's cleanup never ran).
        wait_for(lambda: not socket_folder.exists(), 15, "the fork server to remove its folder")
        api.client.post(f"/jobs/{second['id']}/cancel")
        api.wait_status(second["id"], {"cancelled"}, timeout=60)
    finally:
        stubborn.stop()
        workers.start()
