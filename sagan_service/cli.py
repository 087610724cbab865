"""`sagan db upgrade|downgrade`, `sagan reaper` and `sagan up` (the embedded service: API + one worker,
no servers)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .settings import Settings

# A CPU-sized demo that visibly learns: SAGAN at 32x32 (the seed's widths) on the built-in `shapes` (one large
# shape per image; on `synthetic` 1000 steps give only colour fields), about 7 minutes on 2 cores. Samples
# come from an EMA of G (from step 100), a grid every 100 steps, and SWD on 512 samples every 250 steps: it
# fell from 226 to 81 in the run measured for BENCHMARKS.md. (debug32 is faster but too narrow to learn.)
DEMO_CONFIG = {"preset": "sagan32", "dataset": "shapes", "steps": 1000, "ema_decay": 0.995, "ema_start": 100,
               "sample_every": 100, "checkpoint_every": 250, "log_every": 10, "eval_every": 250,
               "eval_metrics": ["swd"], "eval_n": 512, "num_workers": 1, "device": "cpu"}


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="manage the job database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate to a revision (default: the newest)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(func=run_db_upgrade)
    downgrade = db_commands.add_parser("downgrade", help="migrate back to a revision ('base' = empty)")
    downgrade.add_argument("revision")
    downgrade.set_defaults(func=run_db_downgrade)

    reaper = subparsers.add_parser("reaper",
                                   help="requeue jobs of dead workers and resend lost queue messages "
                                                  "(the API and every worker already run one)")
    reaper.set_defaults(func=run_reaper_command)

    token = subparsers.add_parser("token", help="manage API tokens (docs/security.md)")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create",
                                       help="create a token and print it (once: only its hash is kept)")
    create.add_argument("--name", required=True, help="who it is for; the owner of the jobs it submits")
    create.add_argument("--admin", action="store_true", help="sees and manages every owner's jobs")
    create.set_defaults(func=run_token_create)
    listing = token_commands.add_parser("list", help="list the tokens (names, admin, created)")
    listing.set_defaults(func=run_token_list)
    revoke = token_commands.add_parser("revoke", help="revoke a token (API processes forget it within "
                                                      "SAGAN_TOKEN_CACHE_SECONDS)")
    revoke.add_argument("name")
    revoke.set_defaults(func=run_token_revoke)
    secret = token_commands.add_parser(
        "secret", help="print the secret that signs NAME's webhooks (docs/service.md: Webhooks); `local`: "
                       "SAGAN_AUTH=none's")
    secret.add_argument("name")
    secret.set_defaults(func=run_token_secret)

    up = subparsers.add_parser("up", help="run the whole service locally: API + one worker, no servers")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--demo", action="store_true", help="submit a small CPU training job on synthetic data")
    up.set_defaults(func=run_up)


def run_db_upgrade(args: argparse.Namespace) -> int:
    from .db import make_engine
    from .migrate import upgrade

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(settings.database), args.revision)
    return 0


def run_db_downgrade(args: argparse.Namespace) -> int:
    from .db import make_engine
    from .migrate import downgrade

    downgrade(make_engine(Settings().database), args.revision)
    return 0


def _token_session():
    from .db import make_engine, make_session_factory

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    run_db_upgrade(argparse.Namespace(revision="head"))  # the tokens table may be new
    return make_session_factory(make_engine(settings.database))()


def run_token_create(args: argparse.Namespace) -> int:
    from .auth import TokenError, create_token

    with _token_session() as session:
        try:
            token = create_token(session, name=args.name, admin=args.admin)
        except TokenError as error:
            print(f"sagan token create: {error}", file=sys.stderr)
            return 2
    print(token)
    print(f"token for {args.name}{' (admin)' if args.admin else ''}: shown only now; send it as "
          "`Authorization: Bearer <token>`; its webhooks' signing secret: "
          f"`sagan token secret {args.name}`", file=sys.stderr)
    return 0


def run_token_list(_args: argparse.Namespace) -> int:
    from .auth import list_tokens

    with _token_session() as session:
        for row in list_tokens(session):
            print(f"{row.name}	{'admin' if row.admin else 'user'}	{row.created_at:%Y-%m-%d %H:%M:%S}")
    return 0


def run_token_revoke(args: argparse.Namespace) -> int:
    from .auth import revoke_token

    with _token_session() as session:
        if not revoke_token(session, name=args.name):
            print(f"sagan token revoke: no token named {args.name!r}", file=sys.stderr)
            return 1
    return 0


def run_token_secret(args: argparse.Namespace) -> int:
    from .webhooks import owner_secret

    with _token_session() as session:
        secret = owner_secret(session, args.name, Settings())
    if secret is None:
        print(f"sagan token secret: no token named {args.name!r}", file=sys.stderr)
        return 1
    print(secret)
    return 0


def run_reaper_command(_args: argparse.Namespace) -> int:
    from .logs import configure_logging
    from .reaper import run_reaper, stop_on_signals

    settings = Settings()
    configure_logging(settings)
    run_reaper(settings, stop_on_signals())
    return 0


def run_up(args: argparse.Namespace) -> int:
    from sagan_core.cli import require_worker_extra

    require_worker_extra()  # `sagan up` runs a worker
    # Without SAGAN_AUTH, tokens are off only where no other machine can reach the port.
    auth = os.environ.get("SAGAN_AUTH") or ("none" if _loopback(args.host) else "tokens")
    settings = Settings(auth=auth)
    settings.home.mkdir(parents=True, exist_ok=True)
    # Children inherit SAGAN_HOME made absolute, so they all agree on one folder whatever their cwd.
    env = {**os.environ, "SAGAN_HOME": str(settings.home), "SAGAN_AUTH": settings.auth}
    run_db_upgrade(argparse.Namespace(revision="head"))
    refusal = _unsafe_to_serve(args, settings)
    if refusal:
        print(f"sagan up: {refusal}", file=sys.stderr)
        return 2
    sagan = [sys.executable, "-m", "sagan_core.cli"]
    children = [
        subprocess.Popen([*sagan, "api", "--host", args.host, "--port", str(args.port)], env=env),
        subprocess.Popen([*sagan, "worker"], env=env),
    ]
    base_url = f"http://{args.host}:{args.port}"
    print(f"sagan up: web page {base_url}/ (API docs: {base_url}/docs), data in {settings.home}", flush=True)
    stop = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        _wait_until_healthy(base_url, children)
        demo = _submit_demo(base_url, settings) if args.demo else None
        next_look = time.monotonic()
        while not stop and all(child.poll() is None for child in children):
            if demo is not None and time.monotonic() >= next_look:
                next_look = time.monotonic() + 5
                if demo.look():
                    demo = None
            time.sleep(0.5)
    finally:
        _shutdown(children, grace_s=settings.shutdown_seconds + 15)
    return 0 if stop else 1


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _unsafe_to_serve(args: argparse.Namespace, settings: Settings) -> str | None:
    """Why `sagan up` must not start as asked, or None."""
    if settings.auth == "none" and not _loopback(args.host):
        return (f"--host {args.host} lets other machines reach the service, and SAGAN_AUTH=none would let "
                "anyone on them run jobs: set SAGAN_AUTH=tokens (the default off loopback) and create a "
                "token with `sagan token create --name NAME --admin`")
    if settings.auth == "tokens":
        from .auth import list_tokens

        with _token_session() as session:
            if not list_tokens(session):
                return ("SAGAN_AUTH=tokens but no API token exists, so nobody could use the service: create "
                        "one with `sagan token create --name NAME --admin` (it prints the token once)")
        if args.demo and not os.environ.get("SAGAN_TOKEN"):
            return "--demo with SAGAN_AUTH=tokens submits its job with a token: set SAGAN_TOKEN to one"
    return None


def _client_headers() -> dict[str, str]:
    """`sagan up`'s own requests (the demo): with tokens on, the one in SAGAN_TOKEN."""
    token = os.environ.get("SAGAN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _wait_until_healthy(base_url: str, children: list[subprocess.Popen], timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            raise RuntimeError("a service process exited during start-up")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API did not answer on {base_url} within {timeout_s:.0f} s")


