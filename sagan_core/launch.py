"""What runs one training: the command for its ranks on this machine, and what its exit status means.

One description for every launcher of the trainer: `sagan train` (in this process for one rank), a sweep's
runs and the job service's worker. Torch-free, so the worker builds it without importing torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .exits import EXIT_DIVERGED, EXIT_STOPPED

if TYPE_CHECKING:
    from .config import TrainConfig

# What the trainer's exit status says (torchrun reports 1 for any failed rank, whatever its own status).
EXIT_MEANINGS = {0: "finished",
                 EXIT_STOPPED: "stopped with a checkpoint: run again with --resume to continue",
                 EXIT_DIVERGED: "diverged: its latest checkpoint is the last finite one"}


@dataclass(frozen=True)
class TrainingLaunch:
    trainer_args: tuple[str, ...]  # `python -m sagan_core.train`'s arguments
    nproc: int  # ranks on this machine (the world size: one machine)
    device: str  # the config's device: where ranks may be forks of one process

    @property
    def command(self) -> list[str]:
        # One rank needs no rendezvous, and torchrun's launcher would add its own import of torch (about 2 s
        # on a small CPU) to every start.
        if self.nproc == 1:
            return [sys.executable, "-m", "sagan_core.train", *self.trainer_args]
        # CPU ranks: torchrun, its ranks forked from a launcher that imported the trainer (see
        # sagan_core.rank_launcher). CUDA does not survive a fork, and torchrun asks the driver whether there
        # is a GPU before it starts its ranks, so ranks that may use one ("auto" too) are new interpreters.
        if self.device == "cpu":
            return [sys.executable, "-m", "sagan_core.rank_launcher", "--nproc-per-node", str(self.nproc),
                    *self.trainer_args]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                str(self.nproc), "-m", "sagan_core.train", *self.trainer_args]


def training_launch(config_path: Path, out: Path, config: TrainConfig, *, resume: bool = False,
                    hold_checkpoints: bool = False) -> TrainingLaunch:
    """The launch of the training `config`, whose file is `config_path`, writing into `out`.
    `hold_checkpoints`: the checkpoint rotation waits until a supervisor took each one (see
    checkpoint.prune_checkpoints)."""
    args = ["--config", str(config_path), "--out", str(out)]
    args += ["--hold-checkpoints"] if hold_checkpoints else []
    args += ["--resume"] if resume else []
    return TrainingLaunch(tuple(args), config.nproc, config.device)
