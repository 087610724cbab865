"""worker.forkserver: a job's command forked from the server's warm imports runs as `python -m` runs it (its
arguments, environment, working directory, exit status and traceback), under a job guard with worker.guard's
guarantees (nothing outlives a stop or a dead supervisor); without a server the launcher starts it the plain
way. A real server process; the worker's use of it is covered by every service test that trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import start_forkserver, wait_for
from worker.launcher import LocalLauncher, ServedGuard
from worker.processes import descendants, stop_group

REPO = Path(__file__).resolve().parents[1]
PROBE = [sys.executable, "-m", "tests.forkserver_probe"]


class Server:
    def __init__(self, socket_path: Path, process: subprocess.Popen) -> None:
        self.socket_path, self.process = socket_path, process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("forkserver")
    socket_path = folder / "s.sock"
    process = start_forkserver(socket_path, folder / "server.log")
    yield Server(socket_path, process)
    stop_group(process, 5)
    assert not socket_path.exists()  # the server removes its socket when it stops


def launch(args: list[str], tmp_path: Path, forkserver: Path | None) -> LocalLauncher:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROBE": "the job's own"}
    return LocalLauncher.start([*PROBE, *args], env=env, log_path=tmp_path / "job.log", cwd=tmp_path,
                               grace_seconds=2, forkserver=forkserver)


def parent(pid: int) -> int | None:
    """The parent of a live process, None once it is gone (or a zombie)."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None
    return None if state == "Z" else int(ppid)


def finished(launcher: LocalLauncher) -> int:
    return wait_for(lambda: launcher.poll() is not None, 60, "the command to end") and launcher.poll()


def test_a_served_command_sees_what_a_plain_one_sees(server: Server, tmp_path: Path) -> None:
    plain_dir, served_dir = tmp_path / "plain", tmp_path / "served"
    plain_dir.mkdir()
    served_dir.mkdir()
    plain, served = launch(["report", "x y"], plain_dir, None), launch(["report", "x y"], served_dir,
                                                                     server.socket_path)
    assert isinstance(served.process, ServedGuard) and not isinstance(plain.process, ServedGuard)
    assert finished(plain) == 0 and finished(served) == 0
    seen = {name: json.loads((folder / "job.log").read_text()) for name, folder in
            (("plain", plain_dir), ("served", served_dir))}
    for what in seen.values():
        assert what["argv"] == ["report", "x y"] and what["probe"] == "the job's own"
        assert what["sigterm"] == str(signal.SIG_DFL)
    assert seen["plain"]["cwd"] == str(plain_dir) and seen["served"]["cwd"] == str(served_dir)
    # Under the guard, in the guard's session; `ps` shows the job's command, not the server's.
    assert seen["served"]["ppid"] == seen["served"]["pgid"] == served.process.pid
    assert seen["served"]["cmdline"] == " ".join([*PROBE, "report", "x y"])


def test_exit_statuses_and_tracebacks_are_the_plain_ones(server: Server, tmp_path: Path) -> None:
    for forkserver in (None, server.socket_path):
        folder = tmp_path / ("served" if forkserver else "plain")
        folder.mkdir()
        assert finished(launch(["exit", "3"], folder, forkserver)) == 3
        assert finished(launch(["raise"], folder, forkserver)) == 1
        assert (folder / "job.log").read_text().rstrip().endswith("RuntimeError: the probe failed")


def test_the_job_guard_is_the_servers_child_and_a_stop_leaves_nothing(server: Server, tmp_path: Path) -> None:
    launcher = launch(["wait"], tmp_path, server.socket_path)
    guard = launcher.process.pid
    assert parent(guard) == server.process.pid
    wait_for(lambda: "waiting" in (tmp_path / "job.log").read_text(), 30, "the command to start")
    tree = {guard} | descendants(guard)
    assert len(tree) == 2
    launcher.stop()
    assert launcher.poll() is not None
    assert all(parent(pid) is None for pid in tree)


def test_a_dead_supervisor_takes_its_served_tree_down(server: Server, tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from tests.test_forkserver import launch; "
         "launcher = launch(['wait'], Path(sys.argv[1]), Path(sys.argv[2])); "
         "print(launcher.process.pid, flush=True); time.sleep(600)", str(tmp_path), str(server.socket_path)],
        stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert supervisor.stdout is not None
    guard = int(supervisor.stdout.readline())
    wait_for(lambda: "waiting" in (tmp_path / "job.log").read_text(), 30, "the command to start")
    tree = {guard} | descendants(guard)
    supervisor.kill()  # kill -9: no cleanup of its own; the guard sees its connection end
    supervisor.wait()
    wait_for(lambda: all(parent(pid) is None for pid in tree), 15, "the served tree to go")


def test_without_a_server_the_launcher_starts_the_plain_way(tmp_path: Path) -> None:
    launcher = launch(["exit", "0"], tmp_path, tmp_path / "no-server.sock")
    assert isinstance(launcher.process, subprocess.Popen)
    assert finished(launcher) == 0
