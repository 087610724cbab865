from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from api.deps import (
    CeleryDep,
    OwnerDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    in_thread,
    in_thread_of,
)
from api.responses import object_response
from api.schemas import (
    MAX_STEP,
    ArtifactItem,
    ArtifactList,
    ContinueCreate,
    EvalJobCreate,
    EvalList,
    JobCreate,
    JobList,
    JobPublic,
    Kind,
    MetricsList,
    SampleJobCreate,
    Status,
    SweepJobCreate,
    utc,
)
from sagan_core.metrics.runs import json_safe
from sagan_service import jobs
from sagan_service.models import Artifact
from sagan_service.records import publish_job_record
from sagan_service.storage import (
    ArtifactNotFound,
    evals_key,
    metrics_key,
    real_grid_key,
    tensorboard_key,
    tensorboard_prefix,
)
from sagan_service.submit import Submitted, Submitter
from sagan_service.sweeps import NoRunsYet, sweep_report

router = APIRouter(prefix="/jobs", tags=["jobs"])
StepPath = Annotated[int, Path(ge=0, le=MAX_STEP)]
EventFileName = Annotated[str, Path(pattern=r"^events\.out\.tfevents\.[A-Za-z0-9._-]+$", max_length=255)]
JOB_ID_PATTERN = jobs.JOB_ID.pattern


@router.post("", response_model=JobPublic, status_code=201,
             responses={200: {"description": "an Idempotency-Key replay: the job the first POST made"}})
@in_thread_of("broker")
def create_job(body: JobCreate, request: Request, response: Response, session: SessionDep,
               settings: SettingsDep, celery: CeleryDep, principal: PrincipalDep,
               idempotency_key: Annotated[str | None, Header(max_length=255)] = None) -> JobPublic:
    """Submit a training, sampling, eval or sweep job; 201 with its Location. A value over one of this
    service's limits is a 422 naming it; 429 while the owner has too many jobs queued or running."""
    notify = tuple(target.url for target in body.notify)
    submitted = _submit(Submitter(session, settings, celery, principal, idempotency_key, body.priority,
                                  notify),
                        body)
    return _created(submitted, request, response)


def _created(submitted: Submitted, request: Request, response: Response) -> JobPublic:
    """The submitted job, 201 with its Location (200 for an Idempotency-Key replay)."""
    if not submitted.created:
        response.status_code = 200
    response.headers["Location"] = str(request.url_for("get_job", job_id=submitted.job.id))
    return JobPublic.from_job(submitted.job, children=submitted.children)


def _submit(submitter: Submitter, body: JobCreate) -> Submitted:
    if isinstance(body, SweepJobCreate):
        return submitter.sweep(base=body.base, axes=body.axes, arms=body.arms, study=body.study,
                               seeds=body.seeds)
    if isinstance(body, SampleJobCreate):
        walk = None if body.interpolate is None else (body.interpolate[0], body.interpolate[1])
        return submitter.sample(job_id=body.source.job_id, step=body.source.step, n=body.n, seed=body.seed,
                                classes=body.classes, per_class=body.per_class, truncation=body.truncation,
                                interpolate=walk, frames=body.frames if walk else None)
    if isinstance(body, EvalJobCreate):
        return submitter.evaluation(job_id=body.source.job_id, step=body.source.step, dataset=body.dataset,
                                    metrics=body.metrics, n=body.n)
    return submitter.train(body.config)


@router.post("/{job_id}/continue", response_model=JobPublic, status_code=201,
             responses={200: {"description": "an Idempotency-Key replay: the job the first POST made"}})
@in_thread_of("broker")
def continue_job(job_id: str, body: ContinueCreate, request: Request, response: Response, session: SessionDep,
                 settings: SettingsDep, celery: CeleryDep, principal: PrincipalDep,
                 idempotency_key: Annotated[str | None, Header(max_length=255)] = None) -> JobPublic:
    """Continue a training job: a new one resumes from its checkpoint (G, D, optimisers, EMA, step) to `steps`
    in all; 201 with its Location. Changing a field that shapes the model or data is a 422 naming it."""
    submitter = Submitter(session, settings, celery, principal, idempotency_key, body.priority,
                          tuple(target.url for target in body.notify))
    submitted = submitter.continue_training(job_id=job_id, step=body.step, steps=body.steps,
                                            changes=body.config)
    return _created(submitted, request, response)


