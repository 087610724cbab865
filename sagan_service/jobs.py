"""Every job state transition, in one place: the API, the worker's supervisor and the reaper call these.

    queued --claim--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled
    queued --the message could not be sent--> failed (its idempotency key freed for the retry)
    running --lease expired (reaper)--> queued (attempt < max_attempts) | failed | cancelled
    running --hand back (its worker is stopping)--> queued (the attempt does not count) | cancelled

A sweep is a parent job that never runs itself: it is created with one queued `train` child per arm and
seed (parent_id, arm), and its status is derived from theirs (derive_sweep_status), stored again after
every transition of a child and on every reaper pass:

    queued (no child started) --> running (a child started, not all finished)
        --> succeeded (all succeeded) | failed (any failed) | cancelled (the sweep or a child was cancelled)
    cancel: every queued child is cancelled at once, every running one flagged (as request_cancel does)

Changes that race (claim, heartbeat, cancel, finish, reap) are conditional UPDATEs: the WHERE clause states
what the caller believes, and a row count of 0 means someone else got there first, so a duplicate
Celery delivery or a worker that lost its lease becomes a no-op instead of a second run.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, overload

from sqlalchemy import Executable, bindparam, case, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.selectable import ScalarSelect

from sagan_core.config import TrainConfig

from .db import rows_matched, run_and_commit
from .jobspec import JobSpec, SweepSpec, read_spec
from .models import TERMINAL, Artifact, Job, new_job_id, utcnow
from .webhooks import record_status_changes

log = logging.getLogger(__name__)
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class JobNotFound(LookupError):
    """No job has this id."""


class JobConflict(Exception):
    """The job exists but its state forbids the request; the message says why."""


@dataclass(frozen=True)
class Lease:
    """What a heartbeat learns: whether this worker still owns the job and whether to stop it."""

    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class OwnerLimits:
    """SAGAN_MAX_QUEUED_PER_OWNER and SAGAN_MAX_RUNNING_PER_OWNER, as create_job and create_sweep check
    them."""

    max_queued: int
    max_running: int


class OverLimit(Exception):
    """Admitting `adding` more jobs would take `owner` past a limit; `queued` and `running` are theirs now."""

    def __init__(self, owner: str, *, queued: int, running: int, adding: int, limits: OwnerLimits) -> None:
        super().__init__(f"{owner}: {queued} queued, {running} running, {adding} more asked")
        self.owner, self.queued, self.running = owner, queued, running
        self.adding, self.limits = adding, limits


def create_job(session: Session, *, kind: str, spec: JobSpec, queue: str, max_attempts: int,
               priority: int = 1, idempotency_key: str | None = None, owner: str = "local",
               limits: OwnerLimits | None = None, notify: Sequence[str] = (),
               continued_from: tuple[str, int] | None = None) -> tuple[Job, bool]:
    """Insert a queued job (its spec stored as spec.to_dict(), sagan_service.jobspec); with an idempotency key
    already used, return that job and False instead. `continued_from`: (job id, step) of the committed
    checkpoint a train job continues from.
    With `limits`, OverLimit instead while the owner is at one of them (a replay too: a client retrying at
    its limit waits like any other); the check and the insert are exact under concurrent POSTs.

    Keys are per owner (stored as owner and the key's hash, which fit the column), so no owner is
    handed another's job for a key they both chose."""
    key = _owned_key(owner, idempotency_key) if idempotency_key is not None else None
    if (existing := _job_with_key(session, key)) is not None:
        if limits is not None:
            _check_limits(owner, active_counts(session, owner=owner, up_to=_up_to(limits)), 1, limits)
        return existing, False
    now = utcnow()
    values = {"id": new_job_id(), "kind": kind, "spec": spec.to_dict(), "queue": queue,
              "max_attempts": max_attempts,
              "priority": priority, "status": "queued", "owner": owner, "idempotency_key": key, "attempt": 0,
              "step": 0,
              "cancel_requested": False, "total_steps": spec.steps if isinstance(spec, TrainConfig) else None,
              "notify": list(notify) or None,
              "continued_from": continued_from and continued_from[0],
              "continued_from_step": continued_from and continued_from[1],
              "dispatched_at": now,  # the caller sends it next
              "created_at": now, "updated_at": now}
    admission = limits or OwnerLimits(max_queued=_NO_LIMIT, max_running=_NO_LIMIT)
    statements = [*_lock_admissions(session, owner),
                  (_ACTIVE_COUNTS, {"owner": owner, "up_to": _up_to(admission)}),
                  (_INSERT_ADMITTED, {**values, "adding": 1, "up_to": _up_to(admission),
                                      "max_queued": admission.max_queued,
                                      "max_running": admission.max_running})]
    try:
        *_, counts, inserted = run_and_commit(session, statements)
    # two retries of the same POST raced past the key lookup: the unique key picked one
    except IntegrityError:
        session.rollback()
        if (existing := _job_with_key(session, key)) is None:
            raise
        return existing, False
    if not inserted:
        (queued, running), = counts
        raise OverLimit(owner, queued=queued, running=running, adding=1, limits=admission)
    return Job(**values), True


def create_sweep(session: Session, *, spec: SweepSpec, children: Sequence[tuple[str, TrainConfig, str]],
                 max_attempts: int, priority: int = 1, idempotency_key: str | None = None,
                 owner: str = "local",
                 limits: OwnerLimits | None = None, notify: Sequence[str] = ()) -> tuple[Job, bool]:
    """Insert a sweep and its queued children, (arm, TrainConfig, queue) each, all the owner's, in one
    transaction; with an idempotency key already used, return that job and False instead. With `limits`,
    OverLimit instead while the children would take the owner past one (checked as create_job does). The
    caller sends the children."""
    if limits is not None:
        hold_admissions(session, owner=owner)  # until the insert commits
        _check_limits(owner, active_counts(session, owner=owner, up_to=_up_to(limits)), len(children), limits)
    key = _owned_key(owner, idempotency_key) if idempotency_key is not None else None
    if (existing := _job_with_key(session, key)) is not None:
        session.rollback()
        return existing, False
    now = utcnow()
    # Never sent to a queue: dispatched_at stays null and claim_job / take_stale_queued skip sweeps.
    sweep = Job(id=new_job_id(), kind="sweep", spec=spec.to_dict(), queue="default",
                max_attempts=max_attempts,
                priority=priority, status="queued", owner=owner, idempotency_key=key, attempt=0, step=0,
                cancel_requested=False, total_steps=sum(child.steps for _, child, _ in children),
                notify=list(notify) or None)
    # Ids made in one millisecond are not ordered: sorted, they list (and queue) the children in arm order.
    ids = sorted(new_job_id() for _ in children)
    members = [Job(id=job_id, kind="train", spec=child.to_dict(), queue=queue, max_attempts=max_attempts,
                   priority=priority, status="queued", owner=owner, parent_id=sweep.id, arm=arm, attempt=0,
                   step=0, cancel_requested=False, total_steps=child.steps, dispatched_at=now)
               for job_id, (arm, child, queue) in zip(ids, children, strict=True)]
    return _insert_once(session, [sweep, *members], key)


def _owned_key(owner: str, idempotency_key: str) -> str:
    return f"{owner}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"


def _job_with_key(session: Session, key: str | None) -> Job | None:
    return None if key is None else session.scalar(select(Job).where(Job.idempotency_key == key))


def _insert_once(session: Session, rows: list[Job], key: str | None) -> tuple[Job, bool]:
    """Commit the new rows (the first is the job asked for) and return it with True; if two retries of the
    same POST raced past the key lookup, the unique key picks the winner, returned with False."""
    session.add_all(rows)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _job_with_key(session, key)
        if existing is None:
            raise
        return existing, False
    return rows[0], True


def sweep_children(session: Session, *, job_id: str) -> list[Job]:
    """A sweep's children in the order they were created (arm by arm, seed by seed)."""
    return list(session.scalars(select(Job).where(Job.parent_id == job_id).order_by(Job.id)))


def continuations(session: Session, *, job_id: str, owner: str | None = None) -> list[str]:
    """The ids of the jobs that continue job `job_id`'s training (POST /jobs/{id}/continue), oldest first;
    with `owner`, only that owner's."""
    query = select(Job.id).where(Job.continued_from == job_id).order_by(Job.id)
    return list(session.scalars(query if owner is None else query.where(Job.owner == owner)))


def derive_sweep_status(children: Iterable[str], *, started: bool, cancel_requested: bool) -> str:
    """A sweep's status from its children's statuses: queued until one started (`started`), running until
    all finished, then cancelled if the sweep was (or any child), failed if any child failed, else
    succeeded. A failed child does not end the sweep early: the others go on and are compared."""
    statuses = list(children)
    if statuses and all(status in TERMINAL for status in statuses):
        if cancel_requested:
            return "cancelled"
        if "failed" in statuses:
            return "failed"
        return "cancelled" if "cancelled" in statuses else "succeeded"
    return "running" if started else "queued"


def settle_sweep(session: Session, *, job_id: str) -> str | None:
    """Store the status derived from the children of sweep `job_id` (and the sum of their steps); return it,
    or None if the sweep had already finished. Called after a child's transition is committed, so of two
    children finishing at once, the later caller sees both; a finished sweep never changes again."""
    parent = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == job_id,
                                                                            Job.kind == "sweep")
                             ).one_or_none()
    if parent is None or parent.status in TERMINAL:
        return None
    rows = session.execute(select(Job.status, Job.started_at, Job.step).where(Job.parent_id == job_id)).all()
    status = derive_sweep_status([row.status for row in rows], cancel_requested=parent.cancel_requested,
                                 started=any(row.started_at is not None for row in rows))
    now = utcnow()
    values: dict[str, Any] = {"status": status, "step": sum(row.step for row in rows), "updated_at": now}
    if status != "queued":
        values["started_at"] = func.coalesce(Job.started_at, now)
    if status in TERMINAL:
        values["finished_at"] = now
    session.execute(update(Job).where(Job.id == job_id, Job.status.not_in(TERMINAL)).values(**values)
                    .execution_options(synchronize_session=False))
    record_status_changes(session, Job.id == job_id)
    session.commit()
    return status


