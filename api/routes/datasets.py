from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from functools import partial

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

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
from api.schemas import DatasetCreate, DatasetList, DatasetPublic
from sagan_service import datasets
from sagan_service.limits import GIB
from sagan_service.models import Dataset, Job, new_job_id
from sagan_service.specs import SpecError
from sagan_service.storage import dataset_prefix, dataset_preview_key
from sagan_service.submit import OwnerOverLimit, Submitter

router = APIRouter(prefix="/datasets", tags=["datasets"])
# What an upload may be, by its file name; the dataset job reads it by its content.
ARCHIVE_SUFFIXES = {".zip": "upload.zip", ".tar": "upload.tar", ".tar.gz": "upload.tar.gz",
                    ".tgz": "upload.tar.gz"}
UPLOAD_BODY = {"requestBody": {"content": {
    "application/json": {"schema": DatasetCreate.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file", "name"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "a .zip or .tar(.gz) of images; class "
                                                                      "sub-folders make a labelled set"},
        "name": {"type": "string", "maxLength": 255}}}}}}}


@router.post("", response_model=DatasetPublic, status_code=201, openapi_extra=UPLOAD_BODY)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep, store: StoreDep,
                         celery: CeleryDep, principal: PrincipalDep) -> DatasetPublic:
    """Add a data set: upload an archive (multipart `file` and `name`, at most SAGAN_MAX_UPLOAD_GB: 413
    beyond) or name one where it lies (JSON). 201 at once, queued: a dataset job validates and packs it."""
    dataset_id = new_job_id()
    submitter = Submitter(session, settings, celery, principal)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        name, archive = await _receive_upload(request, settings.max_upload_gb)
        key = f"{dataset_prefix(dataset_id)}source/{_archive_name(archive)}"
        try:
            archive.file.seek(0)
            await run_in_threadpool(store.put_fileobj, key, archive.file)
        finally:
            archive.file.close()
        try:
            return await run_in_threadpool(_create, request, session, partial(
                submitter.dataset, dataset_id=dataset_id, name=name, imsizes=None, upload_key=key))
        except OwnerOverLimit:  # no data set, so no archive either
            await run_in_threadpool(store.delete_prefix, dataset_prefix(dataset_id))
            raise
    body = _json_body(await _read_limited(request, settings.max_body_bytes))
    return await run_in_threadpool(_create, request, session, partial(
        submitter.dataset, dataset_id=dataset_id, name=body.name, imsizes=body.imsizes, source=body.source))


def _create(request: Request, session: SessionDep,
            submit: Callable[[], tuple[Dataset, Job]]) -> DatasetPublic:
    dataset, job = submit()
    return _public(request, session, dataset, job)


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_bytes:
            raise HTTPException(413, f"the request body is over this service's limit of {max_bytes} bytes "
                                     "(SAGAN_MAX_BODY_BYTES)")
    return bytes(data)


def _json_body(data: bytes) -> DatasetCreate:
    try:
        return DatasetCreate.model_validate_json(data)
    except ValidationError as error:
        raise RequestValidationError([{**item, "loc": ["body", *item["loc"]]}
                                      for item in error.errors()]) from None


async def _receive_upload(request: Request, max_gb: float) -> tuple[str, UploadFile]:
    """The form's `name` and its `file`, spooled to a temporary file (never whole in memory); 413 as soon as
    the body passes SAGAN_MAX_UPLOAD_GB."""
    limit = int(max_gb * GIB)

    async def counted() -> AsyncGenerator[bytes, None]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"the upload is over this service's limit of {max_gb:g} GB "
                                         "(SAGAN_MAX_UPLOAD_GB)")
            yield chunk

    # Starlette spools the file part to disk past MultiPartParser.spool_max_size (1 MiB).
    parser = MultiPartParser(request.headers, counted(), max_files=1, max_fields=4)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise HTTPException(400, f"could not read the multipart body: {error}") from None
    archive, name = form.get("file"), form.get("name")
    if not isinstance(archive, UploadFile):
        _close_all(form)
        raise SpecError("file", "file: attach the archive as the form field `file`")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 255:
        _close_all(form)
        raise SpecError("name", "name: give the data set a name (1 to 255 characters)")
    if _suffix(archive.filename or "") is None:
        _close_all(form)
        raise SpecError("file", f"file: {archive.filename!r} is not a .zip, .tar, .tar.gz or .tgz archive")
    return name.strip(), archive


