"""What an operator sees (the real API, workers, Postgres, Redis and the S3 server): Prometheus /metrics
after jobs ran, job.json beside each job's artifacts, JSON log lines with the job id (embedded `sagan up`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import (
    BUCKET,
    TINY,
    Api,
    S3Server,
    Workers,
    make_token,
    start_up,
    wait_for,
)


def metric(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The value of the sample `name{labels...}` (labels in any order; others may be there too); `default` if
    there is none (else an AssertionError)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(have.get(key) == value for key, value in labels.items()):
                return float(match.group(3))
    if default is not None:
        return default
    raise AssertionError(f"no sample {name}{labels} in /metrics")


@pytest.fixture(scope="module")
def finished(api: Api, workers: Workers, service_env: dict[str, str]) -> dict[str, Any]:
    """A succeeded training job and one that failed (a folder with no images); /metrics before them."""
    empty = Path(service_env["SAGAN_DATA_ROOTS"]) / "still-empty"
    empty.mkdir(exist_ok=True)
    # The database and the API are the session's: other tests' jobs are in the figures too, so the metrics
    # test reads what changed from here.
    before = api.client.get("/metrics").text
    good = api.submit({"kind": "train", "config": TINY})
    bad = api.submit({"kind": "train", "config": {**TINY, "dataset": f"folder:{empty}"}})
    return {"succeeded": api.wait_status(good["id"], {"succeeded", "failed"}, timeout=240),
            "failed": api.wait_status(bad["id"], {"failed"}, timeout=240), "metrics_before": before}


def test_prometheus_metrics_after_jobs_ran(api: Api, finished: dict[str, Any],
                                           service_env: dict[str, str]) -> None:
    assert finished["succeeded"]["status"] == "succeeded", finished["succeeded"]
    route = {"method": "GET", "route": "/jobs/{job_id}", "status": "200"}
    requests_before = metric(api.client.get("/metrics").text, "sagan_http_request_duration_seconds_count",
                             **route)
    api.job(finished["succeeded"]["id"])  # a request on a templated route
    response = api.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text, before = response.text, finished["metrics_before"]

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels, default=0)

    # At least: a job of another test may have ended meanwhile.
    assert grew("sagan_jobs", status="succeeded", kind="train", queue="cpu") >= 1
    assert grew("sagan_job_run_seconds_count", kind="train") >= 2
    assert grew("sagan_job_queue_wait_seconds_count", kind="train") >= 2
    assert grew("sagan_job_queue_wait_seconds_bucket", kind="train", le="+Inf") >= 2
    assert grew("sagan_job_failures", cause="training") >= 1
    # Exactly: this API process answered no other request on that route in between.
    assert metric(text, "sagan_http_request_duration_seconds_count", **route) == requests_before + 1
    assert finished["succeeded"]["id"] not in text  # one series per route, not per job
    # It counts every owner's jobs: admins only.
    assert Api(api.base_url).client.get("/metrics").status_code == 401
    assert Api(api.base_url,
               make_token(service_env, "metrics-user")).client.get("/metrics").status_code == 403


def test_job_json_in_the_store_has_the_final_status(api: Api, finished: dict[str, Any],
                                                    s3_server: S3Server) -> None:
    for status in ("succeeded", "failed"):
        job = finished[status]
        key = f"artifacts/jobs/{job['id']}/job.json"
        record = json.loads(s3_server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert record["status"] == status and record["kind"] == "train"
        assert record["owner"].startswith("test-admin-") and record["config"] == job["spec"]
        assert record["finished_at"] and record["created_at"] and record["error"] == job["error"]


@pytest.mark.timeout(300)
def test_json_log_lines_carry_the_job_id(tmp_path: Path, forkserver_socket: Path) -> None:
    up, api = start_up(tmp_path, SAGAN_LOG_FORMAT="json", SAGAN_FORKSERVER_SOCKET=str(forkserver_socket))
    try:
        job = api.submit({"kind": "train", "config": TINY})
        assert api.wait_status(job["id"], {"succeeded", "failed"}, timeout=240)["status"] == "succeeded"

        def lines_of_the_job() -> list[dict]:
            lines = [json.loads(line) for line in up.log_path.read_text().splitlines()
                     if line.startswith("{")]
            return [line for line in lines if line.get("job_id") == job["id"]]

        # The API's line (submitted) and the worker's (the supervisor settling the attempt).
        lines = wait_for(lambda: (found := lines_of_the_job())
                         and {"sagan_service.submit", "worker.supervisor"}
                         <= {line["logger"] for line in found} and found, 30, "the job's log lines")
        assert all({"time", "level", "message", "process"} <= set(line) for line in lines)
        # The record follows the row: the worker stores it after settling the attempt (seen 'running' here,
        # read right after the settling line on a busy machine).
        job_json = tmp_path / "home" / "artifacts" / "jobs" / job["id"] / "job.json"
        wait_for(lambda: json.loads(job_json.read_text())["status"] == "succeeded", 30,
                 "job.json to record the final status")
    finally:
        up.stop()