def settle_open_sweeps(session: Session) -> list[str]:
    """Settle every unfinished sweep (the reaper's pass: a process that died between a child's transition
    and its sweep's leaves the sweep behind); return the ids of those that finished now."""
    open_ids = list(session.scalars(select(Job.id).where(Job.kind == "sweep", Job.status.not_in(TERMINAL))))
    return [job_id for job_id in open_ids if settle_sweep(session, job_id=job_id) in TERMINAL]


def _settle_parents(session: Session, job_ids: Iterable[str]) -> None:
    """Settle the sweeps of these jobs (after their transition was committed)."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    parent_ids = session.scalars(select(Job.parent_id).where(Job.id.in_(ids), Job.parent_id.is_not(None)))
    for parent_id in sorted({parent_id for parent_id in parent_ids if parent_id is not None}):
        settle_sweep(session, job_id=parent_id)


def _takeable(ticket: str) -> list[Any]:
    """Queued jobs that the message of job `ticket` may run: those of its queue (sweeps never run)."""
    queue = select(Job.queue).where(Job.id == ticket).scalar_subquery()
    return [Job.queue == queue, Job.status == "queued", Job.kind != "sweep"]


def queue_has_work(session: Session, *, ticket: str) -> bool:
    """Whether the message of job `ticket` would run a job now (what a worker asks before it spends a process
    on it)."""
    return session.scalar(select(select(Job.id).where(*_takeable(ticket)).exists())) is True


_OTHER = aliased(Job)
# How many jobs the candidate's owner has not finished (queued or running): fair share goes to the owner with
# the fewest, so an owner with little work is not held back by another's sweep, and takes every free worker
# until it has as much left as the other (counting running jobs only would give it one worker of two),
_OWNER_UNFINISHED = (select(func.count()).select_from(_OTHER)
                     .where(_OTHER.owner == Job.owner, _OTHER.status.in_(("queued", "running")),
                            _OTHER.kind != "sweep")
                     .correlate(Job).scalar_subquery())
# and between owners with as many, to the one whose last job started longest ago (or never): taking turns.
_OWNER_LAST_START = (select(func.max(_OTHER.started_at)).where(_OTHER.owner == Job.owner)
                     .correlate(Job).scalar_subquery())
_CLAIM_TRIES = 5
# How long a claim waits for a queued row that another transaction holds (see claim_next).
_HELD_ROW_WAIT_SECONDS = 2.0


def claim_next(session: Session, *, ticket: str, worker_id: str, lease_seconds: float) -> Job | None:
    """Claim the job a free worker should run now, from the queue of job `ticket` whose message it took; None
    if that queue has nothing queued.

    A message is a ticket for one run on its queue, not for the job it names (every queued job has one, so
    tickets and queued jobs stay in step; one left over runs nothing). The job is the highest priority's,
    then that of the owner with the fewest unfinished (queued or running) jobs, then of the owner whose last
    job started the longest ago, then the oldest: ids sort by creation, so a sweep's children keep their arm
    order. Claims by several workers at once skip each other's candidates (PostgreSQL's SKIP LOCKED; SQLite
    writes one at a time, and the loser of a race tries the next)."""
    choose = (select(Job.id).where(*_takeable(ticket))
              .order_by(Job.priority.desc(), _OWNER_UNFINISHED, _OWNER_LAST_START.asc().nulls_first(),
                        Job.id).limit(1)
              .with_for_update(skip_locked=True, of=Job))
    deadline = time.monotonic() + _HELD_ROW_WAIT_SECONDS
    tries = 0
    while tries < _CLAIM_TRIES:
        job_id = session.scalar(choose)
        if job_id is None:
            session.rollback()
            # SKIP LOCKED also skips a queued row that another transaction holds for a moment (a reaper
            # stamping it, another worker claiming it): while the queue still has work, wait for the row
            # rather than spend the ticket on nothing.
            waiting = queue_has_work(session, ticket=ticket)
            session.rollback()
            if not waiting or time.monotonic() > deadline:
                return None
            time.sleep(0.05)
            continue
        tries += 1
        if (job := claim_job(session, job_id=job_id, worker_id=worker_id,
                             lease_seconds=lease_seconds)) is not None:
            return job
    return None


def get_job(session: Session, job_id: str, *, owner: str | None = None) -> Job:
    """The job, or JobNotFound; with `owner`, another owner's job is not found either (the API answers
    404 for both, so ids of other owners' jobs reveal nothing)."""
    job = session.get(Job, job_id) if JOB_ID.match(job_id) else None
    if job is None or (owner is not None and job.owner != owner):
        raise JobNotFound(job_id)
    return job


