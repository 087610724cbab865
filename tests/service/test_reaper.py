"""The reaper beside every worker: jobs are recovered with no API process up. A stack of its own (a
fresh schema, its own Redis database, workers, no API), so the session's API reaper cannot help."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.models import Job
from sagan_service.queue import dispatch, make_celery
from sagan_service.settings import Settings
from sagan_service.specs import validate_train_config
from tests.service.conftest import FAST_TIMINGS, PG_ADMIN_URL, REDIS_URL, TINY, Service, wait_for

REAPER_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + f"/{int(REDIS_URL.rsplit('/', 1)[1]) + 1}"


class Stack:
    """Database, broker and store settings for workers started by hand, and direct access to the jobs."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp, self.services = env, tmp, []
        self.settings = Settings(database_url=env["SAGAN_DATABASE_URL"], broker_url=env["SAGAN_BROKER_URL"],
                                 home=tmp / "client")
        self.engine = make_engine(self.settings.database)
        self.sessions = make_session_factory(self.engine)
        self.celery = make_celery(self.settings)

    def worker(self, *args: str, **env: str) -> Service:
        service = Service(["worker", "--loglevel", "WARNING", *args], {**self.env, **env},
                          self.tmp / f"worker-{len(self.services)}.log")
        self.services.append(service)
        return service

    def submit(self, config: dict[str, Any], *, send: bool = True) -> str:
        spec = validate_train_config({**TINY, **config}, data_roots=[])
        queue = {"cuda": "gpu", "cpu": "cpu"}.get(spec.device, "default")
        with self.sessions() as session:
            job, _ = jobs.create_job(session, kind="train", spec=spec, queue=queue, max_attempts=3)
        if send:
            dispatch(self.celery, job)
        return job.id

    def job(self, job_id: str) -> Job:
        with self.sessions() as session:
            return jobs.get_job(session, job_id)

    def cancel(self, job_id: str) -> None:
        with self.sessions() as session:
            jobs.request_cancel(session, job_id=job_id)

    def close(self) -> None:
        for service in self.services:
            service.stop()
        self.engine.dispose()


@pytest.fixture
def stack(service_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    schema = f"sagan_reaper_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    database_url = service_env["SAGAN_DATABASE_URL"].split("?")[0] + f"?options=-csearch_path%3D{schema}"
    redis.Redis.from_url(REAPER_REDIS_URL).flushdb()
    env = {**service_env, "SAGAN_DATABASE_URL": database_url, "SAGAN_BROKER_URL": REAPER_REDIS_URL,
           "SAGAN_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, "-m", "sagan_core.cli", "db", "upgrade"], env=env, check=True,
                   timeout=120)
    stack = Stack(env, tmp_path)
    yield stack
    stack.close()
    redis.Redis.from_url(REAPER_REDIS_URL).flushdb()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


def messages_for(job_id: str, queue: str) -> int:
    """How many messages for this job wait in a queue (Celery's headers carry the task's arguments)."""
    return sum(job_id.encode() in raw for raw in redis.Redis.from_url(REAPER_REDIS_URL).lrange(queue, 0, -1))


@pytest.mark.timeout(180)
def test_a_message_the_broker_lost_is_sent_again_by_a_workers_reaper_within_a_minute_by_default(
        stack: Stack) -> None:
    """A broker restart lost the message: with no API up, a worker's own reaper sends it again once it is
    SAGAN_REDISPATCH_SECONDS old, checked every SAGAN_REAPER_SECONDS; both unset, that is within a minute.
    Run with this suite's short timings: waiting the defaults out took 37 s and proved only the sum below."""
    assert Settings().redispatch_seconds + Settings().reaper_seconds < 60
    job_id = stack.submit({"steps": 2})
    redis.Redis.from_url(REAPER_REDIS_URL).flushdb()  # the broker comes back empty
    lost_at = time.time()
    stack.worker()
    started = wait_for(lambda: stack.job(job_id).started_at, 120, "a worker to claim the job")
    resend_within = sum(float(FAST_TIMINGS[f"SAGAN_{name}_SECONDS"]) for name in ("REDISPATCH", "REAPER"))
    # the worker's start (imports, its reaper's first pass) comes on top, on a busy machine
    assert started.timestamp() - lost_at < resend_within + 30
    wait_for(lambda: stack.job(job_id).status == "succeeded", 180, "the job to succeed")


@pytest.mark.timeout(120)
def test_a_job_waiting_in_the_queue_is_not_sent_twice(stack: Stack) -> None:
    """The reaper looks into the queues: a job merely waiting its turn is left alone, however long."""
    stack.worker("--queues", "cpu")  # nobody serves the gpu queue
    job_id = stack.submit({"device": "cuda"})
    created = stack.job(job_id)
    assert created.queue == "gpu"
    # The reaper stamps a job whose message it sees (dispatched_at) and resends one whose stamp is older than
    # SAGAN_REDISPATCH_SECONDS: once it has stamped the job a pass after that age, it saw the message when
    # it would otherwise have resent it.
    overdue = created.dispatched_at + timedelta(seconds=float(FAST_TIMINGS["SAGAN_REDISPATCH_SECONDS"])
                                                + float(FAST_TIMINGS["SAGAN_REAPER_SECONDS"]))
    wait_for(lambda: stack.job(job_id).dispatched_at > overdue, 60,
             "the reaper to see the message past its age")
    assert messages_for(job_id, "gpu") == 1
    assert stack.job(job_id).status == "queued"


@pytest.mark.timeout(600)
def test_a_busy_workers_reaper_requeues_the_job_of_a_dead_worker(stack: Stack) -> None:
    """No API: worker B, busy with a long job, still requeues the job of worker A, which died."""
    worker_a = stack.worker("--queues", "default")
    stack.worker("--queues", "cpu")  # B
    long_on_b = stack.submit({"steps": 100_000, "device": "cpu"})
    on_a = stack.submit({"steps": 100_000, "device": "auto"})
    for job_id in (long_on_b, on_a):
        wait_for(lambda job_id=job_id: stack.job(job_id).step > 0, 240, f"job {job_id} to train")
    # A busy worker takes no message: a job for it waits in the broker, where any free worker finds it.
    waiting = stack.submit({"steps": 2, "device": "cpu"})
    time.sleep(3)
    assert messages_for(waiting, "cpu") == 1
    assert stack.job(waiting).status == "queued"
    os.killpg(worker_a.process.pid, 9)  # the worker and its own reaper, at once
    worker_a.process.wait()
    requeued = wait_for(lambda: (job := stack.job(on_a)).status == "queued" and job, 60,
                        "the dead worker's job "
                                                                                         "to be requeued")
    assert requeued.attempt == 1
    assert stack.job(long_on_b).status == "running"  # B is busy all along: its reaper process did it
    for job_id in (on_a, long_on_b, waiting):
        stack.cancel(job_id)
    wait_for(lambda: stack.job(long_on_b).status == "cancelled", 60, "the long job to be cancelled")
