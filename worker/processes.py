"""The process tree under one root, found by walking /proc, and remembered while it lives.

torchrun starts each rank in its own session, so signalling the guard's process group misses the
ranks; and once torchrun is gone, its ranks are re-parented (to the nearest subreaper, or init) and no
longer descend from the root. So a ProcessTree records every descendant it has seen, each with its start
time (a pid can be reused), and signals all of those still alive, wherever they moved. Linux only,
standard library only (the guard imports it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of a live process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _all_parents() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] != "Z":
            parents[int(entry.name)] = stat[0]
    return parents


def children(pid: int) -> list[int]:
    return [child for child, parent in _all_parents().items() if parent == pid]


def descendants(root: int) -> set[int]:
    """Live (non-zombie) processes below `root` in the current parent links."""
    by_parent: dict[int, list[int]] = {}
    for child, parent in _all_parents().items():
        by_parent.setdefault(parent, []).append(child)
    found, frontier = set(), [root]
    while frontier:
        for child in by_parent.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


class ProcessTree:
    """A root process and every descendant seen by `refresh()`, re-parented or not."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, int] = {}  # pid -> start time, so a reused pid is never signalled

    def refresh(self) -> None:
        for pid in {self.root} | descendants(self.root):
            if pid not in self.seen and (stat := _stat(pid)) is not None:
                self.seen[pid] = stat[2]

    def alive(self) -> list[int]:
        alive = []
        for pid, started in list(self.seen.items()):
            stat = _stat(pid)
            if stat is None or stat[2] != started or stat[1] == "Z":
                del self.seen[pid]
            else:
                alive.append(pid)
        return alive

    def signal(self, signum: int, *, except_pids: tuple[int, ...] = ()) -> None:
        self.refresh()
        for pid in self.alive():
            if pid not in except_pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    def terminate(self, grace: float, *, except_pids: tuple[int, ...] = (), reap: bool = False) -> None:
        """SIGTERM every process of the tree, SIGKILL the ones left after `grace` seconds.

        `reap`: also collect exited children of this process while waiting (a subreaper adopts the
        orphans it kills, and they would stay zombies).
        """
        self.signal(signal.SIGTERM, except_pids=except_pids)
        self._wait_gone(grace, except_pids, reap)
        self.signal(signal.SIGKILL, except_pids=except_pids)
        self._wait_gone(2.0, except_pids, reap)  # SIGKILL is not instant: let the kernel finish them

    def _wait_gone(self, seconds: float, except_pids: tuple[int, ...], reap: bool) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and set(self.alive()) - set(except_pids):
            if reap:
                reap_children()
            time.sleep(0.02)
            self.refresh()  # a process may start children while it stops


def reap_children() -> None:
    """Collect every exited child of this process without blocking."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def prctl(option: int, value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value)


def stop_group(leader: subprocess.Popen[Any], grace_seconds: float) -> None:
    """SIGTERM the process group that `leader` (started with start_new_session) leads, SIGKILL it if the
    leader is still there after `grace_seconds`, and reap the leader."""
    try:
        os.killpg(leader.pid, signal.SIGTERM)
        leader.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    except ProcessLookupError:
        pass