def list_jobs(session: Session, *, status: str | None = None, kind: str | None = None,
              before_id: str | None = None, limit: int = 50, owner: str | None = None) -> list[Job]:
    """Newest first. Ids are UUIDv7 (time-ordered), so `before_id` (the last id seen) is the cursor.
    With `owner`, only that owner's jobs."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if before_id is not None:
        query = query.where(Job.id < before_id)
    return list(session.scalars(query))


def claim_job(session: Session, *, job_id: str, worker_id: str, lease_seconds: float) -> Job | None:
    """Job `job_id` queued -> running for this worker, or None if it is not queued (taken meanwhile)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.kind != "sweep")
        .values(status="running", attempt=Job.attempt + 1, lease_owner=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now,
                resumed_from_step=Job.latest_checkpoint_step, started_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    record_status_changes(session, Job.id == job_id)
    session.commit()
    if rows_matched(result) != 1:
        return None
    _settle_parents(session, [job_id])
    job = get_job(session, job_id)
    session.refresh(job)
    return job


def heartbeat(session: Session, *, job_id: str, worker_id: str, lease_seconds: float,
              step: int | None = None, total_steps: int | None = None,
              metrics: dict[str, Any] | None = None) -> Lease:
    """Renew the lease and copy rank 0's progress into the row, if this worker still owns the job."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds),
                              "heartbeat_at": now, "updated_at": now}
    if step is not None:
        values["step"] = step
    if total_steps is not None:
        values["total_steps"] = total_steps
    if metrics is not None:
        values["metrics"] = metrics
    owned = (Job.id == job_id, Job.status == "running", Job.lease_owner == worker_id)
    result = session.execute(update(Job).where(*owned).values(**values)
                             .execution_options(synchronize_session=False))
    session.commit()
    if rows_matched(result) != 1:
        return Lease(held=False, cancel_requested=False)
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return Lease(held=True, cancel_requested=bool(cancel))


def record_evals(session: Session, *, job_id: str, worker_id: str, latest: dict[str, Any] | None,
                 best: dict[str, Any] | None) -> bool:
    """Copy a running job's newest and best evaluation into its row, if this worker owns it. A best
    evaluation is recorded only once its checkpoint is committed, so `"step": "best"` always finds one
    (and checkpoint rotation in the store keeps it: see drop_old_checkpoints)."""
    values: dict[str, Any] = {"latest_eval": latest, "updated_at": utcnow()}
    if best is not None and get_artifact(session, job_id=job_id, kind="checkpoint", step=best["step"]):
        values["best_eval"] = best
    result = session.execute(update(Job).where(Job.id == job_id, Job.status == "running",
                                               Job.lease_owner == worker_id)
                             .values(**values).execution_options(synchronize_session=False))
    session.commit()
    return rows_matched(result) == 1


def record_artifact(session: Session, *, job_id: str, kind: str, step: int, key: str) -> None:
    """Note a stored artifact; a checkpoint also moves the job's latest-checkpoint pointer forward.

    Call it only after the object (for a checkpoint: its commit marker) is in the store.
    """
    now = utcnow()
    artifact = get_artifact(session, job_id=job_id, kind=kind, step=step)
    if artifact is None:
        session.add(Artifact(job_id=job_id, kind=kind, step=step, key=key, created_at=now))
    else:  # a resumed attempt wrote the same step again
        artifact.key, artifact.created_at = key, now
    if kind == "checkpoint":
        session.execute(update(Job).where(Job.id == job_id)
                        .where((Job.latest_checkpoint_step.is_(None)) | (Job.latest_checkpoint_step < step))
                        .values(latest_checkpoint_step=step)
                        .execution_options(synchronize_session=False))
    session.commit()


def list_artifacts(session: Session, *, job_id: str, kind: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind)
                                .order_by(Artifact.step)))


def get_artifact(session: Session, *, job_id: str, kind: str, step: int) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind,
                                                 Artifact.step == step))


def best_held_out_eval(session: Session, job: Job) -> dict[str, Any] | None:
    """The newest held-out evaluation of a training job's best checkpoint (a succeeded eval job's result,
    `"stream": "held-out"`), shown beside the selection score it was picked by; None if there is none."""
    if job.kind != "train" or job.best_eval is None:
        return None
    query = (select(Job.spec, Job.latest_eval).where(Job.kind == "eval", Job.status == "succeeded",
                                                     Job.spec["job_id"].as_string() == job.id)
             .order_by(Job.id.desc()))
    for spec, result in session.execute(query):
        if read_spec("eval",
                     spec).step == job.best_eval["step"] and (result or {}).get("stream") == "held-out":
            return result
    return None


def committed_checkpoint(session: Session, *, job_id: str, step: int | Literal["best"] | None,
                         owner: str | None = None) -> Artifact:
    """The committed checkpoint a sampling or eval job reads (the latest when step is None, the best
    evaluation's for "best"), or JobConflict; JobNotFound for another `owner`'s job."""
    job = get_job(session, job_id, owner=owner)
    if job.kind != "train":
        raise JobConflict(f"job {job_id} is a {job.kind} job and has no checkpoints")
    if step == "best":
        if job.best_eval is None:
            raise JobConflict(f"job {job_id} has no evaluated checkpoint yet (it evaluates every eval_every "
                              "steps)")
        step = job.best_eval["step"]
    wanted = job.latest_checkpoint_step if step is None else step
    assert wanted != "best"  # resolved above
    artifact = (None if wanted is None
                else get_artifact(session, job_id=job_id, kind="checkpoint", step=wanted))
    if artifact is None:
        which = "committed checkpoint" if wanted is None else f"committed checkpoint at step {wanted}"
        raise JobConflict(f"job {job_id} has no {which} yet")
    return artifact


def request_cancel(session: Session, *, job_id: str, owner: str | None = None) -> Job:
    """A queued job is cancelled at once; a running one is flagged for its supervisor to stop. A sweep:
    the same for every child, and the sweep ends cancelled once they all stopped."""
    job = get_job(session, job_id, owner=owner)
    if job.status in ("succeeded", "failed"):
        raise JobConflict(f"job {job_id} already {job.status}")
    now = utcnow()
    if job.kind == "sweep":
        # The sweep's flag first: a child finishing meanwhile then settles the sweep as cancelled.
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True, updated_at=now)
                        .execution_options(synchronize_session=False))
        session.commit()
        target = Job.parent_id == job_id
    else:
        target = Job.id == job_id
    # One statement, so a reaper moving the job from running to queued in between cannot make the
    # cancel miss both states. The flag is set either way: a requeued job is never claimed again.
    queued = Job.status == "queued"
    session.execute(update(Job).where(target, Job.status.in_(("queued", "running")))
                    .values(status=case((queued, "cancelled"), else_=Job.status),
                            finished_at=case((queued, now), else_=Job.finished_at),
                            cancel_requested=True, updated_at=now)
                    .execution_options(synchronize_session=False))
    record_status_changes(session, target)
    session.commit()
    if job.kind == "sweep":
        settle_sweep(session, job_id=job_id)
    else:
        _settle_parents(session, [job_id])
    session.refresh(job)
    return job


def withdraw_unsent(session: Session, *, job_id: str) -> None:
    """Forget a job (or a sweep and its children) none of whose queue messages could be sent: the client got
    a 503, not this job, so no list shows it, and its idempotency key goes with it for the retry. Only rows
    still queued go: a job a worker took meanwhile (its message did go out after all) stays and runs."""
    queued = Job.status == "queued"
    session.execute(delete(Job).where(Job.parent_id == job_id,
                                      queued).execution_options(synchronize_session=False))
    children = select(Job.id).where(Job.parent_id == job_id).exists()
    session.execute(delete(Job).where(Job.id == job_id, queued,
                                      ~children).execution_options(synchronize_session=False))
    session.commit()


def fail_queued_sweep(session: Session, *, job_id: str, error: str) -> None:
    """A sweep whose children could not all be sent: its queued children fail (the ones sent run on), the
    sweep fails once they are done, and its idempotency key is freed for the client's retry."""
    now, error = utcnow(), public_error(job_id, error)
    session.execute(update(Job).where(Job.parent_id == job_id, Job.status == "queued")
                    .values(status="failed", error=error, finished_at=now, updated_at=now)
                    .execution_options(synchronize_session=False))
    record_status_changes(session, Job.parent_id == job_id)
    session.execute(update(Job).where(Job.id == job_id).values(error=error, idempotency_key=None,
                                                               updated_at=now)
                    .execution_options(synchronize_session=False))
    session.commit()
    settle_sweep(session, job_id=job_id)


def hand_back(session: Session, *, job_id: str, worker_id: str) -> str | None:
    """running -> queued for the lease owner whose worker is stopping. The new status ("queued", or
    "cancelled" for a job flagged for cancelling meanwhile), or None if the job was taken away.

    The attempt does not count (the next claim gives it the same number again) and the next attempt
    resumes from the latest committed checkpoint.
    """
    now = utcnow()
    cancel = Job.cancel_requested.is_(True)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == worker_id)
        .values(status=case((cancel, "cancelled"), else_="queued"),
                attempt=case((cancel, Job.attempt), else_=Job.attempt - 1),
                finished_at=case((cancel, now), else_=None),
                lease_owner=None, lease_expires_at=None, dispatched_at=now, updated_at=now)
        .returning(Job.status).execution_options(synchronize_session=False)
    )
    new_status = result.scalar_one_or_none()
    record_status_changes(session, Job.id == job_id)
    session.commit()
    _settle_parents(session, [job_id])
    return new_status


