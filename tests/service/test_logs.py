"""Live logs (docs/service.md: Live logs): GET /jobs/{id}/logs, followed while a job runs, across a
`sagan api` and a `sagan worker` in separate processes (PostgreSQL, Redis, moto S3) and in the embedded
`sagan up`; earlier attempts; secrets redacted before a log is stored and before it is served;
`sagan jobs logs -f`."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.cli import GRACEFUL_SHUTDOWN_SECONDS
from sagan_service.logs import job_context
from sagan_service.redact import REDACTED, Redactor, secret_values
from sagan_service.storage import LocalStore, S3Store, log_key
from tests.conftest import subprocess_env
from tests.service.conftest import (
    BUCKET,
    TINY,
    Api,
    S3Server,
    Workers,
    make_token,
    start_api,
    start_up,
    wait_for,
)
from worker.supervisor import job_lines_into

# A run long enough to follow (cancelled by the test), whose trainer prints a line at its start: the
# warning this valid but ill-advised setting gets (sagan_core.config.config_warnings).
LONG = {**TINY, "steps": 100_000, "loss": "wgan-gp", "d_norm": "batch"}
WARNING_LINE = "warning: loss wgan-gp with d_norm batch"
TOKEN = "sagan_" + "Q" * 43  # the shape of sagan_service.auth's tokens
SECRET_LINES = (f"Authorization: Bearer {TOKEN}\n"
                "connecting to postgresql://sagan:hunter2-db-pass@db:5432/sagan\n")


# -- redaction ---------------------------------------------------------------------------------------------

def test_secrets_and_secret_shaped_text_are_redacted() -> None:
    environ = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
               "SAGAN_DATABASE_URL": "postgresql+psycopg://sagan:s3cr3t-pass@db/sagan",
               "SAGAN_TOKEN": "short"}
    redact = Redactor(secret_values(environ))
    text = redact("key wJalrXUtnFEMI/K7MDENG; password alone: s3cr3t-pass\n"
                  "redis://:broker-pass@redis:6379/0 and https://user:pw123456@example.com/x\n"
                  f"Authorization: Bearer {TOKEN}\ncurl -H 'authorization: token abcdefgh12345'\n"
                  f"SAGAN_TOKEN={TOKEN} aws_secret_access_key = abcdEFGH1234 db_password: 'pa55word'\n"
                  "step 10 d_loss 0.5 (ordinary text stays), http://host:8000/path, short\n")
    for secret in ("wJalrXUtnFEMI", "s3cr3t-pass", "broker-pass", "pw123456", TOKEN[6:], "abcdefgh12345",
                   "abcdEFGH1234", "pa55word"):
        assert secret not in text, (secret, text)
    assert "redis://:[redacted]@redis" in text and "https://user:[redacted]@example.com" in text
    # "short": < 8 chars
    assert "step 10 d_loss 0.5 (ordinary text stays), http://host:8000/path, short" in text
    assert text.count(REDACTED) >= 9


def test_redacting_a_log_then_its_continuation_gives_the_same_text() -> None:
    """The stored log only grows: what a follower read by offset never changes under it."""
    redact = Redactor(["hunter2-secret"])
    lines = ["a https://u:hunter2-secret@h/x\n", f"Bearer {TOKEN}\n", "plain\n"]
    assert redact("".join(lines)) == "".join(redact(line) for line in lines)


# -- the parts: the store's ranged read, the supervisor's lines ----------------------------------------------

def test_ranged_reads_of_both_stores(tmp_path: Path, s3_server: S3Server,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    s3 = S3Store(BUCKET, "ranged", endpoint_url=s3_server.endpoint, public_endpoint_url=None, max_attempts=1)
    for store in (LocalStore(tmp_path), s3):
        store.put_bytes("log", b"0123456789")
        assert (store.get_bytes_from("log", 0), store.get_bytes_from("log", 4)) == (b"0123456789", b"456789")
        assert store.get_bytes_from("log", 10) == b"" and store.get_bytes_from("log", 99) == b""
        store.put_bytes("empty", b"")
        assert store.get_bytes_from("empty", 0) == b""
        with pytest.raises(LookupError):
            store.get_bytes_from("missing", 0)


def test_the_supervisor_lines_of_a_job_go_into_its_attempt_log(tmp_path: Path) -> None:
    log_path, other = tmp_path / "attempt-1.log", logging.getLogger("worker.supervisor")
    log_path.write_text("trainer line\n")
    with job_lines_into(log_path, "job-a"):
        with job_context("job-a"):
            other.warning("about job a")
        with job_context("job-b"):
            other.warning("about job b")
        other.warning("about no job")
    with job_context("job-a"):
        other.warning("after the attempt")
    lines = log_path.read_text().splitlines()
    assert lines[0] == "trainer line" and len(lines) == 2
    assert "WARNING [job job-a] worker.supervisor: about job a" in lines[1]


# -- following a running job: API and worker in separate processes ------------------------------------------

class Follower:
    """GET /jobs/{id}/logs?follow=true in a thread: each line with the time it arrived."""

    def __init__(self, api: Api, job_id: str, **params: str) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        self.status: int | None = None
        self.error: httpx.HTTPError | None = None
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(api, job_id, params), daemon=True)
        self.thread.start()

    def _read(self, api: Api, job_id: str, params: dict[str, str]) -> None:
        try:
            with api.client.stream("GET", f"/jobs/{job_id}/logs", params={"follow": "true", **params},
                                   timeout=httpx.Timeout(10, read=None)) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    self.lines.put((time.monotonic(), line))
        except httpx.HTTPError as error:  # cut off
            self.error = error
        finally:
            self.ended.set()

    def wait_line(self, text: str, timeout: float) -> float:
        """When the first line containing `text` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                arrived, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return arrived
        raise AssertionError(f"no line with {text!r} within {timeout} s; got {self.seen}")


