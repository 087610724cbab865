"""`sagan worker`: a real `celery worker` process serving the job queues, and its companion reaper."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from sagan_core.cli import require_worker_extra
from sagan_service.queue import QUEUES
from sagan_service.settings import Settings

from .processes import stop_group


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run a job worker (Celery)")
    parser.add_argument("--queues", default=None,
                        help=f"comma-separated queues to serve (default: all of {','.join(QUEUES)}; `ray` "
                             "only where SAGAN_RAY_ADDRESS is set)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs its jobs may use (default: all it sees)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--no-reaper", dest="reaper", action="store_false",
                        help="do not start a `sagan reaper` beside the worker (by default every worker runs "
                             "one, so dead workers' jobs and lost messages are recovered with no API up)")
    parser.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    require_worker_extra()
    from .app import create_worker_app

    overrides = {} if args.gpus is None else {"gpus": args.gpus}
    settings = Settings(**overrides)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    queues = args.queues.split(",") if args.queues else default_queues(settings)
    reaper = _start_reaper(settings) if args.reaper else None
    # A worker of the `ray` queue alone starts no process of its jobs here: no fork server. One that
    # SAGAN_FORKSERVER_SOCKET names is shared; otherwise the worker starts its own.
    serves_local_jobs = set(queues) != {"ray"}
    forkserver = settings.forkserver_socket if serves_local_jobs else None
    own_forkserver = None
    if serves_local_jobs and forkserver is None:
        own_forkserver = _start_forkserver(settings)
        forkserver = own_forkserver[1]
    app = create_worker_app(settings, forkserver=forkserver)
    try:
        app.worker_main([
            "worker", "--queues", ",".join(queues), "--loglevel",
                         args.loglevel, "--concurrency", "1",
            "--hostname", f"sagan-{os.getpid()}@{socket.gethostname()}",
            # Workers never talk to each other: nothing to gain from gossip/mingle, and the
            # server-less transport of the embedded default supports neither well.
            "--without-gossip", "--without-mingle",
        ])
    finally:
        if reaper is not None:
            stop_group(reaper, 15)  # the guard and the reaper: it finishes its pass
        if own_forkserver is not None:
            stop_group(own_forkserver[0], 5)
            # The server removes its folder as it exits; not if it had to be killed.
            shutil.rmtree(own_forkserver[1].parent, ignore_errors=True)
    return 0


def default_queues(settings: Settings) -> list[str]:
    """Every queue, but `ray` (trainings over several machines) only for a worker that can reach Ray."""
    return [queue for queue in QUEUES if queue != "ray" or settings.ray_address is not None]


def _start_reaper(settings: Settings) -> subprocess.Popen:
    return _start_guarded(settings, ["-m", "sagan_core.cli", "reaper"])


def _start_forkserver(settings: Settings) -> tuple[subprocess.Popen, Path]:
    """The fork server (worker/forkserver.py) and its socket, in a private folder of its own: a socket's
    path must be short (108 bytes), which a work directory need not be. The server removes the folder when
    it exits, so a worker killed outright (its guard stops the server) leaves none behind."""
    socket_path = Path(tempfile.mkdtemp(prefix="sagan-worker-")) / "forkserver.sock"
    command = ["-m", "worker.forkserver", "--socket", str(socket_path), "--own-folder"]
    return _start_guarded(settings, command), socket_path


def _start_guarded(settings: Settings, python_args: list[str]) -> subprocess.Popen:
    # Under the guard, so it goes when this process goes, even by kill -9; a process of its own (not a
    # thread here), because Celery forks its pool children from this process.
    guard = [sys.executable, "-m", "worker.guard", "--grace", str(settings.cancel_grace_seconds), "--"]
    return subprocess.Popen([*guard, sys.executable, *python_args], start_new_session=True,
                            stdin=subprocess.DEVNULL)