def retry_lost(session: Session, *, job_id: str, worker_id: str, error: str) -> str | None:
    """running -> queued for the lease owner whose launcher lost the run (a Ray job gone with its head or
    node), as the reaper requeues a lost worker's job: the attempt counts, the next one resumes from the
    latest committed checkpoint; out of attempts it fails with `error`, and a job flagged for cancelling is
    cancelled. The new status, or None if the job was taken away."""
    now = utcnow()
    cancel, spent = Job.cancel_requested.is_(True), Job.attempt >= Job.max_attempts
    status = case((cancel, "cancelled"), (spent, "failed"), else_="queued")
    settled = case((cancel, now), (spent, now), else_=None)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == worker_id)
        .values(status=status, finished_at=settled,
                error=case((spent, public_error(job_id, error)), else_=None),
                lease_owner=None, lease_expires_at=None, dispatched_at=now, updated_at=now)
        .returning(Job.status).execution_options(synchronize_session=False)
    )
    new_status = result.scalar_one_or_none()
    record_status_changes(session, Job.id == job_id)
    session.commit()
    _settle_parents(session, [job_id])
    return new_status


def drop_old_checkpoints(session: Session, *, job_id: str, keep: int) -> list[int]:
    """Forget all but the newest `keep` committed checkpoints and the best evaluation's; return the steps
    to delete from the store.

    The rows go first, so the API never offers a checkpoint whose files are being deleted.
    """
    best = get_job(session, job_id).best_eval
    steps = [artifact.step for artifact in list_artifacts(session, job_id=job_id, kind="checkpoint")]
    dropped = [step for step in steps[:-keep] if best is None or step != best["step"]]
    if dropped:
        session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint",
                                               Artifact.step.in_(dropped)))
        session.commit()
    return dropped


