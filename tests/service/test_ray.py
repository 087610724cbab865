"""Trainings on Ray: a real local Ray head (CPU workers, gloo), a real `sagan api` and `sagan worker`,
PostgreSQL, Redis and the S3 server. The worker here serves only the `ray` queue; the session's worker never
takes these."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from sagan_core.checkpoint import read_checkpoint
from sagan_core.config import build_config
from sagan_service.queue import dispatch, make_celery
from sagan_service.settings import Settings
from tests.conftest import subprocess_env
from tests.service.conftest import (
    BUCKET,
    TINY,
    WORKER,
    Api,
    S3Server,
    Service,
    free_port,
    pids_mentioning,
    start_api,
    wait_for,
)
from worker.processes import stop_group

ray = pytest.importorskip("ray", reason="the `ray` extra (make install installs it)")
pytestmark = pytest.mark.long_module  # ~3 minutes with the whole suite beside it

# Two ranks on one machine: 2 CPUs for Ray Train's two workers (what `nodes: 2` asks of the cluster).
RAY_CPUS = 2
# debug32 on synthetic data, 2 × 1 process; a checkpoint every 3 steps, the last at step 6.
CONFIG = {**TINY, "nodes": 2, "nproc": 1, "batch_size": 8, "steps": 6, "checkpoint_every": 3,
          "sample_every": 3, "log_every": 1}
TRAIN_PROCESSES = ("RayTrainWorker", "TrainController")


@pytest.fixture(scope="module")
def ray_head(service_env: dict[str, str]) -> Iterator[str]:
    """`ray start --head --block` in a process group of its own; its Jobs API address. Its temp folder is
    short: Ray's socket paths must fit in 107 bytes."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port, dashboard = free_port(), free_port()
    env = {**service_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    with open(temp / "head.log", "wb") as log:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 "--num-cpus", str(RAY_CPUS), "--port", str(port), "--dashboard-host",
                                 "127.0.0.1",
                                 "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                                 "--temp-dir", str(temp / "t")],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for(lambda: _answers(f"{address}/api/version"), 90, "the Ray head's Jobs API")
        yield address
    finally:
        stop_group(head, 0.5)  # nothing of the head is kept: no orderly stop to wait for (it took 30 s)
        for pid in pids_mentioning(str(temp)):  # Ray's own daemons outlive `ray start` if it is killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def ray_env(service_env: dict[str, str], ray_head: str) -> dict[str, str]:
    # A lost Ray job's workers may take tens of seconds to go (its next attempt waits for their CPUs). A Ray
    # training takes both CPUs: the session's 4 s lease was lost to a starved heartbeat while another test
    # process trained beside it.
    return {**service_env, "SAGAN_RAY_ADDRESS": ray_head, "SAGAN_RAY_PLACEMENT_TIMEOUT_SECONDS": "120",
            "SAGAN_SHUTDOWN_SECONDS": "30", "SAGAN_LEASE_SECONDS": "15"}


@pytest.fixture(scope="module")
def ray_api(ray_env: dict[str, str], tmp_service: Path) -> Iterator[Api]:
    service, client = start_api(ray_env, tmp_service)
    yield client
    service.stop()


@pytest.fixture(scope="module")
def ray_worker(ray_env: dict[str, str], tmp_service: Path, ray_api: Api) -> Iterator[Service]:
    worker = Service([*WORKER, "--queues", "ray", "--loglevel", "INFO"], ray_env,
                     tmp_service / "worker-ray.log")
    yield worker
    worker.stop()


def ray_jobs_of(address: str, job_id: str) -> list[Any]:
    from ray.job_submission import JobSubmissionClient

    return [info for info in JobSubmissionClient(address).list_jobs()
            if (info.submission_id or "").startswith(f"sagan-{job_id}-")]


def trained_step(api: Api, job_id: str) -> int:
    """The last step the job's progress reports (0 before its first)."""
    return (api.job(job_id)["progress"] or {}).get("step", 0)


def stored_checkpoint(api: Api, job_id: str, step: int) -> dict[str, Any]:
    response = api.client.get(f"/jobs/{job_id}/checkpoints/{step}", follow_redirects=True)
    assert response.status_code == 200, response.text
    return torch.load(io.BytesIO(response.content), map_location="cpu", weights_only=False)


def test_a_job_larger_than_the_cluster_fails_saying_so_instead_of_waiting(
        ray_api: Api, ray_env: dict[str, str], tmp_service: Path) -> None:
    # First in the module, before its `ray_worker` exists: this worker, with a short placement timeout, takes
    # the job.
    worker = Service([*WORKER, "--queues", "ray"], {**ray_env, "SAGAN_RAY_PLACEMENT_TIMEOUT_SECONDS": "3"},
                     tmp_service / "worker-ray-short.log")
    try:
        job = ray_api.submit({"kind": "train", "config": {**CONFIG, "nodes": RAY_CPUS + 1, "batch_size": 6}})
        done = ray_api.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=180)
    finally:
        worker.stop()
    assert done["status"] == "failed"
    assert done["error"] == (f"the Ray cluster could not place {RAY_CPUS + 1} workers of 1 CPU each within "
                             f"3 s (SAGAN_RAY_PLACEMENT_TIMEOUT_SECONDS); it has {RAY_CPUS} CPU in all")


