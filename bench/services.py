"""What the benchmarks that start the real service share: ports, waiting, processes and a throwaway schema."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from worker.processes import stop_group

PG = os.environ.get("SAGAN_BENCH_PG", "postgresql://root@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """predicate()'s first true value; a request that fails meanwhile counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"waited {timeout:g} s for {what}")


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in its own session (stop() ends its whole tree), its output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    stop_group(process, 30)


@contextlib.contextmanager
def throwaway_schema() -> Iterator[str]:
    """SAGAN_DATABASE_URL of a new PostgreSQL schema, dropped afterwards."""
    schema = f"sagan_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG.replace('postgresql://', 'postgresql+psycopg://')}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")
