"""Riding out short faults of the database and the artifact store, and naming them when they last.

A dropped connection, a restarting S3 server or a folder that is read-only for a moment must not fail
a job that trains for days. The worker retries such errors with backoff and keeps training; only an
outage longer than SAGAN_DEPENDENCY_OUTAGE_SECONDS fails the job, with an error that names the
dependency in plain words.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from sagan_service.storage import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 10.0


class DependencyDown(Exception):
    """A dependency stayed unreachable past the outage window; the message is meant for people."""


def is_transient(error: BaseException) -> bool:
    """Worth waiting out: the store or the database cannot be reached, not a wrong request."""
    if isinstance(error, StoreUnavailable):
        return True
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def describe_database(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"the database (SQLite file {parsed.database})"
    return f"the database ({parsed.get_backend_name()} at {parsed.host}:{parsed.port or 5432})"


class Outage:
    """How long one dependency has been failing; `failed` says how long to wait before the next try."""

    def __init__(self, dependency: str, window_s: float) -> None:
        self.dependency, self.window_s = dependency, window_s
        self.since: float | None = None
        self.failures = 0

    def failed(self, error: BaseException) -> float:
        """Note a failed call; the delay before the next try, or DependencyDown past the window."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("%s is unavailable, retrying for up to %.0f s: %s", self.dependency, self.window_s,
                        error)
        self.failures += 1
        if now - self.since >= self.window_s:
            problem = error.problem if isinstance(error, StoreUnavailable) else "unreachable"
            raise DependencyDown(f"{self.dependency} was {problem} for {now - self.since:.0f} s") from error
        delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (self.failures - 1))
        return min(delay, max(0.0, self.since + self.window_s - now))

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("%s is back after %.1f s", self.dependency, time.monotonic() - self.since)
        self.since, self.failures = None, 0


def retry(call: Callable[[], T], outage: Outage, wait: Callable[[float], object] = time.sleep) -> T:
    """call() until it succeeds, waiting out transient errors; `wait(seconds)` does the waiting (the
    supervisor keeps its lease alive meanwhile)."""
    while True:
        try:
            result = call()
        except Exception as error:
            if not is_transient(error):
                raise
            wait(outage.failed(error))
        else:
            outage.recovered()
            return result
