"""Dependencies: the per-request database session and the app-wide services built at startup."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, ParamSpec, TypeVar

import anyio
from celery import Celery
from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.guards import Dependency
from sagan_service import auth
from sagan_service.auth import Principal
from sagan_service.logs import JOB_ID
from sagan_service.settings import Settings
from sagan_service.storage import ArtifactStore


async def get_session(request: Request) -> AsyncIterator[Session]:
    # A GET only reads: in autocommit mode it skips the BEGIN and ROLLBACK round trips, which were
    # a third of the cost of GET /jobs/{id}.
    request.app.state.dependencies["database"].check()  # fail fast while the database is known to be down
    factory = request.app.state.read_sessions if request.method == "GET" else request.app.state.sessions
    # Async, so opening and closing need no trip through the thread pool: a Session does no I/O
    # until it is used, and closing one that committed or only read does none (a rollback after an
    # error is the exception).
    session = factory()
    try:
        yield session
    finally:
        session.close()


def in_thread(endpoint: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """Run a blocking endpoint in the thread pool in one trip.

    FastAPI runs a plain `def` endpoint in the pool and then goes back to the pool to validate its
    response model; on a busy 2-core machine every trip is a wait for the GIL among the pool's
    threads. Wrapped this way, the endpoint is a coroutine to FastAPI (validation runs on the loop).
    """

    @functools.wraps(endpoint)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await run_in_threadpool(endpoint, *args, **kwargs)

    return run


def in_thread_of(name: str) -> Callable[[Callable[P, R]], Callable[P, Awaitable[R]]]:
    """`in_thread`, on the threads of dependency `name` (app.state.dependencies: "store", "broker") instead of
    the shared pool, behind its breaker: a request arriving, or getting a thread, while the dependency is
    known to be down gets a 503 at once, and the dependency's own failure (Dependency.failure) trips it."""

    def decorate(endpoint: Callable[P, R]) -> Callable[P, Awaitable[R]]:
        signature = inspect.signature(endpoint)
        # FastAPI gives the Request to one parameter only: the endpoint's own `request` if it has one.
        own_request = "request" in signature.parameters

        @functools.wraps(endpoint)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            request: Request = kwargs["request"] if own_request else kwargs.pop(_REQUEST)  # type: ignore[assignment]
            dependency: Dependency = request.app.state.dependencies[name]
            dependency.check()

            def guarded() -> R:
                dependency.check()  # it may have failed while this request waited for a thread
                try:
                    return endpoint(*args, **kwargs)
                except dependency.failure:
                    dependency.trip()
                    raise

            return await anyio.to_thread.run_sync(guarded, limiter=dependency.pool())

        if not own_request:  # FastAPI reads the parameters from __signature__: add the one the wrapper needs
            extra = inspect.Parameter(_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
            run.__signature__ = signature.replace(  # type: ignore[attr-defined]
                parameters=[*signature.parameters.values(), extra])
        return run

    return decorate


_REQUEST = "guarded_request"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_principal(request: Request) -> Principal:
    """Who the request acts for: the token of `Authorization: Bearer <token>`, or 401. With
    SAGAN_AUTH=none, auth.LOCAL. A known token is served from memory (auth.TokenCache), so only the first
    request of a token in a while costs a database query."""
    settings: Settings = request.app.state.settings
    if settings.auth == "none":
        return auth.LOCAL
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("this API needs a token: send `Authorization: Bearer <token>` "
                            "(an operator creates one with `sagan token create --name NAME`)")
    cache: auth.TokenCache = request.app.state.tokens
    principal = cache.get(token)
    if principal is None:
        if len(token) <= 256:  # longer is no token of ours: no need to ask the database
            principal = await run_in_threadpool(_lookup, request.app.state.read_sessions, token)
        if principal is None:
            raise _unauthorized("unknown or revoked token")
        cache.put(token, principal)
    return principal


def _lookup(sessions: sessionmaker[Session], token: str) -> Principal | None:
    with sessions() as session:
        return auth.lookup(session, token)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


async def get_owner_filter(principal: Annotated[Principal, Depends(get_principal)]) -> str | None:
    """Whose jobs the request may touch (None: every job, for admins). Routes pass it to the job lookups of
    sagan_service.jobs, which treat another owner's job as not found."""
    return principal.owner_filter


async def job_log_context(request: Request) -> None:
    """Lines the API logs while serving /jobs/{job_id}... carry the job's id (sagan_service.logs)."""
    job_id = request.path_params.get("job_id")
    if job_id is not None:
        JOB_ID.set(job_id[:64])


P = ParamSpec("P")
R = TypeVar("R")

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
OwnerDep = Annotated[str | None, Depends(get_owner_filter)]
