"""Engine and session factory, built from settings on demand (never at import)."""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from sagan_core.metrics.runs import json_safe


def make_engine(url: str, *, pre_ping: bool = False, application_name: str | None = None,
                timeout_s: float | None = None, pooled: bool = True) -> Engine:
    """`pre_ping`: test each pooled connection before use and reconnect if the server dropped it (the
    worker and the reaper: a round trip is nothing next to a job; the API goes without, see below).
    `application_name`: shown in PostgreSQL's pg_stat_activity, so an operator sees who holds what.
    `timeout_s`: PostgreSQL's statement_timeout (a statement waiting on a lock counts) and the connect
    timeout; None (migrations) waits. `pooled=False`: a connection per use, none kept open (a process that
    forks children must not hand them its connections)."""
    pool: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               json_serializer=_strict_json, **pool)
        # API and worker write the same file: WAL lets readers run during a write, and the busy
        # timeout above makes a writer wait for the lock instead of failing.
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pool_pre_ping: it costs a round trip on every checkout. After a database restart the first
    # use of a stale connection fails (a 503 from the API) and SQLAlchemy then drops the whole pool.
    connect_args: dict[str, Any] = {} if application_name is None else {"application_name": application_name[:63]}
    if timeout_s is not None:
        # Server options go with the connection (no extra round trip); the URL's own (a search_path) stay.
        options = make_url(url).query.get("options", "")
        connect_args["options"] = f"{options} -c statement_timeout={round(timeout_s * 1000)}".strip()
        connect_args["connect_timeout"] = max(2, math.ceil(timeout_s))  # libpq: whole seconds, at least 2
    sizes = {"pool_size": 10, "max_overflow": 20, "pool_recycle": 1800} if pooled else {}
    return create_engine(url, pool_pre_ping=pre_ping, connect_args=connect_args, json_serializer=_strict_json,
                         **sizes, **pool)


def _strict_json(value: Any) -> str:
    """JSON columns without NaN or infinities (stored as null): PostgreSQL's json type refuses them, and a
    collapsed run's evaluation holds them."""
    return json.dumps(json_safe(value))


def no_answer(error: OperationalError) -> bool:
    """Whether the database gave no answer at all (no connection, a dropped one), rather than an error of one
    statement (a statement timeout, a lock wait): only the first says the database is down."""
    return getattr(error.orig, "sqlstate", None) is None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
