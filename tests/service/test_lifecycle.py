"""Jobs through the real stack: API + Postgres + Redis + Celery worker + torchrun + moto S3.

The tests share one worker (one job at a time) and run in file order.
"""

from __future__ import annotations

import io
import os
import re
import signal
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.specs import validate_train_config
from tests.service.conftest import TINY, WORKER, Api, Service, Workers, pids_mentioning, start_api, wait_for
from tests.test_train import DIVERGED
from worker.processes import descendants


def fetch_png(url: str, api: Api) -> Image.Image:
    response = httpx.get(url, timeout=30) if url.startswith("http") else api.client.get(url)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.fixture(scope="module")
def trained(api: Api, workers: Workers) -> dict:
    """A finished 20-step training job (samples and checkpoints at steps 10 and 20)."""
    job = api.submit({"kind": "train", "config": TINY})
    return api.wait_status(job["id"], {"succeeded", "failed"}, timeout=120)


@pytest.mark.timeout(180)
def test_train_job_lifecycle(trained: dict, api: Api) -> None:
    assert trained["status"] == "succeeded", trained
    assert trained["progress"] == {"step": 20, "total_steps": 20}
    assert trained["attempt"] == 1 and trained["latest_checkpoint_step"] == 20
    assert trained["metrics"]["step"] == 20 and "d_loss" in trained["metrics"]

    samples = api.client.get(f"/jobs/{trained['id']}/samples").json()["items"]
    assert [item["step"] for item in samples] == [10, 20]
    for item in samples:
        assert "X-Amz-Signature" in item["url"]  # presigned by the S3 store, fetched without the API
        assert fetch_png(item["url"], api).size == (8 * 32 + 9 * 2, 8 * 32 + 9 * 2)
    latest = api.client.get(f"/jobs/{trained['id']}/samples/latest")
    assert latest.headers["content-type"] == "image/png"
    Image.open(io.BytesIO(latest.content)).verify()

    real = api.client.get(f"/jobs/{trained['id']}/samples/real")  # uploaded by the worker, served from S3
    assert real.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(real.content)).size == (8 * 32 + 9 * 2, 8 * 32 + 9 * 2)

    checkpoints = api.client.get(f"/jobs/{trained['id']}/checkpoints").json()["items"]
    assert [item["step"] for item in checkpoints] == [10, 20]
    assert httpx.get(checkpoints[-1]["url"]).status_code == 200
    redirect = api.client.get(f"/jobs/{trained['id']}/checkpoints/20")
    assert redirect.status_code == 307 and "X-Amz-Signature" in redirect.headers["location"]
    checkpoint = torch.load(io.BytesIO(httpx.get(redirect.headers["location"]).content), weights_only=True)
    assert checkpoint["step"] == 20 and checkpoint["config"]["preset"] == "debug32"

    metrics = api.client.get(f"/jobs/{trained['id']}/metrics").json()["items"]
    assert [m["step"] for m in metrics] == list(range(1, 21))
    newer = api.client.get(f"/jobs/{trained['id']}/metrics", params={"after_step": 15}).json()["items"]
    assert newer == metrics[15:]
    assert api.client.post(f"/jobs/{trained['id']}/cancel").status_code == 409


@pytest.mark.timeout(120)
def test_sampling_job_from_checkpoint(trained: dict, api: Api) -> None:
    job = api.submit({"kind": "sample", "source": {"job_id": trained["id"], "step": None}, "n": 16,
                      "seed": 3})
    assert job["spec"] == {"job_id": trained["id"], "step": 20, "n": 16, "seed": 3}
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=90)
    assert done["status"] == "succeeded", done
    image = fetch_png(api.client.get(f"/jobs/{job['id']}/samples").json()["items"][0]["url"], api)
    assert image.size == (4 * 32 + 5 * 2, 4 * 32 + 5 * 2)
    assert api.client.get(f"/jobs/{job['id']}/samples/real").status_code == 404  # only training has real data


@pytest.mark.timeout(180)
def test_two_process_ddp_job(api: Api, workers: Workers) -> None:
    job = api.submit({"kind": "train", "config": {**TINY, "nproc": 2, "steps": 10}})
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=150)
    assert done["status"] == "succeeded", done
    assert done["latest_checkpoint_step"] == 10
    assert [m["step"]
            for m in api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]] == list(range(1, 11))


@pytest.mark.timeout(180)
def test_a_diverging_job_fails_with_its_step_once_keeping_a_finite_checkpoint(api: Api,
                                                                              workers: Workers) -> None:
    # Rates of 1e6 blow debug32 up within a few steps. Two ranks: torchrun's report of the failed ranks
    # follows the trainer's message in the log, and the error is still the trainer's.
    config = {**TINY, "nproc": 2, "g_lr": 1e6, "d_lr": 1e6, "checkpoint_every": 1, "log_every": 2}
    job = api.submit({"kind": "train", "config": config})
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=150)
    assert done["status"] == "failed", done
    found = re.fullmatch(DIVERGED, done["error"])
    assert found, done["error"]
    assert done["attempt"] == 1  # failed for good, not queued again: it would diverge again
    assert done["latest_checkpoint_step"] is not None and done["latest_checkpoint_step"] < int(found[1])


