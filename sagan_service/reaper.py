"""The reaper: requeues jobs whose worker died and resends lost queue messages (reaper_pass); beside
it, the webhook sender (webhook_sender.py) POSTs jobs' status changes.

It runs in every API process and beside every worker (`sagan worker` starts `sagan reaper` as a
companion process), so jobs are recovered while any one of them is up; `sagan reaper` also runs alone.
Every pass is made of conditional UPDATEs, so any number of reapers may run at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from .jobs import (
    expired_leases,
    get_job,
    note_waiting,
    reap_expired_leases,
    settle_open_sweeps,
    take_stale_queued,
)
from .models import utcnow
from .queue import dispatch, waiting_job_ids
from .records import publish_job_record

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.orm import Session, sessionmaker

    from .settings import Settings
    from .storage import ArtifactStore

log = logging.getLogger(__name__)


def reaper_pass(session_factory: sessionmaker[Session], celery: Celery, *,
                redispatch_after: timedelta, store: ArtifactStore | None = None) -> list[str]:
    """Settle jobs whose lease expired (and update their job.json in `store`), then (re)send every queued
    job whose message is due: the ones just requeued, and any not seen in the broker for
    `redispatch_after` (its message was lost). Unfinished sweeps are settled again too (their status is
    derived from their children's)."""
    with session_factory() as session:
        now = utcnow()
        expired = expired_leases(session, now=now) if store is not None else []
        requeued = reap_expired_leases(session, now=now)
        if store is not None:  # without a store `expired` is empty
            for job_id in expired:
                publish_job_record(store, get_job(session, job_id))
        settle_open_sweeps(session)
        note_waiting(session, job_ids=waiting_job_ids(celery) or set())
        resent = take_stale_queued(session, older_than=redispatch_after)
        for job_id in requeued + resent:
            dispatch(celery, get_job(session, job_id))
    return requeued + resent


def reap_once(sessions: sessionmaker[Session], celery: Celery, settings: Settings,
              store: ArtifactStore | None = None) -> None:
    """One pass; a failure (database or broker away) is logged and the next pass tries again."""
    try:
        sent = reaper_pass(sessions, celery, redispatch_after=timedelta(seconds=settings.redispatch_seconds),
                           store=store)
        if sent:
            log.warning("sent to the queue again (lease expired or message lost): %s", ", ".join(sent))
    except Exception:
        log.exception("reaper pass failed; retrying next interval")


def run_reaper(settings: Settings, stop: threading.Event) -> None:
    """Pass every SAGAN_REAPER_SECONDS until `stop` is set."""
    from .db import make_engine, make_session_factory
    from .queue import make_celery
    from .storage import open_store
    from .webhook_sender import WebhookSender

    engine = make_engine(settings.database, pre_ping=True, application_name=f"sagan-reaper {os.getpid()}",
                         timeout_s=settings.statement_timeout_seconds)
    try:
        sessions, celery, store = make_session_factory(engine), make_celery(settings), open_store(settings)
        sender = WebhookSender.start(sessions, settings)
        while not stop.is_set():
            reap_once(sessions, celery, settings, store)
            stop.wait(settings.reaper_seconds)
        if sender is not None:
            sender.stop()
    finally:
        engine.dispose()


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set, for a clean exit between passes."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    return stop
