"""The Celery app both sides share: the API sends `run_job` messages, `sagan worker` consumes them.

Settings follow what hour-long GPU tasks need (see the field notes): early acks, so a long task is
never redelivered while it runs; one task per process, no prefetch (a busy worker holds no message
of another job), a fresh process per task; and a visibility timeout above the longest job. Retries
are the reaper's business (attempt counter in the database), never Celery's.

The reaper (reaper.py) also finds lost messages: it looks into the broker's queues (Redis lists, or the
embedded queue's folder: waiting_job_ids), stamps every queued job whose message it sees there, and sends the
others again once they have not been seen for SAGAN_REDISPATCH_SECONDS. A job waiting its turn is never sent
twice.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sagan_core.config import TrainConfig

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from .jobspec import JobSpec
    from .models import Job
    from .settings import Settings

TASK_NAME = "sagan.run_job"
QUEUES = ("default", "cpu", "gpu", "ray")


class QueueUnavailable(Exception):
    """The broker did not take a job's message (the API answers 503); `sent` messages before it went out."""

    def __init__(self, message: str, sent: int) -> None:
        super().__init__(message)
        self.sent = sent


def make_celery(settings: Settings, *, for_requests: bool = False) -> Celery:
    """`for_requests` (the API): a message is sent once, and the broker's socket has SAGAN_API_TIMEOUT_SECONDS
    to connect and answer; a worker's consumer keeps the blocking reads and retries it needs."""
    from celery import Celery

    app = Celery("sagan", broker=settings.broker, set_as_current=False)
    transport_options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if for_requests:
        transport_options.update(socket_timeout=settings.api_timeout_seconds,
                                 socket_connect_timeout=settings.api_timeout_seconds,
                                 max_retries=0)  # one connection attempt, no back-off inside a request
        # A message that cannot be sent now fails the request; the reaper resends what was lost.
        app.conf.update(task_publish_retry=False, broker_connection_timeout=settings.api_timeout_seconds)
    if settings.broker.startswith("filesystem"):
        # The embedded default: messages are files under SAGAN_HOME, no broker server needed.
        folder = settings.home / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options.update(data_folder_in=str(folder / "queue"), data_folder_out=str(folder / "queue"),
                                 processed_folder=str(folder / "processed"), store_processed=False,
                                 polling_interval=0.2,  # the default 1 s would delay every job
                                 control_folder=str(folder / "control"))
        app.conf.broker_transport = "sagan_service.fifo_transport:Transport"  # first in, first out
        # Without an event loop the worker's timer is a thread that sleeps up to this long; its warm shutdown
        # waits for it (the default, 1 s).
        app.conf.worker_timer_precision = 0.2
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=False,
        task_ignore_result=True,
        task_default_queue="default",
        worker_prefetch_multiplier=1,
        # Celery supports it with Redis only (and warns otherwise); the embedded queue takes one
        # message at a time anyway.
        worker_disable_prefetch=settings.broker.startswith(("redis://", "rediss://")),
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
    )
    return app


def queue_for(spec: JobSpec) -> str:
    """Trainings over several machines go to `ray` (served by workers with SAGAN_RAY_ADDRESS), GPU-only jobs
    to `gpu`, CPU-only ones to `cpu`, the rest (device auto, sampling) to `default`."""
    if isinstance(spec, TrainConfig) and spec.nodes > 1:
        return "ray"
    device = spec.device if isinstance(spec, TrainConfig) else "auto"
    return {"cuda": "gpu", "cpu": "cpu"}.get(device, "default")


def dispatch(celery: Celery, job: Job) -> None:
    """Send `job`'s run_job message to its queue.

    With Redis, the message Celery would send (its protocol 2 headers and body, in kombu's envelope for
    Redis) is pushed onto the queue's list directly: Celery's send_task cost three to four times the CPU of
    the LPUSH itself (producer pool, declarations, a client object per message), and a POST /jobs pays it.
    Workers consume it as any Celery message (every service test's worker does; test_queue_order compares it
    with send_task's). The embedded queue takes the message through Celery."""
    client = _redis_client(celery)
    if client is None:
        celery.send_task(TASK_NAME, args=[job.id], queue=job.queue)
        return
    message = celery.amqp.as_task_v2(job.id, TASK_NAME, args=[job.id], kwargs={}, reply_to=celery.thread_oid,
                                     ignore_result=None)  # as send_task passes them
    client.lpush(job.queue, _redis_envelope(message.headers, message.body, message.properties, job.queue))


def _redis_envelope(headers: dict[str, Any], body: Any, properties: dict[str, Any], queue: str) -> str:
    """A message as kombu's Redis transport stores it (a JSON object, the body base64 encoded), for the
    anonymous exchange, whose routing key is the queue, at priority 0, whose list is the queue's name.
    _job_id_of reads it."""
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8", "content-type": "application/json", "headers": headers,
        "properties": {**properties, "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}})


@functools.cache
def _redis_client(celery: Celery) -> Redis | None:
    """The client dispatch pushes with (thread-safe, its own connection pool), with the broker connection's
    timeouts and retries; None unless the broker is Redis."""
    url = celery.conf.broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = celery.conf.broker_transport_options
    retries = options.get("max_retries")
    return Redis.from_url(url, socket_timeout=options.get("socket_timeout"),
                          socket_connect_timeout=options.get("socket_connect_timeout"),
                          **({} if retries is None else {"retry": Retry(NoBackoff(), retries)}))


def dispatch_all(celery: Celery, jobs: list[Job]) -> None:
    """Send each job's message; QueueUnavailable if the broker takes one of them not."""
    for sent, job in enumerate(jobs):
        try:
            dispatch(celery, job)
        except Exception as error:  # kombu, redis-py and socket errors alike: the broker's
            raise QueueUnavailable(str(error), sent) from error


def check_broker(celery: Celery, timeout_s: float = 3.0) -> None:
    """Raise unless the broker accepts a connection (readiness)."""
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)
        if connection.transport.driver_type == "redis":
            connection.default_channel.client.ping()


def waiting_job_ids(celery: Celery) -> set[str] | None:
    """Ids of the jobs whose message sits in one of the broker's queues, not yet taken by a worker;
    None when the transport cannot be looked into (then stale jobs are simply sent again)."""
    with celery.connection_for_write() as connection:
        driver = connection.transport.driver_type
        if driver == "redis":
            channel = connection.default_channel
            names = {channel._q_for_pri(queue, priority) for queue in QUEUES
                     for priority in channel.priority_steps}
            raw = [item for name in sorted(names) for item in channel.client.lrange(name, 0, -1)]
        elif driver == "filesystem":
            folder = Path(celery.conf.broker_transport_options["data_folder_in"])
            raw = [_read(path) for queue in QUEUES for path in folder.glob(f"*.{queue}.msg")]
        else:
            return None
    return {job_id for message in raw if message and (job_id := _job_id_of(message))}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:  # a worker took it meanwhile
        return b""


def _job_id_of(raw: bytes) -> str | None:
    """The job id a kombu message carries (the task's only argument), or None for anything else."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return args[0] if isinstance(args, list) and len(args) == 1 and isinstance(args[0], str) else None