def finish_job(session: Session, *, job_id: str, worker_id: str, status: str, error: str | None = None,
               log_tail: str | None = None, metrics: dict[str, Any] | None = None) -> bool:
    """running -> a terminal status, only for the lease owner; False if the job was taken away.

    `metrics`, rank 0's last metrics line, also sets the final progress (heartbeats lag behind it).
    """
    assert status in TERMINAL, status
    now = utcnow()
    progress = {} if not metrics else {"metrics": metrics, "step": metrics["step"],
                                       "total_steps": metrics.get("total_steps")}
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == worker_id)
        .values(status=status, error=public_error(job_id, error), log_tail=log_tail, finished_at=now,
                updated_at=now,
                lease_owner=None, lease_expires_at=None, **progress)
        .execution_options(synchronize_session=False)
    )
    record_status_changes(session, Job.id == job_id)
    session.commit()
    if rows_matched(result) == 1:
        _settle_parents(session, [job_id])
    return rows_matched(result) == 1


def expired_leases(session: Session, *, now: datetime) -> list[str]:
    """Ids of running jobs whose lease expired before `now` (what reap_expired_leases will settle)."""
    return list(session.scalars(select(Job.id).where(Job.status == "running", Job.lease_expires_at < now)))


def reap_expired_leases(session: Session, *, now: datetime | None = None) -> list[str]:
    """Settle running jobs whose worker stopped renewing its lease; return the ids put back in the queue.

    A flagged job becomes cancelled, one out of attempts becomes failed, the rest are requeued (the next
    claim counts the new attempt and resumes from the latest committed checkpoint).
    """
    now = now or utcnow()
    expired = (Job.status == "running", Job.lease_expires_at < now)
    released = {"lease_owner": None, "lease_expires_at": None, "updated_at": now}
    cancelled = session.scalars(update(Job).where(*expired, Job.cancel_requested.is_(True))
                                .values(status="cancelled", finished_at=now, **released)
                                .returning(Job.id).execution_options(synchronize_session=False))
    settled = list(cancelled)
    failed = session.scalars(update(Job).where(*expired, Job.attempt >= Job.max_attempts)
                             .values(status="failed", finished_at=now, **released,
                                     error="worker lost (lease expired) on the last allowed attempt")
                             .returning(Job.id).execution_options(synchronize_session=False))
    settled += list(failed)
    requeued = session.scalars(update(Job).where(*expired).values(status="queued", dispatched_at=now,
                                                                  **released)
                               .returning(Job.id).execution_options(synchronize_session=False))
    ids = list(requeued)
    record_status_changes(session, Job.id.in_(settled + ids))
    session.commit()
    _settle_parents(session, settled)
    return ids


