"""Sweeps through the real stack: a parent job whose children are ordinary training jobs, its derived
status, cascading cancel, validation before anything is created, and the stored comparison report.

One worker runs the children one at a time, in the order they were created.
"""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobs import derive_sweep_status
from sagan_service.models import TERMINAL, Job
from tests.service.conftest import BUCKET, TINY, Api, S3Server, Workers, pids_mentioning, wait_for

QUICK = {**TINY, "steps": 10, "sample_every": 5, "checkpoint_every": 5, "eval_every": 5, "eval_n": 16}


@pytest.mark.parametrize(("children", "started", "cancel", "status"), [
    (["queued", "queued"], False, False, "queued"),
    (["running", "queued"], True, False, "running"),
    (["queued", "queued"], True, False, "running"),  # a child handed back to the queue had started
    (["succeeded", "queued"], True, False, "running"),
    (["failed", "running"], True, False, "running"),  # a failure waits for the rest
    (["failed", "succeeded"], True, False, "failed"),
    (["succeeded", "succeeded"], True, False, "succeeded"),
    (["succeeded", "cancelled"], True, False, "cancelled"),
    (["failed", "cancelled"], True, True, "cancelled"),  # the user cancelled the sweep
    (["cancelled", "queued"], False, False, "queued"),
])
def test_a_sweeps_status_is_derived_from_its_childrens(children: list[str], started: bool, cancel: bool,
                                                       status: str) -> None:
    assert derive_sweep_status(children, started=started, cancel_requested=cancel) == status


def _images(page: str) -> list[Image.Image]:
    images = []
    for source in re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page):
        image = Image.open(io.BytesIO(base64.b64decode(source, validate=True)))
        image.load()
        images.append(image)
    return images


