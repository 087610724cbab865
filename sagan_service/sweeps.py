"""A sweep's comparison report from its children's stored files: built with sagan_core.report, stored
under the sweep's id once the sweep has finished.

Who builds it: the worker that finishes a sweep's last child, right after settling it (the child's files
are all stored by then), so a finished sweep's report is in the store without anyone asking; and the API
on GET /jobs/{id}/report when it is not there, because a sweep can also finish without a worker (its last
children cancelled while queued, or failed by the reaper after their worker died). Both write the same
keys; the page goes last, so its presence means the figure is there too. A running sweep's report is
built on request from the children so far and not stored.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sagan_core.layout import sweep_run_name
from sagan_core.studies import STUDIES

from . import jobs
from .jobspec import read_spec
from .models import TERMINAL, Job
from .storage import (
    ArtifactNotFound,
    ArtifactStore,
    evals_key,
    metrics_key,
    real_grid_key,
    report_figure_key,
    report_key,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from sagan_core.report import RunRecord


class NoRunsYet(LookupError):
    """No child of the sweep has written metrics yet: nothing to compare."""


def sweep_report(session: Session, store: ArtifactStore, sweep: Job) -> bytes:
    """The sweep's report page: the stored one, else built (and stored if the sweep has finished)."""
    if sweep.kind != "sweep":
        raise jobs.JobConflict(f"job {sweep.id} is a {sweep.kind} job; only sweeps have reports")
    finished = sweep.status in TERMINAL
    if finished:
        try:
            return store.get_bytes(report_key(sweep.id))
        except ArtifactNotFound:
            pass
    page, figure = build_sweep_report(session, store, sweep)
    if finished:
        store.put_bytes(report_figure_key(sweep.id), figure)
        store.put_bytes(report_key(sweep.id), page)
    return page


def store_report_if_finished(session: Session, store: ArtifactStore, *, sweep_id: str) -> bool:
    """Build and store a finished sweep's report unless it is stored already; True if it was built now."""
    sweep = jobs.get_job(session, sweep_id)
    if sweep.status not in TERMINAL or store.exists(report_key(sweep_id)):
        return False
    try:
        sweep_report(session, store, sweep)
    except NoRunsYet:  # cancelled before any child trained: nothing to report
        return False
    return True


def build_sweep_report(session: Session, store: ArtifactStore, sweep: Job) -> tuple[bytes, bytes]:
    """(HTML page, summary PNG) of the children that have metrics."""
    from sagan_core.report import build_report

    children = jobs.sweep_children(session, job_id=sweep.id)
    runs = [run for child in children if (run := _run_record(session, store, child)) is not None]
    if not runs:
        raise NoRunsYet(f"no child of sweep {sweep.id} has trained yet")
    study = STUDIES.get(read_spec("sweep", sweep.spec).study or "")
    title = f"{study.name} study: sweep {sweep.id}" if study else f"sweep {sweep.id}"
    done = sum(child.status in TERMINAL for child in children)
    status = f"Sweep {sweep.status}: {done} of {len(children)} runs finished"
    if sweep.status not in TERMINAL:
        status += " (this page shows them as they are now)"
    question = f"{study.question} {status}." if study else f"{status}."
    page, figure = build_report(runs, title=title, question=question)
    return page.encode(), figure


def _run_record(session: Session, store: ArtifactStore, child: Job) -> RunRecord | None:
    """A child as the report reads it (its config is its spec), or None before its first metrics line."""
    from sagan_core.report import RunRecord

    metrics = _jsonl(store, metrics_key(child.id))
    if not metrics:
        return None
    grids = jobs.list_artifacts(session, job_id=child.id, kind="sample")
    last = grids[-1] if grids else None
    seed = read_spec("train", child.spec).seed
    return RunRecord(name=sweep_run_name(child.arm or child.id, seed), config=child.spec,
                     metrics=metrics, evals=_jsonl(store, evals_key(child.id)),
                     final_grid=_bytes(store, last.key) if last else None,
                     final_grid_step=last.step if last else None,
                     real_grid=_bytes(store, real_grid_key(child.id)))


def _jsonl(store: ArtifactStore, key: str) -> list[dict]:
    data = _bytes(store, key)
    return [] if data is None else [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def _bytes(store: ArtifactStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ArtifactNotFound:
        return None
