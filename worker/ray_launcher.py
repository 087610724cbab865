"""The `ray` launcher: a training job submitted to a Ray cluster's Jobs API, watched, stopped and read back.

The Celery worker keeps what it does for a local job (the claim, the lease, the cancel flag, settling the
row); the training runs on the cluster (worker/ray_job.py, worker/ray_rank.py), whose rank 0 stores the
artifacts. Same interface as LocalLauncher, so the supervisor (worker/supervisor.py) decides when, whichever
runs it.

- The submission id is the job's id and attempt: a second submission of one attempt is refused by Ray, so a
  redelivered message cannot start it twice. One that finished (a stopping worker handed the attempt back)
  is deleted first; a Ray job of an earlier attempt still running (its worker died) is stopped first.
- The log is Ray's job log, copied into the attempt's log file at heartbeats (every READ_EVERY_S at most, and
  once more when the Ray job ends); the progress is the last line of the metrics rank 0 stores, read as often.
- A stop is Ray's stop_job: SIGTERM to the driver, which has the ranks checkpoint; Ray kills it after
  RAY_JOB_STOP_WAIT_TIME_S, which is the worker's shutdown window here (Ray's default is 3 s).
- A Ray job lost without an exit status (its driver died with the head or its node), or a cluster that cannot
  be reached for SAGAN_DEPENDENCY_OUTAGE_SECONDS, is RunLost: the job is queued again (the attempt counts)
  and the next attempt resumes from the last stored checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.job_submission import JobStatus, JobSubmissionClient

from sagan_core.exits import EXIT_STOPPED
from sagan_service.models import Job
from sagan_service.settings import Settings
from sagan_service.storage import ArtifactNotFound, ArtifactStore, StoreUnavailable, metrics_key

from .launcher import RunLost
from .outbox import LOG_SECONDS

log = logging.getLogger(__name__)
# Ray's log lines carry ANSI colours around each worker's "(RayTrainWorker pid=N)" prefix.
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The settings a rank needs to reach what the worker reaches; machine-local ones (home, data roots, caches,
# GPUs) stay the Ray node's own.
PASSED_SETTINGS = ("database_url", "artifacts_url", "s3_endpoint_url", "s3_max_attempts", "heartbeat_seconds",
                   "poll_seconds", "statement_timeout_seconds", "dependency_outage_seconds", "max_attempts",
                   "ray_placement_timeout_seconds", "log_format")
# How often the supervisor's poll asks Ray for the job's status: each answer costs the head's dashboard (on
# the training's own cores, where the head is a node) a request; a waitpid costs the local launcher nothing.
STATUS_EVERY_S = 2.0
# How often a heartbeat copies Ray's log of the job and reads the stored metrics, at most: a copy fetches the
# whole log from the dashboard and a read the whole metrics file from the store, in the heartbeat's own time,
# so a slow dashboard or store delays the lease's renewal. The outbox stores the log this often anyway.
READ_EVERY_S = LOG_SECONDS
PASSED_ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


def submission_id(job: Job) -> str:
    return f"sagan-{job.id}-{job.attempt}"


def ray_environment(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The environment of the Ray job: the worker's settings that reach the database and the store, its store
    credentials, and Ray's stop wait raised to the worker's shutdown window."""
    env = {f"SAGAN_{name.upper()}": str(value) for name in PASSED_SETTINGS
           if (value := getattr(settings, name)) is not None}
    env |= {name: environ[name] for name in PASSED_ENVIRONMENT if name in environ}
    env["RAY_JOB_STOP_WAIT_TIME_S"] = str(int(max(settings.shutdown_seconds, settings.cancel_grace_seconds)))
    return env


