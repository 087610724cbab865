"""Evaluation through the real stack: a training job that evaluates while it trains, eval jobs on its
checkpoints, and the real statistics shared through the artifact store (API + Postgres + Redis + Celery
worker + moto S3)."""

from __future__ import annotations

import pytest

from sagan_core.metrics.runs import best_eval
from sagan_core.metrics.weights import SHA256
from tests.service.conftest import TINY, Api, Workers

EVALUATING = {**TINY, "eval_every": 10, "eval_metrics": ["swd"], "eval_n": 32}


@pytest.fixture(scope="module")
def evaluated(api: Api, workers: Workers) -> dict:
    """A finished 20-step training job that evaluated at steps 0, 10 and 20."""
    job = api.submit({"kind": "train", "config": EVALUATING})
    return api.wait_status(job["id"], {"succeeded", "failed"}, timeout=300)


@pytest.mark.timeout(360)
def test_a_training_job_shows_its_latest_and_best_evaluation(evaluated: dict, api: Api) -> None:
    assert evaluated["status"] == "succeeded", evaluated
    evals = api.client.get(f"/jobs/{evaluated['id']}/evals").json()["items"]
    assert [e["step"] for e in evals] == [0, 10, 20]
    assert evals[0]["real"]["cache"] == {"swd": "miss"} and evals[1]["real"]["cache"] == {"swd": "hit"}
    assert evaluated["latest_eval"] == evals[-1]
    assert evaluated["best_eval"] == best_eval(evals, ["swd"])
    checkpoints = [item["step"]
                   for item in api.client.get(f"/jobs/{evaluated['id']}/checkpoints").json()["items"]]
    assert evaluated["best_eval"]["step"] in checkpoints  # committed, so "best" can be sampled and evaluated
    series = api.client.get(f"/jobs/{evaluated['id']}/metrics").json()["items"]
    assert [m["step"] for m in series if "eval" in m] == [0, 10, 20]


@pytest.mark.timeout(300)
def test_eval_jobs_on_the_best_checkpoint_score_it_held_out_and_share_the_statistics(evaluated: dict,
                                                                                    api: Api) -> None:
    best = evaluated["best_eval"]
    results = []
    for _ in range(2):
        job = api.submit({"kind": "eval", "source": {"job_id": evaluated["id"], "step": "best"}})
        assert job["kind"] == "eval" and job["spec"] == {
            "job_id": evaluated["id"], "step": best["step"], "dataset": "synthetic:64", "metrics": ["swd"],
            "n": 32, "seed": 0, "imsize": 32, "center_crop": None, "resize_mode": "squash"}
        done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=180)
        assert done["status"] == "succeeded", done
        (result,) = api.client.get(f"/jobs/{job['id']}/evals").json()["items"]
        assert done["latest_eval"] == result and done["best_eval"] is None
        assert result["checkpoint"] == f"job {evaluated['id']} step {best['step']}"  # not the worker's path
        results.append(result)
    first, second = results
    # The first job stored the held-out real side in the artifact store; the second, in a fresh work
    # directory, found it there instead of reading the data again.
    assert first["real"]["cache"] == {"swd": "miss"} and second["real"]["cache"] == {"swd": "hit"}
    assert first["source"] == "eval" and first["step"] == best["step"] and first["stream"] == "held-out"
    # The same weights, but other z and real images than the training's own evaluation of that step.
    assert best["stream"] == "selection" and first["metrics"]["swd"] != pytest.approx(best["metrics"]["swd"])
    assert second["metrics"] == pytest.approx(first["metrics"], rel=1e-5)
    # The training job's page shows the held-out score beside the one the checkpoint was picked by.
    assert api.client.get(f"/jobs/{evaluated['id']}").json()["best_held_out_eval"] == second


@pytest.mark.timeout(240)
def test_an_eval_job_without_the_inception_weights_fails_once_with_what_to_do(evaluated: dict,
                                                                              api: Api) -> None:
    job = api.submit({"kind": "eval", "source": {"job_id": evaluated["id"], "step": None},
                      "metrics": ["fid", "swd"], "n": 16})
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "failed" and done["attempt"] == 1
    assert "pt_inception-2015-12-05-6726825d.pth" in done["error"] and SHA256 in done["error"]
    assert "SAGAN_INCEPTION_WEIGHTS" in done["error"] and "Traceback" not in done["error"]


def test_eval_job_requests_are_checked(evaluated: dict, api: Api, service_env: dict) -> None:
    source = {"job_id": evaluated["id"], "step": None}
    missing = api.client.post("/jobs", json={"kind": "eval", "source": {"job_id": "nope", "step": None}})
    assert missing.status_code == 404
    for body, field in (({"metrics": ["fid", "lpips"]}, "metrics"), ({"n": 1}, "n"),
                        ({"dataset": "folder:/etc"}, "dataset"), ({"dataset": "nonsense:1"}, "dataset")):
        response = api.client.post("/jobs", json={"kind": "eval", "source": source, **body})
        assert response.status_code == 422, response.text
        assert field in response.json()["detail"][0]["loc"], response.text
    unevaluated = api.submit({"kind": "train", "config": {**TINY, "steps": 1}})
    api.client.post(f"/jobs/{unevaluated['id']}/cancel")
    conflict = api.client.post("/jobs",
                               json={"kind": "eval", "source": {"job_id": unevaluated["id"], "step": "best"}})
    assert conflict.status_code == 409 and "no evaluated checkpoint" in conflict.text
