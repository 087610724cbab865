"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, ProGAN, appendix D).

Needs no pretrained network. Each image (0..255 values, as its PNG holds them) is split into a Laplacian
pyramid from full resolution down to 16x16; from every level, 128 patches of 7x7 pixels are taken at random
positions. Each level's descriptors are normalised per colour channel over the whole set, projected on 512
random unit directions (4 repeats of 128, as ProGAN), and the 1-D Wasserstein-1 distances between the sorted
projections of the two sets are averaged. Reported x 10^3 per level (`swd_<size>`) and averaged (`swd`).

Unlike ProGAN's code, every random draw is a function of (seed, image index, level): patch positions of
image i do not depend on the batch or rank it was in, and the directions do not depend on anything else.
Descriptors are kept for at most MAX_IMAGES evenly spaced images per set (75 KiB per image and level).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..seeding import Stream, seeded

PATCH = 7
PATCHES_PER_IMAGE = 128
DIRECTION_REPEATS, DIRECTIONS_PER_REPEAT = 4, 128
MIN_RESOLUTION = 16
MAX_IMAGES = 4096
STD_FLOOR = 1e-8  # far below any non-constant set's std (0..255 pixel values)

_TAPS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_KERNEL = (_TAPS[:, None] * _TAPS[None, :] / 256.0).expand(3, 1, 5, 5).contiguous()  # cv2.pyrDown's filter


def resolutions(imsize: int) -> list[int]:
    """Pyramid levels, finest first: imsize, imsize/2, ..., 16."""
    sizes = []
    while imsize >= MIN_RESOLUTION:
        sizes.append(imsize)
        imsize //= 2
    return sizes


def selected(index: int, total: int) -> bool:
    """Whether sample `index` of `total` gives descriptors: min(total, MAX_IMAGES) evenly spaced samples, so
    every rank's contiguous share of the samples carries its part of the work."""
    kept = min(total, MAX_IMAGES)
    return (index + 1) * kept // total > index * kept // total


def _blur(images: torch.Tensor) -> torch.Tensor:
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")  # scipy's 'mirror', as ProGAN's pyramid
    return F.conv2d(padded, _KERNEL.to(images.device, images.dtype), groups=3)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(B, 3, H, W) float -> [band-pass H, band-pass H/2, ..., low-pass H/2^(levels-1)]."""
    pyramid = [images]
    for _ in range(1, levels):
        down = _blur(pyramid[-1])[:, :, ::2, ::2]
        up = torch.zeros_like(pyramid[-1])
        up[:, :, ::2, ::2] = down
        pyramid[-1] = pyramid[-1] - 4.0 * _blur(up)
        pyramid.append(down)
    return pyramid


def descriptors(images: torch.Tensor, indices: list[int], seed: int) -> list[torch.Tensor]:
    """Patch descriptors of uint8 images (B, 3, H, W) whose sample indices are `indices`: per level,
    (B * 128, 3, 7, 7) float32 on the CPU, image by image."""
    pyramid = laplacian_pyramid(images.float(), len(resolutions(images.shape[-1])))
    half = PATCH // 2
    offsets = torch.arange(-half, half + 1)
    per_level = []
    for level in pyramid:
        size = level.shape[-1]
        # (B, 128, 2) centres, at least `half` pixels from each border (ProGAN's randint(H, S - H)).
        centres = torch.stack([torch.randint(half, size - half, (PATCHES_PER_IMAGE, 2),
                                             generator=seeded(Stream.SWD_PATCHES, seed, size, index))
                               for index in indices]).to(level.device)
        rows = (centres[..., 0, None] + offsets.to(level.device))[:, :, None, :, None]  # (B, 128, 1, 7, 1)
        cols = (centres[..., 1, None] + offsets.to(level.device))[:, :, None, None, :]  # (B, 128, 1, 1, 7)
        batch = torch.arange(images.shape[0], device=level.device)[:, None, None, None, None]
        channel = torch.arange(3, device=level.device)[None, None, :, None, None]
        patches = level[batch, channel, rows, cols]  # (B, 128, 3, 7, 7)
        per_level.append(patches.reshape(-1, 3, PATCH, PATCH).float().cpu())
    return per_level


def _normalised(descriptors: torch.Tensor) -> torch.Tensor:
    """(N, 3, 7, 7) -> (N, 147), each colour channel to zero mean and unit (population) std over the set.
    A constant channel (a collapsed generator's flat images) has std 0: it stays 0 rather than 0/0 = NaN."""
    mean = descriptors.mean(dim=(0, 2, 3), keepdim=True)
    std = descriptors.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(STD_FLOOR)
    return ((descriptors - mean) / std).reshape(descriptors.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, seed: int, level: int) -> float:
    """Mean 1-D Wasserstein-1 distance between two equally large descriptor sets over 512 random
    directions."""
    assert a.shape == b.shape, (a.shape, b.shape)
    rows_a, rows_b = _normalised(a).numpy(), _normalised(b).numpy()
    distances = []
    for repeat in range(DIRECTION_REPEATS):
        directions = torch.randn(rows_a.shape[1], DIRECTIONS_PER_REPEAT,
                                 generator=seeded(Stream.SWD_DIRECTIONS, seed, level, repeat))
        directions = (directions / directions.norm(dim=0, keepdim=True)).numpy()
        # (directions, N) with contiguous rows, sorted by NumPy: about 10x faster than torch.sort on a CPU.
        projected_a = np.sort(directions.T @ rows_a.T, axis=1)
        projected_b = np.sort(directions.T @ rows_b.T, axis=1)
        distances.append(float(np.abs(projected_a - projected_b).mean()))
    return sum(distances) / len(distances)


def swd(real: list[torch.Tensor], fake: list[torch.Tensor], imsize: int, seed: int) -> dict[str, float]:
    """`swd_<size>` per level and their mean `swd`, x 10^3, over the first min(len) images of each set."""
    scores = {}
    for size, real_level, fake_level in zip(resolutions(imsize), real, fake, strict=True):
        rows = min(len(real_level), len(fake_level))
        scores[f"swd_{size}"] = 1e3 * sliced_wasserstein(real_level[:rows], fake_level[:rows], seed, size)
    return {"swd": sum(scores.values()) / len(scores), **scores}
