"""The FastAPI app factory: `uvicorn --factory api.main:create_app`, or `sagan api`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from api import ui
from api.routes import health, presets, studies
from api.routes import jobs as job_routes
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobs import JobConflict, JobNotFound
from sagan_service.queue import make_celery
from sagan_service.reaper import reap_once
from sagan_service.settings import Settings
from sagan_service.specs import SpecError
from sagan_service.storage import StoreUnavailable, open_store

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.database)  # migrated by `sagan api` before its workers start
        app.state.settings = settings
        app.state.sessions = make_session_factory(engine)
        app.state.read_sessions = make_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))
        app.state.store = open_store(settings)
        app.state.celery = make_celery(settings)
        # Blocking work (database, S3) runs in a few threads: with the default 40, requests on a small
        # machine mostly wait for the GIL among them (GET /jobs/{id} throughput halves).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        stop_reaper = asyncio.Event()
        reaper = asyncio.create_task(_reap_until(stop_reaper, app))
        # Everything built so far lives as long as the process: keep it out of the collector's scans,
        # which otherwise stall a request now and then (the p99 of GET /jobs/{id}).
        gc.freeze()
        yield
        stop_reaper.set()
        await reaper  # a pass in flight finishes before the engine goes
        engine.dispose()

    app = FastAPI(title="SAGAN job service", version="0.1.0", lifespan=lifespan,
                  description="Submit SAGAN training and sampling jobs; follow their progress and artifacts.")
    app.include_router(health.router)
    app.include_router(job_routes.router)
    app.include_router(presets.router)
    app.include_router(studies.router)
    app.include_router(ui.router)  # the web pages, at / and under /ui
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(JobConflict, _conflict)
    app.add_exception_handler(SpecError, _invalid_spec)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(StoreUnavailable, _store_down)
    return app


async def _reap_until(stop: asyncio.Event, app: FastAPI) -> None:
    """Requeue jobs whose worker died, resend lost messages; API replicas and workers' reapers may all
    run this (the UPDATEs are conditional)."""
    while not stop.is_set():
        await run_in_threadpool(reap_once, app.state.sessions, app.state.celery, app.state.settings)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), app.state.settings.reaper_seconds)


async def _not_found(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"job {error} not found"}, status_code=404)


async def _conflict(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=409)


async def _invalid_spec(_request: Request, error: Exception) -> JSONResponse:
    # The same shape as FastAPI's own validation errors, so clients parse one format.
    assert isinstance(error, SpecError)
    detail = [{"loc": ["body", *error.loc], "msg": str(error), "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


async def _database_down(_request: Request, error: Exception) -> JSONResponse:
    log.error("database error: %s", error)
    return JSONResponse({"detail": "database unavailable"}, status_code=503)


async def _store_down(_request: Request, error: Exception) -> JSONResponse:
    log.error("artifact store error: %s", error)
    return JSONResponse({"detail": "the artifact store is unreachable right now; try again shortly"},
                        status_code=503, headers={"Retry-After": "10"})
