"""Webhooks (issue 20, section 4): events recorded with their transitions, signed, in order, retried, and sent
only where SAGAN_WEBHOOK_HOSTS allows; against an embedded `sagan up` and a receiver in this process."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import stat
import threading
from argparse import Namespace
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.orm import Session

from sagan_core.config import make_config
from sagan_service import jobs
from sagan_service.auth import create_token
from sagan_service.cli import run_token_create, run_token_secret
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobspec import SweepSpec
from sagan_service.migrate import upgrade
from sagan_service.models import WebhookDelivery
from sagan_service.settings import Settings
from sagan_service.webhook_sender import backoff, deliver_due
from sagan_service.webhooks import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TargetRefused,
    WebhookHosts,
    check_url,
    list_deliveries,
    owner_secret,
    resolve_target,
    sign,
    signature_matches,
)
from tests.service.conftest import TINY, Api, start_up, wait_for

SECRET = "test-webhook-secret"


# ---- in-process: signatures, hosts, events, secrets
# ---------------------------------------------------------

def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"id":"x.1","status":"running"}'
    header = sign(SECRET, body)
    assert header == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature_matches(SECRET, body, header)
    assert not signature_matches(SECRET, body + b" ", header)
    assert not signature_matches("another-secret", body, header)


def test_only_listed_hosts_are_called_and_a_name_never_leads_to_a_private_address() -> None:
    hosts = WebhookHosts.parse("hooks.example.com, 127.0.0.1, 10.1.0.0/16")
    for url in ("https://hooks.example.com/a", "http://127.0.0.1:9000/x", "http://10.1.2.3/x"):
        check_url(url, hosts)
    refusals = {"http://evil.example.com/": "not one this service calls", "ftp://hooks.example.com/": "http",
                "http://user:pw@hooks.example.com/": "credentials", "http://127.0.0.2/": "not one",
                "http://hooks.example.com/a b": "spaces", "http://[::1]/": "not one"}
    for url, why in refusals.items():
        with pytest.raises(TargetRefused, match=why):
            check_url(url, hosts)
    with pytest.raises(TargetRefused, match="SAGAN_WEBHOOK_HOSTS lists no host"):
        check_url("https://hooks.example.com/", WebhookHosts.parse(""))

    def resolving_to(*addresses: str) -> Callable[[str, int], list[str]]:
        return lambda _host, _port: list(addresses)

    # A listed name whose DNS answer is the service's own network (loopback, metadata, mapped) is refused...
    for inside in ("127.0.0.1", "169.254.169.254", "192.168.1.5", "::ffff:127.0.0.1", "::1"):
        with pytest.raises(TargetRefused, match="resolves to no address"):
            resolve_target("https://hooks.example.com/a", WebhookHosts.parse("hooks.example.com"),
                           resolving_to(inside))
    # ...unless that address is listed itself; a public one is called at the checked address, not resolved
    # again.
    assert resolve_target("http://hooks.example.com/a", hosts,
                          resolving_to("10.1.9.9")).url == "http://10.1.9.9:80/a"
    target = resolve_target("https://hooks.example.com:8443/a?b=1", hosts,
                            resolving_to("10.9.0.1", "93.184.216.34"))
    assert (target.url, target.host_header, target.server_name) == (
        "https://93.184.216.34:8443/a?b=1", "hooks.example.com:8443", "hooks.example.com")
    assert resolve_target("http://127.0.0.1:9000/x", hosts).url == "http://127.0.0.1:9000/x"
    assert ipaddress.ip_address("93.184.216.34").is_global


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [backoff(n, 5).total_seconds() for n in (1, 2, 3)] == [5, 10, 20]
    assert backoff(30, 5) == timedelta(hours=1)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(engine)
    with make_session_factory(engine)() as session:
        yield session
    engine.dispose()


def events(session: Session, job_id: str) -> list[tuple[int, str, str]]:
    return [(row.sequence, row.status, row.url) for row in list_deliveries(session, job_id=job_id)]


def test_each_status_change_is_recorded_once_per_url_in_its_transaction(session: Session) -> None:
    urls = ["http://127.0.0.1/a", "http://127.0.0.1/b"]
    job, _ = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                             max_attempts=3, notify=urls)
    plain, _ = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                               max_attempts=3)
    assert events(session, job.id) == []  # being created is no change
    assert jobs.claim_job(session, job_id=job.id, worker_id="w", lease_seconds=30)
    assert jobs.claim_job(session, job_id=job.id, worker_id="v",
                          lease_seconds=30) is None  # no change: no event
    assert jobs.hand_back(session, job_id=job.id, worker_id="w") == "queued"
    assert jobs.claim_job(session, job_id=job.id, worker_id="v", lease_seconds=30)
    assert jobs.finish_job(session, job_id=job.id, worker_id="v", status="succeeded")
    statuses = ["running", "queued", "running", "succeeded"]
    assert events(session, job.id) == [(n, status, url)
                                       for n, status in enumerate(statuses, 1) for url in urls]
    payload = json.loads(list_deliveries(session, job_id=job.id)[-1].payload)
    assert payload | {"occurred_at": None} == {
        "id": f"{job.id}.4", "type": "job.status", "job_id": job.id, "kind": "train", "status": "succeeded",
        "previous_status": "running", "sequence": 4, "occurred_at": None,
        "progress": {"step": 0, "total_steps": 10}, "error": None}
    jobs.claim_job(session, job_id=plain.id, worker_id="w", lease_seconds=30)
    assert session.query(WebhookDelivery).filter_by(job_id=plain.id).count() == 0
    # The reaper's and the cancel's changes too.
    cancelled, _ = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                                   max_attempts=1, notify=urls[:1])
    jobs.request_cancel(session, job_id=cancelled.id)
    lost, _ = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                              max_attempts=1, notify=urls[:1])
    jobs.claim_job(session, job_id=lost.id, worker_id="w", lease_seconds=0.001)
    jobs.reap_expired_leases(session, now=jobs.utcnow() + timedelta(seconds=1))
    assert [status for _, status, _ in events(session, cancelled.id)] == ["cancelled"]
    assert [status for _, status, _ in events(session, lost.id)] == ["running", "failed"]


def test_a_sweeps_events_are_its_own_status(session: Session) -> None:
    sweep, _ = jobs.create_sweep(session, spec=SweepSpec(), children=[("a", make_config(steps=1), "cpu"),
                                                                      ("b", make_config(steps=1), "cpu")],
                                 max_attempts=1, notify=["http://127.0.0.1/s"])
    first, second = jobs.sweep_children(session, job_id=sweep.id)
    for child in (first, second):
        assert jobs.claim_job(session, job_id=child.id, worker_id="w", lease_seconds=30)
        assert jobs.finish_job(session, job_id=child.id, worker_id="w", status="succeeded")
    assert [status for _, status, _ in events(session, sweep.id)] == ["running", "succeeded"]
    assert events(session, first.id) == []  # its children's own changes are not the sweep's URLs' business


def test_each_owner_signs_with_its_own_secret(session: Session, tmp_path: Path) -> None:
    create_token(session, name="alice", admin=False)
    create_token(session, name="bob", admin=False)
    settings = Settings(home=tmp_path / "home")
    alice, bob = owner_secret(session, "alice", settings), owner_secret(session, "bob", settings)
    assert alice and bob and alice != bob and len(alice) == 64
    assert owner_secret(session, "carol", settings) is None  # no token (revoked): nothing is signed for it
    # SAGAN_AUTH=none's owner: SAGAN_WEBHOOK_SECRET, else a file made once, readable by the service's user
    # only.
    assert owner_secret(session, "local", Settings(home=tmp_path, webhook_secret=SecretStr("s"))) == "s"
    local = owner_secret(session, "local", settings)
    assert local == owner_secret(session, "local", settings) and len(local) == 64
    assert stat.S_IMODE((settings.home / "webhook-secret").stat().st_mode) == 0o600


def test_sagan_token_secret_shows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("SAGAN_DATABASE_URL", "SAGAN_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAGAN_HOME", str(tmp_path))
    assert run_token_create(Namespace(name="dave", admin=False)) == 0
    assert "sagan token secret dave" in capsys.readouterr().err
    assert run_token_secret(Namespace(name="dave")) == 0
    shown = capsys.readouterr().out.strip()
    engine = make_engine(Settings().database)
    with make_session_factory(engine)() as session:
        assert shown == owner_secret(session, "dave", Settings())
    engine.dispose()
    monkeypatch.setenv("SAGAN_WEBHOOK_SECRET", "local-secret")
    assert run_token_secret(Namespace(name="local")) == 0 and capsys.readouterr().out == "local-secret\n"
    assert run_token_secret(Namespace(name="nobody")) == 1


# ---- a real service and a receiver
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    code: int

    @property
    def event(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request; a path's first `fail_first[path]` requests get
    a 500, the rest a 200."""

    def __init__(self, fail_first: dict[str, int]) -> None:
        self.received: list[Received] = []
        self.fail_first = dict(fail_first)
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.changed:
                    failing = receiver.fail_first.get(self.path, 0)
                    receiver.fail_first[self.path] = failing - 1
                    code = 500 if failing > 0 else 200
                    receiver.received.append(Received(self.path, dict(self.headers), body, code))
                    receiver.changed.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"no")

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> list[Received]:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.received), timeout), self.received
            return list(self.received)


