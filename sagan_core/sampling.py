"""Turning a generator into pictures: fixed-z grids during training, `sagan sample` after."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from .checkpoint import load_checkpoint
from .files import atomic_write
from .seeding import seeded

NOISE_BLOCK = 1024
NOISE_STREAM = -1  # negative: apart from the trainer's (seed, step, slot) draws


def fixed_noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """The same z for the same (n, z_dim, seed) on every machine: drawn on the CPU."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def indexed_noise(seed: int, start: int, count: int, z_dim: int) -> torch.Tensor:
    """z_i for i in [start, start + count): a function of (seed, i) alone, drawn in blocks of NOISE_BLOCK, so
    any batch size, rank split or later call sees the same z for sample i (evaluations compare the same z)."""
    blocks = range(start // NOISE_BLOCK, (start + count - 1) // NOISE_BLOCK + 1) if count > 0 else range(0)
    drawn = [torch.randn(NOISE_BLOCK, z_dim, generator=seeded(seed, NOISE_STREAM, block)) for block in blocks]
    offset = start - (blocks.start if blocks else 0) * NOISE_BLOCK
    return torch.cat(drawn)[offset:offset + count] if drawn else torch.empty(0, z_dim)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as 0..255 integers (how PNGs, the npz files and the quality metrics see them)."""
    return images.add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm uses its running statistics; spectral norm is frozen), then the previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] for z, in eval mode, restoring the generator's mode afterwards."""
    device = next(generator.parameters()).device
    with evaluation_mode(generator):
        return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(batch_size)])


def grid_png(images: torch.Tensor, nrow: int = 8) -> bytes:
    """A PNG of the images in a grid (nrow per row), mapped from [-1, 1] to 0..255."""
    grid = make_grid(images, nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    data = grid_png(images, nrow)
    return atomic_write(Path(path), lambda f: f.write(data))


def sample_to_png(checkpoint: str | Path, out_png: str | Path, *, n: int = 64, seed: int = 0,
                  npz: str | Path | None = None, device: str = "cpu") -> Path:
    """Sample n images from a checkpoint into a grid PNG (and raw arrays into an .npz)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    model = load_checkpoint(checkpoint, device=device)
    z = fixed_noise(n, model.config.z_dim, seed)
    images = generate(model.generator, z)
    if npz is not None:
        uint8 = to_uint8(images).permute(0, 2, 3, 1)
        arrays = {"images": uint8.numpy(), "z": z.numpy(), "step": np.array(model.step)}
        atomic_write(Path(npz), lambda f: np.savez_compressed(f, **arrays))
    return write_grid(images, Path(out_png), nrow=max(1, int(np.ceil(np.sqrt(n)))))


def sample_to_dir(checkpoint: str | Path, out_dir: str | Path, *, n: int, seed: int = 0, device: str = "cpu",
                  batch_size: int = 256) -> Path:
    """Write n samples as out_dir/<i>.png, batch by batch (memory does not grow with n); image i comes from
    indexed_noise(seed, i), the z an evaluation with this seed uses for its sample i."""
    if n < 1:
        raise ValueError("n must be >= 1")
    model = load_checkpoint(checkpoint, device=device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n - 1)))
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        images = to_uint8(generate(model.generator, indexed_noise(seed, start, count, model.config.z_dim)))
        for offset, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(image).save(out_dir / f"{start + offset:0{width}d}.png")
    return out_dir
