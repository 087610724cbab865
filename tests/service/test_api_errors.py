"""Bad input gets 4xx answers that say what is wrong, never a 500 (the real API on Postgres)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import typing
from pathlib import Path

import httpx
import pytest

from sagan_core.config import FIELDS, ConfigError, build_config
from tests.service.conftest import TINY, Api


def detail_field(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return ".".join(str(part) for part in response.json()["detail"][0]["loc"][1:])


@pytest.mark.parametrize(("config", "field"), [
    ({"no_such_field": 1}, "config.no_such_field"),
    ({"preset": "huge"}, "config.preset"),
    ({"steps": "many"}, "config.steps"),
    ({"steps": 0}, "config.steps"),
    ({"g_conv_dim": 12}, "config.g_conv_dim"),
    ({"batch_size": 9, "nproc": 2}, "config.batch_size"),
    ({"dataset": "folder:/etc"}, "config.dataset"),
    ({"dataset": "cifar10"}, "config.dataset"),
    ({"dataset": "folder:relative/images"}, "config.dataset"),
    ({"steps": 10**20}, "config.steps"),
    ({"n_critic": 2**31 - 1}, "config.n_critic"),
    ({"keep_checkpoints": 2**31 - 1}, "config.keep_checkpoints"),
    ({"seed": 2**31}, "config.seed"),
])
def test_invalid_train_config_names_the_field(api: Api, config: dict, field: str) -> None:
    assert detail_field(api.client.post("/jobs",
                                        json={"kind": "train", "config": {**TINY, **config}})) == field


def test_rest_error_is_worded_like_the_cli(api: Api) -> None:
    with pytest.raises(ConfigError) as expected:
        build_config({**TINY, "steps": "3"})
    response = api.client.post("/jobs", json={"kind": "train", "config": {**TINY, "steps": "3"}})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "config", "steps"] and detail["msg"] == str(expected.value)


def test_openapi_shows_every_config_field_with_type_default_and_description(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]["TrainJobCreate"]
    properties = schema["properties"]["config"]["properties"]
    assert set(properties) == set(FIELDS)
    for name, field in FIELDS.items():
        # FastAPI writes its OpenAPI document without null values, so a null default is left out.
        assert properties[name].get("default") == field.default, name
        assert properties[name]["description"] == field.description, name
    assert properties["steps"]["type"] == "integer" and properties["steps"]["minimum"] == 1
    assert properties["loss"]["enum"] == ["hinge", "wgan-gp", "bce"]


def test_a_client_generated_from_openapi_builds_a_train_job(api: Api, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """datamodel-code-generator turns /openapi.json into pydantic models; a job built with them runs."""
    (tmp_path / "openapi.json").write_text(json.dumps(api.client.get("/openapi.json").json()))
    subprocess.run([Path(sys.executable).with_name("datamodel-codegen"), "--input", tmp_path / "openapi.json",
                    "--input-file-type", "openapi", "--output", tmp_path / "client_models.py",
                    "--output-model-type", "pydantic_v2.BaseModel", "--formatters", "ruff-format"],
                   check=True, capture_output=True, timeout=120)
    spec = importlib.util.spec_from_file_location("client_models", tmp_path / "client_models.py")
    models = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "client_models", models)  # pydantic resolves its annotations there
    spec.loader.exec_module(models)
    config_model = typing.get_type_hints(models.TrainJobCreate, vars(models))["config"].__args__[0]
    body = models.TrainJobCreate(kind="train", config=config_model(
        preset="debug32", dataset="synthetic:64", steps=3, device="cpu"))
    response = api.client.post("/jobs", content=body.model_dump_json(exclude_unset=True),
                               headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["steps"] == 3 and response.json()["spec"]["z_dim"] == 128
    api.client.post(f"/jobs/{response.json()['id']}/cancel")


def test_dataset_inside_the_data_roots_is_checked_for_existence(api: Api, service_env: dict) -> None:
    missing = f"folder:{service_env['SAGAN_DATA_ROOTS']}/nothing-here"
    response = api.client.post("/jobs", json={"kind": "train", "config": {**TINY, "dataset": missing}})
    assert detail_field(response) == "config.dataset" and "nothing-here" in response.text


def cifar_batches(folder: Path) -> Path:
    """A folder with CIFAR-10's batch files (their contents do not matter: only paths are checked here)."""
    folder.mkdir(parents=True)
    for index in range(1, 6):
        (folder / f"data_batch_{index}").write_bytes(b"not read")
    return folder


def lsun_environment(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "data.mdb").write_bytes(b"not read")
    return folder


