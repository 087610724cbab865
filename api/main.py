"""The FastAPI app factory: `uvicorn --factory api.main:create_app`, or `sagan api`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from api import ui
from api.deps import get_principal, job_log_context
from api.guards import Dependency, DependencyDown
from api.limits import BodyLimit
from api.metrics import RequestLatency, make_registry
from api.routes import attention as attention_routes
from api.routes import datasets as dataset_routes
from api.routes import health, monitoring, presets, studies
from api.routes import jobs as job_routes
from api.routes import logs as log_routes
from api.routes import webhooks as webhook_routes
from sagan_service.auth import TokenCache
from sagan_service.db import make_engine, make_session_factory, no_answer
from sagan_service.jobs import JobConflict, JobNotFound
from sagan_service.limits import GIB
from sagan_service.queue import QueueUnavailable, make_celery
from sagan_service.reaper import reap_once
from sagan_service.settings import Settings
from sagan_service.specs import SpecError
from sagan_service.storage import StoreUnavailable, open_store
from sagan_service.submit import IdempotencyKeyReused, OwnerOverLimit
from sagan_service.webhook_sender import WebhookSender

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        # Migrated by `sagan api` before its workers start.
        engine = make_engine(settings.database, timeout_s=settings.api_timeout_seconds)
        app.state.settings = settings
        app.state.sessions = make_session_factory(engine)
        app.state.read_sessions = make_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))
        app.state.store = open_store(settings, for_requests=True)
        app.state.celery = make_celery(settings, for_requests=True)
        app.state.dependencies = make_dependencies(settings)
        app.state.tokens = TokenCache(settings.token_cache_seconds)
        app.state.metrics_registry, app.state.request_latency = make_registry(app.state.read_sessions)
        # Blocking work (database, S3) runs in a few threads: with the default 40, requests on a small
        # machine mostly wait for the GIL among them (GET /jobs/{id} throughput halves).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        stop_reaper = asyncio.Event()
        reaper = asyncio.create_task(_reap_until(stop_reaper, app))
        sender = WebhookSender.start(app.state.sessions,
                                     settings)  # a thread: a slow receiver holds up no request
        # Everything built so far lives as long as the process: keep it out of the collector's scans,
        # which otherwise stall a request now and then (the p99 of GET /jobs/{id}).
        gc.freeze()
        yield
        stop_reaper.set()
        await reaper  # a pass in flight finishes before the engine goes
        if sender is not None:
            await run_in_threadpool(sender.stop)
        engine.dispose()

    docs: dict[str, Any] = ({} if settings.docs_public
                            else {"docs_url": None, "redoc_url": None, "openapi_url": None})
    app = FastAPI(title="SAGAN job service", version="0.1.0", lifespan=lifespan, **docs,
                  description="Submit SAGAN training and sampling jobs; follow their progress and artifacts. "
                              "Send `Authorization: Bearer <token>` (docs/security.md).")
    authenticated = [Depends(get_principal)]  # a 401 unless SAGAN_AUTH=none
    app.include_router(health.router)  # open: load balancers and orchestrators probe it
    app.include_router(job_routes.router, dependencies=[*authenticated, Depends(job_log_context)])
    app.include_router(webhook_routes.router, dependencies=[*authenticated, Depends(job_log_context)])
    app.include_router(log_routes.router, dependencies=[*authenticated, Depends(job_log_context)])
    app.include_router(dataset_routes.router, dependencies=authenticated)
    app.include_router(presets.router, dependencies=authenticated)
    app.include_router(studies.router, dependencies=authenticated)
    app.include_router(attention_routes.router, dependencies=[*authenticated, Depends(job_log_context)])
    app.include_router(monitoring.router)  # its route asks for an admin token itself
    # The web pages are open: HTML shells without data, whose scripts call the REST API with the token
    # the user entered (kept in the browser).
    app.include_router(ui.router)
    if not settings.docs_public:
        _add_private_docs(app, authenticated)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       streamed={"/datasets": int(settings.max_upload_gb * GIB)})
    app.add_middleware(RequestLatency)  # outermost: a 413 is timed too
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(JobConflict, _conflict)
    app.add_exception_handler(SpecError, _invalid_spec)
    app.add_exception_handler(IdempotencyKeyReused, _key_reused)
    app.add_exception_handler(OwnerOverLimit, _over_owner_limit)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(StoreUnavailable, _store_down)
    app.add_exception_handler(QueueUnavailable, _queue_down)
    app.add_exception_handler(DependencyDown, _dependency_down)
    return app


def make_dependencies(settings: Settings) -> dict[str, Dependency]:
    """The guarded dependencies (api/guards.py). Every route needs the database: its calls use the shared
    api_threads, and its breaker trips where no answer came (_database_down), not on a statement timeout."""
    threads, cooldown = settings.api_dependency_threads, settings.fail_fast_seconds
    return {"store": Dependency("the artifact store", threads, cooldown, StoreUnavailable),
            "broker": Dependency("the job queue", threads, cooldown, QueueUnavailable),
            "database": Dependency("the database", None, cooldown, OperationalError)}


def _add_private_docs(app: FastAPI, authenticated: list) -> None:
    """/openapi.json, /docs and /redoc behind a token (SAGAN_DOCS_PUBLIC=false): for clients such as curl
    or a generator that send one; a browser opening /docs gets a 401."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=authenticated)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=authenticated)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/redoc", include_in_schema=False, dependencies=authenticated)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=app.title)


