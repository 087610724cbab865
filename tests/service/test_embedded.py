"""`sagan up`: the whole service with no servers (SQLite, filesystem broker, local artifacts)."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import subprocess_env
from tests.service.conftest import TINY, start_up, wait_for


@pytest.mark.timeout(240)
def test_sagan_up_runs_a_job_end_to_end(tmp_path: Path) -> None:
    up, api = start_up(tmp_path, "--demo")
    try:
        match = wait_for(lambda: re.search(r"demo job: (\S+)", up.log_path.read_text()), 90,
                         "the demo job URL")
        demo_id = match.group(1).rsplit("/", 1)[1]
        spec = api.job(demo_id)["spec"]
        assert (spec["preset"], spec["dataset"], spec["eval_metrics"]) == ("sagan32", "shapes", ["swd"])
        assert spec["eval_every"] > 0 and spec["ema_decay"] > 0
        log = up.log_path.read_text()  # the web page's address and the demo job's page on it
        assert f"web page {api.base_url}/ " in log and f"{api.base_url}/ui/jobs/{demo_id}" in log
        assert 'id="job-rows"' in api.client.get("/").text
        # The demo takes minutes: stop it, and run a tiny job in its place. `up` reports how it ended.
        api.client.post(f"/jobs/{demo_id}/cancel")
        api.wait_status(demo_id, {"cancelled"}, timeout=30)
        wait_for(lambda: "demo job cancelled" in up.log_path.read_text(), 30, "up to report the demo's end")

        job = api.submit({"kind": "train", "config": TINY})
        done = api.wait_status(job["id"], {"succeeded", "failed"}, timeout=120)
        assert done["status"] == "succeeded", done
        samples = api.client.get(f"/jobs/{job['id']}/samples").json()["items"]
        assert [item["step"] for item in samples] == [10, 20]
        for item in samples:
            assert item["url"].startswith(api.base_url)  # file:// artifacts are served by the API
            Image.open(io.BytesIO(api.client.get(item["url"]).content)).verify()
        stored = tmp_path / "home" / "artifacts" / "jobs" / job["id"]
        assert (stored / "samples" / "step-20.png").exists()
        assert (stored / "checkpoints" / "step-20" / "COMMITTED").exists()
        assert (tmp_path / "home" / "sagan.db").exists()
        # Ctrl-C: `up` stops its API and worker, and nothing of the service is left running.
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(30) == 0, up.log_path.read_text()[-3000:]
        wait_for(lambda: not _group_alive(up.process.pid), 10, "the API and worker to exit")
    finally:
        up.stop()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_sagan_db_upgrade_and_downgrade(tmp_path: Path) -> None:
    env = {**subprocess_env(), "SAGAN_HOME": str(tmp_path)}
    sagan = [sys.executable, "-m", "sagan_core.cli", "db"]
    subprocess.run([*sagan, "upgrade"], env=env, check=True)
    tables = {row[0] for row in sqlite3.connect(tmp_path / "sagan.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "artifacts", "alembic_version"} <= tables
    subprocess.run([*sagan, "downgrade", "base"], env=env, check=True)
