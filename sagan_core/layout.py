"""Names inside a run directory, for the trainer and for whoever reads or prepares its files (the
service's worker); standard library only, so a process that must not load torch can use them.

    metrics.jsonl             one JSON line every log_every steps
    samples/step-<n>.png      sample grids
    checkpoints/step-<n>.pt   checkpoints
    checkpoints/step-<n>.pt.taken   another process has taken its copy (see save_checkpoint's hold)
    checkpoints/latest        the file name of the newest complete checkpoint
"""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write

METRICS = "metrics.jsonl"
SAMPLES = "samples"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
TAKEN_SUFFIX = ".taken"


def sample_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SAMPLES / f"step-{step}.png"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}.pt"


def step_of(path: Path) -> int:
    """The step in a `step-<n>.<ext>` file name."""
    return int(Path(path).stem.split("-", 1)[1])


def samples(run_dir: Path) -> list[Path]:
    """The run's sample grids, oldest first."""
    return sorted((Path(run_dir) / SAMPLES).glob("step-*.png"), key=step_of)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    return sorted((Path(run_dir) / CHECKPOINTS).glob("step-*.pt"), key=step_of)


def taken_marker(checkpoint: Path) -> Path:
    """The file that says another process (the job service's worker) has taken its copy of `checkpoint`."""
    return checkpoint.with_name(checkpoint.name + TAKEN_SUFFIX)


def mark_taken(checkpoint: Path) -> None:
    taken_marker(checkpoint).touch()


def point_latest(checkpoint: Path) -> None:
    """Make `checkpoint` the run's latest, atomically (call it once the file is complete)."""
    atomic_write(checkpoint.parent / LATEST, lambda f: f.write(checkpoint.name.encode()))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None before the first."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    return pointer.parent / pointer.read_text().strip()
