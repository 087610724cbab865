"""Several trainings in turn in one torchrun launch, for tests that compare two gloo ranks with one process:

    python -m tests.gloo_runs CONFIG OUT [...]

runs torchrun as the service does (sagan_core.rank_launcher: two ranks forked from this process, which
imported the trainer), each running this file. Each rank joins one process group and trains every config
into its OUT (train() joins a group that exists), so the tests share one start of torchrun, its ranks and
their imports instead of paying it per config. What `sagan train --nproc 2` adds on top (the launch itself)
is tested where it is called, e.g. tests/test_train.py::test_two_processes_pool_their_unreadable_images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

from sagan_core.config import TrainConfig, build_config, read_config_file
from sagan_core.parallel import init_distributed, shutdown_distributed
from sagan_core.rank_launcher import torchrun, torchrun_args
from sagan_core.train import run


def _load(config_file: str) -> TrainConfig:
    return build_config(read_config_file(config_file))


def train_two_ranks(runs: dict[Path, TrainConfig]) -> None:
    """Train each config into its folder (the key) with two gloo ranks, all in one torchrun launch."""
    from tests.conftest import subprocess_env  # here, not above: the ranks need none of the test fixtures

    args = []
    for out, config in runs.items():
        config_file = out.with_name(f"{out.name}.json")
        config_file.write_text(json.dumps(config.to_dict()))
        args += [str(config_file), str(out)]
    result = subprocess.run([sys.executable, "-m", "tests.gloo_runs", *args],
                            env=subprocess_env(), timeout=600, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def main(argv: list[str]) -> int:
    """Each pair's exit status as a rank's (sagan_core.train.run); the first that is not 0 ends the launch."""
    init_distributed("cpu")
    try:
        for config_file, out in zip(argv[::2], argv[1::2], strict=True):
            status = run(partial(_load, config_file), Path(out))
            if status != 0:
                return status
        return 0
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    if "RANK" in os.environ:  # a rank: torchrun runs this file in each fork (--run-path)
        sys.exit(main(sys.argv[1:]))
    torchrun(torchrun_args(2, sys.argv[1:], script=Path(__file__).resolve()))
