from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

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
from api.schemas import (
    MAX_STEP,
    ArtifactItem,
    ArtifactList,
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
from sagan_service import jobs, limits
from sagan_service.datasets import check_dataset_refs
from sagan_service.logs import JOB_ID
from sagan_service.models import Artifact, Job
from sagan_service.queue import QueueUnavailable, dispatch_all, queue_for
from sagan_service.records import publish_job_record
from sagan_service.specs import eval_job_spec, validate_sweep, validate_train_config
from sagan_service.storage import ArtifactNotFound, LocalStore, evals_key, metrics_key, real_grid_key
from sagan_service.sweeps import NoRunsYet, sweep_report

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])
StepPath = Annotated[int, Path(ge=0, le=MAX_STEP)]
JOB_ID_PATTERN = jobs.JOB_ID.pattern


@router.post("", response_model=JobPublic, status_code=201,
             responses={200: {"description": "an Idempotency-Key replay: the job the first POST made"}})
@in_thread_of("broker")
def create_job(body: JobCreate, request: Request, response: Response, session: SessionDep,
               settings: SettingsDep, celery: CeleryDep, principal: PrincipalDep,
               idempotency_key: Annotated[str | None, Header(max_length=255)] = None) -> JobPublic:
    """Submit a training, sampling, eval or sweep job; 201 with its Location. A value over one of this
    service's limits is a 422 naming it; 429 while the owner has too many jobs queued or running."""
    if isinstance(body, SweepJobCreate):
        return _create_sweep(body, request, response, session, settings, celery, principal, idempotency_key)
    owner = principal.owner_filter
    if isinstance(body, SampleJobCreate):
        checkpoint = jobs.committed_checkpoint(session, job_id=body.source.job_id, step=body.source.step,
                                               owner=owner)
        spec = {"job_id": body.source.job_id, "step": checkpoint.step, "n": body.n, "seed": body.seed}
        # Only when asked, so an unconditional sample job's spec is what it always was.
        spec.update({name: getattr(body, name) for name in ("classes", "per_class") if getattr(body, name) is not None})
    elif isinstance(body, EvalJobCreate):
        checkpoint = jobs.committed_checkpoint(session, job_id=body.source.job_id, step=body.source.step,
                                               owner=owner)
        spec = eval_job_spec(jobs.get_job(session, body.source.job_id).spec, job_id=body.source.job_id,
                             step=checkpoint.step, dataset=body.dataset, metrics=body.metrics, n=body.n,
                             data_roots=settings.allowed_data_roots)
        limits.check_eval_limits(spec, settings)
        check_dataset_refs(session, {"dataset": spec["dataset"]}, owner=owner, imsize=spec["imsize"])
    else:
        spec = validate_train_config(body.config, data_roots=settings.allowed_data_roots)
        limits.check_train_limits(spec, settings)
        _check_train_refs(session, spec, owner)
    with _owner_limits(settings) as owner_limits:
        job, created = jobs.create_job(session, kind=body.kind, spec=spec, queue=queue_for(body.kind, spec),
                                       max_attempts=settings.max_attempts, idempotency_key=idempotency_key,
                                       owner=principal.name, limits=owner_limits)
    _answer_replay_or_send(job, created, body, spec, request, response, celery, [job],
                           give_up=lambda _: jobs.withdraw_unsent(session, job_id=job.id))
    return JobPublic.from_job(job)


def _create_sweep(body: SweepJobCreate, request: Request, response: Response, session: SessionDep,
                  settings: SettingsDep, celery: CeleryDep, principal: PrincipalDep,
                  idempotency_key: str | None) -> JobPublic:
    """Validate every child (config and this service's limits), then create the sweep and its children at
    once and send the children, each to its queue like any job."""
    runs = validate_sweep(base=body.base, axes=body.axes, arms=body.arms, study=body.study, seeds=body.seeds,
                          data_roots=settings.allowed_data_roots, max_arms=settings.max_sweep_arms)
    configs = [(run.arm, run.config.to_dict()) for run in runs]
    for _, config in configs:
        limits.check_train_limits(config, settings)
        _check_train_refs(session, config, principal.owner_filter)
    spec = body.model_dump(exclude={"kind"})
    children = [(arm, config, queue_for("train", config)) for arm, config in configs]
    with _owner_limits(settings) as owner_limits:
        sweep, created = jobs.create_sweep(session, spec=spec, children=children,
                                           max_attempts=settings.max_attempts, idempotency_key=idempotency_key,
                                           owner=principal.name, limits=owner_limits)
    members = jobs.sweep_children(session, job_id=sweep.id)
    _answer_replay_or_send(sweep, created, body, spec, request, response, celery, members,
                           give_up=lambda error: _give_up_sweep(session, sweep, error))
    session.refresh(sweep)
    return JobPublic.from_job(sweep, children=members)


