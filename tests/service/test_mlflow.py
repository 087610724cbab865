"""Training jobs as MLflow runs (worker/mlflow_sync.py) against a real `mlflow server` this module starts
(SQLite backend, artifacts in a temporary folder), and a sweep's TensorBoard files as `sagan jobs download`
lays them out and in the store; an MLflow that cannot be reached fails no job; a later attempt continues its
job's run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from sagan_client.api import SaganClient
from sagan_client.jobs import download
from sagan_core.config import make_config
from sagan_service.settings import Settings
from tests.service.conftest import BUCKET, TINY, WORKER, Api, Service, Workers, free_port, wait_for
from worker.mlflow_sync import MlflowSync
from worker.processes import stop_group

mlflow = pytest.importorskip("mlflow")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

QUICK = {**TINY, "steps": 4, "checkpoint_every": 2, "sample_every": 2, "eval_every": 2,
         "eval_metrics": ["swd"], "eval_n": 32}


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner (it needs huey)
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (folder / "server.log").read_text()
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 120, "the MLflow server to answer /health", interval=0.5)
        yield url
    finally:
        stop_group(server, 30)


def own_worker(workers: Workers, service_env: dict[str, str], tmp_path: Path, **settings: str) -> Service:
    """A worker with these settings, the only one: the session's worker is stopped until the test ends."""
    workers.current.stop()
    return Service([*WORKER, "--loglevel", "WARNING"], {**service_env, **settings}, tmp_path / "worker.log")


@pytest.mark.timeout(300)
def test_a_sweep_is_a_parent_run_with_a_nested_run_per_child(
        api: Api, workers: Workers, service_env: dict[str, str], s3_endpoint: str, mlflow_url: str,
        tmp_path: Path) -> None:
    worker = own_worker(workers, service_env, tmp_path, SAGAN_MLFLOW_TRACKING_URI=mlflow_url,
                        SAGAN_MLFLOW_EXPERIMENT="sweeps")
    try:
        sweep = api.submit({"kind": "sweep", "base": QUICK, "seeds": [0, 1],
                            "axes": {"d_norm": ["spectral"]}})
        done = api.wait_status(sweep["id"], {"succeeded", "failed"}, timeout=240)
        assert done["status"] == "succeeded", done
    finally:
        worker.stop()
        workers.start()

    client = mlflow.MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name("sweeps").experiment_id

    def run_of(job_id: str, status: str = "FINISHED") -> mlflow.entities.Run | None:
        runs = client.search_runs([experiment], filter_string=f"tags.`sagan.job_id` = '{job_id}'")
        return runs[0] if len(runs) == 1 and runs[0].info.status == status else None

    parent = wait_for(lambda: run_of(sweep["id"]), 60, "the sweep's run to end")
    for child in done["children"]:
        run = wait_for(lambda child=child: run_of(child["id"]), 60, "a child's run to end")
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == f"{child['arm']}-s{child['seed']}"
        assert run.data.params["steps"] == "4" and run.data.params["seed"] == str(child["seed"])
        assert run.data.params["eval_metrics"] == '["swd"]'
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/d")] == [1, 2, 3, 4]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/swd")] == [0, 2, 4]
        assert {"gamma/g.attn16", "lr/g", "speed/img_per_s"} <= set(run.data.metrics)
        grids = {item.path for item in client.list_artifacts(run.info.run_id, "samples")}
        assert grids == {"samples/real.png", "samples/step-2.png", "samples/step-4.png"}
        latest = run.data.tags["sagan.checkpoint.latest"]
        assert latest.endswith(f"/jobs/{child['id']}/checkpoints/step-4/model.pt")
        assert "/checkpoints/step-" in run.data.tags["sagan.checkpoint.best"]
        assert run.data.tags["sagan.synced_step"] == "4"

    # TensorBoard: the children's event files, downloaded one run per arm and seed.
    token = api.client.headers["Authorization"].removeprefix("Bearer ")
    with SaganClient(api.base_url, token) as sagan:
        download(sagan, sagan.get(f"/jobs/{sweep['id']}"), tmp_path / "sweep", "none")
    for child in done["children"]:
        run_dir = tmp_path / "sweep" / f"{child['arm']}-s{child['seed']}"
        events = event_accumulator.EventAccumulator(str(run_dir))
        events.Reload()
        assert [event.step for event in events.Scalars("loss/d")] == [1, 2, 3, 4]
        assert [event.step for event in events.Images("samples")] == [2, 4]
    # And TensorBoard reads the store itself: its S3 file system (boto3, the endpoint from S3_ENDPOINT, read
    # when tensorboard is imported, hence a process of its own).
    logdir = f"s3://{BUCKET}/artifacts/jobs/{done['children'][0]['id']}/tensorboard"
    code = ("import sys; from tensorboard.backend.event_processing.event_accumulator import EventAccumulator "
            "as E; e = E(sys.argv[1]); e.Reload(); print([s.step for s in e.Scalars('loss/d')])")
    read = subprocess.run([sys.executable, "-c", code, logdir],
                          env={**service_env, "S3_ENDPOINT": s3_endpoint},
                          capture_output=True, text=True, timeout=60, check=False)
    assert read.stdout.strip() == "[1, 2, 3, 4]", read.stderr


