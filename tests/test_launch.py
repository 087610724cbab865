"""The one description of a training's launch (sagan_core/launch.py) that `sagan train`, sweeps and the
job service's worker all run."""

from __future__ import annotations

import sys
from pathlib import Path

from sagan_core.launch import training_launch


def test_one_rank_runs_the_trainer_directly_and_several_under_the_rank_launcher() -> None:
    one = training_launch(Path("c.json"), Path("out"), 1, resume=True)
    assert one.command == [sys.executable, "-m", "sagan_core.train", "--config", "c.json", "--out", "out",
                           "--resume"]
    two = training_launch(Path("c.json"), Path("out"), 2, hold_checkpoints=True)
    assert two.command == [sys.executable, "-m", "sagan_core.rank_launcher", "--nproc-per-node", "2",
                           "--config", "c.json", "--out", "out", "--hold-checkpoints"]
