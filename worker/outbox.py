"""Artifacts on their way to the store, in the order the training wrote them, none skipped.

The supervisor hands over each sample grid and checkpoint as soon as it appears: a hard link into the
outbox folder (then the trainer may rotate its own copy away; see `--hold-checkpoints`). One thread
stores them in order: a sample grid, then its row; a checkpoint's metrics first (a resumed attempt
finds the series up to it), then the checkpoint, its commit marker and its row (the job's pointer
moves), then keep_checkpoints rotation in the store. The metrics series and the attempt's log follow
every few seconds. A store or database that cannot be reached is waited out with backoff while the
training goes on and the outbox grows; past the outage window the thread stops and `error` says why.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sagan_core import layout
from sagan_service import jobs
from sagan_service.models import Job
from sagan_service.settings import Settings
from sagan_service.storage import ArtifactStore, log_key, metrics_key, sample_key

from .outages import Outage, describe_database, retry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pending:
    kind: str  # "sample" | "checkpoint"
    step: int
    path: Path  # the outbox's own link to the file


FLUSH, CLOSE = object(), object()


class Stopped(Exception):
    """The outbox was closed while it waited for a dependency."""


class Outbox:
    def __init__(self, job: Job, settings: Settings, store: ArtifactStore, sessions: sessionmaker[Session],
                 folder: Path, run_dir: Path, log_path: Path) -> None:
        self.job, self.store, self.sessions = job, store, sessions
        self.folder, self.run_dir, self.log_path = folder, run_dir, log_path
        self.interval = settings.heartbeat_seconds
        self.keep = job.spec.get("keep_checkpoints") if job.kind == "train" else None
        self.store_outage = Outage(store.describe(), settings.dependency_outage_seconds)
        self.db_outage = Outage(describe_database(settings.database), settings.dependency_outage_seconds)
        self.items: queue.Queue[Any] = queue.Queue()
        self.flushed, self.closing = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.stored_sizes: dict[str, int] = {}  # metrics and log: the size last stored
        self.names = itertools.count()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.thread = threading.Thread(target=self._run, name=f"outbox-{job.id}", daemon=True)
        self.thread.start()

    # -- the supervisor's side -----------------------------------------------------------------

    def add(self, kind: str, step: int, path: Path) -> None:
        """Take `path` (a file the trainer finished writing) into the outbox, behind everything before it."""
        link = self.folder / f"{next(self.names):06d}-{kind}-{step}{path.suffix}"
        os.link(path, link)
        self.items.put(Pending(kind, step, link))

    def drain(self, timeout_s: float, wait: Any = time.sleep) -> bool:
        """Store everything handed over so far, then the metrics and the log; True once done, False if
        `timeout_s` passed or the outbox failed. `wait(seconds)` is called while waiting."""
        self.flushed.clear()
        self.items.put(FLUSH)
        deadline = time.monotonic() + timeout_s
        while not self.flushed.is_set() and self.error is None and time.monotonic() < deadline:
            wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.flushed.is_set()

    def close(self) -> None:
        self.closing.set()
        self.items.put(CLOSE)
        self.thread.join(timeout=30)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_files = time.monotonic() + self.interval
        while True:
            try:
                item = self.items.get(timeout=max(0.0, next_files - time.monotonic()))
            except queue.Empty:
                item = None
            if item is CLOSE or self.closing.is_set():
                return
            try:
                if isinstance(item, Pending):
                    self._store(item)
                if item is FLUSH or time.monotonic() >= next_files:
                    self._store_files()
                    next_files = time.monotonic() + self.interval
                if item is FLUSH:
                    self.flushed.set()
            except Stopped:
                return
            except BaseException as error:  # past the outage window, or a store that refuses: the job fails
                log.exception("job %s: artifacts cannot be stored", self.job.id)
                self.error = error
                return

    def _store(self, item: Pending) -> None:
        job_id = self.job.id
        if item.kind == "sample":
            key = sample_key(job_id, item.step)
            self._retry(lambda: self.store.put_file(key, item.path), self.store_outage)
        else:
            self._store_metrics()
            key = self._retry(lambda: self.store.commit_checkpoint(job_id, item.step, item.path), self.store_outage)
        self._retry(lambda: self._record(item.kind, item.step, key), self.db_outage)
        item.path.unlink(missing_ok=True)
        if item.kind == "checkpoint" and self.keep:
            dropped = self._retry(self._drop_old_checkpoints, self.db_outage)
            for step in dropped:
                self._retry(lambda step=step: self.store.delete_checkpoint(job_id, step), self.store_outage)

    def _record(self, kind: str, step: int, key: str) -> None:
        with self.sessions() as session:
            jobs.record_artifact(session, job_id=self.job.id, kind=kind, step=step, key=key)

    def _drop_old_checkpoints(self) -> list[int]:
        with self.sessions() as session:
            return jobs.drop_old_checkpoints(session, job_id=self.job.id, keep=self.keep)

    def _store_files(self) -> None:
        self._store_metrics()
        self._store_log()

    def _store_metrics(self) -> None:
        path = self.run_dir / layout.METRICS
        if self.job.kind != "train" or not path.exists():
            return
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # the trainer may be mid-line
        if self.stored_sizes.get("metrics") != len(complete):
            self._retry(lambda: self.store.put_bytes(metrics_key(self.job.id), complete), self.store_outage)
            self.stored_sizes["metrics"] = len(complete)

    def _store_log(self) -> None:
        if self.log_path.exists() and self.stored_sizes.get("log") != (size := self.log_path.stat().st_size):
            key = log_key(self.job.id, self.job.attempt)
            self._retry(lambda: self.store.put_file(key, self.log_path), self.store_outage)
            self.stored_sizes["log"] = size

    def _retry(self, call: Any, outage: Outage) -> Any:
        def wait(seconds: float) -> None:
            if self.closing.wait(seconds):
                raise Stopped

        return retry(call, outage, wait)