def test_a_ray_job_handed_back_by_a_stopping_worker_resumes_on_the_next_and_a_cancel_leaves_no_ray_worker(
        request: pytest.FixtureRequest, ray_api: Api, ray_env: dict[str, str], tmp_service: Path,
        ray_head: str) -> None:
    # Before the module's `ray_worker` exists: the job's first worker is this one. No checkpoint is due before
    # the end: the ones stored are the stop's and the cancel's own. (A hand-back and a cancel share one job:
    # each Ray attempt costs ~20 s here.)
    first = Service([*WORKER, "--queues", "ray"], ray_env, tmp_service / "worker-ray-first.log")
    try:
        job = ray_api.submit({"kind": "train", "config": {**CONFIG, "steps": 5000, "checkpoint_every": 5000,
                                                          "sample_every": 5000, "log_every": 5}})
        wait_for(lambda: trained_step(ray_api, job["id"]) >= 10, 300, "a few steps")
        first.process.send_signal(signal.SIGTERM)  # what `docker compose stop` does
        first.process.wait(90)
    finally:
        first.stop()
    handed_back = ray_api.job(job["id"])
    assert handed_back["status"] == "queued" and handed_back["attempt"] == 0, handed_back  # it does not count
    stopped_at = handed_back["latest_checkpoint_step"]
    assert stopped_at is not None and 10 <= stopped_at < 5000

    request.getfixturevalue("ray_worker")  # the next worker resumes the job where the stop checkpointed it
    wait_for(lambda: trained_step(ray_api, job["id"]) >= stopped_at + 10, 300,
             "steps after the resumed checkpoint")
    resumed = ray_api.job(job["id"])
    assert resumed["attempt"] == 1 and resumed["resumed_from_step"] == stopped_at, resumed
    assert ray_api.client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    done = ray_api.wait_status(job["id"], {"cancelled", "failed", "succeeded"}, timeout=120)
    assert done["status"] == "cancelled", done
    cancelled_at = done["latest_checkpoint_step"]
    assert cancelled_at is not None and stopped_at + 10 <= cancelled_at < 5000
    # Every fifth step once, across the hand-back: the resumed run went on from the stop's checkpoint.
    steps = [m["step"] for m in ray_api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]]
    assert steps == list(range(5, cancelled_at + 1, 5))
    # The same attempt ran twice on Ray: the handed-back run's finished Ray job was deleted for the second,
    # which the cancel stopped.
    assert [(info.submission_id, info.status) for info in ray_jobs_of(ray_head, job["id"])] == [
        (f"sagan-{job['id']}-1", "STOPPED")]
    wait_for(lambda: not train_processes(), 30, "Ray Train's workers and controller to go")