def note_waiting(session: Session, *, job_ids: set[str], now: datetime | None = None) -> None:
    """Stamp queued jobs whose message was just seen waiting in the broker, so none is sent twice."""
    if job_ids:
        session.execute(update(Job).where(Job.status == "queued", Job.id.in_(sorted(job_ids)))
                        .values(dispatched_at=now or utcnow()).execution_options(synchronize_session=False))
        session.commit()


def take_stale_queued(session: Session, *, older_than: timedelta, now: datetime | None = None) -> list[str]:
    """Queued jobs last sent to (or seen in) the queue longer ago than `older_than`, stamped as sent now.

    The caller sends them again. A duplicate message is harmless (the claim is conditional), a lost
    one would leave the job queued forever. The stamp makes concurrent reapers send each job once.
    """
    now = now or utcnow()
    stale = ((Job.status == "queued") & (Job.kind != "sweep")
             & ((Job.dispatched_at.is_(None)) | (Job.dispatched_at < now - older_than)))
    ids = list(session.scalars(update(Job).where(stale).values(dispatched_at=now)
                               .returning(Job.id).execution_options(synchronize_session=False)))
    session.commit()
    return ids


def _bounded_count(status: str) -> ScalarSelect[int]:
    first = (select(Job.id).where(Job.owner == bindparam("owner"), Job.status == status)
             .limit(bindparam("up_to")).subquery())
    return select(func.count()).select_from(first).scalar_subquery()


