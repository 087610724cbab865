"""Real processes for the service tests: Postgres (a schema per session), Redis (db 5, or
$SAGAN_TEST_REDIS_DB), a moto S3 server on loopback, a `sagan api` subprocess and `sagan worker`
subprocesses."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from sagan_service.models import TERMINAL
from tests.conftest import subprocess_env
from worker.processes import stop_group

PG_ADMIN_URL = "postgresql://root@127.0.0.1:5432/test"
# Engineers running service tests side by side give each run its own Redis database (SAGAN_TEST_REDIS_DB);
# within a run, each pytest-xdist worker (gw0, gw1, ...) takes its own two: this one and the next, which
# test_reaper's stack uses.
REDIS_DB = int(os.environ.get("SAGAN_TEST_REDIS_DB", "5")) + 2 * int(
    os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
BUCKET = "sagan-test"
# Short leases so a killed worker's job is requeued within seconds.
# A dependency that failed is refused for 1 s, not 10: tests that end an outage read again at once.
FAST_TIMINGS = {"SAGAN_LEASE_SECONDS": "4", "SAGAN_HEARTBEAT_SECONDS": "0.5", "SAGAN_POLL_SECONDS": "0.2",
                "SAGAN_REAPER_SECONDS": "1", "SAGAN_CANCEL_GRACE_SECONDS": "3",
                "SAGAN_REDISPATCH_SECONDS": "5", "SAGAN_FAIL_FAST_SECONDS": "1"}
# `sagan worker` without its companion reaper: the API beside it runs one (every API process does), so
# nothing goes unrecovered, and each worker start costs one process less. test_reaper tests a worker's own.
WORKER = ["worker", "--no-reaper"]
# debug32 on 64 synthetic images: a step takes tens of milliseconds on the CPU.
TINY = {"preset": "debug32", "dataset": "synthetic:64", "device": "cpu"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains text (a job id names its work directory)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text.encode() in cmdline and state != "Z":
                pids.append(int(entry.name))
    return pids


class Service:
    """One `sagan <command>` process in its own process group, killed with its group at the end."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sagan_core.cli", *args], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.signal_group(signal.SIGKILL)
        self.process.wait()


class Api:
    """A client of the API; with a token, every request sends it (SAGAN_AUTH=tokens, the API's default)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=base_url, timeout=30, headers=headers)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def submit(self, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        response = self.client.post("/jobs", json=body, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        return wait_for(lambda: (job := self.job(job_id))["status"] in statuses and job, timeout,
                        f"job {job_id} to reach {statuses}")


def start_api(env: dict[str, str], tmp: Path) -> tuple[Service, Api]:
    """`sagan api` (tokens on) and a client holding a fresh admin token, so tests see every job."""
    port = free_port()
    service = Service(["api", "--port", str(port)], env, tmp / f"api-{port}.log")
    probe = Api(f"http://127.0.0.1:{port}")
    wait_until_healthy(service, probe)  # `sagan api` migrated the database before it answers
    return service, Api(probe.base_url, make_token(env, f"test-admin-{port}", admin=True))


def start_up(tmp: Path, *args: str, timeout: float = 90, **settings: str) -> tuple[Service, Api]:
    """An embedded `sagan up` (its own state under tmp, no SAGAN_* setting from outside but the fast timings
    and `settings`, e.g. SAGAN_LOG_FORMAT="json"), answering /healthz. The caller stops it. Tests that are
    not about the embedded default itself pass the session's fork server (SAGAN_FORKSERVER_SOCKET)."""
    port = free_port()
    env = {name: value for name, value in subprocess_env().items() if not name.startswith("SAGAN_")}
    env.update(FAST_TIMINGS, SAGAN_HOME=str(tmp / "home"), **settings)
    up = Service(["up", "--port", str(port), *args], env, tmp / "up.log")
    api = Api(f"http://127.0.0.1:{port}")
    try:
        wait_until_healthy(up, api, timeout=timeout)
    except BaseException:
        up.stop()
        raise
    return up, api