def _check_train_refs(session: SessionDep, config: dict[str, Any], owner: str | None) -> None:
    """A training config's `ds:<id>` data sets: the owner's, ready, packed at its imsize (else a 422)."""
    check_dataset_refs(session, {"config.dataset": config["dataset"], "config.eval_dataset": config["eval_dataset"]},
                       owner=owner, imsize=config["imsize"])


def _answer_replay_or_send(job: Job, created: bool, body: JobCreate, spec: dict[str, Any],
                           request: Request, response: Response, celery: CeleryDep, to_send: list[Job], *,
                           give_up: Callable[[QueueUnavailable], None]) -> None:
    """What every POST /jobs ends with. A replayed Idempotency-Key answers 200 with its job, or 422 if it came
    with another request. A new job's queue messages (the job's, or a sweep's children's) are sent; if the
    queue is unreachable, give_up(error) settles what was not sent and the answer is 503 (the key is freed
    for the client's retry)."""
    if not created:
        if not _same_request(job, body, spec):
            raise RequestValidationError([{
                "loc": ["header", "idempotency-key"], "type": "value_error",
                "msg": f"this Idempotency-Key was used for another request (job {job.id}); use a new key"}])
        response.status_code = 200
    else:
        JOB_ID.set(job.id)
        log.info("%s job submitted by %s (%d queue messages)", job.kind, job.owner, len(to_send))
        try:
            dispatch_all(celery, to_send)
        except QueueUnavailable as error:
            log.exception("could not send job %s to the queue", job.id)
            give_up(error)
            raise  # a 503, and the broker's breaker trips (api/guards.py)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))


def _give_up_sweep(session: SessionDep, sweep: Job, error: QueueUnavailable) -> None:
    """No child sent: the sweep was never the client's (withdrawn). Some sent: those run on, the rest fail."""
    if error.sent == 0:
        jobs.withdraw_unsent(session, job_id=sweep.id)
    else:
        jobs.fail_queued_sweep(session, job_id=sweep.id, error=f"could not reach the job queue: {error}")


@contextmanager
def _owner_limits(settings: SettingsDep) -> Iterator[jobs.OwnerLimits]:
    """SAGAN_MAX_QUEUED_PER_OWNER and SAGAN_MAX_RUNNING_PER_OWNER, and the 429 for a job that would pass one:
    past the queued limit with the jobs it adds, or while the running limit's count of the owner's jobs run.
    (An Idempotency-Key replay is checked too: a client retrying at its limit waits like any other.)"""
    try:
        yield jobs.OwnerLimits(max_queued=settings.max_queued_per_owner, max_running=settings.max_running_per_owner)
    except jobs.OverLimit as over:
        if over.queued + over.adding > over.limits.max_queued:
            detail = (f"{over.owner} has {over.queued} jobs queued and asks for {over.adding} more, over this "
                      f"service's limit (SAGAN_MAX_QUEUED_PER_OWNER={over.limits.max_queued}); submit again when "
                      "some have finished")
        else:
            detail = (f"{over.owner} has {over.running} jobs running, this service's limit "
                      f"(SAGAN_MAX_RUNNING_PER_OWNER={over.limits.max_running}); submit again when some have "
                      "finished")
        raise HTTPException(429, detail, headers={"Retry-After": "30"}) from None


def _same_request(job: Job, body: JobCreate, spec: dict[str, Any]) -> bool:
    """Whether an Idempotency-Key replay asks for what the first request asked (a sample job's "latest
    checkpoint" may have moved on since: then its step does not count)."""
    if job.kind != body.kind:
        return False
    if isinstance(body, SampleJobCreate) and body.source.step is None:
        return {**job.spec, "step": None} == {**spec, "step": None}
    return job.spec == spec


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
    return JobPublic.from_job(job, children=children, best_held_out_eval=jobs.best_held_out_eval(session, job))


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
def list_samples(job_id: str, request: Request, session: SessionDep, store: StoreDep, owner: OwnerDep) -> ArtifactList:
    """The job's sample grids; each `url` returns the PNG."""
    return _artifact_list(request, session, store, jobs.get_job(session, job_id, owner=owner).id, "sample",
                          "get_sample")


