"""Data sets through the real stack (API + Postgres + Redis + worker + moto S3): uploads that become ready or
fail naming why, owners, deleting, and jobs on `ds:<id>`."""

from __future__ import annotations

import io
import json
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sagan_core.metrics.cache import stats_keys
from tests.service.conftest import (
    BUCKET,
    TINY,
    WORKER,
    Api,
    S3Server,
    Service,
    Workers,
    make_token,
    start_api,
    wait_for,
)

PREFIX = "artifacts/"  # SAGAN_ARTIFACTS_URL's prefix in the bucket


def png(color: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(entries: dict[str, bytes], *, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


TWO_CLASSES = {**{f"cats/{i}.png": png((200, 10 * i, 0)) for i in range(8)},
               **{f"dogs/{i}.png": png((0, 10 * i, 200)) for i in range(8)},
               "README.txt": b"two classes"}


def upload(api: Api, data: bytes, *, name: str = "pets", filename: str = "pets.zip") -> dict[str, Any]:
    response = api.client.post("/datasets", data={"name": name},
                               files={"file": (filename, data, "application/zip")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "queued" and body["name"] == name
    return body


def wait_dataset(api: Api, dataset_id: str, timeout: float = 240) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        body = api.client.get(f"/datasets/{dataset_id}").json()
        return body if body["status"] in ("ready", "failed") else None

    return wait_for(settled, timeout, f"data set {dataset_id} to be ready or failed", interval=0.5)


def store_keys(s3_server: S3Server, prefix: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + prefix)
    return [item["Key"].removeprefix(PREFIX) for item in listed.get("Contents", [])]


@pytest.fixture(scope="module")
def pets(api: Api, workers: Workers) -> dict[str, Any]:
    return wait_dataset(api, upload(api, zip_of(TWO_CLASSES))["id"])


@pytest.mark.timeout(300)
def test_an_uploaded_zip_with_two_class_folders_becomes_ready(pets: dict[str, Any], api: Api,
                                                              s3_server: S3Server, tmp_path: Path) -> None:
    assert pets["status"] == "ready", pets
    assert pets["images"] == 16 and pets["classes"] == ["cats", "dogs"]
    assert pets["imsizes"] == [32]  # 40 px images: not upscaled to 64
    assert pets["bad_images"] == {"README.txt": "not an image file (.txt)"}
    assert pets["size_bytes"] > 16 * 32 * 32 * 3
    preview = api.client.get(f"/datasets/{pets['id']}/preview")
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
    assert pets["preview_url"].endswith(f"/datasets/{pets['id']}/preview")
    keys = store_keys(s3_server, f"datasets/{pets['id']}/")
    assert f"datasets/{pets['id']}/32px/index.json" in keys
    assert f"datasets/{pets['id']}/32px/labels.npy" in keys
    assert f"datasets/{pets['id']}/32px/shard-00000.npy" in keys
    # The real statistics, under the keys any worker computes from its own copy of the packed set.
    index = s3_server.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}datasets/{pets['id']}/32px/index.json")
    (tmp_path / "index.json").write_bytes(index["Body"].read())
    stored = set(store_keys(s3_server, "stats/"))
    for stream in ("selection", "held-out"):
        (key,) = stats_keys(["swd"], dataset=f"packed:{tmp_path}", imsize=32, center_crop=None,
                            resize_mode="squash", n=10_000, inception=None, stream=stream).values()
        assert f"stats/{key.name}" in stored
    listed = api.client.get("/datasets").json()["items"]
    assert pets["id"] in [item["id"] for item in listed]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("entries", "compress", "reason"), [
    ({"cats/a.png": png((1, 2, 3)), "../x.png": png((1, 2, 3))}, False, "'../x.png' climbs out"),
    ({"zeros/a.png": bytes(20 << 20)}, True, "'zeros/a.png'.*SAGAN_MAX_COMPRESSION_RATIO"),
], ids=["traversal", "zip-bomb"])
def test_a_refused_archive_fails_naming_the_entry(api: Api, workers: Workers, entries: dict[str, bytes],
                                                  compress: bool, reason: str) -> None:
    failed = wait_dataset(api, upload(api, zip_of(entries, compress=compress))["id"])
    assert failed["status"] == "failed"
    assert re.search(reason, failed["error"]), failed["error"]


@pytest.mark.timeout(300)
def test_a_symlink_entry_and_a_corrupt_zip_fail(api: Api, workers: Workers) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        info = zipfile.ZipInfo("cats/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(info, "/etc/passwd")
    linked = upload(api, buffer.getvalue())
    corrupt = upload(api, b"PK\x03\x04 this is no zip" * 50)
    assert "'cats/link.png' is a symbolic link" in wait_dataset(api, linked["id"])["error"]
    failed = wait_dataset(api, corrupt["id"])
    assert failed["status"] == "failed" and "not a readable zip or tar archive" in failed["error"]
    # A job on a data set that is not ready is refused, naming it.
    response = api.client.post("/jobs",
                               json={"kind": "train", "config": {**TINY, "dataset": f"ds:{corrupt['id']}"}})
    assert response.status_code == 422, response.text
    assert f"data set {corrupt['id']} (pets) is failed, not ready" in json.dumps(response.json())


def test_an_upload_that_is_no_archive_is_a_422(api: Api) -> None:
    response = api.client.post("/datasets", data={"name": "x"}, files={"file": ("x.rar", b"123")})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "file"]
    response = api.client.post("/datasets", json={"name": "x", "source": "folder:/etc"})
    assert response.status_code == 422 and "outside the allowed data roots" in response.text


@pytest.mark.timeout(300)
def test_data_sets_registered_where_they_lie(api: Api, workers: Workers, s3_server: S3Server,
                                             tmp_service: Path) -> None:
    """JSON sources: an S3 prefix of the service's S3, and a folder under SAGAN_DATA_ROOTS."""
    client = s3_server.client()
    for name, data in TWO_CLASSES.items():
        client.put_object(Bucket=BUCKET, Key=f"raw/pets/{name}", Body=data)
    folder = tmp_service / "data" / "registered"
    for name, data in TWO_CLASSES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    created = []
    for source in (f"s3://{BUCKET}/raw/pets/", f"folder:{folder}"):
        response = api.client.post("/datasets",
                                   json={"name": "registered", "source": source, "imsizes": [32]})
        assert response.status_code == 201, response.text
        created.append(response.json())
    for dataset in created:
        ready = wait_dataset(api, dataset["id"])
        assert ready["status"] == "ready", ready
        assert ready["images"] == 16 and ready["classes"] == ["cats", "dogs"] and ready["imsizes"] == [32]
    assert created[0]["source"] == f"s3://{BUCKET}/raw/pets/"


def test_an_upload_over_the_limit_is_a_413(service_env: dict[str, str], tmp_path: Path) -> None:
    service, small = start_api({**service_env, "SAGAN_MAX_UPLOAD_GB": str(4096 / 2**30)}, tmp_path)
    try:
        archive = zip_of({f"{i}.png": png((i, i, i)) for i in range(40)})
        response = small.client.post("/datasets", data={"name": "big"}, files={"file": ("big.zip", archive)})
        assert response.status_code == 413 and "SAGAN_MAX_UPLOAD_GB" in response.text
        # Sent chunked (no Content-Length): counted as it streams in.
        boundary = "sagan-boundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; "
                f"name=\"name\"\r\n\r\nbig\r\n--{boundary}\r\n"
                'Content-Disposition: form-data; name="file"; filename="big.zip"\r\n\r\n').encode()
        chunks = iter([head, *(archive[i:i + 1024] for i in range(0, len(archive), 1024)),
                       f"\r\n--{boundary}--\r\n".encode()])
        response = small.client.post("/datasets", content=chunks,
                                     headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413 and "SAGAN_MAX_UPLOAD_GB" in response.text
    finally:
        service.stop()


def test_another_owners_data_set_is_not_found(pets: dict[str, Any], api: Api,
                                              service_env: dict[str, str]) -> None:
    other = Api(api.base_url, make_token(service_env, "dataset-stranger"))
    for method in ("GET", "DELETE"):
        response = other.client.request(method, f"/datasets/{pets['id']}")
        assert response.status_code == 404, response.text
    assert other.client.get(f"/datasets/{pets['id']}/preview").status_code == 404
    assert other.client.get("/datasets").json()["items"] == []
    response = other.client.post("/jobs",
                                 json={"kind": "train", "config": {**TINY, "dataset": f"ds:{pets['id']}"}})
    assert response.status_code == 422 and f"data set {pets['id']} not found" in response.text


def test_a_sweep_on_a_data_set_without_its_image_size_is_a_422(pets: dict[str, Any], api: Api) -> None:
    response = api.client.post("/jobs",
                               json={"kind": "sweep", "base": {**TINY, "dataset": f"ds:{pets['id']}"},
                                              "axes": {"imsize": [32, 64]}})
    assert response.status_code == 422, response.text
    assert f"data set {pets['id']} (pets) is packed at 32 px, not at imsize 64" in response.text


@pytest.mark.timeout(300)
def test_a_data_set_in_use_cannot_be_deleted(api: Api, workers: Workers, s3_server: S3Server) -> None:
    doomed = wait_dataset(api, upload(api, zip_of(TWO_CLASSES), name="doomed")["id"])
    assert doomed["status"] == "ready", doomed
    job = api.submit({"kind": "train", "config": {**TINY, "dataset": f"ds:{doomed['id']}", "steps": 100_000}})
    response = api.client.delete(f"/datasets/{doomed['id']}")
    assert response.status_code == 409 and job["id"] in response.text
    (using,) = api.client.get(f"/datasets/{doomed['id']}").json()["jobs"]
    assert using["id"] == job["id"] and using["kind"] == "train" and using["status"] in ("queued", "running")
    api.client.post(f"/jobs/{job['id']}/cancel")
    api.wait_status(job["id"], {"cancelled"}, timeout=60)
    assert api.client.delete(f"/datasets/{doomed['id']}").status_code == 204
    assert store_keys(s3_server, f"datasets/{doomed['id']}/") == []
    assert api.client.get(f"/datasets/{doomed['id']}").status_code == 404


@pytest.mark.timeout(600)
def test_a_conditional_training_then_an_eval_on_another_worker(pets: dict[str, Any], api: Api,
                                                               workers: Workers, service_env: dict[str, str],
                                                               tmp_path: Path) -> None:
    """The training's worker fetches the packed set into its data cache; then a second worker, with a cache
    of its own, fetches it again for an eval job."""
    config = {**TINY, "arch": "resnet", "attention": "pooled", "num_classes": None,
              "dataset": f"ds:{pets['id']}",
              "steps": 4, "checkpoint_every": 4, "eval_every": 4, "eval_metrics": ["swd"], "eval_n": 16}
    trained = api.wait_status(api.submit({"kind": "train", "config": config})["id"], {"succeeded", "failed"},
                              300)
    assert trained["status"] == "succeeded", trained
    assert trained["spec"]["dataset"] == f"ds:{pets['id']}"  # the stored spec keeps what the user wrote
    workers.current.stop()
    cache = tmp_path / "second-cache"
    workers.all.append(Service([*WORKER, "--loglevel", "WARNING"],
                               {**service_env, "SAGAN_DATA_CACHE_DIR": str(cache)},
                               tmp_path / "second-worker.log"))
    evaluated = api.submit({"kind": "eval", "source": {"job_id": trained["id"]}})
    done = api.wait_status(evaluated["id"], {"succeeded", "failed"}, 200)
    assert done["status"] == "succeeded", done
    assert list(cache.rglob("index.json")), "the second worker read the set from its own cache"
    used_by = api.client.get(f"/datasets/{pets['id']}").json()["jobs"]
    assert [job["id"] for job in used_by][-2:] == [trained["id"], evaluated["id"]]


def test_a_local_store_lists_and_deletes_a_prefix(tmp_path: Path) -> None:
    from sagan_service.storage import LocalStore

    store = LocalStore(tmp_path)
    store.put_fileobj("datasets/a/source/upload.zip", io.BytesIO(b"zip"))
    store.put_bytes("datasets/a/32px/index.json", b"{}")
    store.put_bytes("datasets/ab/preview.png", b"png")
    assert store.list_keys("datasets/a/") == ["datasets/a/32px/index.json", "datasets/a/source/upload.zip"]
    store.delete_prefix("datasets/a/")
    assert store.list_keys("datasets/a/") == [] and store.exists("datasets/ab/preview.png")