@pytest.mark.timeout(180)
def test_an_unreachable_mlflow_fails_no_job(api: Api, workers: Workers, service_env: dict[str, str],
                                            tmp_path: Path) -> None:
    worker = own_worker(workers, service_env, tmp_path,
                        SAGAN_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    try:
        # A sweep of one run: its parent's run cannot be made either.
        sweep = api.submit({"kind": "sweep", "base": {**TINY, "steps": 4, "checkpoint_every": 2},
                            "axes": {"d_norm": ["spectral"]}})
        done = api.wait_status(sweep["id"], {"succeeded", "failed"}, timeout=150)
        assert done["status"] == "succeeded", done
        child = api.job(done["children"][0]["id"])
        assert child["status"] == "succeeded" and child["latest_checkpoint_step"] == 4
    finally:
        worker.stop()
        workers.start()
    log = worker.log_path.read_text()
    assert log.count(f"job {child['id']}: MLflow at http://127.0.0.1:") == 1 and "trying again" in log  # once
    assert "Retrying" not in log  # nor a line per try from the HTTP client


def test_a_later_attempt_continues_the_run_without_sending_a_step_twice(mlflow_url: str,
                                                                        tmp_path: Path) -> None:
    """Two attempts of one job, as the outbox drives them: the second, resumed from step 2's checkpoint,
    trains steps 3 and 4 again and goes on to 6."""
    settings = Settings(mlflow_tracking_uri=mlflow_url, mlflow_experiment="attempts", heartbeat_seconds=0.2,
                        home=tmp_path / "home")
    job = SimpleNamespace(id="job-with-two-attempts", parent_id=None, arm=None, resumed_from_step=None)
    status = {"now": "queued"}  # the first attempt was lost: the job is queued again

    @contextmanager
    def sessions() -> Iterator[SimpleNamespace]:
        yield SimpleNamespace(get_one=lambda _model, _id: SimpleNamespace(status=status["now"]))

    def attempt(run_dir: Path, steps: range, resumed_from_step: int | None) -> None:
        run_dir.mkdir()
        lines = [{"step": step, "d_loss": step / 10, "time": 1e9 + step} for step in steps]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        sync = MlflowSync(SimpleNamespace(**{**vars(job), "resumed_from_step": resumed_from_step}),
                          make_config("debug32", steps=6), settings, sessions, run_dir)
        sync.checkpoint_committed(steps[-1], f"jobs/{job.id}/checkpoints/step-{steps[-1]}/model.pt")
        sync.close()

    attempt(tmp_path / "first", range(1, 5), None)
    status["now"] = "succeeded"
    attempt(tmp_path / "second", range(1, 7), 2)  # restored up to 2, then 3..6 trained

    client = mlflow.MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name("attempts").experiment_id
    (run,) = client.search_runs([experiment], filter_string=f"tags.`sagan.job_id` = '{job.id}'")
    history = client.get_metric_history(run.info.run_id, "loss/d")
    assert [(m.step, m.value) for m in history] == [(step, step / 10) for step in range(1, 7)]
    assert run.info.status == "FINISHED" and run.data.tags["sagan.synced_step"] == "6"
    assert run.data.tags["sagan.checkpoint.latest"].endswith(f"/jobs/{job.id}/checkpoints/step-6/model.pt")
