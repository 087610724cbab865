"""The `api` extra alone is a working API server without PyTorch (what the API image installs).

One fresh venv for the module, `pip install '.[api]'` into it from the indexes pip is configured with here
(pip's cache makes a rerun mostly unpacking), then the installed `sagan`, not this checkout, is run from it.
The venv has no pip of its own: this environment's pip installs into it (`pip --python`), which spares
installing pip there first (a few CPU-seconds) and what its older, slower resolver costs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sagan_core import cli
from tests.conftest import ROOT
from tests.service.conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def api_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("api-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # No bytecode compiling: it is most of an install's time, and the test runs each module once or twice.
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    install = subprocess.run([*pip, "install", "-q", "--no-compile", f"{ROOT}[api]"],
                             env=clean_env(), capture_output=True, text=True, timeout=540, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the checkout on the path or the suite's service settings."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SAGAN_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **settings}


def run_sagan(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "sagan"), *args], env=clean_env(), cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_api_extra_has_no_torch(api_venv: Path) -> None:
    probe = "import importlib.util as u; print([m for m in ('torch', 'torchvision') if u.find_spec(m)])"
    found = subprocess.run([str(api_venv / "bin" / "python"), "-c", probe],
                           env=clean_env(), capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "[]"


def test_help_lists_every_command_without_torch(api_venv: Path, tmp_path: Path) -> None:
    result = run_sagan(api_venv, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("train", "api", "worker", "jobs"):
        assert command in result.stdout


@pytest.mark.parametrize("command", [["train", "--preset", "debug32", "--steps", "1", "--out", "run"],
                                     ["worker"]])
def test_a_command_that_needs_torch_names_the_worker_extra(api_venv: Path, tmp_path: Path,
                                                           command: list[str]) -> None:
    result = run_sagan(api_venv, *command, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [(
        f"sagan {command[0]}: error: this command needs the worker extra (torch is not installed): "
        "pip install 'sagan-service[worker]'")]


@pytest.fixture
def api_url(api_venv: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    # The embedded defaults under SAGAN_HOME: SQLite, the filesystem queue, a local artifact folder.
    env = clean_env(SAGAN_HOME=str(tmp_path / "home"), SAGAN_AUTH="none")
    log = (tmp_path / "api.log").open("w")
    process = subprocess.Popen([str(api_venv / "bin" / "sagan"), "api", "--port", str(port)], env=env,
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or answers(url + "/healthz"), 60, "the API to start")
        assert process.poll() is None, (tmp_path / "api.log").read_text()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_sagan_api_serves_without_torch(api_url: str) -> None:
    for route in ("/healthz", "/readyz", "/jobs"):
        response = httpx.get(api_url + route, timeout=10)
        assert response.status_code == 200, (route, response.text)


class MissingModule:
    """An entry point whose module imports a package of an extra that is not installed."""

    name = "worker"

    def load(self) -> None:
        raise ModuleNotFoundError("No module named 'sqlalchemy'", name="sqlalchemy")


def test_a_command_that_cannot_load_stands_in_and_names_its_extra(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # The client-only install (`pip install .`): `sagan --help` still works, `sagan worker` says what is
    # missing.
    monkeypatch.setattr(cli, "entry_points", lambda group: [MissingModule()])
    assert "(needs the api extra)" in cli.build_parser().format_help()
    assert cli.main(["worker", "--queues", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines() == [(
        "sagan worker: error: this command needs the api extra (sqlalchemy is not installed): "
        "pip install 'sagan-service[api]'")]
