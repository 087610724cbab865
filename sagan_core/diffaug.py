"""Differentiable augmentation (DiffAugment, Zhao et al. 2020): the same kinds of random change applied to the
real and the generated images D sees, built from differentiable tensor operations so G's gradient flows
through them. D then cannot memorise a small training set, and G is not taught the augmentation, because
both sides are augmented alike.

The three operations of the paper, with its strengths:
  color        brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)
  translation  a shift by up to 1/8 of the image size in each direction, zero-padded
  cutout       a zeroed square of half the image size at a random place (partly outside the image at times)

Randomness: every parameter is drawn on the CPU for the whole global batch from a generator seeded by
(seed, step, slot, side), as the trainer draws z, so N ranks together draw what one process draws and a
resumed run draws what an uninterrupted one would. Evaluations and sample grids never call this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import diffaug_operations
from .seeding import Stream, seeded

TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2
REAL, FAKE = 0, 1  # the `side` of a draw: D's real and generated inputs differ in their draws


@dataclass(frozen=True)
class Draws:
    """The random parameters of one augmented global batch: per image, (B, ...) tensors on the CPU."""

    brightness: torch.Tensor  # (B,) in [-0.5, 0.5)
    saturation: torch.Tensor  # (B,) in [0, 2)
    contrast: torch.Tensor  # (B,) in [0.5, 1.5)
    shift: torch.Tensor  # (B, 2) integer (dy, dx) in [-s, s]
    cutout_corner: torch.Tensor  # (B, 2) integer (top, left) of the square, may lie outside the image

    def share(self, part: slice) -> Draws:
        """These draws for one rank's slice of the global batch."""
        return Draws(*(getattr(self, name)[part] for name in self.__dataclass_fields__))


def draw(batch_size: int, imsize: int, *, seed: int, step: int, slot: int, side: int) -> Draws:
    """Every parameter any operation may use, for a global batch (unused ones cost a few microseconds)."""
    generator = seeded(Stream.DIFFAUG, seed, step, slot, side)
    shift_max = int(imsize * TRANSLATION_RATIO + 0.5)
    size = int(imsize * CUTOUT_RATIO + 0.5)
    return Draws(
        brightness=torch.rand(batch_size, generator=generator) - 0.5,
        saturation=torch.rand(batch_size, generator=generator) * 2,
        contrast=torch.rand(batch_size, generator=generator) + 0.5,
        shift=torch.randint(-shift_max, shift_max + 1, (batch_size, 2), generator=generator),
        # The square's centre anywhere in the image: its corner from -size/2 to imsize - size/2.
        cutout_corner=torch.randint(0, imsize + 1, (batch_size, 2), generator=generator) - size // 2)


def augment(images: torch.Tensor, policy: str, draws: Draws) -> torch.Tensor:
    """`images` (B, C, H, W) in [-1, 1] changed by each operation of `policy` (config `diffaug`) in order,
    with `draws` (this batch's, on any device); differentiable in `images`."""
    for name in diffaug_operations(policy):
        images = _OPERATIONS[name](images, draws)
    return images


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def color(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    images = images + _per_image(draws.brightness, images)
    mean = images.mean(dim=1, keepdim=True)  # each pixel's grey: saturation scales the colour around it
    images = (images - mean) * _per_image(draws.saturation, images) + mean
    mean = images.mean(dim=(1, 2, 3), keepdim=True)  # the image's mean: contrast scales around it
    return (images - mean) * _per_image(draws.contrast, images) + mean


def translation(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    batch, _, height, width = images.shape
    pad = int(height * TRANSLATION_RATIO + 0.5)
    padded = F.pad(images, (pad, pad, pad, pad))
    shift = draws.shift.to(images.device)
    # Output pixel (y, x) is input pixel (y - dy, x - dx), read from the padded image (zeros outside).
    rows = torch.arange(height, device=images.device).view(1, -1, 1) - shift[:, 0].view(-1, 1, 1) + pad
    cols = torch.arange(width, device=images.device).view(1, 1, -1) - shift[:, 1].view(-1, 1, 1) + pad
    index = torch.arange(batch, device=images.device).view(-1, 1, 1)
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)


def cutout(images: torch.Tensor, draws: Draws) -> torch.Tensor:
    _, _, height, width = images.shape
    size = int(height * CUTOUT_RATIO + 0.5)
    corner = draws.cutout_corner.to(images.device)
    rows = torch.arange(height, device=images.device).view(1, -1, 1) - corner[:, 0].view(-1, 1, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, -1) - corner[:, 1].view(-1, 1, 1)
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    return images * (~inside).unsqueeze(1).to(images.dtype)


_OPERATIONS = {"color": color, "translation": translation, "cutout": cutout}
