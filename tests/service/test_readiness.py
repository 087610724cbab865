"""/readyz checks the database (its jobs table), the broker and the store; /healthz stays a liveness
check. The app runs in-process here, against the real PostgreSQL, Redis and moto S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from sagan_service.settings import Settings
from tests.service.conftest import Api, S3Server, free_port


@pytest.fixture
def stack_env(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in service_env.items():
        if name.startswith(("SAGAN_", "AWS_")):
            monkeypatch.setenv(name, value)


def readiness(settings: Settings) -> tuple[int, dict, int]:
    """(status of /readyz, its body, status of /healthz)."""
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        return ready.status_code, ready.json(), client.get("/healthz").status_code


def test_ready_when_every_part_answers(api: Api) -> None:
    response = api.client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "database": "ok", "broker": "ok", "store": "ok"}


def test_not_ready_without_the_broker(stack_env: None, tmp_path: Path) -> None:
    status, body, health = readiness(Settings(home=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert (status, health) == (503, 200)
    assert body == {"status": "unavailable", "database": "ok", "broker": "unreachable", "store": "ok"}


def test_not_ready_without_the_store(stack_env: None, tmp_path: Path, s3_server: S3Server) -> None:
    with s3_server.down():
        status, body, health = readiness(Settings(home=tmp_path))
    assert (status, health) == (503, 200)
    assert body == {"status": "unavailable", "database": "ok", "broker": "ok", "store": "unreachable"}


def test_ready_on_a_fresh_install_whose_artifact_folder_does_not_exist_yet(stack_env: None,
                                                                           tmp_path: Path) -> None:
    folder = tmp_path / "new" / "artifacts"
    status, body, _ = readiness(Settings(home=tmp_path, artifacts_url=folder.as_uri()))
    assert (status, body["store"]) == (200, "ok")
    assert folder.is_dir()


def test_not_ready_when_the_artifact_folder_cannot_be_created(stack_env: None, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    status, body, _ = readiness(Settings(home=tmp_path,
                                         artifacts_url=(tmp_path / "a-file" / "artifacts").as_uri()))
    assert (status, body["store"]) == (503, "not writable")


def test_not_ready_when_the_database_lost_its_tables(stack_env: None, tmp_path: Path,
                                                     empty_schema_url: str) -> None:
    status, body, health = readiness(Settings(home=tmp_path, database_url=empty_schema_url))
    assert (status, health) == (503, 200)  # the server answers; the jobs table is gone
    assert body["status"] == "unavailable" and "jobs table" in body["database"]
    assert (body["broker"], body["store"]) == ("ok", "ok")
