"""The one description of a training's launch (sagan_core/launch.py) that `sagan train`, sweeps and the
job service's worker all run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sagan_core.launch import training_launch

from .conftest import tiny_config


def test_one_rank_runs_the_trainer_directly() -> None:
    one = training_launch(Path("c.json"), Path("out"), tiny_config(), resume=True)
    assert one.command == [sys.executable, "-m", "sagan_core.train", "--config", "c.json", "--out", "out",
                           "--resume"]


def test_cpu_ranks_are_forked_by_the_rank_launcher() -> None:
    two = training_launch(Path("c.json"), Path("out"), tiny_config(nproc=2, batch_size=8),
                          hold_checkpoints=True)
    assert two.command == [sys.executable, "-m", "sagan_core.rank_launcher", "--nproc-per-node", "2",
                           "--config", "c.json", "--out", "out", "--hold-checkpoints"]


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_ranks_that_may_use_a_gpu_are_torchruns_new_interpreters(device: str) -> None:
    # CUDA does not survive a fork: these ranks must not be forks of the launcher.
    two = training_launch(Path("c.json"), Path("out"), tiny_config(nproc=2, batch_size=8, device=device))
    assert two.command == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           "2", "-m", "sagan_core.train", "--config", "c.json", "--out", "out"]