def make_token(env: dict[str, str], name: str, *, admin: bool = False) -> str:
    """A token in the service's database (tests of the `sagan token` command itself use the command)."""
    from sagan_service.auth import create_token
    from sagan_service.db import make_engine, make_session_factory

    engine = make_engine(env["SAGAN_DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            return create_token(session, name=name, admin=admin)
    finally:
        engine.dispose()


def wait_until_healthy(service: Service, api: Api, timeout: float = 60) -> None:
    """Until `service` (`sagan api` or `sagan up`) answers /healthz; its log if it exits first."""

    def healthy() -> bool:
        assert service.process.poll() is None, service.log_path.read_text()
        try:
            return api.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout, "the API to answer /healthz")


@pytest.fixture(scope="session")
def tmp_service(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    schema = f"sagan_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    # Every connection of this session's processes works inside its own schema.
    yield f"postgresql+psycopg://root@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


class S3Server:
    """The moto S3 server, in this process. stop() and start() again on the same port make an outage;
    the objects live in this process's memory, so they are all there again afterwards."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
        self.server = self._serve(0)
        host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"

    @staticmethod
    def _serve(port: int) -> Any:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        return server

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = self._serve(self.port)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture
def empty_schema_url(database_url: str) -> Iterator[str]:
    """A database the migrations never ran on: no jobs table."""
    schema = f"sagan_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    yield database_url.split("?")[0] + f"?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint


@pytest.fixture(scope="session")
def forkserver_socket(tmp_service: Path) -> Iterator[Path]:
    """One fork server for every worker started with service_env (SAGAN_FORKSERVER_SOCKET): it imports
    torch and the trainer once per test session instead of once per worker (~5 CPU-s each, 30-odd workers).
    Tests of a worker's own server (test_stopping's stubborn ranks) leave the variable out."""
    path = tmp_service / "forkserver.sock"
    server = start_forkserver(path, tmp_service / "forkserver.log")
    yield path
    stop_group(server, 5)


def start_forkserver(socket_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m worker.forkserver` on socket_path, in a session of its own (stop_group stops it), once its
    socket exists."""
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "worker.forkserver", "--socket", str(socket_path)],
                                  env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(socket_path.exists, 30, "the fork server's socket")
    return server


@pytest.fixture(scope="session")
def service_env(tmp_service: Path, database_url: str, s3_endpoint: str,
                forkserver_socket: Path) -> dict[str, str]:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    (tmp_service / "data").mkdir()
    return {**subprocess_env(), **FAST_TIMINGS, "SAGAN_FORKSERVER_SOCKET": str(forkserver_socket),
            "SAGAN_HOME": str(tmp_service / "home"), "SAGAN_DATABASE_URL": database_url,
            "SAGAN_BROKER_URL": REDIS_URL, "SAGAN_ARTIFACTS_URL": f"s3://{BUCKET}/artifacts",
            "SAGAN_S3_ENDPOINT_URL": s3_endpoint, "SAGAN_DATA_ROOTS": str(tmp_service / "data"),
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def api(service_env: dict[str, str], tmp_service: Path) -> Iterator[Api]:
    service, client = start_api(service_env, tmp_service)
    yield client
    service.stop()


class Workers:
    """`sagan worker` processes; tests may kill the current one and start another."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp, self.all = env, tmp, []

    def start(self) -> Service:
        worker = Service([*WORKER, "--loglevel", "WARNING"], self.env,
                         self.tmp / f"worker-{len(self.all)}.log")
        self.all.append(worker)
        return worker

    @property
    def current(self) -> Service:
        return self.all[-1]

    def stop_all(self) -> None:
        for worker in self.all:
            worker.stop()


@pytest.fixture(scope="session")
def workers(service_env: dict[str, str], tmp_service: Path, api: Api) -> Iterator[Workers]:
    pool = Workers(service_env, tmp_service)
    pool.start()
    yield pool
    pool.stop_all()


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the session's API: cancel the jobs it submitted that are still queued or
    running, and wait until they ended. The session's one worker would otherwise run them during later
    tests, which then wait minutes for it. The ids go to leftover-jobs.txt in the session's folder (for
    diagnosis)."""
    if "api" not in request.fixturenames:
        yield
        return
    api: Api = request.getfixturevalue("api")
    began = datetime.now(UTC)  # module and session fixtures' jobs are older: they stay
    yield
    left = [job["id"] for status in ("queued", "running")
            for job in api.client.get("/jobs", params={"status": status, "limit": 200}).json()["items"]
            if datetime.fromisoformat(job["created_at"]) >= began]
    if not left:
        return
    with open(request.getfixturevalue("tmp_service") / "leftover-jobs.txt", "a") as record:
        record.write(f"{request.node.nodeid}: {' '.join(left)}\n")
    for job_id in left:
        api.client.post(f"/jobs/{job_id}/cancel")
    wait_for(lambda: all(api.job(job_id)["status"] in TERMINAL for job_id in left), 60,
             f"the test's jobs {left} to end after a cancel")