def _close_all(form: object) -> None:
    for _, value in form.multi_items():  # type: ignore[attr-defined]
        if isinstance(value, UploadFile):
            value.file.close()


def _suffix(filename: str) -> str | None:
    lower = filename.lower()
    return next((suffix for suffix in (".tar.gz", ".tgz", ".zip", ".tar") if lower.endswith(suffix)), None)


def _archive_name(archive: UploadFile) -> str:
    return ARCHIVE_SUFFIXES[_suffix(archive.filename or "") or ".zip"]


@router.get("", response_model=DatasetList)
@in_thread
def list_datasets(request: Request, session: SessionDep, owner: OwnerDep) -> DatasetList:
    """Data sets, newest first (a token's own; an admin's: all)."""
    items = datasets.list_datasets(session, owner=owner)
    build_jobs = {job.id: job
                  for job in session.query(Job).filter(Job.id.in_([d.job_id for d in items if d.job_id]))}
    return DatasetList(items=[_public(request, session, dataset, build_jobs.get(dataset.job_id or ""),
                                      with_jobs=False) for dataset in items])


@router.get("/{dataset_id}", response_model=DatasetPublic)
@in_thread
def get_dataset(dataset_id: str, request: Request, session: SessionDep, owner: OwnerDep) -> DatasetPublic:
    """A data set's status, counts, classes, unreadable images (by name), packed sizes, preview link and the
    jobs that used it."""
    dataset = _lookup(session, dataset_id, owner)
    return _public(request, session, dataset, session.get(Job, dataset.job_id) if dataset.job_id else None)


@router.get("/{dataset_id}/preview", response_class=Response, responses={200: {"content": {"image/png": {}}}})
@in_thread_of("store")
def get_preview(dataset_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """A grid of the data set's first images, as a PNG."""
    key = dataset_preview_key(_lookup(session, dataset_id, owner).id)
    if not store.exists(key):
        raise HTTPException(404, f"data set {dataset_id} has no preview yet")
    return object_response(store, key, "image/png")


@router.delete("/{dataset_id}", status_code=204, response_class=Response)
@in_thread_of("store")
def delete_dataset(dataset_id: str, session: SessionDep, store: StoreDep, owner: OwnerDep) -> Response:
    """Delete a data set and its files; 409 while it is being built or a queued or running job uses it."""
    try:
        dataset = datasets.delete_dataset(session, dataset_id, owner=owner)
    except datasets.DatasetNotFound:
        raise _not_found(dataset_id) from None
    store.delete_prefix(dataset_prefix(dataset.id))
    return Response(status_code=204)


def _lookup(session: SessionDep, dataset_id: str, owner: str | None) -> Dataset:
    try:
        return datasets.get_dataset(session, dataset_id, owner=owner)
    except datasets.DatasetNotFound:
        raise _not_found(dataset_id) from None


def _not_found(dataset_id: str) -> HTTPException:
    return HTTPException(404, f"data set {dataset_id[:64]} not found")


def _public(request: Request, session: SessionDep, dataset: Dataset, job: Job | None, *,
            with_jobs: bool = True) -> DatasetPublic:
    status, error = datasets.public_status(dataset, job)
    using = datasets.jobs_using(session, dataset.id) if with_jobs else None
    preview = str(request.url_for("get_preview", dataset_id=dataset.id)) if status == "ready" else None
    return DatasetPublic.from_dataset(dataset, status=status, error=error, preview_url=preview, jobs=using)
