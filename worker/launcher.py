"""The `local` launcher: a job's process tree on this machine (the guard, under it the trainer or torchrun and
its ranks), started, asked to stop, stopped, and its exit status. The supervisor (worker/supervisor.py)
decides when; this module only knows how.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .forkserver import Request
from .processes import ProcessTree, children

log = logging.getLogger(__name__)
# How long a fork server may take to start a job's guard: it answers once its own imports are done, which
# takes seconds on a small, busy machine. Past that the job starts the plain way.
FORKSERVER_ANSWER_S = 60.0


class RunLost(Exception):
    """The launcher lost the run without it ending (a Ray job gone with the cluster's head or node): the
    attempt is requeued to resume from the latest committed checkpoint, not failed (jobs.retry_lost)."""


class Launcher(Protocol):
    """What the supervisor asks of whatever runs a job's processes: LocalLauncher here, RayLauncher
    (worker/ray_launcher.py) on a Ray cluster."""

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def refresh(self) -> None: ...

    def ask_to_stop(self) -> None: ...

    def stop(self, wait: Callable[[float], object]) -> None:
        """Stop the processes and wait (calling `wait(seconds)`) until they have ended."""


class GuardProcess(Protocol):
    """The guard at the top of a local job's tree: a Popen, or a ServedGuard."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...


class ServedGuard:
    """A job guard that the worker's fork server started (worker/forkserver.py), as a Popen-like handle: its
    pid, and its exit status read from the connection the request went over."""

    def __init__(self, connection: socket.socket, pid: int) -> None:
        self.connection, self.pid = connection, pid
        self.returncode: int | None = None
        self.received = b""

    @classmethod
    def start(cls, server: Path, request: Request) -> ServedGuard | None:
        """The guard started for `request`, or None where the server cannot start it."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.settimeout(FORKSERVER_ANSWER_S)
            connection.connect(str(server))
            connection.sendall(request.encode())
            guard = cls(connection, 0)
            word, value = guard.read_line()
            if word != "pid":
                raise ConnectionError(f"the fork server answered {word!r}")
        except OSError as error:  # a closed connection stops whatever the server would start late
            log.warning("the fork server %s did not start the job (%s): starting it the plain way", server,
                        error)
            connection.close()
            return None
        guard.pid = int(value)
        return guard

    def read_line(self) -> tuple[str, str]:
        while b"\n" not in self.received:
            data = self.connection.recv(64)
            if not data:
                raise ConnectionError("the fork server's job guard closed the connection")
            self.received += data
        line, self.received = self.received.split(b"\n", 1)
        word, value = line.decode().split(" ", 1)
        return word, value

    def poll(self) -> int | None:
        if self.returncode is None:
            self.connection.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                self._read_exit()
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self.connection.setblocking(True)
            self._read_exit()
        assert self.returncode is not None
        return self.returncode

    def _read_exit(self) -> None:
        try:
            _, value = self.read_line()
            self.returncode = int(value)
        except ConnectionError:  # the guard died without a word: killed (LocalLauncher.stop's SIGKILL)
            self.returncode = -signal.SIGKILL
        self.connection.close()


class LocalLauncher:
    def __init__(self, process: GuardProcess, grace_seconds: float) -> None:
        self.process, self.grace_seconds = process, grace_seconds
        self.tree = ProcessTree(process.pid)
        self.asked_to_stop: set[int] = set()

    @classmethod
    def start(cls, command: list[str], *, env: dict[str, str], log_path: Path, cwd: Path,
              grace_seconds: float, forkserver: Path | None = None) -> LocalLauncher:
        """Run `command` under worker.guard (which kills the tree if this worker dies), its output appended to
        `log_path`. `grace_seconds`: between SIGTERM and SIGKILL when the tree is stopped. `forkserver`: the
        socket of the worker's fork server, which starts the same tree from its warm imports."""
        if forkserver is not None:
            request = Request(command, env, str(cwd), str(log_path), grace_seconds)
            served = ServedGuard.start(forkserver, request)
            if served is not None:
                return cls(served, grace_seconds)
        guard = [sys.executable, "-m", "worker.guard", "--grace", str(grace_seconds), "--"]
        with open(log_path, "ab") as log_file:
            # Its own session: the guard, and the trainer or torchrun, are one process group to signal.
            process = subprocess.Popen([*guard, *command], stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=cwd)
        return cls(process, grace_seconds)

    def poll(self) -> int | None:
        """The exit status once the tree's top process ended, else None."""
        return self.process.poll()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def refresh(self) -> None:
        """Remember every process of the tree, so that one re-parented later is still stopped."""
        self.tree.refresh()

    def ask_to_stop(self) -> None:
        """SIGTERM the trainer alone (under torchrun: torchrun, which passes it to every rank): it finishes
        its step, checkpoints and exits. Not the group: data-loader workers in it would die and fail the step
        in progress. Call it again while waiting: the guard may not have started its child yet."""
        for pid in set(children(self.process.pid)) - self.asked_to_stop:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            self.asked_to_stop.add(pid)

    def stop(self, wait: Callable[[float], object] = time.sleep) -> None:
        """SIGTERM every process of the tree (torchrun's ranks live in sessions of their own), SIGKILL what is
        left after the grace period; a no-op once all are gone. (It waits the grace period at most, well
        inside a lease: `wait` is not needed.)"""
        self.tree.terminate(self.grace_seconds)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