class RayLauncher:
    def __init__(self, client: JobSubmissionClient, job: Job, settings: Settings, store: ArtifactStore,
                 log_path: Path) -> None:
        self.client, self.job, self.settings, self.store = client, job, settings, store
        self.submission_id = submission_id(job)
        self.log_path = log_path
        # An attempt handed back and run again appends to its log: Ray's log of this run goes after that.
        self.log_prefix = log_path.read_bytes() if log_path.exists() else b""
        self.returncode: int | None = None
        self.stop_asked = False
        self.unreachable_since: float | None = None
        self.status_asked_at = -STATUS_EVERY_S
        self.read_at = -READ_EVERY_S
        self.metrics: dict[str, Any] = {}

    @classmethod
    def start(cls, job: Job, *, settings: Settings, store: ArtifactStore, worker_id: str, log_path: Path,
              environ: dict[str, str]) -> RayLauncher:
        assert settings.ray_address is not None
        launcher = cls(JobSubmissionClient(settings.ray_address), job, settings, store, log_path)
        launcher._clear_the_way()
        launcher.client.submit_job(
            entrypoint=(f"python -m worker.ray_job --job-id {job.id} --worker-id {worker_id} "
                        f"--stop-switch {launcher.submission_id}"),
            submission_id=launcher.submission_id,
                                   runtime_env={"env_vars": ray_environment(settings, environ)},
            metadata={"sagan_job": job.id, "attempt": str(job.attempt)})
        log.info("job %s: submitted to Ray at %s as %s", job.id, settings.ray_address, launcher.submission_id)
        return launcher

    def _clear_the_way(self) -> None:
        """Stop the Ray jobs of this job's earlier attempts that still run; delete this attempt's finished
        one."""
        prefix = f"sagan-{self.job.id}-"
        for info in self.client.list_jobs():
            submission_id = info.submission_id
            if submission_id is None or not submission_id.startswith(prefix):
                continue
            if submission_id != self.submission_id and not info.status.is_terminal():
                log.warning("job %s: stopping Ray job %s of an earlier attempt", self.job.id, submission_id)
                self.client.stop_job(submission_id)
                self._wait_terminal(submission_id)
            elif submission_id == self.submission_id and info.status.is_terminal():
                self.client.delete_job(submission_id)

    def _wait_terminal(self, sid: str, wait: Callable[[float], object] = time.sleep) -> JobStatus:
        """Until Ray says the job ended: at most its stop wait (RAY_JOB_STOP_WAIT_TIME_S) and a margin."""
        deadline = time.monotonic() + self.settings.shutdown_seconds + self.settings.cancel_grace_seconds + 30
        while not (status := self.client.get_job_status(sid)).is_terminal() and time.monotonic() < deadline:
            wait(self.settings.poll_seconds)
        return status

    def poll(self) -> int | None:
        """The exit status once the Ray job ended (STOPPED: stopped with a checkpoint), else None; RunLost if
        it was lost."""
        if self.returncode is not None:
            return self.returncode
        if time.monotonic() - self.status_asked_at < STATUS_EVERY_S:
            return None
        self.status_asked_at = time.monotonic()
        status = self._reachable(lambda: self.client.get_job_status(self.submission_id))
        if status is None or not status.is_terminal():
            return None
        return self._ended(status)

    def _ended(self, status: JobStatus) -> int:
        """Keep the ended Ray job's last log lines, last metrics and exit status; RunLost if it was lost."""
        self._read()
        info = self.client.get_job_info(self.submission_id)
        code = info.driver_exit_code
        if status == JobStatus.SUCCEEDED:
            self.returncode = 0
        elif status == JobStatus.STOPPED:
            self.returncode = EXIT_STOPPED
        # No exit status: its driver was gone with its head or node; a negative one, or a shell's 128 + N:
        # killed by a signal that was not our stop (the OOM killer, a node shut down). The trainer's own are
        # 0-127.
        elif code is None or not 0 <= code < 128:
            self.returncode = -1
            reason = (info.message or "").split(", last available logs")[0]
            raise RunLost(f"the Ray job {self.submission_id} was lost ({reason})")
        else:
            self.returncode = code or 1
        return self.returncode

    def _reachable(self, call: Any) -> Any:
        """call(), or None while the cluster does not answer, up to the outage window (then RunLost)."""
        try:
            result = call()
        except Exception as error:
            now = time.monotonic()
            self.unreachable_since = self.unreachable_since or now
            if now - self.unreachable_since > self.settings.dependency_outage_seconds:
                raise RunLost(f"the Ray cluster at {self.settings.ray_address} did not answer for "
                                     f"{self.settings.dependency_outage_seconds:g} s: {error}") from error
            log.warning("job %s: Ray at %s did not answer: %s", self.job.id, self.settings.ray_address, error)
            return None
        self.unreachable_since = None
        return result

    def refresh(self) -> None:
        """At a heartbeat: copy Ray's log of the job into the attempt's log file and read the latest metrics,
        if READ_EVERY_S went by since the last time."""
        if time.monotonic() - self.read_at >= READ_EVERY_S:
            self._read()

    def _read(self) -> None:
        self.read_at = time.monotonic()
        logs = self._reachable(lambda: self.client.get_job_logs(self.submission_id))
        if logs is not None:
            self.log_path.write_bytes(self.log_prefix + ANSI.sub("", logs).encode())
        self.metrics = self._read_metrics() or self.metrics

    def latest_metrics(self) -> dict[str, Any]:
        """The last line of the metrics rank 0 stored, as the last refresh() read it, or {}."""
        return self.metrics

    def _read_metrics(self) -> dict[str, Any]:
        try:
            data = self.store.get_bytes(metrics_key(self.job.id))
        except (ArtifactNotFound, StoreUnavailable):  # none yet, or the store is away: the next read
            return {}
        lines = data.splitlines()
        return json.loads(lines[-1]) if lines else {}

    def ask_to_stop(self) -> None:
        """Have the ranks checkpoint and stop (once: the driver then has the stop wait to end)."""
        if not self.stop_asked:
            self.stop_asked = self._reachable(lambda: self.client.stop_job(self.submission_id)) is not None

    def stop(self, wait: Callable[[float], object] = time.sleep) -> None:
        """Stop the Ray job and wait until Ray says it ended: its checkpoint stored, its actors gone."""
        if self.returncode is not None:
            return
        self.ask_to_stop()
        status = self._reachable(lambda: self._wait_terminal(self.submission_id, wait))
        if status is not None and status.is_terminal():
            with contextlib.suppress(RunLost):  # it ended: how, poll says (a stop is no place to raise)
                self._ended(status)
