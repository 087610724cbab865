"""No POST can take a machine down (the real API on Postgres, Redis and the S3 server): each server-side
limit is a 422 naming the field and the setting, per-owner limits a 429, strict types, NUL bytes and huge
values 4xx (never 500), big bodies 413, a 422 without the input; and the maximum run time ends a run
with a checkpoint (embedded `sagan up`)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sagan_core.config import make_config
from sagan_service.jobspec import EvalSpec
from sagan_service.limits import BYTES_PER_PARAMETER, GIB, check_eval_limits, estimate_training_bytes
from sagan_service.settings import Settings
from sagan_service.specs import SpecError
from tests.conftest import models_to_count
from tests.service.conftest import (
    TINY,
    Api,
    make_token,
    start_api,
    start_up,
)


@pytest.mark.parametrize(("preset", "gib"), [("seed64", 1.2), ("sagan32", 0.154), ("sagan128", 14.3),
                                             ("debug32", 0.0128), ("resnet32", 1.6), ("resnet64", 5.7),
                                             ("paper128", 56.3)])
def test_the_memory_estimate_follows_the_preset(preset: str, gib: float) -> None:
    config = make_config(preset)
    # Each preset's own networks (a residual one without class tables while num_classes is null): every
    # trainable parameter is in the estimate, and the whole estimate is this preset's, not another's.
    generator, discriminator = models_to_count(preset, num_classes=config.num_classes or 0)
    counted = sum(p.numel() for model in (generator, discriminator) for p in model.parameters())
    need = estimate_training_bytes(config)
    assert need > counted * BYTES_PER_PARAMETER
    assert need / GIB == pytest.approx(gib, rel=0.02)  # the limit's message names this estimate


def problem(response) -> tuple[str, str]:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    return ".".join(str(part) for part in detail["loc"][1:]), detail["msg"]


@pytest.mark.parametrize(("config", "field", "setting"), [
    ({"g_conv_dim": 100_000}, "config.g_conv_dim", "SAGAN_MAX_CONV_DIM"),
    ({"d_conv_dim": 4096}, "config.d_conv_dim", "SAGAN_MAX_CONV_DIM"),
    ({"z_dim": 10**6}, "config.z_dim", "SAGAN_MAX_Z_DIM"),
    ({"nproc": 1000, "batch_size": 1000}, "config.nproc", "SAGAN_WORKER_DEVICES"),
    # This API has no Ray cluster (tests/service/test_ray.py runs one that has).
    ({"nodes": 2, "batch_size": 8}, "config.nodes", "SAGAN_RAY_ADDRESS"),
    ({"num_workers": 10**6}, "config.num_workers", "SAGAN_WORKER_CORES"),
    ({"dataset": "synthetic:1000000000000"}, "config.dataset", "SAGAN_MAX_SYNTHETIC_SIZE"),
    ({"eval_every": 10, "eval_dataset": "shapes:2000000"}, "config.eval_dataset", "SAGAN_MAX_SYNTHETIC_SIZE"),
    ({"steps": 2**31 - 1}, "config.steps", "SAGAN_MAX_STEPS"),
    ({"center_crop": 10_000}, "config.center_crop", "SAGAN_MAX_CENTER_CROP"),
    ({"eval_n": 10**7}, "config.eval_n", "SAGAN_MAX_EVAL_N"),
    # Work past the G steps: D steps (n_critic 100 on 10^6 steps) and all the evaluations' samples.
    ({"steps": 1_000_000, "n_critic": 100}, "config.n_critic", "SAGAN_MAX_STEPS"),
    ({"steps": 1000, "eval_every": 1, "eval_n": 100_000}, "config.eval_every", "SAGAN_MAX_EVAL_SAMPLES"),
    ({"preset": "sagan128", "batch_size": 4096}, "config.batch_size", "SAGAN_MAX_JOB_MEMORY_GB"),
])
def test_each_limit_is_a_422_naming_the_field_and_the_setting(api: Api, config: dict, field: str,
                                                              setting: str) -> None:
    where, message = problem(api.client.post("/jobs", json={"kind": "train", "config": {**TINY, **config}}))
    assert where == field and setting in message, message


@pytest.mark.parametrize(("raw", "field"), [
    ('"steps": true', "config.steps"),
    ('"g_lr": NaN', "config.g_lr"),
    ('"d_lr": Infinity', "config.d_lr"),
    ('"beta2": -Infinity', "config.beta2"),
    ('"batch_size": 8.0', "config.batch_size"),
])
def test_booleans_are_not_numbers_and_rates_are_finite(api: Api, raw: str, field: str) -> None:
    body = '{"kind": "train", "config": {"preset": "debug32", "dataset": "synthetic:64", ' + raw + "}}"
    where, _ = problem(api.client.post("/jobs", content=body, headers={"content-type": "application/json"}))
    assert where == field


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "sample", "source": {"job_id": "0190d6a2-0000-7000-8000-000000000000"}, "n": True}, "n"),
    ({"kind": "sample", "source": {"job_id": "0190d6a2-0000-7000-8000-000000000000", "step": False}},
     "source.step"),
    ({"kind": "eval", "source": {"job_id": "0190d6a2-0000-7000-8000-000000000000"}, "n": 100.0}, "n"),
])
def test_sample_and_eval_bodies_are_strict_too(api: Api, body: dict, field: str) -> None:
    where, _ = problem(api.client.post("/jobs", json=body))
    assert where.removeprefix(f"{body['kind']}.") == field


@pytest.mark.parametrize("dataset", [
    "folder:/data/a\x00b", "synthetic:" + "9" * 300, "folder:/" + "a" * 100_000, "shapes:\x00",
])
def test_nul_bytes_and_huge_values_in_a_body_are_4xx(api: Api, dataset: str) -> None:
    response = api.client.post("/jobs", json={"kind": "train", "config": {**TINY, "dataset": dataset}})
    assert 400 <= response.status_code < 500, response.text
    assert dataset not in response.text  # not echoed back


@pytest.mark.parametrize(("path", "status"), [
    # A job id in the path is looked up, not validated: no job has it.
    ("/jobs/abc%00def", 404), ("/jobs/abc%00def/samples", 404), ("/jobs/" + "x" * 5000, 404),
    # A cursor is validated against the id pattern: the 422 names the query parameter.
    ("/jobs?cursor=abc%00", 422), ("/jobs?cursor=" + "0" * 5000, 422),
])
def test_nul_bytes_and_huge_ids_and_cursors_are_4xx(api: Api, path: str, status: int) -> None:
    response = api.client.get(path)
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_nul_in_a_source_job_id_is_404(api: Api) -> None:
    for kind in ("sample", "eval"):
        response = api.client.post("/jobs", json={"kind": kind, "source": {"job_id": "ab\x00cd"}})
        assert response.status_code == 404, response.text


def test_a_body_over_the_limit_is_413(api: Api) -> None:
    body = json.dumps({"kind": "train", "config": {**TINY, "dataset": "x" * 1_100_000}})
    response = api.client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "SAGAN_MAX_BODY_BYTES" in response.text

    def chunks():  # no Content-Length: the API counts what arrives
        for _ in range(12):
            yield b"x" * 100_000

    chunked = api.client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_a_422_does_not_echo_the_input(api: Api) -> None:
    secret = "hunter2-do-not-echo"
    for body in ({"kind": "train", "config": secret},
                 {"kind": "sample", "source": {"job_id": 1}, "n": secret}, {"kind": secret}):
        response = api.client.post("/jobs", json=body)
        assert response.status_code == 422 and secret not in response.text, response.text
        assert all("input" not in item for item in response.json()["detail"])


def test_per_owner_limits_are_429(service_env: dict[str, str], tmp_service: Path) -> None:
    service, admin = start_api({**service_env, "SAGAN_MAX_QUEUED_PER_OWNER": "1",
                                "SAGAN_MAX_RUNNING_PER_OWNER": "1"}, tmp_service)
    dave = Api(admin.base_url, make_token(service_env, "dave"))
    long = {"kind": "train", "config": {**TINY, "steps": 100_000}}
    try:
        sweep = {"kind": "sweep", "base": {**TINY, "steps": 100_000},
                 "axes": {"d_norm": ["spectral", "batch"]}}
        too_big = dave.client.post("/jobs", json=sweep)  # two children for one place in the queue
        assert too_big.status_code == 429 and "SAGAN_MAX_QUEUED_PER_OWNER" in too_big.text, too_big.text
        first = dave.submit(long)
        refused = dave.client.post("/jobs", json=long)
        assert refused.status_code == 429, refused.text
        assert "SAGAN_MAX_QUEUED_PER_OWNER" in refused.text or "SAGAN_MAX_RUNNING_PER_OWNER" in refused.text
        assert admin.client.post(f"/jobs/{admin.submit(long)['id']}/cancel").status_code == 200  # others may
        dave.client.post(f"/jobs/{first['id']}/cancel")
        dave.wait_status(first["id"], {"cancelled"}, timeout=60)
        assert dave.client.post("/jobs", json=long).status_code == 201
    finally:
        for job in dave.client.get("/jobs").json()["items"]:
            dave.client.post(f"/jobs/{job['id']}/cancel")
        service.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_the_per_owner_queue_limit_is_exact_under_concurrent_posts(service_env: dict[str, str],
                                                                   tmp_path: Path, database: str) -> None:
    # A broker database no worker reads, so the jobs stay queued and count.
    env = {**service_env, "SAGAN_MAX_QUEUED_PER_OWNER": "5", "SAGAN_BROKER_URL": "redis://127.0.0.1:6379/13"}
    if database == "sqlite":
        env["SAGAN_DATABASE_URL"] = f"sqlite:///{tmp_path / 'jobs.db'}"
    service, admin = start_api(env, tmp_path)
    erin = Api(admin.base_url, make_token(env, f"erin-{tmp_path.name}"))
    body = {"kind": "train", "config": {**TINY, "steps": 10}}
    try:
        with ThreadPoolExecutor(30) as pool:
            codes = sorted(pool.map(lambda _: erin.client.post("/jobs", json=body).status_code, range(30)))
        assert codes == [201] * 5 + [429] * 25
        assert len(erin.client.get("/jobs").json()["items"]) == 5
    finally:
        for job in erin.client.get("/jobs").json()["items"]:
            erin.client.post(f"/jobs/{job['id']}/cancel")
        service.stop()


@pytest.mark.timeout(300)
def test_the_maximum_run_time_ends_a_run_with_a_checkpoint(tmp_path: Path, forkserver_socket: Path) -> None:
    up, api = start_up(tmp_path, SAGAN_MAX_RUN_SECONDS="8", SAGAN_FORKSERVER_SOCKET=str(forkserver_socket))
    try:
        job = api.submit({"kind": "train",
                          "config": {**TINY, "steps": 1_000_000, "checkpoint_every": 100_000}})
        # 8 s from the launch, which the fork server answers once its imports are done: the trainer it forks
        # has taken its first steps in well under a second (5-10 s for a trainer of its own: importing torch).
        ended = api.wait_status(job["id"], {"failed", "succeeded", "cancelled"}, timeout=240)
        assert ended["status"] == "failed" and "SAGAN_MAX_RUN_SECONDS" in ended["error"], ended
        # The checkpoint of the step where it stopped (no regular one comes before step 100000) is stored.
        step = ended["latest_checkpoint_step"]
        assert step is not None and 0 < step < 100_000
        assert api.client.get(f"/jobs/{job['id']}/checkpoints").json()["items"][-1]["step"] == step
    finally:
        up.stop()


def test_eval_job_limits(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, max_eval_n=100, max_synthetic_size=1000)
    spec = EvalSpec(job_id="x", step=10, dataset="synthetic:64", metrics=["swd"], n=100, seed=0, imsize=32,
                    center_crop=None)
    check_eval_limits(spec, settings)
    for changed, field in (({"n": 101}, "n"), ({"dataset": "shapes:1001"}, "dataset")):
        with pytest.raises(SpecError) as refused:
            check_eval_limits(spec.model_copy(update=changed), settings)
        assert refused.value.field == field and "SAGAN_MAX_" in str(refused.value)
