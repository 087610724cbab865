"""One attempt of one job: claim it, run its process tree, mirror its files to the store, settle it.

The loop polls instead of using threads: each pass uploads what the training wrote since the last
pass (sample grids, the newest checkpoint, then its commit marker, then the DB pointer), and every
heartbeat interval renews the lease, copies progress into the row and reads the cancel flag.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sagan_core import layout
from sagan_core.metrics.cache import INCEPTION_METRICS, StatsKey, stats_keys
from sagan_core.metrics.runs import best_eval, read_jsonl
from sagan_core.metrics.weights import resolve_inception_weights
from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.models import Job
from sagan_service.settings import Settings
from sagan_service.storage import (
    ArtifactNotFound,
    ArtifactStore,
    checkpoint_key,
    evals_key,
    log_key,
    metrics_key,
    open_store,
    sample_key,
    stats_key,
)

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 40


class LeaseLost(Exception):
    """The reaper gave the job away (this worker stalled): stop without touching the row."""


def run_job(job_id: str, settings: Settings) -> str | None:
    """Claim and run one attempt; return the final status, or None if there was nothing to do."""
    store = open_store(settings)  # before the claim: a misconfigured store must not strand a claimed job
    engine = make_engine(settings.database)
    session_factory = make_session_factory(engine)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        with session_factory() as session:
            job = jobs.claim_job(session, job_id=job_id, worker_id=worker_id,
                                 lease_seconds=settings.lease_seconds)
        if job is None:
            log.info("job %s is not queued (duplicate delivery or cancelled): nothing to do", job_id)
            return None
        workdir = settings.work_dir / job.id / f"attempt-{job.attempt}"
        try:
            return Attempt(job, settings, store, session_factory, worker_id, workdir).run()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        engine.dispose()


class Attempt:
    def __init__(self, job: Job, settings: Settings, store: ArtifactStore,
                 session_factory: sessionmaker[Session], worker_id: str, workdir: Path) -> None:
        self.job, self.settings, self.store = job, settings, store
        self.sessions, self.worker_id = session_factory, worker_id
        self.workdir, self.out = workdir, workdir / "out"
        self.log_path = workdir / f"attempt-{job.attempt}.log"
        self.uploaded_samples: dict[str, tuple[int, int]] = {}
        self.committed_step = job.resumed_from_step or 0
        self.committed_steps: set[int] = set()
        # Real-data statistics shared through the store (stats/<entry>): present ones are fetched before
        # the job starts, new ones stored as they appear.
        self.stats_dir = workdir / "stats"
        self.stored_stats: set[str] = set()
        self.metrics_size = self.evals_size = self.log_size = -1
        self.progress: dict[str, Any] = {}
        self.process: subprocess.Popen | None = None

    def run(self) -> str | None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            command = self.prepare()
            self.process = self.launch(command)
            status = self.supervise()
            error = None if status != "failed" else self.failure_reason()
        except LeaseLost:
            self.stop()
            log.warning("job %s: lease lost, leaving it to its new owner", self.job.id)
            return None
        except Exception as exc:  # any failure here must settle the row, not strand it "running"
            log.exception("job %s failed in the supervisor", self.job.id)
            self.stop()
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        try:
            self.upload_log()
        except Exception:  # the store may be what failed: the row must still be settled
            log.exception("job %s: could not upload the attempt's log", self.job.id)
        with self.sessions() as session:
            settled = jobs.finish_job(session, job_id=self.job.id, worker_id=self.worker_id, status=status,
                                      error=error, log_tail=self.log_tail() if status == "failed" else None,
                                      metrics=self.progress or None)
        if not settled:
            log.warning("job %s: lease lost before the end; its new owner settles it", self.job.id)
            return None
        log.info("job %s attempt %d: %s", self.job.id, self.job.attempt, status)
        return status

    # -- preparing and launching -------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Write the inputs into the work directory and return the command to run."""
        spec = self.job.spec
        self.fetch_stats()
        if self.job.kind == "eval":
            checkpoint = self.workdir / "model.pt"
            self.store.download(checkpoint_key(spec["job_id"], spec["step"]), checkpoint)
            return [sys.executable, "-m", "sagan_core.cli", "eval", "--checkpoint", str(checkpoint),
                    "--dataset", spec["dataset"], "--metrics", ",".join(spec["metrics"]), "-n", str(spec["n"]),
                    "--seed", str(spec["seed"]), "--evals", str(self.out / layout.EVALS),
                    "--stats-cache", str(self.stats_dir)]
        if self.job.kind == "sample":
            checkpoint = self.workdir / "model.pt"
            self.store.download(checkpoint_key(spec["job_id"], spec["step"]), checkpoint)
            return [sys.executable, "-m", "sagan_core.cli", "sample", "--checkpoint", str(checkpoint),
                    "-n", str(spec["n"]), "--seed", str(spec["seed"]), "-o", str(self.out / "grid.png")]
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(spec))
        trainer = ["-m", "sagan_core.train", "--config", str(config_path), "--out", str(self.out)]
        # One rank needs no rendezvous, and torchrun's launcher would add its own import of torch
        # (about 2 s on a small CPU) to every job's start.
        launcher = ([] if spec["nproc"] == 1 else
                    ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(spec["nproc"])])
        command = [sys.executable, *launcher, *trainer]
        if self.job.resumed_from_step is None:
            return command
        self.restore(self.job.resumed_from_step)
        return [*command, "--resume"]

    def restore(self, step: int) -> None:
        """Lay out the last committed checkpoint (and the metrics up to it) as the trainer left them."""
        checkpoint = layout.checkpoint_path(self.out, step)
        self.store.download(checkpoint_key(self.job.id, step), checkpoint)
        layout.point_latest(checkpoint)
        try:
            lines = self.store.get_bytes(metrics_key(self.job.id)).decode().splitlines()
        except LookupError:
            lines = []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        (self.out / layout.METRICS).write_text("".join(line + "\n" for line in kept))
        try:  # the evaluations up to it too, so the trainer's evals.jsonl goes on without a gap
            records = [json.loads(line) for line in self.store.get_bytes(evals_key(self.job.id)).decode().splitlines()
                       if line.strip()]
        except ArtifactNotFound:
            records = []
        (self.out / layout.EVALS).write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))

    def launch(self, command: list[str]) -> subprocess.Popen:
        env = {**os.environ, "SAGAN_STATS_CACHE": str(self.stats_dir)}
        if self.settings.inception_weights is not None:
            env["SAGAN_INCEPTION_WEIGHTS"] = str(self.settings.inception_weights)
        if self.settings.gpus is not None and "CUDA_VISIBLE_DEVICES" not in env:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(self.settings.gpus))
        guard = [sys.executable, "-m", "worker.guard", "--grace", str(self.settings.cancel_grace_seconds), "--"]
        with open(self.log_path, "ab") as log_file:
            # Its own session: the whole tree (guard, torchrun, ranks) is one process group to signal.
            return subprocess.Popen([*guard, *command], stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                    cwd=self.workdir)

    # -- supervising -------------------------------------------------------------------------

    def supervise(self) -> str:
        """Poll until the process tree exits or a cancel arrives; return the terminal status."""
        assert self.process is not None
        next_beat = 0.0
        while True:
            returncode = self.process.poll()
            self.sync(final=returncode is not None)
            if returncode is not None:
                self.stop()  # sweep up anything the tree left behind in its group
                return "succeeded" if returncode == 0 else "failed"
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.settings.heartbeat_seconds
                if self.beat().cancel_requested:
                    self.stop()
                    self.sync(final=True)
                    return "cancelled"
            time.sleep(self.settings.poll_seconds)

    def beat(self) -> jobs.Lease:
        # The lease first: uploads to a slow store must not let it lapse while training goes on.
        with self.sessions() as session:
            lease = jobs.heartbeat(session, job_id=self.job.id, worker_id=self.worker_id,
                                   lease_seconds=self.settings.lease_seconds,
                                   step=self.progress.get("step"), total_steps=self.progress.get("total_steps"),
                                   metrics=self.progress or None)
        if not lease.held:
            raise LeaseLost(self.job.id)
        self.upload_metrics()
        self.upload_evals()
        self.upload_log()
        return lease

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period; a no-op once it is gone."""
        if self.process is None:
            return
        group = self.process.pid
        if self.process.poll() is None:
            _signal_group(group, signal.SIGTERM)
            try:
                self.process.wait(self.settings.cancel_grace_seconds)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(group, signal.SIGKILL)
        self.process.wait()

    # -- mirroring files to the store --------------------------------------------------------

    def sync(self, *, final: bool) -> None:
        self.store_stats()
        if self.job.kind == "eval":
            if final:
                self.upload_evals()
            return
        if self.job.kind == "sample":
            grid = self.out / "grid.png"
            if final and grid.exists():
                self.store_sample(self.job.spec["step"], grid)
            return
        for path in layout.samples(self.out):
            stat = path.stat()
            if self.uploaded_samples.get(path.name) != (stat.st_mtime_ns, stat.st_size):
                self.store_sample(layout.step_of(path), path)
                self.uploaded_samples[path.name] = (stat.st_mtime_ns, stat.st_size)
        self.commit_latest_checkpoint()
        if final:
            self.upload_metrics()
            self.upload_evals()

    def store_sample(self, step: int, path: Path) -> None:
        key = sample_key(self.job.id, step)
        self.store.put_file(key, path)
        with self.sessions() as session:
            jobs.record_artifact(session, job_id=self.job.id, kind="sample", step=step, key=key)

    def commit_latest_checkpoint(self) -> None:
        try:
            checkpoint = layout.latest_checkpoint(self.out)
            if checkpoint is None or (step := layout.step_of(checkpoint)) <= self.committed_step:
                return
            # Metrics first, so a resumed attempt finds the series up to its checkpoint. Then the model
            # file, its commit marker, and the DB pointer: a reader never sees a partial checkpoint.
            self.upload_metrics()
            self.commit_checkpoint(step, checkpoint)
        except FileNotFoundError:
            return  # none yet, or the trainer pruned it meanwhile: the next one will do
        self.committed_step = step

    def commit_checkpoint(self, step: int, checkpoint: Path) -> None:
        key = self.store.commit_checkpoint(self.job.id, step, checkpoint)
        with self.sessions() as session:
            jobs.record_artifact(session, job_id=self.job.id, kind="checkpoint", step=step, key=key)
        self.committed_steps.add(step)

    def upload_metrics(self) -> None:
        path = self.out / layout.METRICS
        if self.job.kind != "train" or not path.exists() or path.stat().st_size == self.metrics_size:
            return
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # the trainer may be mid-line
        lines = complete.decode().splitlines()
        if lines:
            self.progress = json.loads(lines[-1])
        self.store.put_bytes(metrics_key(self.job.id), complete)
        self.metrics_size = len(complete)

    def upload_evals(self) -> None:
        """Store evals.jsonl and copy its newest and best records into the row; the best one's checkpoint (kept
        by the trainer through rotation) is committed first, so a job can always evaluate or sample "best"."""
        path = self.out / layout.EVALS
        if not path.exists() or path.stat().st_size == self.evals_size:
            return
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        self.store.put_bytes(evals_key(self.job.id), complete)
        self.evals_size = len(complete)
        records = read_jsonl(path)
        best = best_eval(records, self.job.spec.get("eval_metrics", ["swd"])) if self.job.kind == "train" else None
        if best is not None and best["step"] not in self.committed_steps:
            try:
                self.commit_checkpoint(best["step"], layout.checkpoint_path(self.out, best["step"]))
            except FileNotFoundError:  # its checkpoint is not written yet: the next pass records it
                best = None
        with self.sessions() as session:
            jobs.record_evals(session, job_id=self.job.id, worker_id=self.worker_id,
                              latest=records[-1] if records else None, best=best)

    def fetch_stats(self) -> None:
        """Lay out the store's cached real statistics for the evaluations this job will run."""
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        for key in self.stats_keys():
            try:
                self.store.download(stats_key(key.name), self.stats_dir / key.name)
                self.stored_stats.add(key.name)
            except ArtifactNotFound:
                pass

    def store_stats(self) -> None:
        """Store cache entries the job computed, for every later job on the same data."""
        if not self.stats_dir.is_dir():
            return
        for path in self.stats_dir.glob("*.npz"):
            if path.name not in self.stored_stats:
                self.store.put_file(stats_key(path.name), path)
                self.stored_stats.add(path.name)

    def stats_keys(self) -> list[StatsKey]:
        """The entries the job's evaluations read. A missing or wrong Inception weights file fails the job
        here, once, with the message that says what to do (InceptionWeightsError)."""
        spec = self.job.spec
        if self.job.kind == "eval":
            metrics, dataset, n = spec["metrics"], spec["dataset"], spec["n"]
        elif self.job.kind == "train" and spec.get("eval_every", 0) > 0:
            metrics, dataset, n = spec["eval_metrics"], spec["eval_dataset"] or spec["dataset"], spec["eval_n"]
        else:
            return []
        inception = None
        if set(metrics) & INCEPTION_METRICS:
            weights = resolve_inception_weights(self.settings.inception_weights)
            inception = (weights.backbone, weights.sha256)
        return list(stats_keys(metrics, dataset=dataset, imsize=spec["imsize"], center_crop=spec["center_crop"],
                               n=n, inception=inception).values())

    def upload_log(self) -> None:
        size = self.log_path.stat().st_size if self.log_path.exists() else -1
        if size != self.log_size:
            self.store.put_file(log_key(self.job.id, self.job.attempt), self.log_path)
            self.log_size = size  # only once stored, so a failed upload is tried again

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])

    def failure_reason(self) -> str:
        lines = [line for line in self.log_tail().splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error:" in line]
        assert self.process is not None
        return (errors or lines or [""])[-1].strip() or f"exit code {self.process.returncode}"


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass
