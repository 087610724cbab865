"""Continuing a training job (POST /jobs/{id}/continue) and sample jobs' truncation and interpolation, through
the real API, worker and store. One worker: the tests run in file order."""

from __future__ import annotations

import io

import httpx
import pytest
import torch
from PIL import Image

from tests.service.conftest import TINY, Api, Workers


@pytest.fixture(scope="module")
def source(api: Api, workers: Workers) -> dict:
    """A finished 4-step training job with checkpoints at steps 2 and 4."""
    job = api.submit({"kind": "train",
                      "config": {**TINY, "steps": 4, "checkpoint_every": 2, "sample_every": 2}})
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done
    return done


def _checkpoint(api: Api, job_id: str, step: int) -> dict:
    response = api.client.get(f"/jobs/{job_id}/checkpoints/{step}", follow_redirects=True)
    assert response.status_code == 200, response.text
    return torch.load(io.BytesIO(response.content), weights_only=True)


@pytest.mark.timeout(180)
def test_a_continued_job_resumes_from_the_source_checkpoint(source: dict, api: Api) -> None:
    answer = api.client.post(f"/jobs/{source['id']}/continue",
                             json={"steps": 6, "step": 2, "config": {"sample_every": 3}})
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert (job["continued_from"], job["continued_from_step"]) == (source["id"], 2)
    assert job["spec"]["steps"] == 6 and job["spec"]["sample_every"] == 3
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=150)
    assert done["status"] == "succeeded", done
    metrics = api.client.get(f"/jobs/{job['id']}/metrics").json()["items"]
    assert [line["step"] for line in metrics] == [3, 4, 5, 6]  # from the source's step 2 on
    checkpoints = api.client.get(f"/jobs/{job['id']}/checkpoints").json()["items"]
    assert [item["step"] for item in checkpoints] == [4, 6]  # the source's step 2 stays the source's
    # Steps 3 and 4 again, from step 2's G, D, optimisers and RNG: the weights the source reached at step 4.
    ours, theirs = _checkpoint(api, job["id"], 4), _checkpoint(api, source["id"], 4)
    for part in ("generator", "discriminator"):
        assert all(torch.equal(ours[part][name], theirs[part][name]) for name in theirs[part]), part
    assert api.job(source["id"])["continued_by"] == [job["id"]]  # the job page's "continued by" line


@pytest.mark.timeout(30)
def test_continuing_with_another_architecture_or_too_few_steps_is_a_422(source: dict, api: Api) -> None:
    answer = api.client.post(f"/jobs/{source['id']}/continue",
                             json={"steps": 8, "config": {"g_conv_dim": 32}})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"][0]
    assert detail["loc"] == ["body", "config", "g_conv_dim"]
    assert detail["msg"].startswith("g_conv_dim: cannot change when continuing a run")
    answer = api.client.post(f"/jobs/{source['id']}/continue", json={"steps": 4})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "steps"]


@pytest.mark.timeout(150)
def test_sample_jobs_with_truncation_and_an_interpolation(source: dict, api: Api) -> None:
    truncated = api.submit({"kind": "sample", "source": {"job_id": source["id"]}, "n": 4, "truncation": 0.5})
    walk = api.submit({"kind": "sample", "source": {"job_id": source["id"]}, "interpolate": [1, 2],
                       "frames": 5})
    assert truncated["spec"]["truncation"] == 0.5 and "interpolate" not in truncated["spec"]
    assert walk["spec"]["interpolate"] == [1, 2] and walk["spec"]["frames"] == 5
    sizes = {}
    for job in (truncated, walk):
        done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=60)
        assert done["status"] == "succeeded", done
        url = api.client.get(f"/jobs/{job['id']}/samples").json()["items"][0]["url"]
        sizes[job["id"]] = Image.open(io.BytesIO(httpx.get(url, timeout=30).content)).size
    assert sizes[truncated["id"]] == (2 * 34 + 2, 2 * 34 + 2)  # a 2x2 grid
    assert sizes[walk["id"]] == (5 * 34 + 2, 34 + 2)  # a strip of 5 frames
