"""`sagan login`, `sagan jobs` and `sagan datasets` (sagan_client) as a user runs them: `sagan` subprocesses
holding only a URL and a token, against a real `sagan api` and worker (PostgreSQL, Redis, moto S3)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import pytest

from sagan_client.api import error_message
from sagan_core.cli import ENTRY_POINT_GROUP
from tests.conftest import subprocess_env
from tests.service.conftest import TINY, Api, Workers, make_token, start_api, wait_for
from tests.service.test_datasets import TWO_CLASSES, wait_dataset, zip_of

JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TINY_FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]
Sagan = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module", autouse=True)
def client_registered() -> None:
    assert "client" in {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}, (
        "the `client` entry point is not installed: run `pip install -e .` (or `make install`) again")


@pytest.fixture(scope="module")
def user(service_env: dict[str, str]) -> str:
    return make_token(service_env, "client-user")


@pytest.fixture
def sagan(api: Api, user: str, tmp_path: Path) -> Sagan:
    """Runs `sagan ARGS` with SAGAN_URL and SAGAN_TOKEN (the user's token unless `token` says otherwise;
    None: unset), its config folder under tmp_path and no service settings at all."""

    def run(*args: str, url: str | None = api.base_url,
            token: str | None = user) -> subprocess.CompletedProcess:
        env = {name: value for name, value in subprocess_env().items() if not name.startswith("SAGAN_")}
        env["SAGAN_CONFIG_DIR"] = str(tmp_path / "config")
        env.update({name: value for name, value in (("SAGAN_URL", url), ("SAGAN_TOKEN", token)) if value})
        return subprocess.run([sys.executable, "-m", "sagan_core.cli", *args], check=False, env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    return run


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_client_needs_neither_torch_nor_the_service() -> None:
    code = ("import sys, sagan_client.cli; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'sagan_service', 'api', 'worker'}))")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.timeout(300)
def test_submit_wait_list_show_and_download(sagan: Sagan, workers: Workers, tmp_path: Path) -> None:
    submitted = sagan("jobs", "submit", *TINY_FLAGS, "--steps", "20", "--set", "sample_every=10",
                      "--wait", "--interval", "0.3")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0]
    assert JOB_ID.match(job_id)
    assert f"{job_id}  succeeded  step 20/20 (100%)" in submitted.stderr  # the progress line's last state

    listed = sagan("jobs", "list", "--status", "succeeded", "--json")
    assert job_id in [job["id"] for job in json.loads(listed.stdout)["items"]]
    assert job_id in sagan("jobs", "list", "--kind", "train").stdout
    shown = sagan("jobs", "show", job_id).stdout
    assert re.search(r"^status: +succeeded$", shown, re.MULTILINE) and "latest checkpoint: 20" in shown

    out = tmp_path / "run"
    fetched = sagan("jobs", "download", job_id, "--out", str(out))
    assert fetched.returncode == 0, fetched.stderr
    for step in (10, 20):  # grids from presigned S3 links, the checkpoint through the API's 307 to one
        assert (out / "samples" / f"step-{step}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 20 and "g_loss" in metrics[-1]
    assert (out / "checkpoints" / "step-20.pt").stat().st_size > 10_000
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-20.pt"
    assert json.loads((out / "config.json").read_text())["steps"] == 20
    assert (out / "evals.jsonl").read_text() == ""  # no eval_every: no evaluations

    # The shortcuts: a grid of the job's checkpoint saved, its evaluation printed, its report written.
    grid = sagan("jobs", "sample", job_id, "-n", "4", "--seed", "3", "--out", "grid.png", "--interval", "0.3")
    assert grid.returncode == 0, grid.stderr
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    measured = sagan("jobs", "eval", job_id, "--eval-metrics", "swd", "--eval-n", "64", "--interval", "0.3")
    assert measured.returncode == 0 and re.match(r"^swd \d", measured.stdout), measured.stderr
    report = sagan("jobs", "report", job_id)
    assert report.returncode == 0, report.stderr
    assert "<html" in (tmp_path / f"{job_id}-report.html").read_text()


@pytest.mark.timeout(60)
def test_a_low_priority_job_and_a_refused_high_one(sagan: Sagan, api: Api) -> None:
    low = sagan("jobs", "submit", *TINY_FLAGS, "--steps", "100000", "--priority", "low", "--json")
    job = json.loads(low.stdout)
    api.client.post(f"/jobs/{job['id']}/cancel")
    assert job["priority"] == "low"
    assert one_error_line(sagan("jobs", "submit", *TINY_FLAGS, "--priority", "high")) == (
        "sagan jobs submit: error: priority high is for admins; use low or normal")


@pytest.mark.timeout(120)
def test_cancel_of_a_running_job_and_wait_exits_non_zero(sagan: Sagan, api: Api, workers: Workers) -> None:
    job_id = sagan("jobs", "submit", *TINY_FLAGS, "--steps", "100000").stdout.strip()
    wait_for(lambda: api.job(job_id)["progress"]["step"] > 0, 90, "training to start")

    cancelled = sagan("jobs", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(job_id)
    waited = sagan("jobs", "wait", job_id, "--interval", "0.3")
    assert waited.returncode == 1
    assert waited.stderr.splitlines()[-1].startswith(f"{job_id}  cancelled")


def test_a_422_is_one_line_naming_the_field(sagan: Sagan) -> None:
    line = one_error_line(sagan("jobs", "submit", *TINY_FLAGS, "--steps", "0"))
    assert line.startswith("sagan jobs submit: error: steps: ") and "greater than or equal to 1" in line
    line = one_error_line(sagan("jobs", "submit", "--set", "g_conv_dim=12"))  # the server's own check
    assert line.startswith("sagan jobs submit: error: g_conv_dim: must be a multiple of 8")
    line = one_error_line(sagan("jobs", "submit", "--set", "stepz=3"))  # caught here, before any request
    assert line == "sagan jobs submit: error: stepz: unknown config field"


def test_a_429_is_the_servers_limit_and_when_to_retry(sagan: Sagan, service_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    service, limited = start_api({**service_env, "SAGAN_MAX_QUEUED_PER_OWNER": "1"}, tmp_path)
    try:  # a sweep of two runs asks for two queued jobs at once
        refused = sagan("jobs", "submit", "--kind", "sweep", *TINY_FLAGS, "--axis", "d_norm=spectral,batch",
                        "--url", limited.base_url)
    finally:
        service.stop()
    line = one_error_line(refused)
    assert re.match(r"sagan jobs submit: error: client-user has \d+ jobs queued and asks for 2 more", line)
    assert "(SAGAN_MAX_QUEUED_PER_OWNER=1)" in line and line.endswith("(retry after 30 s)")


@pytest.mark.parametrize(("status", "answer", "line"), [
    (503, {"json": {"detail": "database unavailable"}, "headers": {"Retry-After": "10"}},
     "database unavailable (retry after 10 s)"),
    (422, {"json": {"detail": [{"loc": ["body", "arms", "wide", "g_conv_dim"], "msg": "too\nwide"}]}},
     "g_conv_dim: too wide"),
    (502, {"text": "<html>\n<h1>Bad gateway</h1></html>"}, "HTTP 502 Bad Gateway"),
])
def test_other_answers_are_one_line_in_the_servers_words(status: int, answer: dict, line: str) -> None:
    assert error_message(httpx.Response(status, **answer)) == line


def test_login_writes_a_private_file_that_is_used_without_the_environment(sagan: Sagan, api: Api, user: str,
                                                                          tmp_path: Path) -> None:
    logged_in = sagan("login", api.base_url, "--token", user, url=None, token=None)
    assert logged_in.returncode == 0, logged_in.stderr
    credentials = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert json.loads(credentials.read_text()) == {"url": api.base_url, "token": user}

    listed = sagan("jobs", "list", "--json", url=None, token=None)
    assert listed.returncode == 0, listed.stderr
    assert "items" in json.loads(listed.stdout)
    # The saved token goes to its own URL only: another one gets none (here, the same server by another name).
    elsewhere = api.base_url.replace("127.0.0.1", "localhost")
    line = one_error_line(sagan("jobs", "list", "--url", elsewhere, url=None, token=None))
    assert "this API needs a token" in line
    line = one_error_line(sagan("jobs", "list", "--url", "http://127.0.0.1:9/", url=None, token=None))
    assert line.startswith("sagan jobs list: error: no answer from http://127.0.0.1:9")


def test_a_wrong_token_is_one_line(sagan: Sagan, api: Api, tmp_path: Path) -> None:
    line = one_error_line(sagan("login", api.base_url, "--token", "not-a-token", url=None, token=None))
    assert line == "sagan login: error: unknown or revoked token"
    assert not (tmp_path / "config" / "credentials.json").exists()
    line = one_error_line(sagan("jobs", "show", "0" * 8, token="not-a-token"))
    assert line == "sagan jobs show: error: unknown or revoked token"
    assert one_error_line(sagan("jobs", "list", token=None)).endswith(
        "this API needs a token: send `Authorization: Bearer <token>` (an operator creates one with "
        "`sagan token create --name NAME`)")


@pytest.mark.timeout(180)
def test_datasets_upload_list_show_and_delete(sagan: Sagan, api: Api, workers: Workers,
                                              tmp_path: Path) -> None:
    archive = tmp_path / "pets.zip"
    archive.write_bytes(zip_of(TWO_CLASSES))
    uploaded = sagan("datasets", "upload", str(archive), "--name", "pets")
    assert uploaded.returncode == 0, uploaded.stderr
    dataset_id = uploaded.stdout.strip()
    assert wait_dataset(api, dataset_id)["status"] == "ready"

    listed = json.loads(sagan("datasets", "list", "--json").stdout)["items"]
    assert dataset_id in [item["id"] for item in listed]
    shown = sagan("datasets", "show", dataset_id).stdout
    assert re.search(r"^images: +16$", shown, re.MULTILINE) and "cats, dogs" in shown
    assert sagan("datasets", "delete", dataset_id).returncode == 0
    assert one_error_line(sagan("datasets", "show", dataset_id)) == (
        f"sagan datasets show: error: data set {dataset_id} not found")
