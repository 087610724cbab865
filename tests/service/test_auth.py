"""Tokens, owners and admins against the real API (Postgres, Redis, the S3 server): `sagan token`, 401s,
another owner's job is 404, admins see all, open probes, `sagan up` off loopback, plain public errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sagan_service.jobs import public_error
from tests.conftest import subprocess_env
from tests.service.conftest import TINY, Api, Workers, make_token, start_api, wait_for

# Never finishes during the tests on its own: the tests cancel it.
LONG = {**TINY, "steps": 100_000}


def sagan(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sagan_core.cli", *args], env=env, capture_output=True,
                          check=False, text=True, timeout=120)


def as_user(api: Api, token: str | None) -> Api:
    return Api(api.base_url, token)


def pg_url(service_env: dict[str, str]) -> str:
    return service_env["SAGAN_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")


def test_token_commands_create_list_and_revoke(api: Api, service_env: dict[str, str]) -> None:
    created = sagan(service_env, "token", "create", "--name", "carol")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("sagan_") and len(token) > 40
    carol = as_user(api, token)
    assert carol.client.get("/jobs").status_code == 200

    # Only the hash is stored: the token itself is nowhere in the table.
    with psycopg.connect(pg_url(service_env)) as connection:
        rows = connection.execute("SELECT name, token_hash, admin FROM api_tokens "
                                  "WHERE name = 'carol'").fetchall()
    assert rows == [("carol", hashlib.sha256(token.encode()).hexdigest(), False)]

    listed = sagan(service_env, "token", "list")
    assert listed.returncode == 0 and "carol\tuser" in listed.stdout and token not in listed.stdout
    again = sagan(service_env, "token", "create", "--name", "carol")
    assert again.returncode == 2 and "exists already" in again.stderr

    assert sagan(service_env, "token", "revoke", "carol").returncode == 0
    assert "carol" not in sagan(service_env, "token", "list").stdout
    # The API trusts a looked-up token for SAGAN_TOKEN_CACHE_SECONDS (5 s) at most.
    wait_for(lambda: carol.client.get("/jobs").status_code == 401, 15, "the revoked token to be refused")
    assert sagan(service_env, "token", "revoke", "carol").returncode == 1


@pytest.mark.parametrize("headers",
                         [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer " + "x" * 5000}])
def test_without_a_valid_token_the_api_answers_401(api: Api, headers: dict[str, str]) -> None:
    client = as_user(api, None).client
    for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/presets"),
                         ("GET", "/jobs/0190d6a2-0000-7000-8000-000000000000")):
        response = client.request(method, path, headers=headers, json={"kind": "train", "config": TINY})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_probes_pages_and_docs_stay_open(api: Api) -> None:
    client = as_user(api, None).client
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/").status_code == 200 and client.get("/ui/submit").status_code == 200
    assert client.get("/openapi.json").status_code == 200  # SAGAN_DOCS_PUBLIC defaults to true


def test_private_docs_need_a_token(service_env: dict[str, str], tmp_service: Path) -> None:
    service, admin = start_api({**service_env, "SAGAN_DOCS_PUBLIC": "false"}, tmp_service)
    try:
        anonymous = as_user(admin, None).client
        assert anonymous.get("/openapi.json").status_code == 401 and anonymous.get("/docs").status_code == 401
        assert admin.client.get("/openapi.json").json()["info"]["title"] == "SAGAN job service"
        assert admin.client.get("/docs").status_code == 200
    finally:
        service.stop()


def test_owners_see_only_their_jobs_and_admins_see_all(api: Api, service_env: dict[str, str]) -> None:
    alice = as_user(api, make_token(service_env, "alice"))
    bob = as_user(api, make_token(service_env, "bob"))
    job = alice.submit({"kind": "train", "config": LONG})
    bobs = bob.submit({"kind": "train", "config": LONG})
    made = [job["id"], bobs["id"]]
    try:
        assert alice.job(job["id"])["id"] == job["id"]
        mine = {item["id"] for item in alice.client.get("/jobs").json()["items"]}
        assert job["id"] in mine and bobs["id"] not in mine
        # Another owner's job does not exist for bob: 404, not 403, on every route.
        for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/samples"),
                             ("GET", "/samples/latest"),
                             ("GET", "/checkpoints"), ("GET", "/metrics"), ("GET", "/evals"),
                             ("GET", "/samples/real")):
            response = bob.client.request(method, f"/jobs/{job['id']}{path}")
            assert response.status_code == 404, (path, response.text)
        for kind in ("sample", "eval"):
            response = bob.client.post("/jobs", json={"kind": kind, "source": {"job_id": job["id"]}})
            assert response.status_code == 404, response.text
        assert alice.job(job["id"])["cancel_requested"] is False  # bob's cancel did nothing
        everything = {item["id"] for item in api.client.get("/jobs", params={"limit": 200}).json()["items"]}
        assert {job["id"], bobs["id"]} <= everything
        assert api.job(job["id"])["id"] == job["id"]
        # An Idempotency-Key is per owner: the same key from bob makes bob's own job.
        key = {"Idempotency-Key": "shared-key"}
        first = alice.client.post("/jobs", json={"kind": "train", "config": LONG}, headers=key).json()
        second = bob.client.post("/jobs", json={"kind": "train", "config": LONG}, headers=key)
        made += [first["id"], second.json()["id"]]
        assert second.status_code == 201 and second.json()["id"] != first["id"]
        # Priority high overtakes every owner's work: admins only.
        refused = alice.client.post("/jobs", json={"kind": "sweep", "base": LONG, "arms": [{"name": "a"}],
                                                   "priority": "high"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "priority"]
        urgent = api.submit({"kind": "train", "config": LONG, "priority": "high"})
        made.append(urgent["id"])
        assert (urgent["priority"], alice.job(job["id"])["priority"]) == ("high", "normal")
    finally:
        for job_id in made:
            api.client.post(f"/jobs/{job_id}/cancel")


def test_sagan_up_off_loopback_refuses_without_tokens(tmp_path: Path) -> None:
    env = {name: value for name, value in subprocess_env().items() if not name.startswith("SAGAN_")}
    env["SAGAN_HOME"] = str(tmp_path / "home")
    refused = sagan(env, "up", "--host", "0.0.0.0", "--port", "1")  # never binds: it stops before
    assert refused.returncode == 2 and "no API token exists" in refused.stderr
    unsafe = sagan({**env, "SAGAN_AUTH": "none"}, "up", "--host", "0.0.0.0", "--port", "1")
    assert unsafe.returncode == 2
    assert "SAGAN_AUTH=none" in unsafe.stderr and "sagan token create" in unsafe.stderr


def test_public_error_hides_sql_addresses_and_paths() -> None:
    raw = ('OperationalError: (psycopg.OperationalError) connection to server at "10.0.0.7", port 5432 '
           'failed\n'
           "[SQL: UPDATE jobs SET status=%(status)s WHERE jobs.id = %(id)s]\n[parameters: {'status': 'x'}]")
    assert public_error("j", raw) == ('OperationalError: (psycopg.OperationalError) connection to server at '
                                      '"<internal address>", port 5432 failed')
    assert public_error("j",
                        "the artifact store (S3 at http://minio:9000, bucket b) was unreachable for 300 s") \
        == "the artifact store (S3 at <internal address>, bucket b) was unreachable for 300 s"
    assert public_error("j", "FileNotFoundError: [Errno 2] No such file: '/srv/sagan/work/x/out/a.pt'") \
        == "FileNotFoundError: [Errno 2] No such file: '.../a.pt'"


def test_a_failed_jobs_error_shows_no_server_path(api: Api, workers: Workers,
                                                  service_env: dict[str, str]) -> None:
    data_root = Path(service_env["SAGAN_DATA_ROOTS"])
    empty = data_root / "no-images-here"
    empty.mkdir(exist_ok=True)
    job = api.submit({"kind": "train", "config": {**TINY, "dataset": f"folder:{empty}"}})
    failed = api.wait_status(job["id"], {"failed"}, timeout=180)
    assert "no images found" in failed["error"], failed["error"]
    assert str(data_root) not in failed["error"] and ".../no-images-here" in failed["error"]