def _submit_demo(base_url: str, settings: Settings) -> DemoWatch:
    import httpx

    response = httpx.post(f"{base_url}/jobs", json={"kind": "train", "config": DEMO_CONFIG}, timeout=30,
                          headers=_client_headers())
    response.raise_for_status()
    job = response.json()
    samples = settings.home / "artifacts" / "jobs" / job["id"] / "samples"
    print(f"demo job: {response.headers['location']}\n"
          f"  watch it train: {base_url}/ui/jobs/{job['id']}\n"
          f"  sample grids: {base_url}/jobs/{job['id']}/samples (files in {samples})\n"
          "  its sample quality (SWD, lower is better) is printed as it is measured; Ctrl-C stops the "
          "service.",
          flush=True)
    return DemoWatch(base_url, job["id"], samples)


class DemoWatch:
    """Follows the demo job: prints each evaluation's SWD as it lands, and at the end the first and last
    SWD and where the last grid is."""

    def __init__(self, base_url: str, job_id: str, samples: Path) -> None:
        self.base_url, self.job_id, self.samples = base_url, job_id, samples
        self.evals: list[dict] = []

    def look(self) -> bool:
        """Print what is new; True once the job has ended."""
        import httpx

        try:
            headers = _client_headers()
            job = httpx.get(f"{self.base_url}/jobs/{self.job_id}", timeout=10, headers=headers).json()
            evals = httpx.get(f"{self.base_url}/jobs/{self.job_id}/evals", timeout=10,
                              headers=headers).json()["items"]
        except httpx.HTTPError:
            return False  # busy or restarting: look again later
        for record in evals[len(self.evals):]:
            print(f"demo: step {record['step']:>5}: SWD {record['metrics']['swd']:.1f}", flush=True)
        self.evals = evals
        if job["status"] not in ("succeeded", "failed", "cancelled"):
            return False
        if job["status"] != "succeeded":
            print(f"demo job {job['status']}: {job.get('error') or ''}", flush=True)
            return True
        first, last = self.evals[0], self.evals[-1]
        grid = self.samples / f"step-{job['progress']['step']}.png"
        print(f"demo finished: SWD {first['metrics']['swd']:.1f} at step {first['step']} -> "
              f"{last['metrics']['swd']:.1f} at step {last['step']} (sliced Wasserstein distance between "
              "patches of its samples and of the real images, x 10^3: lower is closer)\n"
              f"  last grid: {grid}\n  or {self.base_url}/jobs/{self.job_id}/samples/latest\n"
              f"  its page: {self.base_url}/ui/jobs/{self.job_id}", flush=True)
        return True


def _shutdown(children: list[subprocess.Popen], grace_s: float) -> None:
    # Both get SIGTERM. The worker's is a graceful stop: a running training checkpoints at once, the
    # checkpoint is stored and the job goes back to the queue, within SAGAN_SHUTDOWN_SECONDS.
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
