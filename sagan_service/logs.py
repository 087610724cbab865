"""Log lines of the API, the workers (and the supervisors of their jobs) and the reaper, in one format:
SAGAN_LOG_FORMAT=json (one JSON object per line, for a log collector) or text (for people).

Every line written while a job is in hand carries its id: the supervisor of an attempt and its outbox
thread, and the API's job routes, set it in a context variable (job_context, JOB_ID) that the formatters
read, so no call site has to repeat it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from .settings import Settings

JOB_ID: ContextVar[str | None] = ContextVar("sagan_job_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged inside carry `job_id`."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", "process"[, "job_id"][, "exception"]} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "process": record.process}
        job_id = JOB_ID.get()
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with `[job <id>]` after the level while a job is in hand."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        job_id = JOB_ID.get()
        return line if job_id is None else line.replace(f"{record.levelname} ",
                                                        f"{record.levelname} [job {job_id}] ", 1)


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(settings: Settings, level: int | str = logging.INFO) -> None:
    """One stderr handler on the root logger in the configured format (replacing any there)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging config (applied in each of its worker processes): its own loggers and the app's
    through one handler in the configured format."""
    formatter = {"()": f"{__name__}.make_formatter", "log_format": settings.log_format}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"sagan": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "sagan",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {name: {"handlers": [], "propagate": True, "level": "INFO"}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
