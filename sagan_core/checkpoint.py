"""Self-describing checkpoints, written atomically.

Layout of a run directory:
    checkpoints/step-<n>.pt   G, D, EMA, both optimisers, step, RNG states, config
    checkpoints/latest        the file name of the newest complete checkpoint
    checkpoints/best          the file name of the best evaluation's checkpoint (rotation keeps it)
A checkpoint is written to a temporary file and renamed into place, and `latest` is replaced
only after that, so a kill at any moment leaves the previous "latest" intact.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .config import TrainConfig, build_config, saved_config
from .files import atomic_write
from .layout import (
    best_checkpoint,
    checkpoint_path,
    checkpoints,
    point_latest,
    resolve_checkpoint,
    taken_marker,
)
from .models import build_discriminator, build_generator

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    # the legacy tuple (name, keys, pos, has_gauss, cached_gaussian); numpy's stub also allows the dict form
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(run_dir: Path, payload: dict[str, Any], keep: int, *, hold_untaken: bool = False) -> Path:
    """Write checkpoints/step-<n>.pt, then move `latest` to it, then prune to the `keep` newest files
    (and the best one; see prune_checkpoints for `hold_untaken`)."""
    path = checkpoint_path(run_dir, payload["step"])
    payload = {"format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))
    point_latest(path)
    prune_checkpoints(run_dir, keep, hold_untaken=hold_untaken)
    return path


def prune_checkpoints(run_dir: Path, keep: int, *, hold_untaken: bool = False) -> None:
    """Delete all but the `keep` newest checkpoints and the best evaluation's, which outlives rotation.

    With `hold_untaken`, pruning also skips every checkpoint that has no `.taken` marker yet: a process
    that copies checkpoints elsewhere (the job service's worker) never finds one deleted before it took
    it, however far behind it falls.
    """
    best = best_checkpoint(run_dir)
    for old in checkpoints(run_dir)[:-keep]:
        if old == best or (hold_untaken and not taken_marker(old).exists()):
            continue
        old.unlink(missing_ok=True)
        taken_marker(old).unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict. `path` is a .pt file, a run directory (its latest), `RUN:STEP` or
    `RUN:best`."""
    path = resolve_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {payload.get('format_version')!r}")
    return payload


def adopt_checkpoint(source: Path, step: int, run_dir: Path) -> Path:
    """Copy another run's checkpoint file (of `step`) into `run_dir` as its latest, so that resuming run_dir
    restores all it holds (G, D, optimisers, EMA, RNG states, step) exactly as a resume of its own checkpoint
    does: how a continued run (`sagan train --init-from`) starts."""
    def copy(target_file: Any) -> None:
        with open(source, "rb") as source_file:
            shutil.copyfileobj(source_file, target_file)

    target = checkpoint_path(run_dir, step)
    atomic_write(target, copy)
    point_latest(target)
    return target


@dataclass(frozen=True, slots=True)
class LoadedModel:
    generator: nn.Module
    discriminator: nn.Module
    config: TrainConfig
    step: int
    ema: bool = False  # whether `generator` holds the EMA weights


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild G and D from a checkpoint alone, in eval mode; G carries the EMA weights if kept."""
    payload = read_checkpoint(path)
    config = build_config(saved_config(payload["config"]))
    generator, discriminator = build_generator(config), build_discriminator(config)
    ema = bool(payload.get("ema"))
    generator.load_state_dict(payload["ema"] if ema else payload["generator"])
    discriminator.load_state_dict(payload["discriminator"])
    return LoadedModel(generator=_frozen(generator, device), discriminator=_frozen(discriminator, device),
                       config=config, step=int(payload["step"]), ema=ema)


def _frozen(model: nn.Module, device: str | torch.device) -> Any:
    return model.to(device).eval().requires_grad_(False)
