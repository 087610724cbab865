"""An attempt's lease on its job row: renewed every SAGAN_HEARTBEAT_SECONDS with the training's latest
progress, which also tells the supervisor whether a cancel was asked for."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sagan_service import jobs
from sagan_service.settings import Settings

from .outages import Outage, is_transient


class LeaseLost(Exception):
    """The reaper gave the job away (this worker stalled): stop without touching the row."""


class Heartbeat:
    def __init__(self, sessions: sessionmaker[Session], job_id: str, worker_id: str, settings: Settings,
                 database: Outage) -> None:
        self.sessions, self.job_id, self.worker_id = sessions, job_id, worker_id
        self.settings, self.database = settings, database
        self.next_beat = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_beat

    def beat(self, progress: dict[str, Any]) -> jobs.Lease:
        """Renew the lease and copy `progress` (the last metrics line) into the row. A database that cannot be
        reached is waited out (the lease may lapse meanwhile: then the reaper, not this worker, decides);
        LeaseLost once the row went to another worker."""
        self.next_beat = time.monotonic() + self.settings.heartbeat_seconds
        try:
            with self.sessions() as session:
                lease = jobs.heartbeat(session, job_id=self.job_id, worker_id=self.worker_id,
                                       lease_seconds=self.settings.lease_seconds, step=progress.get("step"),
                                       total_steps=progress.get("total_steps"), metrics=progress or None)
        except Exception as error:
            if not is_transient(error):
                raise
            self.next_beat = time.monotonic() + self.database.failed(error)
            return jobs.Lease(held=True, cancel_requested=False)
        self.database.recovered()
        if not lease.held:
            raise LeaseLost(self.job_id)
        return lease
