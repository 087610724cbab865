"""Turning a generator into pictures: fixed-z grids during training, `sagan sample` after."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from .checkpoint import load_checkpoint
from .files import atomic_write


def fixed_noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """The same z for the same (n, z_dim, seed) on every machine: drawn on the CPU."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] for z, in eval mode, restoring the generator's mode afterwards."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    try:
        return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(batch_size)])
    finally:
        generator.train(was_training)


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
        uint8 = images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        arrays = {"images": uint8.numpy(), "z": z.numpy(), "step": np.array(model.step)}
        atomic_write(Path(npz), lambda f: np.savez_compressed(f, **arrays))
    return write_grid(images, Path(out_png), nrow=max(1, int(np.ceil(np.sqrt(n)))))
