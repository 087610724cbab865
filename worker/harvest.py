"""A training's run directory and the store: what it is given before it starts, and what is taken from it.

Before: the last committed checkpoint with the metrics and evaluations up to it (a resumed attempt goes on
without a gap), or a continued job's source checkpoint (which it resumes from as from its own), and the
real-data statistics its evaluations read. While it runs: every new sample grid and
checkpoint, handed to the outbox (worker/outbox.py) that stores them in order. The supervisor does both beside
a local training; a Ray job's rank 0 does them itself (worker/ray_rank.py), on whatever machine it runs.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sagan_core import layout
from sagan_core.config import TrainConfig
from sagan_core.metrics.cache import INCEPTION_METRICS, StatsKey, stats_keys
from sagan_core.metrics.weights import resolve_inception_weights
from sagan_service.jobspec import EvalSpec, JobSpec
from sagan_service.models import Job
from sagan_service.storage import (
    ArtifactNotFound,
    ArtifactStore,
    checkpoint_key,
    evals_key,
    metrics_key,
    stats_key,
)

from .outbox import Outbox

T = TypeVar("T")
# A store call wrapped so that an unreachable store is waited out (Attempt.from_store, or a rank's retry).
Fetch = Callable[[Callable[[], T]], T]


def starting_checkpoint(job: Job, own_step: int | None) -> tuple[str, int] | None:
    """(job id, step) of the committed checkpoint an attempt of `job` starts from: its own at `own_step`, or,
    for a continued job without one of its own yet, its source's (jobs.continued_from); None: from scratch."""
    if own_step is not None:
        return job.id, own_step
    if job.continued_from_step is None:
        return None
    if job.continued_from is None:  # the row's foreign key was cleared: its source job is gone
        raise ValueError(f"the job this one continues (from its step {job.continued_from_step}) no longer "
                         "exists")
    return job.continued_from, job.continued_from_step


def restore_run(store: ArtifactStore, fetch: Fetch, job_id: str, step: int, out: Path, *,
                series: bool = True) -> None:
    """Lay out the job's committed checkpoint at `step` in `out` as the trainer left it and, with `series`
    (the rank that writes them), the metrics and evaluations up to it, so its files go on without a gap."""
    checkpoint = layout.checkpoint_path(out, step)
    fetch(lambda: store.download(checkpoint_key(job_id, step), checkpoint))
    layout.point_latest(checkpoint)
    layout.mark_taken(checkpoint)  # it is in the store already
    if not series:
        return
    for key, name in ((metrics_key(job_id), layout.METRICS), (evals_key(job_id), layout.EVALS)):
        try:
            lines = fetch(functools.partial(store.get_bytes, key)).decode().splitlines()
        except LookupError:
            lines = []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        (out / name).write_text("".join(line + "\n" for line in kept))


def evaluation_stats(spec: JobSpec, inception_weights: Path | None) -> list[StatsKey]:
    """The real-statistics cache entries a job's evaluations read. A missing or wrong Inception weights file
    fails the job here, once, with the message that says what to do (InceptionWeightsError)."""
    if isinstance(spec, EvalSpec):
        metrics, dataset, n = spec.metrics, spec.dataset, spec.n
        stream = "held-out"  # `sagan eval`'s default
    elif isinstance(spec, TrainConfig) and spec.eval_every > 0:
        metrics, dataset, n = spec.eval_metrics, spec.eval_dataset or spec.dataset, spec.eval_n
        stream = "selection"
    else:
        return []
    inception = None
    if set(metrics) & INCEPTION_METRICS:
        weights = resolve_inception_weights(inception_weights)
        inception = (weights.backbone, weights.sha256)
    return list(stats_keys(list(metrics), dataset=dataset, imsize=spec.imsize, center_crop=spec.center_crop,
                           resize_mode=spec.resize_mode, n=n, inception=inception, stream=stream).values())


def fetch_stats(store: ArtifactStore, fetch: Fetch, entries: list[StatsKey], stats_dir: Path) -> None:
    """Lay out the store's cached real statistics (those it has) in `stats_dir`."""
    stats_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        with contextlib.suppress(ArtifactNotFound):
            fetch(functools.partial(store.download, stats_key(entry.name), stats_dir / entry.name))


class Harvester:
    """Hands each new file of a training's run directory to the outbox once it is complete: the real-data grid
    (written once), every sample grid (again when rewritten) and every checkpoint past the last one taken."""

    def __init__(self, out: Path, outbox: Outbox, resumed_from_step: int | None) -> None:
        self.out, self.outbox = out, outbox
        self.sample_versions: dict[str, tuple[int, int]] = {}
        self.real_grid_taken = False
        self.taken_step = resumed_from_step or 0  # the newest checkpoint handed to the outbox

    def take_new_files(self) -> None:
        real_grid = layout.real_grid_path(self.out)
        if not self.real_grid_taken and real_grid.exists():  # written once, atomically, at the start
            self.outbox.add("real", 0, real_grid)
            self.real_grid_taken = True
        for path in layout.samples(self.out):
            stat = path.stat()
            if self.sample_versions.get(path.name) != (stat.st_mtime_ns, stat.st_size):
                self.outbox.add("sample", layout.step_of(path), path)
                self.sample_versions[path.name] = (stat.st_mtime_ns, stat.st_size)
        for path in layout.checkpoints(self.out):  # complete files only: the trainer renames them in
            if (step := layout.step_of(path)) > self.taken_step:
                self.outbox.add("checkpoint", step, path)
                layout.mark_taken(path)  # now the trainer may rotate its copy away
                self.taken_step = step