def test_the_sender_checks_the_host_again_and_gives_up_after_the_attempts(session: Session,
                                                                          tmp_path: Path) -> None:
    receiver = Receiver(fail_first={"/down": 99})
    urls = [receiver.url("/down"), "http://10.0.0.1/x"]  # the second's host is no longer allowed
    job, _ = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                             max_attempts=3, notify=urls)
    jobs.claim_job(session, job_id=job.id, worker_id="w", lease_seconds=30)
    settings = Settings(home=tmp_path, webhook_hosts="127.0.0.1", webhook_attempts=2,
                        webhook_backoff_seconds=0.01, webhook_secret=SecretStr(SECRET))
    sessions = make_session_factory(session.get_bind())

    def settled() -> list[tuple]:
        with ThreadPoolExecutor(2) as pool:
            deliver_due(sessions, settings, pool)
        with sessions() as reader:
            rows = list_deliveries(reader, job_id=job.id)
        return [(row.url, row.attempts, row.answer_code, row.answer) for row in rows
                if row.next_attempt_at is None] if all(row.next_attempt_at is None for row in rows) else []

    given_up = {url: rest
                for url, *rest in wait_for(settled, 10, "both deliveries to be given up", interval=0.02)}
    assert given_up[urls[0]] == [2, 500, "no"]
    assert given_up[urls[1]][:2] == [2, None] and "not one this service calls" in given_up[urls[1]][2]
    assert [r.code for r in receiver.received] == [500, 500]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, forkserver_socket: Path) -> Iterator[Api]:
    up, api = start_up(tmp_path_factory.mktemp("webhooks"), SAGAN_FORKSERVER_SOCKET=str(forkserver_socket),
                       SAGAN_WEBHOOK_HOSTS="127.0.0.1",
                       SAGAN_WEBHOOK_SECRET=SECRET, SAGAN_WEBHOOK_BACKOFF_SECONDS="0.5",
                       SAGAN_WEBHOOK_POLL_SECONDS="0.2")
    yield api
    up.stop()


