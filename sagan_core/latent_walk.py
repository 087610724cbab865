"""Latent walks, for `sagan sample --interpolate A,B --frames K` (and sample jobs' `interpolate`).

    walk(z_dim, seeds, frames, ...)        frames along the great circle from seed A's z to seed B's (slerp: a
                                           straight line would pass through norms N(0, I) rarely draws), and
                                           for a conditional model from class A's weights to class B's
    sample_walk(checkpoint, path, ...)     a checkpoint's walk written by write_walk
    write_walk(images, path)               an animated GIF (path *.gif) or a strip of the frames in one row
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_checkpoint
from .files import atomic_write
from .sampling import generate, sampled_generator, to_uint8, truncated_noise, write_grid

GIF_FRAME_MS = 100


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points (len(t), D) on the great circle from a (D,) to b (D,), t in [0, 1]; exactly a at 0 and b at
    1."""
    cos = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-6:  # (anti)parallel enough that sin(omega) is noise: a straight line is the same path
        return torch.lerp(a, b, t[:, None])
    return ((torch.sin((1 - t) * omega) / torch.sin(omega))[:, None] * a
            + (torch.sin(t * omega) / torch.sin(omega))[:, None] * b)


@dataclass(frozen=True)
class Walk:
    z: torch.Tensor  # (frames, z_dim)
    labels: torch.Tensor | None  # (frames, num_classes) class weights for a conditional generator, else None


def walk(z_dim: int, seeds: tuple[int, int], frames: int, *, truncation: float | None = None,
         num_classes: int = 0, classes: list[int] | None = None) -> Walk:
    """`frames` points from the z of seed A (truncated_noise(1, z_dim, A, truncation), the first image of
    `sagan sample --seed A`) to seed B's. A conditional model walks from the first of `classes` to the last
    (default class 0) by mixing their class weights alongside; an unconditional one takes no classes."""
    if frames < 2:
        raise ValueError(f"a walk needs at least 2 frames, got {frames}")
    if classes is not None and not num_classes:
        raise ValueError("this checkpoint's generator is unconditional: it takes no classes")
    if classes is not None and not 1 <= len(classes) <= 2:
        raise ValueError("an interpolation takes one class, or two to walk between")
    t = torch.linspace(0, 1, frames)
    z = slerp(truncated_noise(1, z_dim, seeds[0], truncation)[0],
              truncated_noise(1, z_dim, seeds[1], truncation)[0], t)
    if not num_classes:
        return Walk(z, None)
    start, end = (classes or [0])[0], (classes or [0])[-1]
    bad = [c for c in (start, end) if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes must be in [0, {num_classes}); got {bad}")
    one_hot = torch.eye(num_classes)
    return Walk(z, torch.lerp(one_hot[start], one_hot[end], t[:, None]))


def write_walk(images: torch.Tensor, path: Path) -> Path:
    """The frames (K, 3, H, W) in [-1, 1] as an animated GIF (a path ending in .gif, looping) or else a PNG
    strip, all frames in one row. (Pillow's GIF writer merges identical consecutive frames into one longer
    frame, so a walk between two equal seeds has fewer than K.)"""
    path = Path(path)
    if path.suffix.lower() != ".gif":
        return write_grid(images, path, nrow=len(images))
    frames = [Image.fromarray(frame) for frame in to_uint8(images).permute(0, 2, 3, 1).numpy()]
    return atomic_write(path,
                        lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                        duration=GIF_FRAME_MS, loop=0))


def sample_walk(checkpoint: str | Path, out: str | Path, *, seeds: tuple[int, int], frames: int,
                truncation: float | None = None, classes: list[int] | None = None, device: str = "cpu",
                standing_stats: int = 0) -> Path:
    """A checkpoint's generator along walk(...), written by write_walk (GIF or strip by `out`'s suffix)."""
    model = load_checkpoint(checkpoint, device=device)
    path = walk(model.config.z_dim, seeds, frames, truncation=truncation,
                num_classes=model.config.num_classes or 0, classes=classes)
    return write_walk(generate(sampled_generator(model, standing_stats), path.z, path.labels), Path(out))