@router.get("", response_model=JobList)
@in_thread
def list_jobs(session: SessionDep, owner: OwnerDep, status: Status | None = None, kind: Kind | None = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              cursor: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None) -> JobList:
    """Jobs, newest first (a token's own; an admin's: all), optionally filtered; follow `next_cursor` for
    older ones."""
    page = jobs.list_jobs(session, status=status, kind=kind, before_id=cursor, limit=limit, owner=owner)
    return JobList(items=[JobPublic.from_job(job) for job in page],
                   next_cursor=page[-1].id if len(page) == limit else None)


@router.get("/{job_id}", response_model=JobPublic)
@in_thread
def get_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobPublic:
    """A job's status, progress, latest metrics, attempts, and error and log tail if it failed; a sweep's
    children with their status, progress and best evaluation."""
    job = jobs.get_job(session, job_id, owner=owner)
    children = jobs.sweep_children(session, job_id=job.id) if job.kind == "sweep" else None
    continued_by = jobs.continuations(session, job_id=job.id, owner=owner) if job.kind == "train" else None
    return JobPublic.from_job(job, children=children,
                              best_held_out_eval=jobs.best_held_out_eval(session, job),
                              continued_by=continued_by)


@router.get("/{job_id}/report", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}}}, 409: {"description": "not a sweep, or no child "
                                                                               "has trained yet"}})
