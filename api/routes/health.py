from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy.exc import OperationalError as DatabaseUnreachable
from sqlalchemy.exc import ProgrammingError

from api.deps import CeleryDep, StoreDep
from api.guards import Dependency, DependencyDown
from api.schemas import Health, Readiness
from sagan_service import jobs
from sagan_service.db import no_answer
from sagan_service.queue import check_broker
from sagan_service.storage import StoreUnavailable

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process serves requests. It asks no dependency (that is /readyz), so a hung one can
    neither delay it nor get a live API restarted."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request, store: StoreDep, celery: CeleryDep) -> JSONResponse:
    """Readiness: the database (a query on the jobs table), the broker and the artifact store all
    answer; 503 says which part does not. The three are asked at once, each on its own threads and with
    its short timeout; one known to be down (its breaker open) is not asked again."""
    state = request.app.state

    def query_jobs() -> None:
        with state.read_sessions() as session:
            jobs.list_jobs(session, limit=1)

    probes = {"database": (query_jobs, "database"), "broker": (lambda: check_broker(celery), "broker"),
              "store": (store.check, "store")}
    parts: dict[str, str] = {}

    async def probe(part: str, call: Callable[[], object], dependency: Dependency) -> None:
        parts[part] = await _check(call, dependency)

    async with anyio.create_task_group() as group:
        for part, (call, name) in probes.items():
            group.start_soon(probe, part, call, state.dependencies[name])
    ready = all(state == "ok" for state in parts.values())
    body = Readiness(status="ready" if ready else "unavailable", **parts)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _check(probe: Callable[[], object], dependency: Dependency) -> str:
    """"ok", or what is wrong in a few plain words (the details go to the log); "unreachable" trips the
    dependency's breaker, as a failing request does."""
    try:
        dependency.check()
        await anyio.to_thread.run_sync(probe, limiter=dependency.pool())
    except DependencyDown:
        return "unreachable"
    except Exception as error:  # noqa: BLE001 (whatever fails, readiness reports it)
        log.warning("readiness: %s is not available: %s", dependency.what, error)
        if isinstance(error, StoreUnavailable | BrokerUnreachable | OSError) or (
                isinstance(error, DatabaseUnreachable) and no_answer(error)):
            dependency.trip()
        if isinstance(error, StoreUnavailable):
            return error.problem
        if isinstance(error, DatabaseUnreachable | BrokerUnreachable | OSError):
            return "unreachable"
        if isinstance(error, ProgrammingError):
            return "the jobs table is missing or broken (see `sagan db upgrade`)"
        return f"failing ({type(error).__name__}, see the API's log)"
    return "ok"