@pytest.mark.parametrize("kind", ["cifar10", "lsun"])
def test_a_data_set_reading_through_a_link_to_outside_the_roots_is_refused(
        api: Api, service_env: dict, tmp_path: Path, kind: str) -> None:
    # The spec's own path lies inside the roots; what it reads inside it is a link to elsewhere.
    inside = Path(service_env["SAGAN_DATA_ROOTS"]) / f"linked-{kind}-{tmp_path.name}"
    inside.mkdir()
    if kind == "cifar10":
        (inside / "cifar-10-batches-py").symlink_to(cifar_batches(tmp_path / "outside"))
        spec = f"cifar10:{inside}"
    else:
        (inside / "church_lmdb").symlink_to(lsun_environment(tmp_path / "outside"))
        spec = f"lsun:{inside}:church"
    response = api.client.post("/jobs", json={"kind": "train", "config": {**TINY, "dataset": spec}})
    assert detail_field(response) == "config.dataset"
    assert "is a link leading outside the allowed data roots" in response.text, response.text
    # The same layout with the link's target inside the roots is accepted.
    target = Path(service_env["SAGAN_DATA_ROOTS"]) / f"target-{kind}-{tmp_path.name}"
    if kind == "cifar10":
        (inside / "cifar-10-batches-py").unlink()
        (inside / "cifar-10-batches-py").symlink_to(cifar_batches(target))
    else:
        (inside / "church_lmdb").unlink()
        (inside / "church_lmdb").symlink_to(lsun_environment(target))
    accepted = api.client.post("/jobs",
                               json={"kind": "train", "config": {**TINY, "dataset": spec, "steps": 1}})
    assert accepted.status_code == 201, accepted.text
    api.client.post(f"/jobs/{accepted.json()['id']}/cancel")


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("body", "field", "quoted"), [
    ({"kind": "train", "config": {"\ud800": 1}}, "config.\ufffd", "\ufffd: unknown config field"),
    ({"kind": "sweep", "base": TINY, "arms": [{"name": "\ud800", "config": {}}]}, "arms.\ufffd.name",
     "arm \ufffd"),
    ({"kind": "sweep", "base": TINY, "axes": {"g_lr": nested_list(900)}}, "axes.g_lr", "an axis value is"),
    ({"kind": "sample", "source": {"job_id": "x"}, "seed": 2**64}, "sample.seed", "less than or equal"),
])
def test_input_that_gave_500_or_a_failing_job_is_422(api: Api, body: dict, field: str, quoted: str) -> None:
    # Sent as JSON text: httpx cannot encode a lone surrogate itself, json.dumps escapes it ("\ud800").
    response = api.client.post("/jobs", content=json.dumps(body),
                               headers={"content-type": "application/json"})
    assert detail_field(response) == field
    assert quoted in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "train", "config": {}, "extra": 1}, "train.extra"),
    ({"kind": "sample", "source": {"job_id": "x"}, "n": 0}, "sample.n"),
    ({"kind": "sample"}, "sample.source"),
    ({"kind": "sample", "source": {"job_id": "x", "step": 10**20}}, "sample.source.step"),
])
def test_malformed_bodies_are_422(api: Api, body: dict, field: str) -> None:
    assert detail_field(api.client.post("/jobs", json=body)) == field


def test_unknown_kind_is_422_naming_kind(api: Api) -> None:
    response = api.client.post("/jobs", json={"kind": "paint"})
    assert response.status_code == 422 and "'kind'" in response.json()["detail"][0]["msg"]


def test_non_json_body_is_422(api: Api) -> None:
    response = api.client.post("/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize("path", ["/jobs/nope", "/jobs/nope/samples", "/jobs/nope/samples/latest",
                                  "/jobs/nope/samples/10", "/jobs/nope/checkpoints", "/jobs/nope/metrics"])
def test_unknown_job_is_404(api: Api, path: str) -> None:
    assert api.client.get(path).status_code == 404
    assert api.client.post("/jobs/nope/cancel").status_code == 404


def test_sampling_needs_a_committed_checkpoint(api: Api) -> None:
    job = api.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})
    api.client.post(f"/jobs/{job['id']}/cancel")
    response = api.client.post("/jobs", json={"kind": "sample", "source": {"job_id": job["id"]}})
    assert response.status_code == 409
    assert response.json()["detail"] == f"job {job['id']} has no committed checkpoint yet"
    pinned = api.client.post("/jobs", json={"kind": "sample", "source": {"job_id": job["id"], "step": 5}})
    assert pinned.status_code == 409 and "step 5" in pinned.json()["detail"]
    assert api.client.post("/jobs", json={"kind": "sample", "source": {"job_id": "nope"}}).status_code == 404


def test_cancel_of_a_finished_job_is_409(api: Api) -> None:
    job = api.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})
    assert api.client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    # A cancelled job stays cancelled (idempotent), a succeeded or failed one cannot be cancelled.
    assert api.client.post(f"/jobs/{job['id']}/cancel").status_code == 200


def test_list_filters_and_paginates(api: Api) -> None:
    ids = [api.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})["id"] for _ in range(3)]
    for job_id in ids:
        api.client.post(f"/jobs/{job_id}/cancel")
    seen, cursor = [], None
    while True:
        params = {"status": "cancelled", "kind": "train", "limit": 2,
                  **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/jobs", params=params).json()
        seen += [job["id"] for job in page["items"]]
        assert all(job["status"] == "cancelled" for job in page["items"])
        if not (cursor := page["next_cursor"]):
            break
    assert seen == sorted(seen, reverse=True) and set(ids) <= set(seen)
    assert api.client.get("/jobs", params={"status": "lost"}).status_code == 422
    assert api.client.get("/jobs", params={"limit": 0}).status_code == 422


def test_health_and_docs(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/docs").status_code == 200
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/samples/latest"} <= set(paths)


@pytest.mark.parametrize("path", ["/jobs/nope/samples/100000000000000000000", "/jobs/nope/checkpoints/-1"])
def test_out_of_range_steps_in_paths_are_422(api: Api, path: str) -> None:
    response = api.client.get(path)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["path", "step"]


def test_a_valid_config_the_literature_advises_against_is_accepted_with_a_warning(api: Api) -> None:
    # WGAN-GP's penalty is per sample; a BatchNorm critic mixes a batch's samples (the WGAN-GP paper, 4).
    advised_against = api.submit({"kind": "train", "config": {**TINY, "steps": 1, "loss": "wgan-gp",
                                                              "d_norm": "batch"}})
    plain = api.submit({"kind": "train", "config": {**TINY, "steps": 1, "loss": "wgan-gp"}})
    for job in (advised_against, plain):
        api.client.post(f"/jobs/{job['id']}/cancel")
    (warning,) = api.job(advised_against["id"])["warnings"]
    assert "wgan-gp" in warning and "d_norm batch" in warning
    assert api.job(plain["id"])["warnings"] == []
