"""A training job as an MLflow run, when SAGAN_MLFLOW_TRACKING_URI is set (the `mlflow` extra).

The run: the config as params, every metrics.jsonl number by step (named as the TensorBoard tags,
sagan_core.tensorboard_log), the sample grids as artifacts under `samples/`, and links to the committed
checkpoints in the store as tags (`sagan.checkpoint.latest`, `sagan.checkpoint.best`); when the job ends, its
status. A sweep's child is nested under a run of the sweep (tag mlflow.parentRunId).

Fed by what the outbox sees (the run directory, the checkpoints it commits), in a thread of its own: MLflow
never holds up storing the artifacts, and an MLflow that cannot be reached only logs a warning and is tried
again every few seconds, its cursor kept, so nothing is lost or sent twice. The cursor is in the run too
(tag `sagan.synced_step`), and runs are found by the job's id (tag `sagan.job_id`): a resumed attempt, on any
worker, continues the same run after the last step it holds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sagan_core import layout
from sagan_core.config import TrainConfig
from sagan_core.metrics.runs import best_eval, read_jsonl
from sagan_core.tensorboard_log import record_scalars
from sagan_service.logs import JOB_ID
from sagan_service.models import Job
from sagan_service.settings import Settings
from sagan_service.storage import checkpoint_key

log = logging.getLogger(__name__)

JOB_TAG = "sagan.job_id"
SYNCED_TAG = "sagan.synced_step"  # the last step whose numbers the run holds, all of them
LATEST_TAG, BEST_TAG = "sagan.checkpoint.latest", "sagan.checkpoint.best"
RUN_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
METRICS_PER_BATCH, PARAMS_PER_BATCH = 1000, 100  # MLflow's limits per log_batch
FINAL_TRIES = 3  # at the end of the attempt, before giving up on what is left
# Defaults for the MLflow client: no retries of its own (they wait minutes, and urllib3 logs a warning for
# each), since this module tries again anyway, with its cursor; a short timeout.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class MlflowSync:
    """One training attempt's copy into its MLflow run; `close()` sends the rest and the job's status."""

    def __init__(self, job: Job, spec: TrainConfig, settings: Settings, sessions: sessionmaker[Session],
                 run_dir: Path) -> None:
        assert settings.mlflow_tracking_uri is not None
        self.uri, self.experiment = settings.mlflow_tracking_uri, settings.mlflow_experiment
        self.job_id, self.parent_id, self.sessions, self.run_dir = job.id, job.parent_id, sessions, run_dir
        self.run_name = layout.sweep_run_name(job.arm, spec.seed) if job.arm is not None else job.id
        self.params = {name: value if isinstance(value, str) else json.dumps(value)
                       for name, value in spec.to_dict().items()}
        self.total_steps, self.eval_metrics = spec.steps, spec.eval_metrics
        self.resumed_from_step = job.resumed_from_step or 0
        self.store_root = settings.artifacts.rstrip("/")
        self.interval = settings.heartbeat_seconds
        self.client: Any = None
        self.run_id = self.parent_run_id = None
        self.synced_step = -1
        self.sent_grids: dict[str, tuple[int, int]] = {}
        self.tags: dict[str, str] = {}
        self.committed: dict[int, str] = {}  # step -> store key, this attempt's
        self.lock = threading.Lock()
        self.wake, self.closing = threading.Event(), threading.Event()
        self.failing = False
        for name, value in CLIENT_ENV.items():
            os.environ.setdefault(name, value)
        self.thread = threading.Thread(target=self._run, name=f"mlflow-{job.id}", daemon=True)
        self.thread.start()

    def checkpoint_committed(self, step: int, key: str) -> None:
        with self.lock:
            self.committed[step] = key
        self.wake.set()

    def close(self) -> None:
        self.closing.set()
        self.wake.set()
        self.thread.join(timeout=FINAL_TRIES * (self.interval + 30))

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        JOB_ID.set(self.job_id)
        while not self.closing.is_set():
            self._attempt(final=False)
            self.wake.wait(self.interval)
            self.wake.clear()
        for _ in range(FINAL_TRIES):
            if self._attempt(final=True):
                return
            threading.Event().wait(self.interval)
        log.warning("job %s: gave up sending the rest to MLflow at %s", self.job_id, self.uri)

    def _attempt(self, *, final: bool) -> bool:
        try:
            self._sync(final=final)
        except Exception as error:  # noqa: BLE001 (never into the job: MLflow holds a copy)
            if not self.failing:
                log.warning("job %s: MLflow at %s: %s; trying again", self.job_id, self.uri,
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
            self.failing = True
            return False
        if self.failing:
            log.info("job %s: MLflow at %s reachable again", self.job_id, self.uri)
        self.failing = False
        return True

    def _sync(self, *, final: bool) -> None:
        if self.run_id is None:
            self._open_run()
        self._send_metrics(final=final)
        self._send_grids()
        self._link_checkpoints()
        if final:
            self._end_runs()

    def _open_run(self) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment)
        parent = None
        if self.parent_id is not None:
            parent = _find_or_create(client, experiment_id, self.parent_id, f"sweep-{self.parent_id}", {})
        nested = {"mlflow.parentRunId": parent.info.run_id} if parent else {}
        run = _find_or_create(client, experiment_id, self.job_id, self.run_name, nested)
        params = [Param(name, value) for name, value in self.params.items()]
        for first in range(0, len(params), PARAMS_PER_BATCH):  # the same values again on a resumed attempt
            client.log_batch(run.info.run_id, params=params[first:first + PARAMS_PER_BATCH])
        self.synced_step = int(run.data.tags.get(SYNCED_TAG, -1))
        self.tags = dict(run.data.tags)
        self.client, self.run_id = client, run.info.run_id
        self.parent_run_id = parent.info.run_id if parent else None

    def _send_metrics(self, *, final: bool) -> None:
        """The steps past the cursor; the newest step only at the end (an evaluation's line and the training
        line of one step must go together, or the cursor would skip one)."""
        from mlflow.entities import Metric, RunTag

        records = [record for record in read_jsonl(self.run_dir / layout.METRICS)
                   if record["step"] > self.synced_step]
        if not final and records:
            newest = records[-1]["step"]
            records = [record for record in records if record["step"] < newest]
        batch: list[Metric] = []
        for index, record in enumerate(records):
            time_ms = int(record.get("time", 0) * 1000)
            batch += [Metric(tag, float(value), time_ms, record["step"])
                      for tag, value in record_scalars(record).items() if value is not None]
            step_ends = index + 1 == len(records) or records[index + 1]["step"] != record["step"]
            if step_ends and (len(batch) > METRICS_PER_BATCH - 100 or index + 1 == len(records)):
                for first in range(0, len(batch), METRICS_PER_BATCH):  # the tag goes with the last part
                    part = batch[first:first + METRICS_PER_BATCH]
                    last = first + METRICS_PER_BATCH >= len(batch)
                    self.client.log_batch(self.run_id, metrics=part,
                                          tags=[RunTag(SYNCED_TAG, str(record["step"]))] if last else [])
                self.synced_step, batch = record["step"], []

    def _send_grids(self) -> None:
        grids = [layout.real_grid_path(self.run_dir), *layout.samples(self.run_dir)]
        for path in grids:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self.sent_grids.get(path.name) != (stat.st_mtime_ns, stat.st_size):
                self.client.log_artifact(self.run_id, str(path), artifact_path="samples")
                self.sent_grids[path.name] = (stat.st_mtime_ns, stat.st_size)

    def _link_checkpoints(self) -> None:
        """Tags with the store's address of the newest committed checkpoint and of the best evaluation's."""
        with self.lock:
            committed = dict(self.committed)
        wanted = {}
        if committed:
            wanted[LATEST_TAG] = self._store_uri(committed[max(committed)])
        best = best_eval(read_jsonl(self.run_dir / layout.EVALS), self.eval_metrics)
        if best is not None and (best["step"] in committed or best["step"] <= self.resumed_from_step):
            key = committed.get(best["step"]) or checkpoint_key(self.job_id, best["step"])
            wanted[BEST_TAG] = self._store_uri(key)
        for name, value in wanted.items():
            if self.tags.get(name) != value:
                self.client.set_tag(self.run_id, name, value)
                self.tags[name] = value

    def _end_runs(self) -> None:
        """The run's status once the job has one (a lost attempt's job is queued again: its run goes on); the
        sweep's run's once the sweep has ended."""
        with self.sessions() as session:
            status = session.get_one(Job, self.job_id).status
            parent_status = session.get_one(Job, self.parent_id).status if self.parent_id else None
        if status in RUN_STATUS:
            self.client.set_terminated(self.run_id, RUN_STATUS[status])
        if self.parent_run_id is not None and parent_status in RUN_STATUS:
            self.client.set_terminated(self.parent_run_id, RUN_STATUS[parent_status])

    def _store_uri(self, key: str) -> str:
        return f"{self.store_root}/{key}"


def _find_or_create(client: Any, experiment_id: str, job_id: str, name: str, tags: dict[str, str]) -> Any:
    found = client.search_runs([experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{job_id}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0]
    return client.create_run(experiment_id, tags={JOB_TAG: job_id, **tags}, run_name=name)


def mlflow_sync(job: Job, spec: Any, settings: Settings, sessions: sessionmaker[Session],
                run_dir: Path) -> MlflowSync | None:
    """The job's MLflow copy: a training job's, when a tracking server is set; else None."""
    if settings.mlflow_tracking_uri is None or not isinstance(spec, TrainConfig):
        return None
    return MlflowSync(job, spec, settings, sessions, run_dir)
