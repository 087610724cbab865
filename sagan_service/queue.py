"""The Celery app both sides share: the API sends `run_job` messages, `sagan worker` consumes them.

Settings follow what hour-long GPU tasks need (see the field notes): early acks, so a long task is
never redelivered while it runs; one task per process, prefetch one, a fresh process per task; and a
visibility timeout above the longest job. Retries are the reaper's business (attempt counter in the
database), never Celery's.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .jobs import get_job, reap_expired_leases, take_stale_queued

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.orm import Session, sessionmaker

    from .models import Job
    from .settings import Settings

TASK_NAME = "sagan.run_job"
QUEUES = ("default", "cpu", "gpu")


def make_celery(settings: Settings) -> Celery:
    from celery import Celery

    app = Celery("sagan", broker=settings.broker, set_as_current=False)
    transport_options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.broker.startswith("filesystem"):
        # The embedded default: messages are files under SAGAN_HOME, no broker server needed.
        folder = settings.home / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options.update(data_folder_in=str(folder / "queue"), data_folder_out=str(folder / "queue"),
                                 processed_folder=str(folder / "processed"), store_processed=False,
                                 polling_interval=0.2,  # the default 1 s would delay every job
                                 control_folder=str(folder / "control"))
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=False,
        task_ignore_result=True,
        task_default_queue="default",
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
    )
    return app


def queue_for(kind: str, spec: dict[str, Any]) -> str:
    """GPU-only jobs go to `gpu`, CPU-only ones to `cpu`, the rest (device auto, sampling) to `default`."""
    device = spec.get("device", "auto") if kind == "train" else "auto"
    return {"cuda": "gpu", "cpu": "cpu"}.get(device, "default")


def dispatch(celery: Celery, job: Job) -> None:
    celery.send_task(TASK_NAME, args=[job.id], queue=job.queue)


def reaper_pass(session_factory: sessionmaker[Session], celery: Celery, *,
                redispatch_after: timedelta) -> list[str]:
    """Settle jobs whose lease expired, then (re)send every queued job whose message is due:
    the ones just requeued, and any whose last message is older than `redispatch_after`."""
    with session_factory() as session:
        requeued = reap_expired_leases(session)
        resent = take_stale_queued(session, older_than=redispatch_after)
        for job_id in requeued + resent:
            dispatch(celery, get_job(session, job_id))
    return requeued + resent
