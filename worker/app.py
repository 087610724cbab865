"""The worker's Celery app: the shared app plus the one task, bound to this process's settings.

A graceful stop: SIGTERM makes Celery's main process start a warm shutdown, which waits for the task
running in the pool's child process. Celery tells only its main process (the `worker_shutting_down`
signal), so that handler creates a stop file, unique to this worker, that the child's supervisor polls:
the training checkpoints, the job goes back to the queue (sent again from here) and the task returns.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from celery import Celery
from celery.signals import setup_logging, worker_shutdown, worker_shutting_down
from celery.worker.request import Request

from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.logs import configure_logging
from sagan_service.models import Job
from sagan_service.queue import TASK_NAME, dispatch, make_celery
from sagan_service.settings import Settings

from .supervisor import run_job

log = logging.getLogger(__name__)


def create_worker_app(settings: Settings, forkserver: Path | None = None) -> Celery:
    """`forkserver`: the socket of this worker's fork server (worker/forkserver.py), if it runs one."""
    app = make_celery(settings)
    stop_flag = settings.work_dir / f"stopping-{uuid.uuid4().hex}"  # forked children inherit the name

    @app.task(name=TASK_NAME, ignore_result=True, Request=dropping_stale_messages(settings))
    def run_job_task(job_id: str) -> None:
        """Run one attempt of the job to run next on the queue of `job_id` (usually that job; a queue with
        nothing queued makes this a no-op)."""
        run_job(job_id, settings, stop_flag=stop_flag, handed_back=lambda job: send_again(app, job),
                forkserver=forkserver)

    def tell_the_running_job(**_: object) -> None:  # in the main process, from its signal handler
        stop_flag.touch()

    def clean_up(**_: object) -> None:
        stop_flag.unlink(missing_ok=True)

    def our_logging(loglevel: int | str | None = None, **_: object) -> None:
        # A receiver of setup_logging replaces Celery's own: its lines and ours share SAGAN_LOG_FORMAT.
        configure_logging(settings, loglevel or logging.INFO)

    setup_logging.connect(our_logging, weak=False)
    worker_shutting_down.connect(tell_the_running_job, weak=False)
    worker_shutdown.connect(clean_up, weak=False)
    return app


def dropping_stale_messages(settings: Settings) -> type[Request]:
    """A Request that drops a message while its queue has nothing queued (its job cancelled in the queue, or
    run by another message: jobs.claim_next) in the worker's main process, before a pool child is forked for
    it: a child costs seconds (max_tasks_per_child=1), and fifty cancelled jobs held the next real one back
    for minutes. Celery asks `revoked()` right before it hands a message to the pool; a drop is announced like
    a revoke (acknowledged, never run). When the database cannot say, the message goes on to the child, which
    checks again."""
    # No pooled connection kept open: the pool's children are forked from this process.
    sessions = make_session_factory(make_engine(settings.database, pooled=False,
                                                timeout_s=settings.statement_timeout_seconds))

    def has_work(ticket: str) -> bool:
        try:
            with sessions() as session:
                return jobs.queue_has_work(session, ticket=ticket)
        except Exception:  # any database trouble: let the child decide, as before
            log.warning("job %s: could not look at its queue before running its message", ticket,
                        exc_info=True)
            return True

    class DroppingStaleMessages(Request):
        def revoked(self) -> bool:
            if super().revoked():
                return True
            job_id = self.args[0] if self.args else None
            if not isinstance(job_id, str) or has_work(job_id):
                return False
            log.info("the queue of job %s has nothing queued: its message is dropped without running it",
                     job_id)
            self._announce_revoked("nothing queued", terminated=False, signum=None, expired=False)
            return True

    return DroppingStaleMessages


def send_again(app: Celery, job: Job) -> None:
    """Queue a handed-back job's message for the next worker; if the broker is away, the reaper sends
    it once the message is overdue."""
    try:
        dispatch(app, job)
    except Exception:
        log.exception("job %s: handed back, but its message could not be sent; the reaper will", job.id)
