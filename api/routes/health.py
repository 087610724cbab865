from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy import text
from sqlalchemy.exc import OperationalError as DatabaseUnreachable
from sqlalchemy.exc import ProgrammingError

from api.deps import CeleryDep, SessionDep, StoreDep, in_thread
from api.schemas import Health, Readiness
from sagan_service import jobs
from sagan_service.queue import check_broker
from sagan_service.storage import StoreUnavailable

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(session: SessionDep) -> Health:
    """Liveness and database reachability."""
    session.execute(text("SELECT 1"))
    return Health(status="ok", database="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
@in_thread
def readyz(session: SessionDep, store: StoreDep, celery: CeleryDep) -> JSONResponse:
    """Readiness: the database (a query on the jobs table), the broker and the artifact store all
    answer; 503 says which part does not."""
    parts = {"database": _check(lambda: jobs.list_jobs(session, limit=1), "database"),
             "broker": _check(lambda: check_broker(celery), "broker"),
             "store": _check(store.check, "artifact store")}
    ready = all(state == "ok" for state in parts.values())
    body = Readiness(status="ready" if ready else "unavailable", **parts)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check(probe: Callable[[], object], what: str) -> str:
    """"ok", or what is wrong in a few plain words (the details go to the log)."""
    try:
        probe()
    except Exception as error:  # noqa: BLE001 (whatever fails, readiness reports it)
        log.warning("readiness: the %s is not available: %s", what, error)
        if isinstance(error, StoreUnavailable):
            return error.problem
        if isinstance(error, (DatabaseUnreachable, BrokerUnreachable, OSError)):
            return "unreachable"
        if isinstance(error, ProgrammingError):
            return "the jobs table is missing or broken (see `sagan db upgrade`)"
        return f"failing ({type(error).__name__}, see the API's log)"
    return "ok"
