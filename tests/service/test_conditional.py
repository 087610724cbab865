"""A class-conditional debug run through the service: a labelled folder, training, then a sample job by
class."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.service.conftest import TINY, Api, Workers

COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


@pytest.fixture(scope="module")
def labelled_folder(service_env: dict[str, str]) -> Path:
    """Two classes, one sub-folder each (ImageNet's layout), inside the service's allowed data roots."""
    root = Path(service_env["SAGAN_DATA_ROOTS"]) / "two-colours"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
    return root


@pytest.mark.timeout(240)
def test_conditional_job_trains_on_class_folders_and_samples_by_class(api: Api, workers: Workers,
                                                                      labelled_folder: Path) -> None:
    config = {**TINY, "arch": "resnet", "attention": "pooled", "num_classes": None,
              "dataset": f"folder:{labelled_folder}", "steps": 4, "checkpoint_every": 4, "sample_every": 4}
    job = api.submit({"kind": "train", "config": config})
    done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done
    location = api.client.get(f"/jobs/{job['id']}/checkpoints/4").headers["location"]
    checkpoint = torch.load(io.BytesIO(httpx.get(location).content), weights_only=True)
    assert checkpoint["config"]["num_classes"] == 2  # taken from the folder and saved with the model
    grid = Image.open(io.BytesIO(api.client.get(f"/jobs/{job['id']}/samples/latest").content))
    assert grid.size == (8 * 34 + 2, 2 * 34 + 2)  # one row per class

    sample = api.submit({"kind": "sample", "source": {"job_id": job["id"]}, "classes": [1], "per_class": 3})
    assert sample["spec"] == {"job_id": job["id"], "step": 4, "n": 64, "seed": 0, "classes": [1],
                              "per_class": 3}
    finished = api.wait_status(sample["id"], {"succeeded", "failed"}, timeout=90)
    assert finished["status"] == "succeeded", finished
    image = Image.open(io.BytesIO(api.client.get(f"/jobs/{sample['id']}/samples/latest").content))
    assert image.size == (3 * 34 + 2, 1 * 34 + 2)  # one row of three images of class 1

    refused = api.client.post("/jobs", json={"kind": "sample", "source": {"job_id": job["id"]},
                                             "classes": list(range(200)), "per_class": 8})
    assert refused.status_code == 422 and "1024" in refused.text
