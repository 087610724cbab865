"""The attention explorer against a real `sagan up`: GET /jobs/{id}/attention (a helper process the first
time, the stored maps after) and the job page's panel in Chromium (pick a checkpoint, click a point, see the
maps)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from tests.service.conftest import TINY, Api, pids_mentioning
from tests.service.test_browser import TRAINING_S, browser, page, service  # noqa: F401 (fixtures)

QUICK = {**TINY, "steps": 4, "sample_every": 4, "checkpoint_every": 4, "log_every": 1}


@pytest.fixture(scope="module")
def trained(service: Api) -> str:  # noqa: F811
    job = service.submit({"kind": "train", "config": QUICK})
    assert service.wait_status(job["id"], {"succeeded", "failed"}, TRAINING_S)["status"] == "succeeded"
    return job["id"]


@pytest.mark.timeout(2 * TRAINING_S)
def test_attention_over_rest_is_computed_once_per_image(service: Api, trained: str) -> None:  # noqa: F811
    url = f"/jobs/{trained}/attention"
    started = time.perf_counter()
    first = service.client.get(url, params={"y": 5, "x": 9, "seed": 1, "index": 2}, timeout=300)
    first_s = time.perf_counter() - started
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/png" and first.content.startswith(b"\x89PNG")
    started = time.perf_counter()
    raw = service.client.get(url,
                             params={"y": 30, "x": 0, "seed": 1, "index": 2, "step": 4, "format": "json"})
    cached_s = time.perf_counter() - started
    assert raw.status_code == 200, raw.text
    maps = raw.json()
    assert (maps["step"], maps["imsize"]) == (4, 32)
    layers = maps["queries"][0]["layers"]
    assert [layer["name"] for layer in layers] == ["g.attn16", "d.attn8"]
    for layer in layers:  # stored as float16: each row sums to 1 within 1e-3
        assert np.sum(layer["weights"]) == pytest.approx(1, abs=2e-3)
    print(f"attention over REST: first {first_s:.2f} s (helper process), cached {cached_s:.3f} s")
    assert service.client.get(url, params={"y": 1, "x": 1, "layer": "g.attn99"}).status_code == 422
    assert service.client.get(url, params={"y": 32, "x": 1}).status_code == 422
    assert "no classes" in service.client.get(url, params={"y": 1, "x": 1, "class": 3}).json()["detail"]
    assert service.client.get(url, params={"y": 1, "x": 1, "step": 3}).status_code == 404
    # The API process itself never loaded torch (its helper processes did).
    port = service.base_url.rsplit(":", 1)[1]
    api_pids = set(pids_mentioning("\0api\0--host\0")) & set(pids_mentioning(f"\0--port\0{port}\0"))
    assert len(api_pids) == 1
    assert "libtorch" not in Path(f"/proc/{api_pids.pop()}/maps").read_text()


@pytest.mark.timeout(2 * TRAINING_S)
def test_click_a_point_and_see_every_layers_map(page: Page, trained: str) -> None:  # noqa: F811
    page.goto(f"/ui/jobs/{trained}")
    expect(page.locator('[data-chart="gamma"] a.chart-link')).to_have_attribute("href", "#attention-section")
    expect(page.locator("#attention-section")).to_be_visible()
    expect(page.locator("#attention-form [name=step]")).to_have_value("4")
    image = page.locator("#attention-img")
    expect(image).to_be_hidden()  # no empty image before the first maps
    page.get_by_role("button", name="Show maps").click()
    expect(image).to_have_attribute("data-query", "16,16", timeout=TRAINING_S * 1000)
    # the image, g.attn16, d.attn8
    assert image.evaluate("element => element.naturalWidth") == 3 * 128 + 2 * 4
    image.click(position={"x": 20 * 4 + 1, "y": 10 * 4 + 1})  # 4 figure pixels per image pixel
    expect(image).to_have_attribute("data-query", "10,20")
    expect(page.locator("#attention-text")).to_contain_text(re.compile(r"query \(10, 20\) · step 4"))
    image.click(position={"x": 200, "y": 10})  # on a map: no new query
    expect(image).to_have_attribute("data-query", "10,20")
