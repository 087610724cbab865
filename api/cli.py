"""`sagan api`: serve the REST API with uvicorn."""

from __future__ import annotations

import argparse

# A stopping API waits this long for the requests in flight, then cuts them: a followed log (GET
# /jobs/{id}/logs?follow=true, a job page's log pane) lasts as long as its job and would hold it for that
# long.
GRACEFUL_SHUTDOWN_SECONDS = 15


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("api", help="serve the job REST API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.set_defaults(func=run_api)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from sagan_service.cli import run_db_upgrade
    from sagan_service.logs import uvicorn_log_config
    from sagan_service.settings import Settings

    # Once, here: in each worker's start-up, N workers would race to migrate a fresh database.
    run_db_upgrade(argparse.Namespace(revision="head"))

    # No per-request access log (CPU on every request; a proxy in front logs requests); errors still log.
    uvicorn.run("api.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                access_log=False, log_config=uvicorn_log_config(Settings()),
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    return 0
