"""Shared fixtures for the library tests: tiny configs and finished runs."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# One OpenMP thread per process, for this process and every child it starts (trainers, torchrun ranks,
# workers), unless the caller chose: `make test` runs two test processes on a 2-core machine, each with
# its own children, and torch's default of one thread per core made them spin against each other (three
# model files took 284 s instead of 33 s with -n 2). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from sagan_core.config import TrainConfig, make_config

if TYPE_CHECKING:
    from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> TrainConfig:
    """debug32 with a small synthetic set: a step takes a few milliseconds on the CPU."""
    values = {"dataset": "synthetic:64", "steps": 4, "checkpoint_every": 2, "sample_every": 2,
              "device": "cpu", **overrides}
    return make_config("debug32", **values)


def models_to_count(preset: str | TrainConfig, **overrides: Any) -> tuple[nn.Module, nn.Module]:
    """A config's generator and discriminator on the meta device: their layout and parameter counts without
    their memory or the spectral norms' fit to initial weights (seconds at 128x128 on the CPU)."""
    import torch

    from sagan_core import build_models

    with torch.device("meta"):
        return build_models(preset, **overrides)


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: this checkout importable, no torchrun variables inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `long_module` first, then the others by their number of tests, most first (what
    pytest-xdist would do by itself; `make test` turns that off with --no-loadscope-reorder so that this
    order holds). `make test`'s `--dist loadfile` hands modules out in this order: a module of minutes
    started last would leave the other test process idle until it ends (test_gpu_check's one test did)."""
    tests_in = Counter(item.path for item in items)
    items.sort(key=lambda item: (item.get_closest_marker("long_module") is None,
                                 -tests_in[item.path]))  # stable: modules stay whole


@pytest.fixture(scope="session", autouse=True)
def folder_scan_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder scans cache into a temporary directory (child processes inherit it), not the user's cache."""
    path = tmp_path_factory.mktemp("folder-cache")
    os.environ["SAGAN_DATA_CACHE"] = str(path)
    return path


@pytest.fixture
def python() -> str:
    return sys.executable
