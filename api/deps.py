"""Dependencies: the per-request database session and the app-wide services built at startup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from sagan_service.settings import Settings
from sagan_service.storage import ArtifactStore


def get_session(request: Request) -> Iterator[Session]:
    # A GET only reads: in autocommit mode it skips the BEGIN and ROLLBACK round trips, which were
    # a third of the cost of GET /jobs/{id}.
    factory = request.app.state.read_sessions if request.method == "GET" else request.app.state.sessions
    with factory() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