def attempt_log(service_env: dict[str, str], job_id: str, attempt: int) -> Path:
    """The worker's own copy of the attempt's log (Attempt.log_path), where the trainer writes."""
    return Path(service_env["SAGAN_HOME"]) / "work" / job_id / f"attempt-{attempt}" / f"attempt-{attempt}.log"


def write_line(path: Path, text: str) -> float:
    """Append a line as the trainer would; when it was written."""
    with open(path, "a") as log:
        log.write(text)
    return time.monotonic()


@pytest.fixture
def running(api: Api, workers: Workers) -> Iterator[dict]:
    job = api.submit({"kind": "train", "config": LONG})
    api.wait_status(job["id"], {"running"}, timeout=60)
    yield job
    api.client.post(f"/jobs/{job['id']}/cancel")
    api.wait_status(job["id"], {"cancelled", "failed"}, timeout=60)


@pytest.mark.timeout(120)
def test_a_follower_sees_lines_within_seconds_while_the_job_runs(
        api: Api, running: dict, service_env: dict[str, str], s3_server: S3Server) -> None:
    job_id = running["id"]
    follower = Follower(api, job_id)
    follower.wait_line(WARNING_LINE, timeout=60)  # the trainer's first line
    assert api.job(job_id)["status"] == "running"

    # A line written into the worker's log reaches the follower, through the store, within seconds.
    path = attempt_log(service_env, job_id, 1)
    written = write_line(path, f"probe line {os.getpid()}\n")
    latency = follower.wait_line(f"probe line {os.getpid()}", timeout=10) - written
    assert latency < 5, f"a line took {latency:.1f} s to reach a follower"
    print(f"log line latency: {latency:.2f} s")

    # Secrets: redacted in what is stored, and so in what is served.
    write_line(path, SECRET_LINES)
    follower.wait_line("connecting to", timeout=10)
    served = api.client.get(f"/jobs/{job_id}/logs")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/plain")
    stored = s3_server.client().get_object(Bucket=BUCKET,
                                           Key=f"artifacts/{log_key(job_id, 1)}")["Body"].read()
    for text in (served.text, stored.decode(), "\n".join(follower.seen)):
        assert TOKEN[6:] not in text and "hunter2-db-pass" not in text
        assert "Bearer [redacted]" in text and "postgresql://sagan:[redacted]@db" in text
    # A poller asks from the offset the last answer gave.
    offset = int(served.headers["X-Log-Offset"])
    assert served.content == stored[:offset] and WARNING_LINE.encode() in stored[:offset]
    assert api.client.get(f"/jobs/{job_id}/logs", params={"offset": offset}).content == stored[offset:]

    api.client.post(f"/jobs/{job_id}/cancel")
    assert follower.ended.wait(30), "the followed log did not end with the job"
    assert follower.status == 200


@pytest.mark.timeout(60)
def test_log_requests_that_find_nothing(api: Api, service_env: dict[str, str]) -> None:
    job = api.submit({"kind": "train", "config": TINY})
    assert api.client.get(f"/jobs/{job['id']}/logs").status_code == 200  # queued (empty) or running
    other = Api(api.base_url, make_token(service_env, "log-outsider"))
    assert other.client.get(f"/jobs/{job['id']}/logs").status_code == 404  # another owner's job
    missing = api.client.get(f"/jobs/{job['id']}/logs", params={"attempt": 7})
    assert missing.status_code == 404 and "no attempt 7" in missing.json()["detail"]