@in_thread_of("store")
def get_report(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> HTMLResponse:
    """A sweep's comparison report: one self-contained HTML page (stored once the sweep has finished; while
    it runs, built from its children so far)."""
    try:
        page = sweep_report(session, store, jobs.get_job(session, job_id, owner=owner))
    except NoRunsYet as error:
        raise HTTPException(409, str(error)) from None
    return HTMLResponse(page)


@router.post("/{job_id}/cancel", response_model=JobPublic)
@in_thread  # not the store's threads or breaker: a cancel works while the store is away (its record waits)
def cancel_job(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> JobPublic:
    """Cancel a job: a queued one at once, a running one within seconds (its processes are stopped); a sweep:
    every child."""
    job = jobs.request_cancel(session, job_id=job_id, owner=owner)
    # A running job is settled, and its record written, by its worker; one that never started has no folder.
    if job.status == "cancelled" and job.started_at is not None:
        publish_job_record(store, job)
    return JobPublic.from_job(job)


@router.get("/{job_id}/samples", response_model=ArtifactList)
@in_thread_of("store")
def list_samples(job_id: str, request: Request, session: SessionDep, store: StoreDep,
                 owner: OwnerDep) -> ArtifactList:
    """The job's sample grids; each `url` returns the PNG."""
    return _artifact_list(request, session, store, jobs.get_job(session, job_id, owner=owner).id, "sample",
                          "get_sample")


@router.get("/{job_id}/samples/latest", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
@in_thread_of("store")
def get_latest_sample(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """The newest sample grid as a PNG."""
    samples = jobs.list_artifacts(session, job_id=jobs.get_job(session, job_id, owner=owner).id,
                                  kind="sample")
    if not samples:
        raise HTTPException(404, f"job {job_id} has no samples yet")
    return object_response(store, samples[-1].key, "image/png")


@router.get("/{job_id}/samples/real", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
@in_thread_of("store")
def get_real_grid(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """Real training images (the first the run draws) in the grid the samples use, as a PNG."""
    key = real_grid_key(jobs.get_job(session, job_id, owner=owner).id)
    if not store.exists(key):
        raise HTTPException(404,
                            f"job {job_id} has no real-data grid (not started yet, or not a training job)")
    return object_response(store, key, "image/png")


@router.get("/{job_id}/samples/{step}", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
@in_thread_of("store")
def get_sample(job_id: str, step: StepPath, session: SessionDep, store: StoreDep,
               owner: OwnerDep) -> Response:
    """The sample grid of one step as a PNG."""
    return object_response(store, _artifact(session, job_id, owner, "sample", step).key, "image/png")


@router.get("/{job_id}/checkpoints", response_model=ArtifactList)
@in_thread_of("store")
def list_checkpoints(job_id: str, request: Request, session: SessionDep, store: StoreDep,
                     owner: OwnerDep) -> ArtifactList:
    """The job's committed checkpoints; each `url` downloads the .pt file."""
    return _artifact_list(request, session, store, jobs.get_job(session, job_id, owner=owner).id,
                          "checkpoint", "get_checkpoint")


@router.get("/{job_id}/checkpoints/{step}", response_class=Response)
@in_thread_of("store")
def get_checkpoint(job_id: str, step: StepPath, session: SessionDep, store: StoreDep,
                   owner: OwnerDep) -> Response:
    """One committed checkpoint file (from S3: a redirect to a presigned URL)."""
    key = _artifact(session, job_id, owner, "checkpoint", step).key
    url = store.presigned_url(key)
    if url is not None:  # hundreds of MB: the client fetches it from S3, not through the API's memory
        return RedirectResponse(url, status_code=307)
    return object_response(store, key, "application/octet-stream")


@router.get("/{job_id}/tensorboard")
@in_thread_of("store")
def list_event_files(job_id: str, request: Request, session: SessionDep, store: StoreDep,
                     owner: OwnerDep) -> dict[str, list[dict[str, str]]]:
    """A training's TensorBoard event files (`items`: name, url); `tensorboard --logdir` on a folder holding
    them all shows the run."""
    prefix = tensorboard_prefix(jobs.get_job(session, job_id, owner=owner).id)
    names = [key.removeprefix(prefix) for key in store.list_keys(prefix)]
    return {"items": [{"name": name, "url": store.presigned_url(prefix + name)
                       or str(request.url_for("get_event_file", job_id=job_id, name=name))}
                      for name in names]}


@router.get("/{job_id}/tensorboard/{name}", response_class=Response)
@in_thread_of("store")
def get_event_file(job_id: str, name: EventFileName, session: SessionDep, store: StoreDep,
                   owner: OwnerDep) -> Response:
    """One TensorBoard event file."""
    return object_response(store, tensorboard_key(jobs.get_job(session, job_id, owner=owner).id, name),
                           "application/octet-stream")


@router.get("/{job_id}/metrics", response_model=MetricsList)
@in_thread_of("store")
def get_metrics(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep,
                after_step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None) -> MetricsList:
    """The training metrics time series (rank 0's metrics.jsonl), oldest first; with `after_step`, only
    the lines past that step (what a page that polls has not seen yet)."""
    jobs.get_job(session, job_id, owner=owner)
    lines = _jsonl(store, metrics_key(job_id))
    return MetricsList(items=lines if after_step is None
                       else [line for line in lines if line["step"] > after_step])


@router.get("/{job_id}/evals", response_model=EvalList)
@in_thread_of("store")
def get_evals(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> EvalList:
    """A training job's evaluations (every eval_every steps), or an eval job's result, oldest first."""
    jobs.get_job(session, job_id, owner=owner)
    return EvalList(items=_jsonl(store, evals_key(job_id)))


def _jsonl(store: StoreDep, key: str) -> list[dict[str, Any]]:
    try:
        data = store.get_bytes(key)
    except ArtifactNotFound:
        return []
    # NaN and infinities (a diverged run's losses or scores) as null: JSON responses cannot hold them.
    return [json_safe(json.loads(line)) for line in data.decode().splitlines() if line.strip()]


def _artifact(session: SessionDep, job_id: str, owner: str | None, kind: str, step: int) -> Artifact:
    artifact = jobs.get_artifact(session, job_id=jobs.get_job(session, job_id, owner=owner).id, kind=kind,
                                 step=step)
    if artifact is None:
        raise HTTPException(404, f"job {job_id} has no {kind} at step {step}")
    return artifact


def _artifact_list(request: Request, session: SessionDep, store: StoreDep, job_id: str, kind: str,
                   route: str) -> ArtifactList:
    """`job_id`: a job the caller may see (looked up with its owner filter)."""
    artifacts = jobs.list_artifacts(session, job_id=job_id, kind=kind)
    return ArtifactList(items=[
        ArtifactItem(step=a.step, created_at=utc(a.created_at),
                     url=store.presigned_url(a.key)
                     or str(request.url_for(route, job_id=job_id, step=a.step)))
        for a in artifacts])
