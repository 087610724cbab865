"""Turning a generator into pictures: fixed-z grids during training, `sagan sample` after.

A conditional generator (num_classes > 0) also takes each sample's class: training grids show one class per
row, `sagan sample --classes/--per-class` picks them, and evaluations draw them from (seed, i) like z.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from .checkpoint import LoadedModel, load_checkpoint
from .files import atomic_write
from .seeding import Stream, seeded

NOISE_BLOCK = 1024
GRID_ROWS = 8


def fixed_noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    """The same z for the same (n, z_dim, seed) on every machine: drawn on the CPU."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def truncated_noise(n: int, z_dim: int, seed: int, psi: float | None = None) -> torch.Tensor:
    """z (n, z_dim) of `seed`, as fixed_noise draws it, with every entry whose magnitude exceeds psi
    drawn again from the same stream until all lie within (BigGAN's truncation trick: a smaller psi trades
    variety for typical images). Entries already within psi stay, so psi moves each sample as little as it
    can. psi None: fixed_noise's z unchanged."""
    stream = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_dim, generator=stream)
    if psi is None:
        return z
    if not psi > 0:
        raise ValueError(f"truncation must be above 0, got {psi}")
    while (outside := z.abs() > psi).any():
        z[outside] = torch.randn(int(outside.sum()), generator=stream)
    return z


def indexed_noise(seed: int, start: int, count: int, z_dim: int,
                  stream: Stream = Stream.EVAL_NOISE) -> torch.Tensor:
    """z_i for i in [start, start + count): a function of (stream, seed, i) alone, drawn in blocks of
    NOISE_BLOCK, so any batch size, rank split or later call sees the same z for sample i (evaluations compare
    the same z)."""
    return _indexed(start, count, (z_dim,), lambda block: torch.randn(
        NOISE_BLOCK, z_dim, generator=seeded(stream, seed, block)))


