"""Names inside a run directory, for the trainer and for whoever reads or prepares its files (the
service's worker); standard library only, so a process that must not load torch can use them.

    metrics.jsonl             one JSON line every log_every steps (and one per evaluation)
    evals.jsonl               one JSON line per quality evaluation (sagan_core.metrics)
    samples/step-<n>.png      sample grids
    samples/real.png          real training images, in the grid the samples use (written once)
    checkpoints/step-<n>.pt   checkpoints
    checkpoints/step-<n>.pt.taken   another process has taken its copy (see save_checkpoint's hold)
    checkpoints/latest        the file name of the newest complete checkpoint
    checkpoints/best          the file name of the checkpoint with the best evaluation (never rotated away)
    events.out.tfevents.*     TensorBoard event files (sagan_core.tensorboard_log), one per process that wrote
"""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write

METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"
SAMPLES = "samples"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
TAKEN_SUFFIX = ".taken"
EVENT_FILE_PREFIX = "events.out.tfevents."


def sample_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SAMPLES / f"step-{step}.png"


def real_grid_path(run_dir: Path) -> Path:
    return Path(run_dir) / SAMPLES / "real.png"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}.pt"


def step_of(path: Path) -> int:
    """The step in a `step-<n>.<ext>` file name."""
    return int(Path(path).stem.split("-", 1)[1])


def samples(run_dir: Path) -> list[Path]:
    """The run's sample grids, oldest first."""
    return sorted((Path(run_dir) / SAMPLES).glob("step-*.png"), key=step_of)


def event_files(run_dir: Path) -> list[Path]:
    """The run's TensorBoard event files, oldest first (their names start with the time they were opened)."""
    return sorted(Path(run_dir).glob(EVENT_FILE_PREFIX + "*"))


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
    _point(checkpoint, LATEST)


def point_best(checkpoint: Path) -> None:
    """Make `checkpoint` the run's best, atomically (call it once the file is complete)."""
    _point(checkpoint, BEST)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None before the first."""
    return _pointed(run_dir, LATEST)


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of the best evaluation, or None before the first evaluation."""
    return _pointed(run_dir, BEST)


def _point(checkpoint: Path, pointer: str) -> None:
    atomic_write(checkpoint.parent / pointer, lambda f: f.write(checkpoint.name.encode()))


def _pointed(run_dir: Path, pointer: str) -> Path | None:
    path = Path(run_dir) / CHECKPOINTS / pointer
    if not path.exists():
        return None
    return path.parent / path.read_text().strip()


def resolve_checkpoint(spec: str | Path) -> Path:
    """`FILE.pt`, `RUN` (its latest), `RUN:STEP` or `RUN:best` as a checkpoint file path (which may not
    exist)."""
    text = str(spec)
    run, sep, which = text.rpartition(":")
    if sep and run and (which == BEST or which.isdigit()) and Path(run).is_dir():
        if which == BEST:
            best = best_checkpoint(Path(run))
            if best is None:
                raise FileNotFoundError(f"run directory {run} has no best checkpoint (no evaluation yet)")
            return best
        return checkpoint_path(Path(run), int(which))
    path = Path(text)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in run directory {path}")
        return latest
    return path


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory holding a checkpoint file, if it sits in one."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def sweep_run_name(arm: str, seed: int) -> str:
    """The run directory (and child job) name of one arm and seed of a sweep: `<arm>-s<seed>`."""
    return f"{arm}-s{seed}"


def arm_of(run_name: str) -> tuple[str, int | None]:
    """(arm, seed) of a sweep run's name; (the name, None) for a name that is not `<arm>-s<seed>`."""
    arm, sep, seed = run_name.rpartition("-s")
    if sep and arm and seed.isdigit():
        return arm, int(seed)
    return run_name, None
