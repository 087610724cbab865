"""Engine and session factory, built from settings on demand (never at import)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, Dialect, Engine, Result, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

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
    connect_args: dict[str, Any] = ({} if application_name is None
                                    else {"application_name": application_name[:63]})
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
    try:
        return json.dumps(value, allow_nan=False)  # the common case, without a copy of the value
    except ValueError:
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


def run_and_commit(session: Session,
                   statements: Sequence[tuple[Executable, Mapping[str, Any]]]) -> list[list[tuple]]:
    """Execute (statement, parameters) pairs in order in the session's transaction, commit, and return each
    statement's rows.

    On PostgreSQL they all go in one round trip (psycopg's pipeline mode): the server runs them one after
    the other as usual, so each still sees what the ones before it did and committed, but the client waits
    once instead of once per statement and for the COMMIT. That is most of the CPU a POST /jobs costs.
    Errors come out as connection.execute raises them (sqlalchemy's IntegrityError, OperationalError), and
    a connection the server dropped is invalidated, so the pool never hands it out again. Elsewhere the
    statements run one by one."""
    connection = session.connection()
    if connection.dialect.driver != "psycopg":
        results = [connection.execute(statement, dict(parameters)) for statement, parameters in statements]
        rows = [[tuple(row) for row in result] if result.returns_rows else [] for result in results]
        session.commit()
        return rows
    import psycopg

    raw = connection.connection.driver_connection
    assert raw is not None  # a pool connection's driver connection: open while `connection` is
    queries = [_driver_query(statement, parameters, connection.dialect)
               for statement, parameters in statements]
    try:
        with raw.pipeline():
            cursors = [raw.execute(sql, values) for sql, values in queries]
            raw.commit()
    except psycopg.Error as error:
        sql, values = queries[0]
        # psycopg.Error is a DB-API Error; SQLAlchemy types the argument as its own DB-API protocol's
        disconnected = connection.dialect.is_disconnect(cast(Any, error), raw, None)
        if disconnected:
            connection.invalidate(error)
        raise DBAPIError.instance(sql, values, error, psycopg.Error, connection_invalidated=disconnected,
                                  dialect=connection.dialect) from error
    session.commit()  # the driver committed already: this only ends the session's transaction (no round trip)
    return [list(map(tuple, cursor.fetchall())) if cursor.description else [] for cursor in cursors]


def _driver_query(statement: Executable, parameters: Mapping[str, Any], dialect: Dialect) -> tuple[str, dict]:
    """The SQL text and driver-ready parameter values of `statement` (compiled once per dialect): what
    connection.execute hands the driver."""
    sql, processors, compiled = _compiled(statement, dialect)
    values = compiled.construct_params(dict(parameters))
    return sql, {name: processors[name](value) if name in processors else value
                 for name, value in values.items()}


@functools.cache
def _compiled(statement: Executable, dialect: Dialect) -> tuple[str, dict[str, Any], Any]:
    # Every statement here is a Core statement (a ClauseElement), which compiles to a SQLCompiler (the class
    # with `binds`); Executable, their declared type, declares neither.
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
    processors = {name: processor for name, bind in compiled.binds.items()
                  if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}
    return compiled.string, processors, compiled


def rows_matched(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. Session.execute is typed to return a Result, but for those
    statements it is a CursorResult, the class that has the count (hence the cast)."""
    return cast("CursorResult[Any]", result).rowcount