def test_a_two_node_job_trains_on_ray_like_torchrun_and_stores_its_artifacts_from_rank_0(
        ray_api: Api, ray_worker: Service, ray_head: str, ray_env: dict[str, str], s3_server: S3Server,
        tmp_path: Path) -> None:
    job = ray_api.submit({"kind": "train", "config": CONFIG})
    assert job["queue"] == "ray"
    wait_for(lambda: ray_api.job(job["id"])["status"] == "running", 120, "the Ray worker to claim it")
    # A redelivered message (what a lost acknowledgement causes) while the job runs: it must not start twice.
    dispatch(make_celery(Settings(broker_url=ray_env["SAGAN_BROKER_URL"])), _row(ray_env, job["id"]))
    done = ray_api.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=400)
    assert done["status"] == "succeeded", done
    assert [info.submission_id for info in ray_jobs_of(ray_head, job["id"])] == [f"sagan-{job['id']}-1"]

    # Rank 0 stored the grids, the metrics and the checkpoints (with their rows), on its own.
    assert [s["step"] for s in ray_api.client.get(f"/jobs/{job['id']}/samples").json()["items"]] == [3, 6]
    assert [c["step"] for c in ray_api.client.get(f"/jobs/{job['id']}/checkpoints").json()["items"]] == [3, 6]
    assert [m["step"] for m in ray_api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]] == [1, 2, 3,
                                                                                                     4, 5, 6]
    assert done["progress"]["step"] == 6
    log = s3_server.client().get_object(Bucket=BUCKET, Key=f"artifacts/jobs/{job['id']}/logs/attempt-1.log")
    assert "Started training worker group of size 2" in log["Body"].read().decode()  # Ray's log, as the job's

    # Two Ray workers are torchrun's two ranks, batch for batch: the same weights, bit for bit.
    config = build_config({**CONFIG, "nodes": 1, "nproc": 2})
    config_file = tmp_path / "config.json"
    config_file.write_text(config.model_dump_json())
    subprocess.run([sys.executable, "-m", "sagan_core.cli", "train", "--config", str(config_file),
                    "--out", str(tmp_path / "torchrun")], check=True, env=subprocess_env(), timeout=300,
                   capture_output=True)
    on_ray, local = stored_checkpoint(ray_api, job["id"], 6), read_checkpoint(tmp_path / "torchrun")
    for part in ("generator", "discriminator"):
        assert all(torch.equal(on_ray[part][name], local[part][name]) for name in local[part]), part


def _row(env: dict[str, str], job_id: str) -> Any:
    from sagan_service import jobs
    from sagan_service.db import make_engine, make_session_factory

    engine = make_engine(env["SAGAN_DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            row = jobs.get_job(session, job_id)
            session.expunge(row)
            return row
    finally:
        engine.dispose()


def train_processes() -> list[int]:
    return [pid for name in TRAIN_PROCESSES for pid in pids_mentioning(f"ray::{name}")]


def test_a_killed_ray_worker_is_replaced_then_a_lost_driver_is_a_new_attempt_both_resuming_from_checkpoints(
        ray_api: Api, ray_worker: Service, ray_head: str, s3_server: S3Server) -> None:
    # One job through both failures (each costs a Ray start, ~20 s, so they share the job's).
    job = ray_api.submit({"kind": "train", "config": {**CONFIG, "steps": 120, "checkpoint_every": 20,
                                                      "sample_every": 1000, "log_every": 10}})

    def progress() -> int:
        return ray_api.job(job["id"])["latest_checkpoint_step"] or 0

    wait_for(lambda: progress() >= 20, 300, "a stored checkpoint")
    # A rank killed: Ray Train starts the worker group again inside the attempt, from a stored checkpoint.
    ranks = pids_mentioning("ray::RayTrainWorker")
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    store = s3_server.client()
    wait_for(lambda: _group_starts(store, job["id"], 1) >= 2, 300, "the worker group to start again")
    replaced_at = progress()
    wait_for(lambda: progress() > replaced_at, 300, "a checkpoint of the new worker group")
    assert ray_api.job(job["id"])["attempt"] == 1
    # The driver killed as a lost node or head would take it: its Ray job ends without an exit status of its
    # own, and the job's next attempt resumes from the last stored checkpoint.
    for pid in pids_mentioning(f"worker.ray_job --job-id {job['id']}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    done = ray_api.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=500)
    assert done["status"] == "succeeded", (done["error"], done["log_tail"])
    assert done["attempt"] == 2 and done["resumed_from_step"] > replaced_at, done
    assert sorted((info.submission_id, info.status) for info in ray_jobs_of(ray_head, job["id"])) == [
        # Ray lists in no set order
        (f"sagan-{job['id']}-1", "FAILED"), (f"sagan-{job['id']}-2", "SUCCEEDED")]
    # Both restarts went on from stored checkpoints: the series has every step once.
    steps = [m["step"] for m in ray_api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]]
    assert steps == list(range(10, 121, 10))


def _group_starts(store: Any, job_id: str, attempt: int) -> int:
    """How often Ray Train started the job's worker group in this attempt, by the attempt's stored log
    (`store`: an S3 client)."""
    try:
        log = store.get_object(Bucket=BUCKET, Key=f"artifacts/jobs/{job_id}/logs/attempt-{attempt}.log")
    except store.exceptions.NoSuchKey:
        return 0
    return log["Body"].read().decode().count("Started training worker group of size 2")
