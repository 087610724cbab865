"""A dependency that hangs instead of refusing (a listener that accepts and never answers, a held table lock)
does not freeze the API: while ten requests wait on it, /healthz and a database-only GET /jobs/{id} answer
within a second, and the ten end with a 503 naming the dependency within 15 s. A real `sagan api` process
on PostgreSQL, with Redis and the moto S3 server where they are not the hung part."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.service.conftest import TINY, Api, start_api

HUNG = 10


@contextlib.contextmanager
def hung_listener() -> Iterator[int]:
    """A loopback port that accepts every connection and never reads or answers; yields the port."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for connection in held:
            connection.close()


@contextlib.contextmanager
def api_with(service_env: dict[str, str], tmp_path: Path, **settings: str) -> Iterator[Api]:
    # The default fail-fast window, so that the requests right after the hung ones are still refused at once.
    service, client = start_api({**service_env, "SAGAN_FAIL_FAST_SECONDS": "10", **settings}, tmp_path)
    try:
        yield client
    finally:
        service.stop()


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unfrozen_while_hung(api: Api, job_id: str, hang: Callable[[httpx.Client], httpx.Response],
                               dependency: str, *, database_only_answers: bool = True) -> None:
    """Start HUNG requests that wait on the dependency; meanwhile the API answers the others fast; then every
    hung request ends with a 503 that names the dependency within 15 s."""
    started = time.monotonic()
    with ThreadPoolExecutor(HUNG) as pool, httpx.Client(base_url=api.base_url, timeout=60,
                                                        headers=api.client.headers) as client:
        hung = [pool.submit(hang, client) for _ in range(HUNG)]
        time.sleep(1.0)  # they are all waiting now
        assert not any(future.done() for future in hung), "the requests did not wait on the dependency"
        health, seconds = timed(lambda: api.client.get("/healthz"))
        assert health.status_code == 200 and seconds < 1, seconds
        if database_only_answers:
            job, seconds = timed(lambda: api.client.get(f"/jobs/{job_id}"))
            assert job.status_code == 200 and seconds < 1, (job.text, seconds)
        answers = [future.result() for future in hung]
    assert time.monotonic() - started < 15
    assert [answer.status_code for answer in answers] == [503] * HUNG, [a.text for a in answers]
    assert all(dependency in answer.json()["detail"] for answer in answers), answers[0].text


@pytest.fixture
def job_id(api: Api) -> str:
    """A job in the shared database (submitted through the healthy API; it may run or wait)."""
    return api.submit({"kind": "train", "config": {**TINY, "steps": 1}})["id"]


@pytest.mark.timeout(120)
def test_a_hung_broker(service_env: dict[str, str], tmp_path: Path, job_id: str) -> None:
    with hung_listener() as port, api_with(service_env, tmp_path,
                                           SAGAN_BROKER_URL=f"redis://127.0.0.1:{port}/0") as api:
        body = {"kind": "train", "config": {**TINY, "steps": 1}}
        assert_unfrozen_while_hung(api, job_id, lambda client: client.post("/jobs", json=body), "job queue")
        # Failing fast now: the next POST does not wait for the broker.
        refused, seconds = timed(lambda: api.client.post("/jobs", json=body))
        assert refused.status_code == 503 and seconds < 1 and "Retry-After" in refused.headers


@pytest.mark.timeout(120)
def test_a_hung_artifact_store(service_env: dict[str, str], tmp_path: Path, job_id: str) -> None:
    with hung_listener() as port, api_with(service_env, tmp_path,
                                           SAGAN_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}") as api:
        # What an open job page polls every second.
        assert_unfrozen_while_hung(api, job_id, lambda client: client.get(f"/jobs/{job_id}/metrics"),
                                   "artifact store")
        refused, seconds = timed(lambda: api.client.get(f"/jobs/{job_id}/evals"))
        assert refused.status_code == 503 and seconds < 1
        ready, seconds = timed(lambda: api.client.get("/readyz"))
        assert ready.status_code == 503 and ready.json()["store"] == "unreachable" and seconds < 1
        # Submitting and cancelling need no store (a job's record is written when it can be).
        fresh = api.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})
        assert api.client.post(f"/jobs/{fresh['id']}/cancel").status_code == 200


@pytest.mark.timeout(120)
def test_a_held_lock_on_the_jobs_table(service_env: dict[str, str], tmp_path: Path, job_id: str,
                                       database_url: str) -> None:
    schema = database_url.split("%3D")[-1]
    with api_with(service_env, tmp_path) as api, psycopg.connect(
            database_url.replace("postgresql+psycopg", "postgresql").split("?")[0]) as locker:
        api.client.get(f"/jobs/{job_id}")  # the token is looked up (and cached) before the lock
        locker.execute(f"LOCK TABLE {schema}.jobs IN ACCESS EXCLUSIVE MODE")  # held until the rollback
        try:
            # Every route reads the jobs table, so a database-only one cannot answer while it is locked.
            assert_unfrozen_while_hung(api, job_id, lambda client: client.get(f"/jobs/{job_id}"), "database",
                                       database_only_answers=False)
        finally:
            locker.rollback()
        assert api.client.get(f"/jobs/{job_id}").status_code == 200  # a statement timeout trips no breaker
