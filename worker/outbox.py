"""Artifacts on their way to the store, in the order the training wrote them, none skipped.

The supervisor hands over each sample grid and checkpoint as soon as it appears: a hard link into the
outbox folder (then the trainer may rotate its own copy away; see `--hold-checkpoints`). One thread
stores them in order: a sample grid, then its row; a checkpoint's metrics first (a resumed attempt
finds the series up to it), then the checkpoint, its commit marker and its row (the job's pointer
moves), then the evaluations (the job row's latest and best: a best evaluation only once its
checkpoint is committed), then keep_checkpoints rotation in the store, which keeps the best evaluation's
checkpoint. The metrics and evaluation series, the TensorBoard event files, new real-data statistics
(stats/<entry>, shared by every job on the same data) and the attempt's log follow every few seconds. A store
or database that cannot be reached is waited out with backoff while the training goes on and the outbox grows;
past the outage window the thread stops and `error` says why.
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
from sagan_core.config import TrainConfig
from sagan_core.metrics.runs import best_eval, read_jsonl
from sagan_core.tensorboard_log import complete_records
from sagan_service import jobs
from sagan_service.jobspec import read_spec
from sagan_service.logs import JOB_ID
from sagan_service.models import Job
from sagan_service.redact import redact_bytes
from sagan_service.settings import Settings
from sagan_service.storage import (
    ArtifactStore,
    evals_key,
    log_key,
    metrics_key,
    real_grid_key,
    sample_key,
    stats_key,
    tensorboard_key,
)

from .mlflow_sync import mlflow_sync
from .outages import Outage, describe_database, retry

log = logging.getLogger(__name__)
# The attempt's log is stored this often at most (or every heartbeat, if shorter) while it grows: a follower
# of GET /jobs/{id}/logs sees a line within seconds. Each store rewrites the object whole (S3 has no append).
LOG_SECONDS = 2.0


@dataclass(frozen=True)
class Pending:
    kind: str  # "sample" | "checkpoint" | "real" (the real-data grid)
    step: int
    path: Path  # the outbox's own link to the file


FLUSH, CLOSE = object(), object()


class Stopped(Exception):
    """The outbox was closed while it waited for a dependency."""


class Outbox:
    def __init__(self, job: Job, settings: Settings, store: ArtifactStore, sessions: sessionmaker[Session],
                 worker_id: str, folder: Path, run_dir: Path, log_path: Path | None, stats_dir: Path) -> None:
        self.job, self.store, self.sessions, self.worker_id = job, store, sessions, worker_id
        self.folder, self.run_dir, self.log_path, self.stats_dir = folder, run_dir, log_path, stats_dir
        self.interval = settings.heartbeat_seconds
        self.log_interval = min(self.interval, LOG_SECONDS)
        spec = read_spec(job.kind, job.spec)
        self.keep = spec.keep_checkpoints if isinstance(spec, TrainConfig) else None
        # What picks a training's best evaluation (its first metric); an eval job's result has no best.
        self.eval_metrics = spec.eval_metrics if isinstance(spec, TrainConfig) else None
        self.store_outage = Outage(store.describe(), settings.dependency_outage_seconds)
        self.db_outage = Outage(describe_database(settings.database), settings.dependency_outage_seconds)
        self.items: queue.Queue[Any] = queue.Queue()
        self.flushed, self.closing = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.stored_sizes: dict[str, int] = {}  # metrics, evaluations and log: the size last stored
        self.recorded_evals_size = 0
        self.stored_stats: set[str] = set()
        self.names = itertools.count()
        self.tracking = mlflow_sync(job, spec, settings, sessions, run_dir)  # None without an MLflow server
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
        if self.tracking is not None:
            self.tracking.close()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        JOB_ID.set(self.job.id)  # a thread starts with an empty context: its lines carry the job's id too
        next_files = time.monotonic() + self.interval
        next_log = time.monotonic() + self.log_interval
        while True:
            try:
                item = self.items.get(timeout=max(0.0, min(next_files, next_log) - time.monotonic()))
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
                if item is FLUSH or time.monotonic() >= next_log:
                    self._store_log(whole=item is FLUSH)
                    next_log = time.monotonic() + self.log_interval
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
        if item.kind == "checkpoint":
            self._store_metrics()
            self._store_evals()
            key = self._retry(lambda: self.store.commit_checkpoint(job_id, item.step, item.path),
                              self.store_outage)
        else:
            key = real_grid_key(job_id) if item.kind == "real" else sample_key(job_id, item.step)
            self._retry(lambda: self.store.put_file(key, item.path), self.store_outage)
        if item.kind != "real":  # one fixed key per job, found without a row
            self._retry(lambda: self._record(item.kind, item.step, key), self.db_outage)
        item.path.unlink(missing_ok=True)
        if item.kind == "checkpoint":
            self._record_evals(checkpoint_committed=True)  # its evaluation may be the new best
            if self.tracking is not None:
                self.tracking.checkpoint_committed(item.step, key)
        if item.kind == "checkpoint" and self.keep:
            dropped = self._retry(self._drop_old_checkpoints, self.db_outage)
            for step in dropped:
                self._retry(lambda step=step: self.store.delete_checkpoint(job_id, step), self.store_outage)

    def _record(self, kind: str, step: int, key: str) -> None:
        with self.sessions() as session:
            jobs.record_artifact(session, job_id=self.job.id, kind=kind, step=step, key=key)

    def _drop_old_checkpoints(self) -> list[int]:
        with self.sessions() as session:
            assert self.keep is not None  # only called for a training's checkpoints
            return jobs.drop_old_checkpoints(session, job_id=self.job.id, keep=self.keep)

    def _store_files(self) -> None:
        self._store_metrics()
        self._store_evals()
        self._record_evals()
        self._store_event_files()
        self._store_stats()

    def _store_metrics(self) -> None:
        if self.job.kind == "train":
            self._store_series("metrics", self.run_dir / layout.METRICS, metrics_key(self.job.id))

    def _store_evals(self) -> None:
        self._store_series("evals", self.run_dir / layout.EVALS, evals_key(self.job.id))

    def _store_series(self, name: str, path: Path, key: str) -> None:
        """Store the complete lines of a JSONL file the trainer appends to, if it grew."""
        if not path.exists():
            return
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # the trainer may be mid-line
        if self.stored_sizes.get(name) != len(complete):
            self._retry(lambda: self.store.put_bytes(key, complete), self.store_outage)
            self.stored_sizes[name] = len(complete)

    def _store_event_files(self) -> None:
        """The trainer's TensorBoard event files, each again when it grew (its complete records only)."""
        for path in layout.event_files(self.run_dir):
            data = complete_records(path.read_bytes())
            if self.stored_sizes.get(path.name) != len(data):
                key = tensorboard_key(self.job.id, path.name)
                self._retry(lambda key=key, data=data: self.store.put_bytes(key, data), self.store_outage)
                self.stored_sizes[path.name] = len(data)

    def _record_evals(self, *, checkpoint_committed: bool = False) -> None:
        """Copy the newest and the best evaluation into the job's row when the file grew, or when a checkpoint
        was just committed (jobs.record_evals keeps a best whose checkpoint is not committed out of it)."""
        path = self.run_dir / layout.EVALS
        size = path.stat().st_size if path.exists() else 0
        if size == 0 or (size == self.recorded_evals_size and not checkpoint_committed):
            return
        records = read_jsonl(path)
        best = best_eval(records, self.eval_metrics) if self.eval_metrics is not None else None

        def record() -> None:
            with self.sessions() as session:
                jobs.record_evals(session, job_id=self.job.id, worker_id=self.worker_id,
                                  latest=records[-1] if records else None, best=best)

        self._retry(record, self.db_outage)
        self.recorded_evals_size = size

    def _store_stats(self) -> None:
        """Store real-data statistics the job computed, for every later job on the same data."""
        for path in sorted(self.stats_dir.glob("*.npz")):
            if path.name not in self.stored_stats:
                key = stats_key(path.name)
                if not self._retry(lambda key=key: self.store.exists(key), self.store_outage):  # not fetched
                    self._retry(lambda key=key, path=path: self.store.put_file(key, path), self.store_outage)
                self.stored_stats.add(path.name)

    def _store_log(self, *, whole: bool) -> None:
        """The attempt's log, redacted (sagan_service.redact), if it grew; none for a Ray job's rank 0 (the
        supervisor stores that job's log from Ray's). While the attempt runs, its complete lines only: a line
        is redacted whole, and the stored object only ever grows (a follower reads it from an offset).
        `whole`: the attempt is over, its last line too."""
        if self.log_path is None or not self.log_path.exists():
            return
        # all of it stored: no need to read it
        if self.log_path.stat().st_size == self.stored_sizes.get("log"):
            return
        data = self.log_path.read_bytes()
        stored = data if whole else data[: data.rfind(b"\n") + 1]
        if self.stored_sizes.get("log") != len(stored):
            key, text = log_key(self.job.id, self.job.attempt), redact_bytes(stored)
            self._retry(lambda: self.store.put_bytes(key, text), self.store_outage)
            self.stored_sizes["log"] = len(stored)

    def _retry(self, call: Any, outage: Outage) -> Any:
        def wait(seconds: float) -> None:
            if self.closing.wait(seconds):
                raise Stopped

        return retry(call, outage, wait)