@pytest.mark.timeout(240)
def test_an_earlier_attempt_stays_readable_and_a_follower_goes_on_into_the_next(
        api: Api, workers: Workers, service_env: dict[str, str]) -> None:
    job = api.submit({"kind": "train", "config": LONG})
    try:
        follower = Follower(api, job["id"])
        follower.wait_line(WARNING_LINE, timeout=90)
        write_line(attempt_log(service_env, job["id"], 1), "the first attempt's last words\n")
        follower.wait_line("the first attempt's last words", timeout=10)

        workers.current.signal_group(signal.SIGKILL)  # the worker dies: the reaper requeues the job
        workers.current.process.wait()
        api.wait_status(job["id"], {"queued"}, timeout=30)
        workers.start()
        follower.wait_line("--- attempt 2 ---", timeout=90)
        follower.wait_line(WARNING_LINE, timeout=60)  # attempt 2's trainer

        first = api.client.get(f"/jobs/{job['id']}/logs", params={"attempt": 1}).text
        assert WARNING_LINE in first and "the first attempt's last words" in first
        latest = api.client.get(f"/jobs/{job['id']}/logs").text
        assert WARNING_LINE in latest and "last words" not in latest
    finally:
        api.client.post(f"/jobs/{job['id']}/cancel")
        api.wait_status(job["id"], {"cancelled", "failed"}, timeout=60)


@pytest.mark.timeout(120)
def test_sagan_jobs_logs_follow_prints_lines_while_the_job_runs(
        api: Api, running: dict, tmp_path: Path) -> None:
    env = {name: value for name, value in subprocess_env().items() if not name.startswith("SAGAN_")}
    env.update(SAGAN_URL=api.base_url, SAGAN_TOKEN=api.client.headers["Authorization"].split()[1],
               SAGAN_CONFIG_DIR=str(tmp_path / "config"))
    follow = subprocess.Popen([sys.executable, "-m", "sagan_core.cli", "jobs", "logs", running["id"], "-f"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
        printed = []
        while not printed or WARNING_LINE not in printed[-1]:  # queue.Empty after a minute: nothing came
            printed.append(lines.get(timeout=60))
        assert api.job(running["id"])["status"] == "running"
        api.client.post(f"/jobs/{running['id']}/cancel")
        assert follow.wait(30) == 0, follow.stderr.read()
    finally:
        follow.kill()
        follow.wait()

    done = subprocess.run([sys.executable, "-m", "sagan_core.cli", "jobs", "logs", running["id"], "--attempt",
                           "2"],
                          check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().endswith("no attempt 2 (attempts so far: 1)"), done.stderr


@pytest.mark.timeout(120)
def test_an_open_follower_does_not_keep_a_stopping_api_alive(
        api: Api, service_env: dict[str, str], tmp_path: Path) -> None:
    """A followed log lasts as long as its job: a stopping API cuts it after its graceful shutdown time."""
    service, own = start_api(service_env, tmp_path)
    job = api.submit({"kind": "train", "config": LONG})  # queued or running: followed either way
    try:
        follower = Follower(own, job["id"])
        wait_for(lambda: follower.status == 200, 30, "the follower's answer")
        began = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(GRACEFUL_SHUTDOWN_SECONDS + 20)
        assert follower.ended.wait(10)
        print(f"the API stopped {time.monotonic() - began:.1f} s after SIGTERM with a follower open")
    finally:
        service.stop()
        api.client.post(f"/jobs/{job['id']}/cancel")


# -- the embedded `sagan up` ---------------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_a_follower_sees_lines_in_the_embedded_service(tmp_path: Path, forkserver_socket: Path) -> None:
    up, api = start_up(tmp_path, SAGAN_FORKSERVER_SOCKET=str(forkserver_socket))
    try:
        job = api.submit({"kind": "train", "config": LONG})
        assert api.client.get(f"/jobs/{job['id']}/logs").status_code == 200
        follower = Follower(api, job["id"])
        follower.wait_line(WARNING_LINE, timeout=90)
        assert api.job(job["id"])["status"] == "running"
        api.client.post(f"/jobs/{job['id']}/cancel")
        assert follower.ended.wait(30)
    finally:
        up.stop()