# Built once: every POST runs it, and building it per call cost more CPU than the job's INSERT.
_ACTIVE_COUNTS = select(_bounded_count("queued"), _bounded_count("running"))


# A POST inserts its job only if the owner's counts, taken after the owner's lock, leave room for it.
_ADMITTED_COLUMNS = ["id", "kind", "spec", "queue", "max_attempts", "priority", "status", "owner",
                     "idempotency_key",
                     "attempt", "step", "cancel_requested", "total_steps", "notify", "continued_from",
                     "continued_from_step", "dispatched_at", "created_at", "updated_at"]
_INSERT_ADMITTED = insert(Job).from_select(
    _ADMITTED_COLUMNS,
    select(*(bindparam(name, type_=Job.__table__.c[name].type) for name in _ADMITTED_COLUMNS)).where(
        _bounded_count("queued") + bindparam("adding") <= bindparam("max_queued"),
        _bounded_count("running") < bindparam("max_running")),
).returning(Job.id)
_NO_LIMIT = 2**31 - 1


def hold_admissions(session: Session, *, owner: str) -> None:
    """Until this session's transaction ends, no other request of `owner` gets past this: a POST counts the
    owner's jobs and inserts its own in one transaction after it, so the per-owner limits hold exactly under
    concurrent POSTs. PostgreSQL: a transaction-scoped advisory lock on the owner; SQLite: its write lock,
    taken now (BEGIN IMMEDIATE) instead of at the insert, when another request may have counted meanwhile."""
    for statement, parameters in _lock_admissions(session, owner):
        session.execute(statement, parameters)


