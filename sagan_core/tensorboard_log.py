"""Rank 0's TensorBoard event files, beside metrics.jsonl: the same numbers as scalars, the sample grids as
images, so that `tensorboard --logdir RUN` (or a folder of runs, or the store's S3 prefix) shows a run.

Scalar tags: loss/d, loss/g, d_out/real, d_out/fake, gamma/<g.attnN|d.attnN>, lr/g, lr/d, speed/img_per_s,
data/bad_images, eval/<metric>; the image tag `samples` holds one grid per sample_every steps.

A run that starts writes a purge marker (TensorBoard's SessionLog START at `purge_step`): a resumed run's at
the step after its checkpoint, so what an earlier process logged past that step (and trains again now) is
dropped by every reader and the curves go on without duplicates; a fresh run's at 0, hiding any older run's
files left in the folder. Optional: without the `tensorboard` package the trainer warns once and writes none.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# The record fields of metrics.jsonl (RunWriter.log's, RunWriter.evaluation's) and their tags; the service's
# MLflow runs (worker/mlflow_sync.py) name their metrics the same.
SCALAR_TAGS = {"d_loss": "loss/d", "g_loss": "loss/g", "d_out_real": "d_out/real", "d_out_fake": "d_out/fake",
               "lr": "lr/g", "img_per_s": "speed/img_per_s", "bad_images": "data/bad_images"}
SAMPLES_TAG = "samples"


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record's numbers by tag: a training record's stats and gammas, an evaluation's
    metrics."""
    scalars = {tag: record[field] for field, tag in SCALAR_TAGS.items() if field in record}
    scalars.update({f"gamma/{name}": gamma for name, gamma in record.get("gamma", {}).items()})
    scalars.update({f"eval/{name}": value for name, value in record.get("eval", {}).items()
                    if isinstance(value, int | float)})
    return scalars


def complete_records(data: bytes) -> bytes:
    """The whole records at the start of an event file's bytes (a TFRecord: 8-byte little-endian length,
    4-byte CRC of it, the data, 4-byte CRC of the data), without a record the writer may be in the middle
    of."""
    end = 0
    while end + 12 <= len(data):
        record_end = end + 12 + int.from_bytes(data[end:end + 8], "little") + 4
        if record_end > len(data):
            break
        end = record_end
    return data[:end]


class TensorBoardLog:
    """One SummaryWriter on the run directory; every write is flushed, so a reader (the service's worker,
    which stores the files as they grow) sees each step as soon as the trainer logged it."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path, *, purge_step: int) -> TensorBoardLog | None:
        """The run's log, or None (after a one-line warning) when the tensorboard package is missing."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's module imports the tensorboard package
            print("warning: tensorboard is not installed: this run writes no TensorBoard event files",
                  file=sys.stderr, flush=True)
            return None
        return cls(SummaryWriter(str(run_dir), purge_step=purge_step))

    def log(self, record: dict[str, Any], d_lr: float | None = None) -> None:
        """A metrics.jsonl record (RunWriter.log's or RunWriter.evaluation's), with D's learning rate on a
        training record (the record holds G's)."""
        scalars = record_scalars(record)
        if d_lr is not None:
            scalars["lr/d"] = d_lr
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def grid(self, step: int, png: Path) -> None:
        """A sample grid, as the PNG the trainer wrote (so TensorBoard shows exactly that image)."""
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(SAMPLES_TAG, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
