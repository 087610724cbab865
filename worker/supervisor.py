"""One attempt of one job: claim it, run its process tree, mirror its files to the store, settle it.

The loop polls the training directory and hands every new sample grid and checkpoint to the outbox,
which stores them in order from its own thread, with the metrics, the evaluations and new real-data
statistics (worker/outbox.py); every heartbeat interval it renews
the lease, copies progress into the row and reads the cancel flag. An attempt ends when
- the training exits: succeeded or failed, once everything it wrote is stored (a training that diverged
  fails with its "diverged at step N" message and is not retried: it would diverge again);
- a cancel arrives: the whole process tree is stopped (SIGTERM, SIGKILL after the grace period);
- the worker is stopping (SIGTERM to `sagan worker`): the training gets SIGTERM, checkpoints where it
  is and exits; that checkpoint is stored and the job goes back to the queue without counting the
  attempt (jobs.hand_back), all within SAGAN_SHUTDOWN_SECONDS;
- the attempt ran past SAGAN_MAX_RUN_SECONDS: stopped the same way (it checkpoints), then failed with a
  message that says so (its checkpoints stay for sampling);
- the lease is lost (the reaper gave the job away): the tree is stopped, the row left to its new owner;
- the database or the store stays away past SAGAN_DEPENDENCY_OUTAGE_SECONDS, or the supervisor itself
  fails: failed, with the reason. Shorter outages are waited out while the training goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from sagan_core import layout
from sagan_core.config import TrainConfig
from sagan_core.exits import EXIT_STOPPED
from sagan_core.launch import training_launch
from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobspec import DatasetSpec, EvalSpec, JobSpec, SampleSpec, read_spec
from sagan_service.limits import GIB
from sagan_service.logs import JOB_ID, TextFormatter, job_context
from sagan_service.models import TERMINAL, Job
from sagan_service.records import publish_job_record
from sagan_service.settings import Settings
from sagan_service.specs import check_dataset_spec
from sagan_service.storage import (
    ArtifactNotFound,
    ArtifactStore,
    StoreUnavailable,
    checkpoint_key,
    log_key,
    open_store,
)
from sagan_service.sweeps import store_report_if_finished

from . import dataset_job
from .data_cache import DataCache
from .datasets import dataset_fields, in_store, resolve_dataset_specs
from .harvest import Harvester, evaluation_stats, fetch_stats, restore_run, starting_checkpoint
from .heartbeat import Heartbeat, LeaseLost
from .launcher import Launcher, LocalLauncher, RunLost
from .outages import DependencyDown, Outage, describe_database, retry
from .outbox import Outbox

log = logging.getLogger(__name__)
T = TypeVar("T")
LOG_TAIL_LINES = 40
HANDED_BACK = "queued"
LOST = "lost"  # an attempt's status (never a job's) when its launcher lost the run: see jobs.retry_lost
RAY_LINE_PREFIX = re.compile(r"^\(\w+ pid=\d+(?:, ip=[\w.:]+)?\) ")


class ShutdownOverdue(Exception):
    """The worker is stopping and its shutdown time is up: stop waiting for the store."""


def run_job(ticket: str, settings: Settings, *, stop_flag: Path | None = None,
            handed_back: Callable[[Job], None] | None = None, forkserver: Path | None = None) -> str | None:
    """Claim the job to run now from the queue of job `ticket`, whose message this is (jobs.claim_next), and
    run one attempt of it; return the final status, or None if there was nothing to do.

    The worker is stopping once `stop_flag` exists: then the job goes back to the queue ("queued"),
    and `handed_back(job)` sends its message again. Every line logged meanwhile carries the job's id.
    `forkserver`: the socket of the worker's fork server, which starts a local job's processes."""
    store = open_store(settings)  # before the claim: a misconfigured store must not strand a claimed job
    engine = make_engine(settings.database, pre_ping=True, application_name=f"sagan-worker {os.getpid()}",
                         timeout_s=settings.statement_timeout_seconds)
    session_factory = make_session_factory(engine)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    database = Outage(describe_database(settings.database), settings.dependency_outage_seconds)
    try:
        job = retry(lambda: _claim(session_factory, ticket, worker_id, settings.lease_seconds), database)
        if job is None:
            log.info("the queue of job %s has nothing queued (a duplicate or a cancelled job's message)",
                     ticket)
            return None
        with job_context(job.id):
            publish_job_record(store, job)
            workdir = settings.work_dir / job.id / f"attempt-{job.attempt}"
            try:
                status = Attempt(job, settings, store, session_factory, worker_id, workdir, stop_flag,
                                 forkserver).run()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            if status == HANDED_BACK and handed_back is not None:
                handed_back(job)
            if status in TERMINAL and job.parent_id is not None:
                _report_finished_sweep(session_factory, store, job.parent_id)
            return status
    finally:
        engine.dispose()


def _report_finished_sweep(sessions: sessionmaker[Session], store: ArtifactStore, sweep_id: str) -> None:
    """Store the report of the sweep whose last child this worker just finished (see sagan_service.sweeps);
    a failure costs only the stored copy: GET /jobs/{id}/report builds it then."""
    try:
        with sessions() as session:
            if store_report_if_finished(session, store, sweep_id=sweep_id):
                log.info("sweep %s finished: report stored", sweep_id)
    except Exception:
        log.exception("sweep %s: could not store its report; the API builds it on request", sweep_id)


def _claim(sessions: sessionmaker[Session], ticket: str, worker_id: str, lease_seconds: float) -> Job | None:
    with sessions() as session:
        return jobs.claim_next(session, ticket=ticket, worker_id=worker_id, lease_seconds=lease_seconds)


class Attempt:
    def __init__(self, job: Job, settings: Settings, store: ArtifactStore,
                 session_factory: sessionmaker[Session], worker_id: str, workdir: Path,
                 stop_flag: Path | None = None, forkserver: Path | None = None) -> None:
        self.job, self.settings, self.store = job, settings, store
        self.sessions, self.worker_id, self.stop_flag = session_factory, worker_id, stop_flag
        self.forkserver = forkserver
        self.workdir, self.out = workdir, workdir / "out"
        self.log_path = workdir / f"attempt-{job.attempt}.log"
        self.database = Outage(describe_database(settings.database), settings.dependency_outage_seconds)
        self.store_outage = Outage(store.describe(), settings.dependency_outage_seconds)
        self.harvester: Harvester | None = None
        # a training's starting checkpoint (harvest.starting_checkpoint)
        self.start: tuple[str, int] | None = None
        # Real-data statistics shared through the store (stats/<entry>): the ones there are fetched before
        # the job starts; the outbox stores new ones.
        self.stats_dir = workdir / "stats"
        # The job's spec, typed (read in `run`, where a row that is no valid spec fails the job). It runs with
        # its data sets in a store replaced by their copies in the data cache, which `held` keeps in use
        # (never evicted) until the attempt ends; it also ends the supervisor's lines going into the attempt's
        # log.
        self.spec: JobSpec | None = None
        self.held = contextlib.ExitStack()
        self.progress: dict[str, Any] = {}
        self.launcher: Launcher | None = None
        self.on_ray = False  # a training with nodes > 1, or any training where SAGAN_LAUNCHER=ray: see `run`
        self.outbox: Outbox | None = None
        self.heartbeat = Heartbeat(session_factory, job.id, worker_id, settings, self.database)
        self.stopping_since: float | None = None  # when the graceful stop began
        self.launched_at = 0.0
        self.out_of_time = False  # stopped for running past SAGAN_MAX_RUN_SECONDS
        self.killed_overdue = False  # a graceful stop that took too long: killed, no checkpoint of its own

    def run(self) -> str | None:
        try:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                self.spec = spec = read_spec(self.job.kind, self.job.spec)
                self.on_ray = isinstance(spec,
                                         TrainConfig) and (self.settings.launcher == "ray" or spec.nodes > 1)
                self.outbox = Outbox(self.job, self.settings, self.store, self.sessions, self.worker_id,
                                     self.workdir / "outbox", self.out, self.log_path, self.stats_dir)
                # A sample job's one grid is taken at the end, an eval's result is a series; on Ray, rank 0
                # takes its files itself.
                if isinstance(spec, TrainConfig) and not self.on_ray:
                    self.start = starting_checkpoint(self.job, self.job.resumed_from_step)
                    self.harvester = Harvester(self.out, self.outbox,
                                               None if self.start is None else self.start[1])
                command = self.prepare(spec)
                if self.worker_stopping():
                    status = HANDED_BACK
                else:
                    self.launcher = self.launch(command)
                    self.launched_at = time.monotonic()
                    status = self.supervise()
                error = self.failure_reason() if status == "failed" else None
            except LeaseLost:
                raise
            except RunLost as lost:  # not the training's failure: the next attempt resumes where it got to
                log.warning("job %s: %s", self.job.id, lost)
                self.stop()
                status, error = LOST, str(lost)
            except Exception as exc:  # any failure here must settle the row, not strand it "running"
                log.exception("job %s failed in the supervisor", self.job.id)
                self.stop()
                status, error = "failed", _plain(exc)
            status, error = self.store_the_rest(status, error)
            return self.settle(status, error)
        except LeaseLost:
            self.stop()
            log.warning("job %s: lease lost, leaving it to its new owner", self.job.id)
            return None
        except DependencyDown:  # the database stayed away while the attempt ended
            self.stop()
            log.exception("job %s: could not be settled; its lease will expire and the reaper settles it",
                          self.job.id)
            return None
        finally:
            if self.outbox is not None:
                self.outbox.close()
            self.held.close()

    # -- preparing and launching -------------------------------------------------------------

    def check_data_roots(self, spec: JobSpec) -> None:
        """The job's data sets against this worker's SAGAN_DATA_ROOTS, as the API checked them at submission:
        a link may have been made or changed since, and this is the machine that opens them."""
        for field, dataset in dataset_fields(spec).items():
            if not in_store(dataset):  # a store's set is no path here
                check_dataset_spec(dataset, f"config.{field}" if isinstance(spec, TrainConfig) else field,
                                   self.settings.allowed_data_roots)

    def prepare(self, spec: JobSpec) -> list[str]:
        """Write the inputs into the work directory and return the command to run (none on Ray: its ranks
        bring their data sets, statistics and checkpoint to their own machines)."""
        self.continue_log()
        # on Ray the launcher rewrites the log from Ray's own, which would drop these lines
        if not self.on_ray:
            self.held.enter_context(job_lines_into(self.log_path, self.job.id))
        resumed = (f", resuming from step {self.job.resumed_from_step}"
                   if self.job.resumed_from_step is not None else "")
        log.info("job %s attempt %d of %d on worker %s%s", self.job.id, self.job.attempt,
                 self.job.max_attempts, self.worker_id, resumed)
        self.check_data_roots(spec)
        if self.on_ray:
            if self.settings.ray_address is None:
                raise ValueError("this job runs on Ray (nodes > 1 or SAGAN_LAUNCHER=ray) but this worker has "
                                 "no SAGAN_RAY_ADDRESS")
            return []
        # Before fetch_stats: a packed set's statistics are keyed by its index, read from the local copy.
        spec = resolve_dataset_specs(spec, store=self.store, settings=self.settings,
                                     open_set=self.open_packed)
        self.fetch_stats(spec)
        if isinstance(spec, DatasetSpec):
            return dataset_job.command(spec, self.workdir)
        if isinstance(spec, EvalSpec):
            checkpoint = self.fetch_checkpoint(spec.job_id, spec.step)
            return [sys.executable, "-m", "sagan_core.cli", "eval", "--checkpoint", str(checkpoint),
                    "--dataset", spec.dataset, "--metrics", ",".join(spec.metrics), "-n", str(spec.n),
                    "--seed", str(spec.seed), "--evals", str(self.out / layout.EVALS),
                    # Not the path: this worker's work directory means nothing to whoever reads the result.
                    "--checkpoint-name", f"job {spec.job_id} step {spec.step}",
                    "--stats-cache", str(self.stats_dir)]
        if isinstance(spec, SampleSpec):
            checkpoint = self.fetch_checkpoint(spec.job_id, spec.step)
            return [sys.executable, "-m", "sagan_core.cli", "sample", "--checkpoint", str(checkpoint),
                    "-n", str(spec.n), "--seed", str(spec.seed), *_sample_options(spec),
                    "-o", str(self.out / "grid.png")]
        if not isinstance(spec, TrainConfig):
            raise TypeError(f"a {self.job.kind} job runs no process of its own")  # a sweep: its children run
        config_path = self.workdir / "config.json"
        # read_spec filled the fields an older row predates
        config_path.write_text(json.dumps(spec.to_dict()))
        # its own checkpoint, or a continued job's source's (no series of that job's)
        if self.start is not None:
            source, step = self.start
            restore_run(self.store, self.from_store, source, step, self.out, series=source == self.job.id)
        resume = self.start is not None
        # hold_checkpoints: the trainer's rotation waits until this supervisor took each checkpoint.
        return training_launch(config_path, self.out, spec, resume=resume,
                               hold_checkpoints=True).command

    def fetch_checkpoint(self, job_id: str, step: int) -> Path:
        """A training job's committed checkpoint, for a sample or an eval job."""
        checkpoint = self.workdir / "model.pt"
        self.from_store(lambda: self.store.download(checkpoint_key(job_id, step), checkpoint))
        return checkpoint

    def open_packed(self, store: ArtifactStore, prefix: str) -> Path:
        """Bring a packed set into the worker's data cache and hold it there until the attempt ends."""
        outage = (self.store_outage if store is self.store
                  else Outage(store.describe(), self.settings.dependency_outage_seconds))
        # Plain sleeps while the store is away: this thread keeps the lease meanwhile (while_beating).
        cache = DataCache(self.settings.data_cache_root, store, int(self.settings.data_cache_gb * GIB),
                          outage, time.sleep)
        return self.while_beating(lambda: self.held.enter_context(cache.use(prefix)))

    def while_beating(self, call: Callable[[], T]) -> T:
        """call() in a thread while this one renews the lease: fetching a large data set may take longer
        than a lease. On a lost lease the call still runs to its end, so that what it took is in `held`
        and released with it, never left locked."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = call()
            except BaseException as error:  # noqa: BLE001 (re-raised in the calling thread)
                outcome["error"] = error

        thread = threading.Thread(target=run, name=f"prepare {self.job.id}", daemon=True)
        thread.start()
        try:
            thread.join(self.settings.poll_seconds)
            while thread.is_alive():
                if self.heartbeat.due():
                    self.beat()
                thread.join(self.settings.poll_seconds)
        finally:
            thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def fetch_stats(self, spec: JobSpec) -> None:
        """Lay out the store's cached real statistics for the evaluations this job will run."""
        entries = evaluation_stats(spec, self.settings.inception_weights)
        fetch_stats(self.store, self.from_store, entries, self.stats_dir)

    def continue_log(self) -> None:
        """An attempt handed back by a stopping worker runs again under the same number: append to its log."""
        with contextlib.suppress(ArtifactNotFound, StoreUnavailable):
            self.store.download(log_key(self.job.id, self.job.attempt), self.log_path)

    def from_store(self, call: Any) -> Any:
        """A store call before the training runs, waited out (keeping the lease) if the store is away."""
        return retry(call, self.store_outage, self.wait_beating)

    def launch(self, command: list[str]) -> Launcher:
        if self.on_ray:
            from .ray_launcher import RayLauncher  # the optional `ray` extra: only where jobs run on Ray

            return RayLauncher.start(self.job, settings=self.settings, store=self.store,
                                     worker_id=self.worker_id,
                                     log_path=self.log_path, environ=dict(os.environ))
        env = {**os.environ, "SAGAN_STATS_CACHE": str(self.stats_dir)}
        if self.settings.inception_weights is not None:
            env["SAGAN_INCEPTION_WEIGHTS"] = str(self.settings.inception_weights)
        if self.settings.gpus is not None and "CUDA_VISIBLE_DEVICES" not in env:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(self.settings.gpus))
        # The fork server answers once its imports are done (seconds, at its first job): keep the lease.
        return self.while_beating(lambda: LocalLauncher.start(
            command, env=env, log_path=self.log_path, cwd=self.workdir,
            grace_seconds=self.settings.cancel_grace_seconds, forkserver=self.forkserver))

    # -- supervising -------------------------------------------------------------------------

    def supervise(self) -> str:
        """Poll until the process tree exits, a cancel arrives or the worker stops; return the status."""
        assert self.launcher is not None and self.outbox is not None
        while True:
            returncode = self.launcher.poll()
            self.take_new_files()
            if self.outbox.error is not None:
                raise self.outbox.error
            if returncode is not None:
                self.stop()  # sweep up anything the tree left behind
                # a run that just finished still succeeded
                if self.out_of_time and not self.worker_stopping():
                    return "succeeded" if returncode == 0 else "failed"
                if self.stopping_since is not None or returncode == EXIT_STOPPED:
                    return HANDED_BACK
                return "succeeded" if returncode == 0 else "failed"
            if self.worker_stopping() or self.past_run_time():
                self.stop_gracefully()
            if self.heartbeat.due() and self.beat().cancel_requested:
                self.stop()
                self.take_new_files()
                return "cancelled"
            time.sleep(self.settings.poll_seconds)

    def worker_stopping(self) -> bool:
        return self.stop_flag is not None and self.stop_flag.exists()

    def past_run_time(self) -> bool:
        """Whether the attempt ran past SAGAN_MAX_RUN_SECONDS (then it is stopped like a graceful stop)."""
        limit = self.settings.max_run_seconds
        if not self.out_of_time and limit and time.monotonic() - self.launched_at > limit:
            log.warning("job %s: past the maximum run time of %g s; the training checkpoints and stops",
                        self.job.id, limit)
            self.out_of_time = True
        return self.out_of_time

    def stop_gracefully(self) -> None:
        """Ask the trainer to checkpoint and stop (LocalLauncher.ask_to_stop), again at every poll; once two
        thirds of the shutdown time have passed since the first ask, kill it."""
        assert self.launcher is not None
        if self.stopping_since is None:
            if not self.out_of_time:
                log.warning("job %s: the worker is stopping; the training checkpoints and the job goes back "
                            "to the queue", self.job.id)
            self.launcher.ask_to_stop()
            # Counted from the first ask (not before the log line above): the trainer gets the whole time.
            self.stopping_since = time.monotonic()
            return
        if time.monotonic() - self.stopping_since > self.settings.shutdown_seconds * 2 / 3:
            log.warning("job %s: the training did not stop in time; killing it", self.job.id)
            self.killed_overdue = True
            self.stop()
            return
        self.launcher.ask_to_stop()

    def beat(self) -> jobs.Lease:
        """Renew the lease with the training's latest progress (Heartbeat.beat)."""
        if self.launcher is not None:
            self.launcher.refresh()
        self.progress = self.latest_metrics() or self.progress
        return self.heartbeat.beat(self.progress)

    def latest_metrics(self) -> dict[str, Any]:
        """The training's last metrics line: from its run directory here, or as Ray's rank 0 stored it."""
        if self.on_ray and self.launcher is not None:
            return self.launcher.latest_metrics()  # type: ignore[attr-defined]
        return _last_line(self.out / layout.METRICS)

    def wait_storing(self, seconds: float) -> None:
        """wait_beating, unless the worker is stopping and its shutdown time is up (ShutdownOverdue)."""
        if self.worker_stopping():
            self.stopping_since = self.stopping_since or time.monotonic()
            if time.monotonic() > self.stopping_since + self.settings.shutdown_seconds:
                raise ShutdownOverdue
        self.wait_beating(seconds)

    def wait_beating(self, seconds: float) -> None:
        """Sleep, renewing the lease when it is due."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.heartbeat.due():
                self.beat()
            time.sleep(min(left, self.settings.poll_seconds))

    def stop(self) -> None:
        """Stop the job's processes (the launcher's stop); a no-op once they are gone or before they started.
        A Ray job may take the worker's shutdown window to checkpoint and end: the lease is renewed
        meanwhile."""
        if self.launcher is not None:
            self.launcher.stop(self.wait_keeping_lease)

    def wait_keeping_lease(self, seconds: float) -> None:
        """wait_beating while stopping: a lease or database lost meanwhile does not stop the stop."""
        try:
            self.wait_beating(seconds)
        except (LeaseLost, DependencyDown):
            time.sleep(seconds)

    # -- handing files to the outbox, settling -------------------------------------------------

    def take_new_files(self) -> None:
        if self.harvester is not None:
            self.harvester.take_new_files()

    def store_the_rest(self, status: str, error: str | None) -> tuple[str, str | None]:
        """Wait until the outbox stored what the attempt produced (and the log); a succeeded job whose
        artifacts cannot be stored fails. A cancel waits only so long, and so does a stopping worker:
        a finished training whose artifacts are not all stored by then goes back to the queue."""
        assert self.outbox is not None
        grid = self.out / "grid.png"
        if isinstance(self.spec, SampleSpec) and status == "succeeded" and grid.exists():
            self.outbox.add("sample", self.spec.step, grid)
        # The outbox itself gives up past the outage window, and wait_storing once a stop is overdue.
        timeout = self.settings.cancel_grace_seconds if status == "cancelled" else float("inf")
        try:
            drained = self.outbox.drain(timeout, self.wait_storing)
        except ShutdownOverdue:
            log.warning("job %s: the worker is stopping before all artifacts are stored", self.job.id)
            return (HANDED_BACK, None) if status == "succeeded" else (status, error)
        if not drained and status == "succeeded":
            return "failed", (_plain(self.outbox.error) if self.outbox.error
                              else "its artifacts could not be stored")
        return status, error

    def settle(self, status: str, error: str | None) -> str | None:
        """Record how the attempt ended; the job's new status (LOST: queued again, or failed out of attempts),
        or None if the row could not be or was no longer ours to settle."""
        def transition() -> str | None:
            with self.sessions() as session:
                if status == HANDED_BACK:  # or cancelled, if a cancel came after the last heartbeat
                    return jobs.hand_back(session, job_id=self.job.id, worker_id=self.worker_id)
                if status == LOST:
                    return jobs.retry_lost(session, job_id=self.job.id, worker_id=self.worker_id,
                                           error=error or "")
                finished = jobs.finish_job(session, job_id=self.job.id, worker_id=self.worker_id,
                                           status=status, error=error,
                                           log_tail=self.log_tail() if status == "failed" else None,
                                           metrics=self.latest_metrics() or self.progress or None)
                return status if finished else None

        try:
            settled = retry(transition, self.database)
        except DependencyDown:
            log.exception("job %s: could not record %s; its lease will expire and the reaper settles it",
                          self.job.id, status)
            return None
        if not settled:
            log.warning("job %s: lease lost before the end; its new owner settles it", self.job.id)
            return None
        log.info("job %s attempt %d: %s%s%s", self.job.id, self.job.attempt, status,
                 f" ({error})" if status == LOST else "", f", now {settled}" if settled != status else "")
        self.publish_record()
        return settled

    def publish_record(self) -> None:
        """job.json after the attempt's state change; a database that went away meanwhile only leaves
        the record behind (the row is what counts)."""
        try:
            with self.sessions() as session:
                publish_job_record(self.store, jobs.get_job(session, self.job.id))
        except Exception:  # the job is settled; its record is a convenience
            log.warning("job %s: job.json not updated", self.job.id, exc_info=True)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []

    def log_tail(self) -> str:
        return "\n".join(self.log_lines()[-LOG_TAIL_LINES:])

    def failure_reason(self) -> str:
        if self.out_of_time:
            reason = (f"stopped after the maximum run time of {self.settings.max_run_seconds:g} s "
                      "(SAGAN_MAX_RUN_SECONDS)")
            if self.job.kind != "train":
                return reason
            if self.killed_overdue:
                return f"{reason}; it did not stop in time and was killed"
            return f"{reason}; it saved a checkpoint where it stopped"
        lines = [line for line in self.log_lines() if line.strip()]
        # The trainer's own "error: ..." first, from the whole log: under torchrun its report of the failed
        # ranks (about 40 lines) follows it. Then any error line of the tail, then the tail's last line.
        own = [line.removeprefix("error: ") for line in map(_without_ray_prefix, lines)
               if line.startswith("error: ")]
        tail = lines[-LOG_TAIL_LINES:]
        errors = [line for line in tail if "Error" in line or "error:" in line]
        assert self.launcher is not None
        return (own or errors or tail or [""])[-1].strip() or f"exit code {self.launcher.returncode}"


@contextlib.contextmanager
def job_lines_into(log_path: Path, job_id: str) -> Iterator[None]:
    """Inside, every line this process logs about job `job_id` (its supervisor's, its outbox's: see
    sagan_service.logs.JOB_ID) is appended to the attempt's log too, where the trainer's output goes (both
    append, so lines interleave whole), as well as to the worker's own log."""
    handler = logging.FileHandler(log_path, encoding="utf-8", delay=True)
    handler.setFormatter(TextFormatter())
    handler.addFilter(lambda _record: JOB_ID.get() == job_id)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _without_ray_prefix(line: str) -> str:
    """A log line without the "(RayTrainWorker pid=N, ip=A) " that Ray puts before its workers' lines."""
    return RAY_LINE_PREFIX.sub("", line)


def _plain(error: BaseException) -> str:
    """A dependency outage is already worded for people; anything else keeps its type for diagnosis."""
    return str(error) if isinstance(error, DependencyDown) else f"{type(error).__name__}: {error}"


def _last_line(path: Path, tail_bytes: int = 65536) -> dict[str, Any]:
    """The last complete JSON line of a file that is being appended to, or {}."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - tail_bytes))
            data = handle.read()
    except FileNotFoundError:
        return {}
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    return json.loads(lines[-1]) if lines else {}


def _sample_options(spec: SampleSpec) -> list[str]:
    """`sagan sample`'s options for what a sample job asks besides n and seed (an interpolation: a PNG
    strip)."""
    values = {"--classes": spec.classes, "--per-class": spec.per_class, "--truncation": spec.truncation,
              "--interpolate": spec.interpolate, "--frames": spec.frames}
    return [part for option, value in values.items() if value is not None
            for part in (option, ",".join(map(str, value)) if isinstance(value, list) else str(value))]
