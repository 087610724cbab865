"""One rank of a training job on Ray: what each of Ray Train's workers runs (worker/ray_job.py starts them).

Every rank reads the job's row, resumes from its latest committed checkpoint (so a worker group that Ray
starts again after losing a worker goes on from there), brings the job's data sets into its machine's data
cache and the real-data statistics into its folder, and trains in the process group Ray made. Rank 0 also
stores what the training writes, itself, through the same harvester and outbox as a local job's supervisor:
with several machines no supervisor sits beside it. The Celery worker that submitted the Ray job keeps the
lease, the progress, the log and the cancel flag (worker/ray_launcher.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import ray
import ray.train

from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobspec import read_spec
from sagan_service.limits import GIB
from sagan_service.logs import job_context
from sagan_service.models import Job
from sagan_service.settings import Settings
from sagan_service.storage import ArtifactStore, open_store

from .data_cache import DataCache
from .datasets import resolve_dataset_specs
from .harvest import Harvester, evaluation_stats, fetch_stats, restore_run, starting_checkpoint
from .outages import Outage, describe_database, retry
from .outbox import Outbox

# How often each rank asks the StopSwitch: a cancel or a stopping worker waits up to this long before the
# ranks checkpoint (a hand-back on the test machine took 7.4 s with 2 s, 5.5 s with 0.5 s: one run each).
STOP_POLL_SECONDS = 0.5


def rank_main(arguments: dict[str, Any]) -> int:
    """Ray Train's training function: `arguments` holds job_id, worker_id (the Celery worker's lease, under
    which rank 0 records artifacts) and stop_switch (the name of the StopSwitch actor). Returns the trainer's
    exit status; Ray hands rank 0's to the job's driver."""
    rank = ray.train.get_context().get_world_rank()
    settings = Settings()
    with job_context(arguments["job_id"]):
        return RankRun(arguments, rank, settings).run()


class RankRun:
    def __init__(self, arguments: dict[str, Any], rank: int, settings: Settings) -> None:
        self.rank, self.settings, self.worker_id = rank, settings, arguments["worker_id"]
        self.switch = StopPoller(arguments["stop_switch"])
        self.engine = make_engine(settings.database, pre_ping=True,
                                  timeout_s=settings.statement_timeout_seconds,
                                  application_name=f"sagan-ray-rank {rank}")
        self.sessions = make_session_factory(self.engine)
        self.store: ArtifactStore = open_store(settings)
        self.store_outage = Outage(self.store.describe(), settings.dependency_outage_seconds)
        database = Outage(describe_database(settings.database), settings.dependency_outage_seconds)
        self.job: Job = retry(lambda: self._read_job(arguments["job_id"]), database)
        # Per rank: two ranks may share a machine, and a restarted group must not find the last one's files.
        self.workdir = settings.work_dir / self.job.id / f"attempt-{self.job.attempt}-ray" / f"rank-{rank}"
        self.out, self.stats_dir = self.workdir / "out", self.workdir / "stats"
        self.held = contextlib.ExitStack()

    def _read_job(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = jobs.get_job(session, job_id)
            session.expunge(job)
            return job

    def fetch(self, call: Callable[[], Any]) -> Any:
        return retry(call, self.store_outage)

    def run(self) -> int:
        # Imported here, not with the module: the job's driver imports this module for rank_main alone, and
        # the trainer's imports (torchvision, torch._dynamo: over a second of CPU) would delay every attempt.
        from sagan_core import train as trainer

        shutil.rmtree(self.workdir, ignore_errors=True)
        self.out.mkdir(parents=True)
        outbox: Outbox | None = None
        try:
            start = starting_checkpoint(self.job, self.job.latest_checkpoint_step)
            step = None if start is None else start[1]
            if start is not None:  # a continued job's source: no series of that job's
                restore_run(self.store, self.fetch, start[0], start[1], self.out,
                            series=self.rank == 0 and start[0] == self.job.id)
            spec = resolve_dataset_specs(read_spec("train", self.job.spec), store=self.store,
                                         settings=self.settings, open_set=self.open_packed)
            fetch_stats(self.store, self.fetch, evaluation_stats(spec, self.settings.inception_weights),
                        self.stats_dir)
            os.environ["SAGAN_STATS_CACHE"] = str(self.stats_dir)  # what the trainer's evaluator reads
            if self.settings.inception_weights is not None:
                os.environ["SAGAN_INCEPTION_WEIGHTS"] = str(self.settings.inception_weights)
            if self.rank == 0:
                outbox = Outbox(self.job, self.settings, self.store, self.sessions, self.worker_id,
                                self.workdir / "outbox", self.out, None, self.stats_dir)
            with Harvesting(self.out, outbox, step, self.settings.poll_seconds):
                status = trainer.run(lambda: spec, self.out, resume=step is not None,
                                     hold_checkpoints=outbox is not None, stop_requested=self.switch.is_set)
            if outbox is not None and not outbox.drain(float("inf")):  # it gives up past the outage window
                raise RuntimeError(f"the artifacts could not be stored: {outbox.error}")
            return status
        finally:
            if outbox is not None:
                outbox.close()
            self.held.close()
            self.switch.close()
            self.engine.dispose()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def open_packed(self, store: ArtifactStore, prefix: str) -> Path:
        """A packed set in this machine's data cache, held until the rank ends (the supervisor's
        open_packed)."""
        cache = DataCache(self.settings.data_cache_root, store, int(self.settings.data_cache_gb * GIB),
                          Outage(store.describe(), self.settings.dependency_outage_seconds), time.sleep)
        return self.held.enter_context(cache.use(prefix))


class Harvesting:
    """Rank 0's harvester in a thread, taking the run directory's new files every poll interval; once more at
    the end, after the training wrote its last ones. On other ranks (no outbox) it does nothing."""

    def __init__(self, out: Path, outbox: Outbox | None, resumed_from_step: int | None,
                 every_s: float) -> None:
        self.harvester = None if outbox is None else Harvester(out, outbox, resumed_from_step)
        self.every_s, self.done = every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, name="harvest", daemon=True)

    def __enter__(self) -> Self:
        if self.harvester is not None:
            self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.harvester is not None:
            self.done.set()
            self.thread.join()
            self.harvester.take_new_files()

    def _run(self) -> None:
        assert self.harvester is not None
        while not self.done.wait(self.every_s):
            self.harvester.take_new_files()


@ray.remote(num_cpus=0)
class StopSwitch:
    """Set by the job's driver when Ray stops the job (SIGTERM): every rank then checkpoints and stops, as
    torchrun's ranks do on SIGTERM (which Ray's workers, not children of the driver, never get)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested


class StopPoller:
    """A rank's view of the StopSwitch, asked every STOP_POLL_SECONDS in a thread, so that the training step
    (which reads it every step) never waits for Ray."""

    def __init__(self, name: str) -> None:
        self.switch = ray.get_actor(name)
        self.requested, self.closed = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="stop-switch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.closed.wait(STOP_POLL_SECONDS):
            with contextlib.suppress(Exception):  # the driver is going away: its stop is on its way too
                if ray.get(self.switch.is_set.remote(), timeout=STOP_POLL_SECONDS):
                    self.requested.set()
                    return

    def is_set(self) -> bool:
        return self.requested.is_set()

    def close(self) -> None:
        self.closed.set()
