"""The worker's Celery app: the shared app plus the one task, bound to this process's settings."""

from __future__ import annotations

from celery import Celery

from sagan_service.queue import TASK_NAME, make_celery
from sagan_service.settings import Settings

from .supervisor import run_job


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)

    @app.task(name=TASK_NAME, ignore_result=True)
    def run_job_task(job_id: str) -> None:
        """Run one attempt of a job; a job that is not queued any more makes this a no-op."""
        run_job(job_id, settings)

    return app