@router.get("/{job_id}/samples/latest", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
@in_thread_of("store")
def get_latest_sample(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """The newest sample grid as a PNG."""
    samples = jobs.list_artifacts(session, job_id=jobs.get_job(session, job_id, owner=owner).id, kind="sample")
    if not samples:
        raise HTTPException(404, f"job {job_id} has no samples yet")
    return _object_response(store, samples[-1].key, "image/png")


@router.get("/{job_id}/samples/real", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
@in_thread_of("store")
def get_real_grid(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """Real training images (the first the run draws) in the grid the samples use, as a PNG."""
    key = real_grid_key(jobs.get_job(session, job_id, owner=owner).id)
    if not store.exists(key):
        raise HTTPException(404, f"job {job_id} has no real-data grid (not started yet, or not a training job)")
    return _object_response(store, key, "image/png")


@router.get("/{job_id}/samples/{step}", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
@in_thread_of("store")
def get_sample(job_id: str, step: StepPath, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """The sample grid of one step as a PNG."""
    return _object_response(store, _artifact(session, job_id, owner, "sample", step).key, "image/png")


@router.get("/{job_id}/checkpoints", response_model=ArtifactList)
@in_thread_of("store")
def list_checkpoints(job_id: str, request: Request, session: SessionDep, store: StoreDep,
                     owner: OwnerDep) -> ArtifactList:
    """The job's committed checkpoints; each `url` downloads the .pt file."""
    return _artifact_list(request, session, store, jobs.get_job(session, job_id, owner=owner).id, "checkpoint",
                          "get_checkpoint")


@router.get("/{job_id}/checkpoints/{step}", response_class=Response)
@in_thread_of("store")
def get_checkpoint(job_id: str, step: StepPath, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """One committed checkpoint file (from S3: a redirect to a presigned URL)."""
    key = _artifact(session, job_id, owner, "checkpoint", step).key
    url = store.presigned_url(key)
    if url is not None:  # hundreds of MB: the client fetches it from S3, not through the API's memory
        return RedirectResponse(url, status_code=307)
    return _object_response(store, key, "application/octet-stream")


@router.get("/{job_id}/metrics", response_model=MetricsList)
@in_thread_of("store")
def get_metrics(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep,
                after_step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None) -> MetricsList:
    """The training metrics time series (rank 0's metrics.jsonl), oldest first; with `after_step`, only
    the lines past that step (what a page that polls has not seen yet)."""
    jobs.get_job(session, job_id, owner=owner)
    lines = _jsonl(store, metrics_key(job_id))
    return MetricsList(items=lines if after_step is None else [line for line in lines if line["step"] > after_step])


@router.get("/{job_id}/evals", response_model=EvalList)
@in_thread_of("store")
def get_evals(job_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> EvalList:
    """A training job's evaluations (every eval_every steps), or an eval job's result, oldest first."""
    jobs.get_job(session, job_id, owner=owner)
    return EvalList(items=_jsonl(store, evals_key(job_id)))


def _jsonl(store: StoreDep, key: str) -> list[dict]:
    try:
        data = store.get_bytes(key)
    except ArtifactNotFound:
        return []
    # NaN and infinities (a diverged run's losses or scores) as null: JSON responses cannot hold them.
    return [json_safe(json.loads(line)) for line in data.decode().splitlines() if line.strip()]


def _artifact(session: SessionDep, job_id: str, owner: str | None, kind: str, step: int) -> Artifact:
    artifact = jobs.get_artifact(session, job_id=jobs.get_job(session, job_id, owner=owner).id, kind=kind, step=step)
    if artifact is None:
        raise HTTPException(404, f"job {job_id} has no {kind} at step {step}")
    return artifact


def _artifact_list(request: Request, session: SessionDep, store: StoreDep, job_id: str, kind: str,
                   route: str) -> ArtifactList:
    """`job_id`: a job the caller may see (looked up with its owner filter)."""
    artifacts = jobs.list_artifacts(session, job_id=job_id, kind=kind)
    return ArtifactList(items=[
        ArtifactItem(step=a.step, created_at=utc(a.created_at),
                     url=store.presigned_url(a.key) or str(request.url_for(route, job_id=job_id, step=a.step)))
        for a in artifacts])


def _object_response(store: StoreDep, key: str, media_type: str) -> Response:
    """A recorded artifact's bytes; 404 if its object is gone from the store (503 while the store is away)."""
    try:
        if isinstance(store, LocalStore):  # streamed from disk, not read into memory
            if not store.exists(key):
                raise ArtifactNotFound(key)
            return FileResponse(store.path(key), media_type=media_type)
        return Response(store.get_bytes(key), media_type=media_type)
    except ArtifactNotFound:
        raise HTTPException(404, "this artifact is recorded but its file is gone from the artifact store") from None
