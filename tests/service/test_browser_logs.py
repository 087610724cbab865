"""The job page's log pane in a real browser (the fixtures of test_browser.py): it follows a running job's
log, shows an attempt chosen in its select, and says when the job has ended."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.service.conftest import Api
from tests.service.test_browser import TRAINING_S, browser, page, service  # noqa: F401 (fixtures)
from tests.service.test_logs import LONG, WARNING_LINE


@pytest.mark.timeout(2 * TRAINING_S)
def test_the_log_pane_follows_a_running_job(page: Page, service: Api) -> None:  # noqa: F811
    job = service.submit({"kind": "train", "config": LONG})
    try:
        page.goto(f"/ui/jobs/{job['id']}")
        expect(page.locator("#log-text")).to_contain_text(WARNING_LINE, timeout=TRAINING_S * 1000)
        assert service.job(job["id"])["status"] == "running"  # seen while it runs
        page.select_option("#log-attempt", "1")
        expect(page.locator("#log-text")).to_contain_text(WARNING_LINE)
        page.select_option("#log-attempt", "live")
        service.client.post(f"/jobs/{job['id']}/cancel")
        expect(page.locator("#log-state")).to_have_text("The job has ended.", timeout=60_000)
        expect(page.locator("#log-text")).to_contain_text(WARNING_LINE)
    finally:
        service.client.post(f"/jobs/{job['id']}/cancel")
