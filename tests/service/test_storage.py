"""The artifact store's two backends behave the same; S3 runs against the moto server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from sagan_service.settings import Settings
from sagan_service.storage import ArtifactNotFound, ArtifactStore, commit_marker_key, open_store
from tests.service.conftest import BUCKET


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    if request.param == "file":
        return open_store(Settings(home=tmp_path, artifacts_url=(tmp_path / "store").as_uri()))
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return open_store(Settings(home=tmp_path, artifacts_url=f"s3://{BUCKET}/{tmp_path.name}",
                               s3_endpoint_url=endpoint))


def test_put_get_download_and_checkpoint_commit(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("jobs/a/metrics.jsonl", b'{"step": 1}\n')
    assert store.get_bytes("jobs/a/metrics.jsonl") == b'{"step": 1}\n'
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("jobs/a/nothing")

    model = tmp_path / "model.pt"
    model.write_bytes(b"weights" * 1000)
    key = store.commit_checkpoint("a", 10, model)
    assert store.exists(commit_marker_key("a", 10))
    store.download(key, tmp_path / "back" / "step-10.pt")
    assert (tmp_path / "back" / "step-10.pt").read_bytes() == model.read_bytes()

    url = store.presigned_url(key)
    if url is not None:  # S3: a browser can fetch it without credentials
        assert httpx.get(url).content == model.read_bytes()


def test_local_keys_cannot_escape_the_store(tmp_path: Path) -> None:
    store = open_store(Settings(home=tmp_path, artifacts_url=(tmp_path / "store").as_uri()))
    with pytest.raises(ValueError, match="escapes"):
        store.put_bytes("../outside", b"x")


def test_presigned_urls_use_the_public_endpoint(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    store = open_store(Settings(artifacts_url=f"s3://{BUCKET}/p", s3_endpoint_url=s3_endpoint,
                                s3_public_endpoint_url="http://files.example.com:9000"))
    assert store.presigned_url("jobs/x/samples/step-1.png").startswith(
        f"http://files.example.com:9000/{BUCKET}/p/jobs/x/samples/step-1.png?")


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="SAGAN_ARTIFACTS_URL"):
        open_store(Settings(artifacts_url="ftp://host/dir"))
