"""`sagan worker`: a real `celery worker` process serving the job queues."""

from __future__ import annotations

import argparse
import os
import socket

from sagan_service.queue import QUEUES
from sagan_service.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run a job worker (Celery)")
    parser.add_argument("--queues", default=",".join(QUEUES),
                        help=f"comma-separated queues to serve (default: all of {','.join(QUEUES)})")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs its jobs may use (default: all it sees)")
    parser.add_argument("--loglevel", default="INFO")
    parser.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    from .app import create_worker_app

    overrides = {} if args.gpus is None else {"gpus": args.gpus}
    settings = Settings(**overrides)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    app = create_worker_app(settings)
    app.worker_main([
        "worker", "--queues", args.queues, "--loglevel", args.loglevel, "--concurrency", "1",
        "--hostname", f"sagan-{os.getpid()}@{socket.gethostname()}",
        # Workers never talk to each other: nothing to gain from gossip/mingle, and the
        # server-less transport of the embedded default supports neither well.
        "--without-gossip", "--without-mingle",
    ])
    return 0
