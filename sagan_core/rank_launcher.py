"""torchrun for the trainer, with every rank a fork of this process after it imported the trainer.

`python -m torch.distributed.run -m sagan_core.train` starts each rank as a new interpreter that imports
torch, torchvision and torch._dynamo again: about 3 s of CPU per rank on a small machine, paid by every
rank of every multi-rank start, and paid for nothing under the worker's fork server, where the launcher
itself has all of them imported. Here the launcher imports them once and runs torchrun itself with
`--start-method fork --run-path sagan_core/rank_script.py`: torchrun's agent, rendezvous, signal handling
and exit status stay torchrun's, only its ranks are forks (torchrun's own option for a script it runs
with runpy) instead of new interpreters.

For CPU ranks only (sagan_core.launch picks it where the config's device is "cpu"): CUDA does not survive a
fork, and torchrun asks the driver whether there is a GPU (LaunchConfig's NUMA default) before it starts
its ranks. On the CPU a fork is safe for the reason it is for a DataLoader's workers: the launcher imported
torch but runs no op, so each rank starts with no thread pool in use and makes its own. A rank's command
line (`ps`) is the launcher's; the ranks are the launcher's children.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch._dynamo  # noqa: F401  (what the ranks' first optimizer step imports: once, before the fork)
from torch.distributed.run import main as torchrun

import sagan_core.train  # noqa: F401  (the ranks' own imports, once, before the fork)

RANK_SCRIPT = Path(__file__).resolve().with_name("rank_script.py")


def torchrun_args(nproc: int, script_args: list[str], script: Path = RANK_SCRIPT) -> list[str]:
    """torchrun's arguments for `nproc` ranks on this machine, each a fork of this process that runs `script`
    (runpy, as __main__)."""
    return ["--standalone", "--nproc-per-node", str(nproc), "--start-method", "fork",
            "--run-path", str(script), *script_args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start N ranks of the trainer with torchrun (one machine).")
    parser.add_argument("--nproc-per-node", type=int, required=True, help="ranks to start")
    args, trainer_args = parser.parse_known_args(argv)
    # torchrun's exit status: 0, or 1 with ChildFailedError's report if any rank failed.
    torchrun(torchrun_args(args.nproc_per_node, trainer_args))


if __name__ == "__main__":
    main(sys.argv[1:])
