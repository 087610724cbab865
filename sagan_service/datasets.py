"""Data sets of the service: their rows and every change to them, as jobs.py is for jobs.

A data set is built by a job of kind "dataset" (its spec a jobspec.DatasetSpec), queued, leased,
retried and cancelled like any job. Its row's status is queued until that job's process marks it running,
then ready (with its counts) or failed (with the reason). A build job that fails or is cancelled before its
process could say so leaves the row behind: its public status then follows the job (public_status).
Train, eval and sweep jobs name a data set `ds:<id>` (check_dataset_refs).
"""

from __future__ import annotations

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from . import jobs
from .jobspec import DatasetSpec
from .models import Dataset, Job, utcnow
from .specs import SpecError

DATASET_REF = "ds:"
ACTIVE = ("queued", "running")


class DatasetNotFound(LookupError):
    """No data set has this id (or it is another owner's)."""


def create_dataset(session: Session, *, spec: DatasetSpec, owner: str, name: str, queue: str,
                   max_attempts: int, limits: jobs.OwnerLimits | None = None) -> tuple[Dataset, Job]:
    """The data set's row and its queued build job (OverLimit as jobs.create_job says); the caller sends it.
    The job first: it is what the owner's limits admit."""
    job, _ = jobs.create_job(session, kind="dataset", spec=spec, queue=queue, max_attempts=max_attempts,
                             owner=owner, limits=limits)
    now = utcnow()
    dataset = Dataset(id=spec.dataset_id, owner=owner, name=name, status="queued", source=spec.source,
                      imsizes=spec.imsizes, job_id=job.id, created_at=now, updated_at=now)
    session.add(dataset)
    session.commit()
    return dataset, job


def get_dataset(session: Session, dataset_id: str, *, owner: str | None = None) -> Dataset:
    """The data set, or DatasetNotFound; with `owner`, another owner's is not found either."""
    dataset = session.get(Dataset, dataset_id) if jobs.JOB_ID.match(dataset_id) else None
    if dataset is None or (owner is not None and dataset.owner != owner):
        raise DatasetNotFound(dataset_id)
    return dataset


def list_datasets(session: Session, *, owner: str | None = None) -> list[Dataset]:
    """Newest first; with `owner`, only that owner's."""
    query = select(Dataset).order_by(Dataset.id.desc())
    if owner is not None:
        query = query.where(Dataset.owner == owner)
    return list(session.scalars(query))


def public_status(dataset: Dataset, job: Job | None) -> tuple[str, str | None]:
    """What clients see: the row's status once its job's process settled it, else the build job's (a job
    that failed or was cancelled before its process marked the row makes the data set failed)."""
    if dataset.status in ("ready", "failed") or job is None:
        return dataset.status, dataset.error
    if job.status in ("queued", "running"):
        return job.status, None
    return "failed", job.error or f"its build job {job.id} was {job.status}"


def jobs_using(session: Session, dataset_id: str, *, active: bool = False) -> list[Job]:
    """Train and eval jobs naming `ds:<id>` (dataset or eval_dataset), oldest first; `active`: only queued or
    running ones."""
    ref = f"{DATASET_REF}{dataset_id}"
    query = (select(Job).where(or_(Job.spec["dataset"].as_string() == ref,
                                   Job.spec["eval_dataset"].as_string() == ref))
             .order_by(Job.id))
    if active:
        query = query.where(Job.status.in_(ACTIVE))
    return list(session.scalars(query))


def delete_dataset(session: Session, dataset_id: str, *, owner: str | None = None) -> Dataset:
    """Forget a data set (the caller deletes its store prefix next); JobConflict while a queued or running job
    uses it or builds it."""
    dataset = get_dataset(session, dataset_id, owner=owner)
    build = session.get(Job, dataset.job_id) if dataset.job_id else None
    if public_status(dataset, build)[0] in ACTIVE:  # its job is still writing it
        raise jobs.JobConflict(f"data set {dataset_id} is being built by job {dataset.job_id}; cancel it "
                               "first")
    if using := jobs_using(session, dataset_id, active=True):
        raise jobs.JobConflict(f"data set {dataset_id} is in use by {len(using)} queued or running job(s): "
                               f"{', '.join(job.id for job in using[:5])}")
    session.delete(dataset)
    session.commit()
    return dataset


def check_dataset_refs(session: Session, refs: dict[str, str | None], *, owner: str | None,
                       imsize: int) -> None:
    """Every `ds:<id>` among `refs` (field location -> data set spec) must be a data set of `owner` (None: any
    owner's, an admin's request), ready, packed at `imsize`; else SpecError on that field. Another owner's
    data set reads as not found, as in GET /datasets/{id}."""
    for field, spec in refs.items():
        if spec is None or not spec.startswith(DATASET_REF):
            continue
        name, dataset_id = field.rpartition(".")[2], spec.removeprefix(DATASET_REF)
        try:
            dataset = get_dataset(session, dataset_id, owner=owner)
        except DatasetNotFound:
            raise SpecError(field, f"{name}: data set {dataset_id} not found") from None
        status, _ = public_status(dataset, session.get(Job, dataset.job_id) if dataset.job_id else None)
        if status != "ready":
            raise SpecError(field, f"{name}: data set {dataset_id} ({dataset.name}) is {status}, not ready")
        if imsize not in (dataset.imsizes or []):
            raise SpecError(field, f"{name}: data set {dataset_id} ({dataset.name}) is packed at "
                                   f"{', '.join(map(str, dataset.imsizes or []))} px, not at imsize {imsize}")


def mark_running(session: Session, *, dataset_id: str) -> None:
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(status="running", error=None,
                                                                           updated_at=utcnow()))
    session.commit()


def mark_ready(session: Session, *, dataset_id: str, images: int, classes: list[str],
               bad_images: dict[str, str], imsizes: list[int], size_bytes: int) -> None:
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(
        status="ready", error=None, images=images, classes=classes, bad_images=bad_images, imsizes=imsizes,
        size_bytes=size_bytes, updated_at=utcnow()))
    session.commit()


def mark_failed(session: Session, *, dataset_id: str, error: str,
                bad_images: dict[str, str] | None = None) -> None:
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(
        status="failed", error=jobs.public_error(dataset_id, error), bad_images=bad_images,
                                                                           updated_at=utcnow()))
    session.commit()
