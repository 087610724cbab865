"""One rank of a multi-rank training: the script torchrun runs (runpy, as __main__) in each rank that
sagan_core.rank_launcher forks, with torchrun's environment for that rank (RANK, WORLD_SIZE, ...) set."""

import os
import sys

import torch

from sagan_core.train import main

if __name__ == "__main__":
    # What a new interpreter would have done at its start, and a fork inherits from the launcher instead:
    # take the thread count from OMP_NUM_THREADS (torchrun sets 1 per rank where it was unset, after the
    # launcher's OpenMP read it), and write stdout through line by line (torchrun runs new ranks with -u).
    if threads := os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(threads))
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(main(sys.argv[1:]))
