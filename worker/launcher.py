"""The `local` launcher: a job's process tree on this machine (the guard, under it the trainer or torchrun and
its ranks), started, asked to stop, stopped, and its exit status. The supervisor (worker/supervisor.py)
decides when; this module only knows how.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .processes import ProcessTree, children


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


class LocalLauncher:
    def __init__(self, process: subprocess.Popen, grace_seconds: float) -> None:
        self.process, self.grace_seconds = process, grace_seconds
        self.tree = ProcessTree(process.pid)
        self.asked_to_stop: set[int] = set()

    @classmethod
    def start(cls, command: list[str], *, env: dict[str, str], log_path: Path, cwd: Path,
              grace_seconds: float) -> LocalLauncher:
        """Run `command` under worker.guard (which kills the tree if this worker dies), its output appended to
        `log_path`. `grace_seconds`: between SIGTERM and SIGKILL when the tree is stopped."""
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