@pytest.mark.timeout(120)
def test_cancel_stops_the_training_processes(api: Api, workers: Workers, forkserver_socket: Path) -> None:
    # Two ranks: the deepest tree a job makes (guard, torchrun, its two ranks) must all go.
    job = api.submit({"kind": "train", "config": {**TINY, "steps": 100_000, "nproc": 2}})
    wait_for(lambda: api.job(job["id"])["progress"]["step"] > 0, 90, "training to start")
    training = pids_mentioning(job["id"])
    assert len(training) >= 4
    # The session's workers share the fork server that SAGAN_FORKSERVER_SOCKET names: the tree is forked by
    # it, and the worker started no server of its own.
    [shared] = pids_mentioning(f"-m\0worker.forkserver\0--socket\0{forkserver_socket}\0")
    assert set(training) <= descendants(shared)
    assert not descendants(workers.current.process.pid) & set(pids_mentioning("-m\0worker.forkserver\0"))

    response = api.client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"]
    done = api.wait_status(job["id"], {"cancelled"}, timeout=20)
    assert done["finished_at"] is not None
    assert not pids_mentioning(job["id"])
    assert api.client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"  # idempotent


@pytest.mark.timeout(240)
def test_killed_worker_job_resumes_from_checkpoint(api: Api, workers: Workers) -> None:
    config = {**TINY, "steps": 60, "checkpoint_every": 10, "sample_every": 30}
    job = api.submit({"kind": "train", "config": config})
    wait_for(lambda: (api.job(job["id"])["latest_checkpoint_step"] or 0) >= 10, 90, "a committed checkpoint")
    assert len(pids_mentioning(job["id"])) >= 2  # guard, the trainer (one rank: no torchrun)

    workers.current.signal_group(signal.SIGKILL)  # the Celery parent and its pool child, no cleanup
    workers.current.process.wait()
    # The guard notices its supervisor died and takes the training down with it: no orphan keeps training.
    wait_for(lambda: not pids_mentioning(job["id"]), 20, "the orphaned training processes to exit")
    requeued = api.wait_status(job["id"], {"queued"}, timeout=20)
    assert requeued["attempt"] == 1

    workers.start()
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=150)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2 and done["resumed_from_step"] >= 10
    assert [m["step"]
            for m in api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]] == list(range(1, 61))


@pytest.mark.timeout(60)
def test_idempotent_post_returns_the_first_job(api: Api, workers: Workers) -> None:
    body = {"kind": "train", "config": {**TINY, "steps": 100_000}}
    key = {"Idempotency-Key": os.urandom(8).hex()}
    first = api.client.post("/jobs", json=body, headers=key)
    again = api.client.post("/jobs", json=body, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    api.client.post(f"/jobs/{first.json()['id']}/cancel")
    api.wait_status(first.json()["id"], {"cancelled"}, timeout=30)


@pytest.mark.timeout(90)
def test_a_job_whose_message_was_lost_is_sent_again(api: Api, workers: Workers, database_url: str) -> None:
    """The API committed the job but died before sending its message: the reaper sends it later."""
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        job, _ = jobs.create_job(session, kind="train", spec=validate_train_config({**TINY, "steps": 5},
                                                                                  data_roots=[]),
                                 queue="cpu", max_attempts=3)
    engine.dispose()
    done = api.wait_status(job.id, {"succeeded", "failed"}, timeout=75)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1


@pytest.mark.timeout(150)
def test_a_persistent_s3_error_fails_the_job_with_its_reason(api: Api, workers: Workers,
                                                             service_env: dict[str, str],
                                                             tmp_service) -> None:
    """Uploads that keep failing after boto3's retries fail the job, naming the error; nothing hangs."""
    workers.current.stop()  # this test's job must go to the misconfigured worker
    broken = Service([*WORKER, "--loglevel", "WARNING"],
                     {**service_env, "SAGAN_ARTIFACTS_URL": "s3://no-such-bucket/x",
                      "SAGAN_S3_MAX_ATTEMPTS": "2"},
                     tmp_service / "worker-broken-s3.log")
    try:
        job = api.submit({"kind": "train", "config": {**TINY, "steps": 10}})
        done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=100)
        assert done["status"] == "failed" and "NoSuchBucket" in done["error"], done
        assert done["attempt"] == 1
    finally:
        broken.stop()
        workers.start()


@pytest.mark.timeout(180)
def test_the_worker_checks_the_data_roots_again_when_it_opens_the_data(
        api: Api, workers: Workers, service_env: dict, tmp_path: Path) -> None:
    # An API whose roots also cover `outside` accepts a data set leading there; the worker's roots (the
    # deployment's SAGAN_DATA_ROOTS) do not, so it refuses to open it: links change after submission, and the
    # worker is the machine that reads the files.
    from tests.service.test_api_errors import cifar_batches

    outside = cifar_batches(tmp_path / "outside")
    inside = Path(service_env["SAGAN_DATA_ROOTS"]) / f"relinked-{tmp_path.name}"
    inside.mkdir()
    (inside / "cifar-10-batches-py").symlink_to(outside)
    wider = {**service_env, "SAGAN_DATA_ROOTS": f"{service_env['SAGAN_DATA_ROOTS']},{outside}"}
    service, lenient = start_api(wider, tmp_path)
    try:
        job = lenient.submit({"kind": "train",
                              "config": {**TINY, "dataset": f"cifar10:{inside}", "steps": 1}})
    finally:
        service.stop()
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "failed" and done["attempt"] == 1, done
    assert "is a link leading outside the allowed data roots" in done["error"], done["error"]