def _lock_admissions(session: Session, owner: str) -> list[tuple[Executable, dict[str, Any]]]:
    if session.get_bind().dialect.name == "sqlite":
        return [(text("BEGIN IMMEDIATE"), {})]
    key = int.from_bytes(hashlib.sha256(f"owner:{owner}".encode()).digest()[:8], "big", signed=True)
    return [(_ADVISORY_LOCK, {"key": key})]


_ADVISORY_LOCK = select(func.pg_advisory_xact_lock(bindparam("key")))


def _up_to(limits: OwnerLimits) -> int:
    return max(limits.max_queued, limits.max_running)


def _check_limits(owner: str, counts: dict[str, int], adding: int, limits: OwnerLimits) -> None:
    if counts["queued"] + adding > limits.max_queued or counts["running"] >= limits.max_running:
        raise OverLimit(owner, queued=counts["queued"], running=counts["running"], adding=adding,
                        limits=limits)


def active_counts(session: Session, *, owner: str, up_to: int) -> dict[str, int]:
    """How many jobs `owner` has queued and running (the per-owner limits of POST /jobs), each counted up to
    `up_to`: enough to compare with a limit, and a POST stays cheap however many jobs the owner has."""
    # One round trip, on the Core connection: no ORM layer for two numbers.
    queued, running = session.connection().execute(_ACTIVE_COUNTS, {"owner": owner, "up_to": up_to}).one()
    return {"queued": queued, "running": running}


# What a job's public `error` must not show: the SQL and parameters of a database error, SQLAlchemy's
# help links, URLs (internal endpoints, credentials in them), IP addresses and server paths.
_SQL_DETAILS = re.compile(r"\s*(\[SQL:|\[parameters:|\(Background on this error at:).*", re.DOTALL)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+?(?=[\s,;)\]'\"]|$)")
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/:'\",;()\[\]]+/)+([^\s/:'\",;()\[\]]*)")
MAX_ERROR_CHARS = 1000


@overload
def public_error(job_id: str, error: str) -> str: ...
@overload
def public_error(job_id: str, error: None) -> None: ...
@overload
def public_error(job_id: str, error: str | None) -> str | None: ...


def public_error(job_id: str, error: str | None) -> str | None:
    """The plain message a job's `error` shows; the full text goes to the log. The one place every
    recorded error passes (finish_job, fail_queued_sweep; the reaper's message is plain already)."""
    if error is None:
        return None
    text = _SQL_DETAILS.sub("", error).strip().splitlines()[0] if error.strip() else ""
    text = _URL.sub("<internal address>", text)
    text = _ADDRESS.sub("<internal address>", text)
    text = _PATH.sub(lambda match: f".../{match.group(1)}", text)[:MAX_ERROR_CHARS]
    if text != error:
        log.warning("job %s: error recorded as %r; in full: %s", job_id, text, error)
    return text or "failed (see the service's log)"


# Why failed jobs failed, for the service's metrics: the recorded message's source, by its wording.
FAILURE_CAUSES = (("was unreachable for", "dependency_outage"), ("lease expired", "worker_lost"),
                  ("could not reach the job queue", "queue_unreachable"),
                  ("SAGAN_MAX_RUN_SECONDS", "time_limit"),
                  ("artifacts could not be stored", "artifact_store"))


def failure_cause(error: str | None) -> str:
    """dependency_outage, worker_lost, queue_unreachable, time_limit, artifact_store, or training (the
    training process itself failed: bad data, a crash, out of memory)."""
    text = error or ""
    return next((cause for needle, cause in FAILURE_CAUSES if needle in text), "training")
