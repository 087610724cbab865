"""The job page's lineage lines of a continued training, in Chromium against an embedded `sagan up` (SQLite
and its file queue: migration 0008 there too)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.service.conftest import TINY, Api
from tests.service.test_browser import TRAINING_S, browser, page, service  # noqa: F401 (fixtures)


@pytest.mark.timeout(3 * TRAINING_S)
def test_the_job_pages_show_continued_from_and_continued_by(page: Page, service: Api) -> None:  # noqa: F811
    source = service.submit({"kind": "train", "config": {**TINY, "steps": 2, "checkpoint_every": 2}})
    assert service.wait_status(source["id"], {"succeeded", "failed"}, TRAINING_S)["status"] == "succeeded"
    answer = service.client.post(f"/jobs/{source['id']}/continue", json={"steps": 3})
    assert answer.status_code == 201, answer.text
    continued = answer.json()
    page.goto(f"/ui/jobs/{continued['id']}")
    line = page.locator("#facts div", has_text="Continued from")
    expect(line).to_contain_text(f"{source['id'][:8]} at step 2")
    line.locator("a").click()
    expect(page).to_have_url(f"{service.base_url}/ui/jobs/{source['id']}")
    expect(page.locator("#facts div", has_text="Continued by")).to_contain_text(continued["id"][:8])
    # It trains on to step 3; ended, it leaves nothing running for the module's stack to stop (a running
    # training would checkpoint and hand its job back first: seconds of the suite).
    done = service.wait_status(continued["id"], {"succeeded", "failed"}, TRAINING_S)
    assert done["status"] == "succeeded" and done["progress"]["step"] == 3, done
