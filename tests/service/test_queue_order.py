"""The embedded queue (the filesystem transport) hands messages out in the order they were sent, also the many
that one request sends within a millisecond (a sweep's children, in arm order). With Redis, the message the
API pushes itself is the one Celery would have sent."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from sagan_service.queue import TASK_NAME, _job_id_of, dispatch_all, make_celery
from sagan_service.settings import Settings
from tests.service.conftest import TINY, WORKER, Service, start_api, wait_for


@dataclass
class QueuedJob:
    id: str
    queue: str = "cpu"


def test_the_embedded_queue_is_first_in_first_out(tmp_path: Path) -> None:
    celery = make_celery(Settings(home=tmp_path))
    sent = [f"job-{index:02d}" for index in range(40)]
    dispatch_all(celery, [QueuedJob(job_id) for job_id in sent])
    taken = []
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        for _ in sent:  # what a worker's consumer does: take the next message of its queue
            message = channel._get("cpu")
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            taken.append(json.loads(body)[0][0])
    assert taken == sent


def test_a_warm_shutdown_ends_the_embedded_queues_wait_for_a_message(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.worker import state
    from kombu import Consumer, Queue

    celery = make_celery(Settings(home=tmp_path))
    with celery.connection_for_read() as connection, Consumer(connection, [Queue("cpu")], accept=["json"]):
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=1.0)  # nothing queued: it waits the whole second
        assert time.monotonic() - began >= 1.0
        monkeypatch.setattr(state, "should_stop", 0)  # what the worker's SIGTERM handler sets
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=2.0)  # what Celery's loop asks for
        assert time.monotonic() - began < 1.0  # one polling interval (0.2 s), not the 2 s


def test_a_message_pushed_to_redis_is_the_one_celery_sends() -> None:
    url = "redis://127.0.0.1:6379/14"
    client = redis.Redis.from_url(url)
    client.flushdb()
    for for_requests in (True,
                         False):  # the API's app, and the reaper's (which resends in the worker's settings)
        celery = make_celery(Settings(broker_url=url), for_requests=for_requests)
        celery.send_task(TASK_NAME, args=["job-a"], queue="gpu")
        dispatch_all(celery, [QueuedJob("job-b", queue="gpu")])
        ours, celerys = (json.loads(raw) for raw in client.lrange("gpu", 0, -1))  # LPUSH: the newest first
        client.delete("gpu")
        assert (_job_id_of(json.dumps(celerys).encode()), _job_id_of(json.dumps(ours).encode())) == ("job-a",
                                                                                                     "job-b")
        for message in (ours, celerys):  # what differs by job, or by message
            message["body"] = json.loads(base64.b64decode(message["body"]))
            message["body"][0] = message["headers"]["argsrepr"] = None
            for name in ("id", "root_id"):
                message["headers"][name] = None
            message["properties"]["correlation_id"] = message["properties"]["delivery_tag"] = None
        assert ours["headers"] == celerys["headers"]
        assert ours == celerys


@pytest.mark.timeout(300)
def test_a_worker_drops_messages_without_a_child_process_once_nothing_is_queued(
        service_env: dict[str, str], empty_schema_url: str, tmp_path: Path) -> None:
    # A database and a broker of its own, so that only this test's worker reads these messages and jobs.
    env = {**service_env, "SAGAN_DATABASE_URL": empty_schema_url,
           "SAGAN_BROKER_URL": "redis://127.0.0.1:6379/12"}
    redis.Redis.from_url(env["SAGAN_BROKER_URL"]).flushdb()
    service, api = start_api(env, tmp_path)
    worker = None
    try:
        cancelled = [api.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})["id"]
                     for _ in range(8)]
        for job_id in cancelled:  # cancelled in the queue: their messages stay in the broker
            assert api.client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
        real = api.submit({"kind": "train", "config": {**TINY, "steps": 2}})
        worker = Service([*WORKER, "--loglevel", "INFO"], env, tmp_path / "worker.log")
        assert api.wait_status(real["id"], {"succeeded", "failed"}, timeout=180)["status"] == "succeeded"
        # A message is a ticket for its queue (jobs.claim_next): the first one ran the real job, and the 8
        # others, its own among them, found nothing queued.
        log = wait_for(lambda: (text := worker.log_path.read_text()).count("its message is dropped") == 8
                       and text, 30, "the 8 messages left to be dropped")
        dropped = re.findall(r"the queue of job (\S+) has nothing queued: its message is dropped", log)
        assert len(dropped) == 8 and set(dropped) <= {*cancelled, real["id"]}, log[-3000:]
        assert "(a duplicate or a cancelled job's message)" not in log  # no pool child was started for them
    finally:
        if worker is not None:
            worker.stop()
        service.stop()