@pytest.mark.timeout(300)
def test_events_arrive_signed_in_status_order_and_a_failed_delivery_is_retried(service: Api) -> None:
    receiver = Receiver(fail_first={"/flaky": 1})
    urls = [receiver.url("/flaky"), receiver.url("/ok")]
    job = service.submit({"kind": "train", "config": {**TINY, "steps": 4},
                          "notify": [{"url": url} for url in urls]})
    # A receiver answering 500 holds up no job: it succeeds as usual.
    assert service.wait_status(job["id"], {"succeeded", "failed", "cancelled"},
                               timeout=180)["status"] == "succeeded"

    def finished(path: str) -> Callable[[list[Received]], bool]:
        return lambda got: any(r.path == path and r.code == 200 and r.event["status"] == "succeeded"
                               for r in got)

    receiver.wait_for(finished("/ok"), timeout=30)
    received = receiver.wait_for(finished("/flaky"), timeout=30)
    for request in received:
        assert signature_matches(SECRET, request.body, request.headers[SIGNATURE_HEADER])
        assert request.headers[EVENT_HEADER] == request.event["id"]
        assert request.headers["Content-Type"] == "application/json"
        assert request.event["job_id"] == job["id"]
    ok = [r for r in received if r.path == "/ok"]
    assert [(r.event["sequence"], r.event["status"], r.code) for r in ok] == [(1, "running", 200),
                                                                              (2, "succeeded", 200)]
    # The first attempt got a 500: the same event (same id and bytes) again, and only then the next one.
    tries = [r for r in received if r.path == "/flaky"]
    assert [(r.event["status"], r.code) for r in tries] == [("running", 500), ("running", 200),
                                                            ("succeeded", 200)]
    assert tries[0].body == tries[1].body and tries[0].event["id"] == f"{job['id']}.1"

    def deliveries() -> list[tuple]:
        response = service.client.get(f"/jobs/{job['id']}/deliveries")
        assert response.status_code == 200, response.text
        return [(d["sequence"], d["status"], d["url"], d["state"], d["attempts"], d["answer_code"],
                 d["answer"])
                for d in response.json()["items"]]

    expected = [(1, "running", urls[0], "delivered", 2, 200, "ok"),
                (1, "running", urls[1], "delivered", 1, 200, "ok"),
                (2, "succeeded", urls[0], "delivered", 1, 200, "ok"),
                (2, "succeeded", urls[1], "delivered", 1, 200, "ok")]
    wait_for(lambda: deliveries() == expected, 10, "the answers recorded")  # just after the receiver answered
    assert service.client.get("/jobs/00000000-0000-7000-8000-000000000000/deliveries").status_code == 404
    page = service.client.get(f"/ui/jobs/{job['id']}").text  # its table, filled by deliveries.js
    assert 'id="deliveries-section"' in page and "/ui/static/deliveries.js?v=" in page


def test_a_notify_url_on_a_host_not_allowed_is_a_422_naming_it(service: Api) -> None:
    allowed = "http://127.0.0.1:9/hook"
    for url, why in (("http://169.254.169.254/latest/meta-data", "not one this service calls"),
                     ("http://localhost:9/hook", "not one this service calls"),
                     ("file:///etc/passwd", "http")):
        body = {"kind": "train", "config": TINY, "notify": [{"url": allowed}, {"url": url}]}
        response = service.client.post("/jobs", json=body)
        assert response.status_code == 422, response.text
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["body", "notify", "1", "url"] and why in detail["msg"], detail
    # Not a URL string at all: pydantic's own 422, on the same field.
    response = service.client.post("/jobs",
                                   json={"kind": "sample", "source": {"job_id": "x"}, "notify": [{"url": 5}]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-3:] == ["notify", 0, "url"]