def _watch(api: Api, sweep_id: str, timeout: float) -> tuple[dict, list[tuple[str, list[str]]]]:
    """Poll the sweep until it finishes: its last state and every (sweep status, child statuses) seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep = api.job(sweep_id)
        seen.append((sweep["status"], [child["status"] for child in sweep["children"]]))
        if sweep["status"] in TERMINAL:
            return sweep, seen
        time.sleep(0.3)
    raise AssertionError(f"sweep {sweep_id} did not finish in {timeout} s: {seen[-1]}")


@pytest.mark.timeout(300)
def test_a_two_arm_sweep_runs_its_children_and_stores_a_report(api: Api, workers: Workers,
                                                               s3_server: S3Server) -> None:
    body = {"kind": "sweep", "base": QUICK, "seeds": [0],
            "arms": [{"name": "plain", "config": {"g_attention": [], "d_attention": []}},
                     {"name": "attn", "config": {}}]}
    response = api.client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert response.headers["location"].endswith(f"/jobs/{sweep['id']}")
    assert sweep["kind"] == "sweep" and sweep["status"] == "queued"
    assert [(child["arm"], child["seed"], child["status"]) for child in sweep["children"]] == [
        ("plain", 0, "queued"), ("attn", 0, "queued")]
    child = api.job(sweep["children"][0]["id"])
    assert child["kind"] == "train" and child["parent_id"] == sweep["id"] and child["arm"] == "plain"
    assert child["spec"]["g_attention"] == [] and child["spec"]["steps"] == 10 and child["spec"]["seed"] == 0
    assert child["children"] is None

    done, seen = _watch(api, sweep["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert ("running", ["running", "queued"]) in seen  # running once its first child started
    assert all(status == "queued" for status, children in seen if children == ["queued", "queued"])
    assert done["started_at"] and done["finished_at"]
    assert done["progress"] == {"step": 20, "total_steps": 20}
    for child in done["children"]:
        assert child["status"] == "succeeded" and child["progress"] == {"step": 10, "total_steps": 10}
        assert child["best_eval"]["metrics"]["swd"] > 0
    assert sweep["id"] in [job["id"]
                           for job in api.client.get("/jobs", params={"kind": "sweep"}).json()["items"]]

    # The worker that finished the last child stored the report, before anyone asked for it.
    # (The figure is stored first, the page after it.)
    wait_for(lambda: {"report.html", "report.png"} <= _keys(s3_server, sweep["id"]), 30, "the stored report")
    report = api.client.get(f"/jobs/{sweep['id']}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    page = report.text
    assert "<td>plain</td>" in page and "<td>attn</td>" in page and "<th>best swd</th>" in page
    assert "Sweep succeeded: 2 of 2 runs finished" in page
    images = _images(page)
    # 4 figures (metrics, losses, metrics against images seen, gammas), real + 2 grids
    assert len(images) == 7 and all(image.format == "PNG" for image in images)


def _keys(s3_server: S3Server, job_id: str) -> set[str]:
    listing = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"artifacts/jobs/{job_id}/")
    return {item["Key"].rsplit("/", 1)[1] for item in listing.get("Contents", [])}


@pytest.mark.timeout(300)
def test_a_failing_arm_fails_the_sweep_after_the_other_finishes(api: Api, workers: Workers,
                                                                tmp_service: Path) -> None:
    empty = tmp_service / "data" / f"empty-{uuid.uuid4().hex[:8]}"
    empty.mkdir()  # exists (the API's check passes) but holds no image: the trainer fails at its start
    sweep = api.submit({"kind": "sweep", "base": QUICK, "arms": [
        {"name": "broken", "config": {"dataset": f"folder:{empty}"}}, {"name": "fine", "config": {}}]})

    done, seen = _watch(api, sweep["id"], timeout=240)
    assert done["status"] == "failed", done
    broken, fine = done["children"]
    assert broken["status"] == "failed" and "no images" in (broken["error"] or "").lower() + str(
        api.job(broken["id"])["log_tail"]).lower()
    assert fine["status"] == "succeeded"
    # Never failed while a child was still to run: the other arm finished first.
    assert all(children_done for status, children in seen if status == "failed"
               for children_done in [all(child in TERMINAL for child in children)])
    assert any(status == "running" and children[0] == "failed" for status, children in seen)
    assert done["finished_at"] >= api.job(fine["id"])["finished_at"]
    page = api.client.get(f"/jobs/{sweep['id']}/report").text
    assert "<td>fine</td>" in page and "Sweep failed: 2 of 2 runs finished" in page


@pytest.mark.timeout(180)
def test_cancelling_a_sweep_cancels_every_child_and_leaves_no_process(api: Api, workers: Workers,
                                                                      s3_server: S3Server) -> None:
    sweep = api.submit({"kind": "sweep", "base": {**TINY, "steps": 100_000}, "seeds": [0, 1],
                        "axes": {"d_norm": ["spectral"]}})
    first, second = (child["id"] for child in sweep["children"])
    wait_for(lambda: api.job(first)["progress"]["step"] > 0, 90, "the first child to train")
    assert pids_mentioning(first)
    assert api.job(sweep["id"])["status"] == "running"

    response = api.client.post(f"/jobs/{sweep['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"]
    assert api.job(second)["status"] == "cancelled"  # queued: at once
    done = api.wait_status(sweep["id"], {"cancelled"}, timeout=30)
    assert [child["status"] for child in done["children"]] == ["cancelled", "cancelled"]
    assert not pids_mentioning(first) and not pids_mentioning(second)
    assert api.client.post(f"/jobs/{sweep['id']}/cancel").json()["status"] == "cancelled"  # idempotent

    # The report of what the first child trained; gone from the store, the API builds and stores it again.
    # (The figure is stored first, the page after it.)
    wait_for(lambda: {"report.html", "report.png"} <= _keys(s3_server, sweep["id"]), 30, "the stored report")
    for name in ("report.html", "report.png"):
        s3_server.client().delete_object(Bucket=BUCKET, Key=f"artifacts/jobs/{sweep['id']}/{name}")
    page = api.client.get(f"/jobs/{sweep['id']}/report").text
    assert "<td>d_norm=spectral</td><td>1</td>" in page and "Sweep cancelled: 2 of 2 runs finished" in page
    assert {"report.html", "report.png"} <= _keys(s3_server, sweep["id"])


def _job_count(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return session.scalar(select(func.count()).select_from(Job))
    finally:
        engine.dispose()


@pytest.mark.parametrize(("body", "loc"), [
    ({"base": TINY,
      "arms": [{"name": "ok", "config": {}}, {"name": "bad.arm", "config": {"d_norm": "layer"}}]},
     ["body", "arms", "bad.arm", "d_norm"]),
    ({"base": TINY, "axes": {"d_lr": [1e-4, -1]}}, ["body", "arms", "d_lr=-1", "d_lr"]),
    ({"base": TINY, "axes": {"d_nrom": ["batch"]}}, ["body", "axes", "d_nrom"]),
    ({"base": {**TINY, "dataset": "folder:/etc"}, "study": "attention"}, ["body", "base", "dataset"]),
    ({"base": TINY, "arms": [{"name": "a", "config": {"dataset": "folder:/etc"}}]},
     ["body", "arms", "a", "dataset"]),
    ({"base": TINY, "study": "attention", "seeds": list(range(17))}, ["body", "arms"]),  # 68 > 64
    ({"base": TINY, "study": "attention", "seeds": [0, 0]}, ["body", "seeds"]),
    ({"base": TINY, "study": "nope"}, ["body", "study"]),
    ({"base": TINY, "study": "attention", "axes": {}}, ["body", "sweep"]),
])
def test_an_invalid_sweep_creates_nothing(api: Api, database_url: str, body: dict, loc: list) -> None:
    before = _job_count(database_url)
    response = api.client.post("/jobs", json={"kind": "sweep", **body})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert _job_count(database_url) == before


def test_studies_are_listed(api: Api) -> None:
    studies = {study["name"]: study for study in api.client.get("/studies").json()["items"]}
    assert set(studies) == {"normalization", "ttur", "attention", "attention128", "hyperparams",
                            "diffaug"}
    arms = {arm["name"]: arm for arm in studies["ttur"]["arms"]}
    assert arms["equal-ncritic5"]["config"] == {"g_lr": 1e-4, "d_lr": 1e-4, "n_critic": 5}
    # a fifth of the sweep's steps
    assert arms["equal-ncritic5-matched"]["relative_to_steps"] == {"steps": 0.2}
    assert studies["attention128"]["base"] == "paper128"


def test_a_report_needs_a_sweep(api: Api, workers: Workers) -> None:
    job = api.submit({"kind": "train", "config": {**TINY, "steps": 1}})
    assert api.client.get(f"/jobs/{job['id']}/report").status_code == 409
    api.wait_status(job["id"], TERMINAL, timeout=60)