async def _reap_until(stop: asyncio.Event, app: FastAPI) -> None:
    """Requeue jobs whose worker died, resend lost messages; API replicas and workers' reapers may all
    run this (the UPDATEs are conditional)."""
    while not stop.is_set():
        await run_in_threadpool(reap_once, app.state.sessions, app.state.celery, app.state.settings,
                                app.state.store)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), app.state.settings.reaper_seconds)


_SURROGATE = re.compile("[\ud800-\udfff]")


class ErrorResponse(JSONResponse):
    """A JSON answer whose text may quote the request (a field name, an arm's name): a lone surrogate there
    ("\\ud800" is valid JSON but no character) becomes U+FFFD instead of failing the answer with a 500."""

    def render(self, content: object) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return _SURROGATE.sub("\ufffd", text).encode()


async def _invalid_request(_request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 without the `input` it would echo (a client's secret or a megabyte of text would come
    back, and land in whatever logs the answer)."""
    assert isinstance(error, RequestValidationError)
    detail = [_without_input(item) for item in error.errors()]
    return ErrorResponse({"detail": jsonable_encoder(detail)}, status_code=422)


def _without_input(item: dict) -> dict:
    item = {key: value for key, value in item.items() if key not in ("input", "url")}
    if item.get("type") == "union_tag_invalid":  # pydantic quotes the tag it got (`kind`) in msg and ctx
        ctx = item.get("ctx", {})
        expected, field = ctx.get("expected_tags", ""), ctx.get("discriminator", "")
        item["msg"] = f"Input tag of {field} should be one of {expected}"
        item["ctx"] = {"discriminator": field, "expected_tags": expected}
    return item


async def _not_found(_request: Request, error: Exception) -> JSONResponse:
    # The id as sent, cut short: a path may be long, and the answer is no place for it.
    return JSONResponse({"detail": f"job {str(error)[:64]} not found"}, status_code=404)


async def _conflict(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=409)


async def _invalid_spec(_request: Request, error: Exception) -> JSONResponse:
    # The same shape as FastAPI's own validation errors, so clients parse one format.
    assert isinstance(error, SpecError)
    detail = [{"loc": ["body", *error.loc], "msg": str(error), "type": "value_error"}]
    return ErrorResponse({"detail": detail}, status_code=422)


async def _key_reused(_request: Request, error: Exception) -> JSONResponse:
    # Where FastAPI would put a fault in the Idempotency-Key header.
    detail = [{"loc": ["header", "idempotency-key"], "type": "value_error", "msg": str(error)}]
    return ErrorResponse({"detail": detail}, status_code=422)


async def _over_owner_limit(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OwnerOverLimit)
    return JSONResponse({"detail": str(error)}, status_code=429,
                        headers={"Retry-After": str(error.retry_after_s)})


async def _database_down(request: Request, error: Exception) -> JSONResponse:
    log.error("database error: %s", error)
    assert isinstance(error, OperationalError)
    if no_answer(error):  # not a statement that timed out: that says nothing of the others
        request.app.state.dependencies["database"].trip()
    return JSONResponse({"detail": "database unavailable"}, status_code=503, headers={"Retry-After": "10"})


async def _queue_down(_request: Request, error: Exception) -> JSONResponse:
    log.error("job queue error: %s", error)
    return JSONResponse({"detail": "the job queue is unreachable; try again shortly"}, status_code=503,
                        headers={"Retry-After": "10"})


async def _dependency_down(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DependencyDown)
    return JSONResponse({"detail": str(error)}, status_code=503,
                        headers={"Retry-After": str(math.ceil(error.retry_after))})


async def _store_down(_request: Request, error: Exception) -> JSONResponse:
    log.error("artifact store error: %s", error)
    return JSONResponse({"detail": "the artifact store is unreachable right now; try again shortly"},
                        status_code=503, headers={"Retry-After": "10"})