def indexed_labels(seed: int, start: int, count: int, num_classes: int,
                   stream: Stream = Stream.EVAL_LABELS, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sample i's class for i in [start, start + count), like indexed_noise: uniform over num_classes, or with
    probabilities proportional to `weights` (num_classes of them; an evaluation's data's class
    frequencies)."""
    if weights is None:
        return _indexed(start, count, (), lambda block: torch.randint(
            num_classes, (NOISE_BLOCK,), generator=seeded(stream, seed, block)))
    return _indexed(start, count, (), lambda block: torch.multinomial(
        weights.double(), NOISE_BLOCK, replacement=True, generator=seeded(stream, seed, block)))


def _indexed(start: int, count: int, shape: tuple[int, ...],
             draw: Callable[[int], torch.Tensor]) -> torch.Tensor:
    blocks = range(start // NOISE_BLOCK, (start + count - 1) // NOISE_BLOCK + 1) if count > 0 else range(0)
    offset = start - (blocks.start if blocks else 0) * NOISE_BLOCK
    return torch.cat([draw(block) for block in blocks])[offset:offset + count] if blocks else torch.empty(0,
                                                                                                          *shape)


def grid_labels(num_classes: int, per_row: int = 8) -> torch.Tensor | None:
    """Classes of a training grid, one class per row of per_row: up to GRID_ROWS rows spread evenly over the
    classes (0, 125, 250, ... for ImageNet's 1000); None for an unconditional model."""
    if not num_classes:
        return None
    rows = min(GRID_ROWS, num_classes)
    return torch.arange(rows).mul(num_classes).div(rows, rounding_mode="floor").repeat_interleave(per_row)


def chosen_labels(num_classes: int, classes: list[int] | None, per_class: int | None) -> torch.Tensor | None:
    """The classes `sagan sample --classes/--per-class` asks for, each repeated per_class times (default 8);
    classes default to all of them. None when neither is given; an error for an unconditional model."""
    if classes is None and per_class is None:
        return None
    if not num_classes:
        raise ValueError("this checkpoint's generator is unconditional: it takes no classes")
    if per_class is not None and per_class < 1:
        raise ValueError("per_class must be >= 1")
    classes = list(range(num_classes)) if classes is None else classes
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise ValueError(f"classes must be in [0, {num_classes}); got {bad or 'none'}")
    return torch.tensor(classes).repeat_interleave(per_class or GRID_ROWS)


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
def generate(generator: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None,
             batch_size: int = 256) -> torch.Tensor:
    """Images in [-1, 1] for z (and classes `labels` for a conditional generator), in eval mode, restoring
    the generator's mode afterwards."""
    device = next(generator.parameters()).device
    with evaluation_mode(generator):
        if labels is None:
            return torch.cat([generator(chunk.to(device)).float().cpu() for chunk in z.split(batch_size)])
        return torch.cat([generator(chunk.to(device), y.to(device)).float().cpu()
                          for chunk, y in zip(z.split(batch_size), labels.split(batch_size), strict=True)])


@torch.no_grad()
def standing_statistics(generator: nn.Module, z_dim: int, num_classes: int, batches: int,
                        batch_size: int = 64, seed: int = 0) -> nn.Module:
    """A copy of `generator`, in eval mode, whose BatchNorm running statistics are BigGAN's standing
    statistics: reset, then the plain average (momentum None) of the batch statistics of `batches` train-mode
    forwards of batch_size samples (z, and uniform classes for a conditional G, from `seed`). Spectral norm
    stays frozen. Sampling then normalises with statistics of these very weights (an EMA G's running
    statistics come from the trained G's, and momentum weights the last steps only). The source model is left
    untouched."""
    if batches < 1:
        raise ValueError(f"standing statistics need at least 1 batch, got {batches}")
    model = copy.deepcopy(generator).eval()
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    device = next(model.parameters()).device
    random = seeded(Stream.STANDING_STATISTICS, seed)
    for _ in range(batches):
        z = torch.randn(batch_size, z_dim, generator=random)
        y = () if not num_classes else (torch.randint(num_classes, (batch_size,),
                                                      generator=random).to(device),)
        model(z.to(device), *y)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()


def sampled_generator(model: LoadedModel, standing_stats: int) -> nn.Module:
    """The checkpoint's G, or its copy with standing statistics over `standing_stats` batches of its config's
    batch size (0 = off)."""
    if not standing_stats:
        return model.generator
    config = model.config
    return standing_statistics(model.generator, config.z_dim, config.num_classes or 0, standing_stats,
                               config.batch_size, config.seed)


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
                  npz: str | Path | None = None, device: str = "cpu", classes: list[int] | None = None,
                  per_class: int | None = None, standing_stats: int = 0,
                  truncation: float | None = None) -> Path:
    """Sample n images from a checkpoint into a grid PNG (and raw arrays into an .npz).

    A conditional model: with classes and/or per_class, per_class images (default 8) of each class (default
    all), one class per row, n ignored; otherwise n images of classes 0, 1, 2, ... in turn. standing_stats K >
    0: BatchNorm uses standing statistics over K batches (standing_statistics) instead of its running ones.
    truncation psi: z truncated at psi (truncated_noise)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    model = load_checkpoint(checkpoint, device=device)
    num_classes = model.config.num_classes or 0
    labels = chosen_labels(num_classes, classes, per_class)
    nrow = max(1, int(np.ceil(np.sqrt(n))))
    if labels is not None:
        n, nrow = len(labels), per_class or GRID_ROWS
    elif num_classes:
        labels = torch.arange(n) % num_classes
    z = truncated_noise(n, model.config.z_dim, seed, truncation)
    images = generate(sampled_generator(model, standing_stats), z, labels)
    if npz is not None:
        uint8 = to_uint8(images).permute(0, 2, 3, 1)
        arrays = {"images": uint8.numpy(), "z": z.numpy(), "step": np.array(model.step)}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        # numpy's stub lets **arrays fill the bool allow_pickle, hence the ignore
        atomic_write(Path(npz), lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]
    return write_grid(images, Path(out_png), nrow=nrow)


def sample_to_dir(checkpoint: str | Path, out_dir: str | Path, *, n: int, seed: int = 0, device: str = "cpu",
                  batch_size: int = 256, classes: list[int] | None = None, per_class: int | None = None,
                  standing_stats: int = 0) -> Path:
    """Write n samples as out_dir/<i>.png, batch by batch (memory does not grow with n); image i comes from
    indexed_noise(seed, i), the z a (selection) evaluation with this seed uses for its sample i, and for a
    conditional model from indexed_labels(seed, i), uniform (an evaluation weights it by its data's class
    mix), unless classes/per_class choose them (then n is their count). standing_stats as sample_to_png."""
    if n < 1:
        raise ValueError("n must be >= 1")
    model = load_checkpoint(checkpoint, device=device)
    generator = sampled_generator(model, standing_stats)
    num_classes = model.config.num_classes or 0
    chosen = chosen_labels(num_classes, classes, per_class)
    n = n if chosen is None else len(chosen)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n - 1)))
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        labels = (None if not num_classes else indexed_labels(seed, start, count, num_classes)
                  if chosen is None else chosen[start:start + count])
        images = to_uint8(generate(generator, indexed_noise(seed, start, count, model.config.z_dim), labels))
        for offset, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(image).save(out_dir / f"{start + offset:0{width}d}.png")
    return out_dir
