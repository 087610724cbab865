"""Training configuration as plain data: one flat dataclass, named presets, and validation.

Every field is also a `sagan train` flag (`z_dim` -> `--z-dim`) and a key of the REST job config,
so the same names work in YAML files, on the command line and over HTTP.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

NORMS = ("spectral", "batch", "none")
ATTENTION_FORMS = ("seed", "pooled")
LOSSES = ("hinge", "wgan-gp", "bce")
AMP_MODES = ("none", "bf16")
MAX_INT = 2**31 - 1  # counts and sizes fit a 32-bit integer (the job service stores steps in one)
IMAGE_SIZES = (32, 64, 128)


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Everything that defines a run. Defaults are the lab report's (seed) values."""

    preset: str = "seed64"
    dataset: str = "synthetic"
    # Centre crop (in source pixels) before resizing, e.g. 160 for aligned CelebA as in the seed.
    center_crop: int | None = None
    # Unreadable images are skipped; the run fails once more than this fraction of the set is.
    max_bad_images: float = 0.001

    # Model
    imsize: int = 64
    z_dim: int = 128
    g_conv_dim: int = 64
    d_conv_dim: int = 64
    # Feature-map resolutions that get a self-attention layer; an empty list ablates attention.
    g_attention: list[int] = field(default_factory=lambda: [16, 32])
    d_attention: list[int] = field(default_factory=lambda: [8, 4])
    # G: "spectral" = spectral norm + BatchNorm (seed), "batch" = BatchNorm only, "none".
    # D: "spectral" = spectral norm (seed), "batch" = BatchNorm, "none".
    g_norm: str = "spectral"
    d_norm: str = "spectral"
    attention: str = "seed"

    # Optimisation (TTUR: D learns 4x faster than G)
    loss: str = "hinge"
    gp_weight: float = 10.0
    batch_size: int = 64  # global batch, split over all processes
    steps: int = 100_000  # generator steps
    n_critic: int = 1  # D steps per G step
    g_lr: float = 1e-4
    d_lr: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    # The seed lists lr_decay = 0.95 but the reference implementation never applies it. Here it is
    # explicit: both learning rates are multiplied by lr_decay every lr_decay_every steps; None = off.
    lr_decay: float | None = None
    lr_decay_every: int = 1000
    # Exponential moving average of G's weights, used for samples and load_checkpoint; 0 = off.
    ema_decay: float = 0.0
    ema_start: int = 0

    # Bookkeeping
    seed: int = 0
    log_every: int = 10
    sample_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    num_workers: int = 2

    # Execution
    nproc: int = 1
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # bf16 autocast on GPUs
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        _check_choice("g_norm", self.g_norm, NORMS)
        _check_choice("d_norm", self.d_norm, NORMS)
        _check_choice("attention", self.attention, ATTENTION_FORMS)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("imsize", self.imsize, IMAGE_SIZES)
        for name in ("z_dim", "g_conv_dim", "d_conv_dim", "batch_size", "steps", "n_critic",
                     "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "nproc",
                     "lr_decay_every"):
            if not 1 <= getattr(self, name) <= MAX_INT:
                raise ValueError(f"{name} must be between 1 and {MAX_INT}, got {getattr(self, name)}")
        for name in ("g_conv_dim", "d_conv_dim"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8 (attention projects to C/8)")
        for name in ("g_lr", "d_lr", "gp_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("beta1", "beta2", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.lr_decay is not None and not 0.0 < self.lr_decay <= 1.0:
            raise ValueError("lr_decay must be in (0, 1] or null")
        for name in ("num_workers", "ema_start", "seed"):
            if not 0 <= getattr(self, name) <= MAX_INT:
                raise ValueError(f"{name} must be between 0 and {MAX_INT}, got {getattr(self, name)}")
        if not 0.0 <= self.max_bad_images <= 1.0:
            raise ValueError(f"max_bad_images must be in [0, 1], got {self.max_bad_images}")
        if self.center_crop is not None and self.center_crop < 1:
            raise ValueError("center_crop must be >= 1 or null")
        if self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} must divide evenly over nproc {self.nproc}")
        self.g_attention = sorted({int(r) for r in self.g_attention})
        self.d_attention = sorted({int(r) for r in self.d_attention}, reverse=True)
        for name, resolutions, allowed in (
            ("g_attention", self.g_attention, generator_resolutions(self.imsize)),
            ("d_attention", self.d_attention, discriminator_resolutions(self.imsize)),
        ):
            bad = [r for r in resolutions if r not in allowed]
            if bad:
                raise ValueError(f"{name}: no feature map of size {bad} at imsize {self.imsize}; "
                                 f"choose from {allowed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def generator_resolutions(imsize: int) -> list[int]:
    """Feature-map sizes after each hidden generator block (4, 8, ..., imsize/2)."""
    return [2**i for i in range(2, int(math.log2(imsize)))]


def discriminator_resolutions(imsize: int) -> list[int]:
    """Feature-map sizes after each discriminator block (imsize/2, ..., 4)."""
    return list(reversed(generator_resolutions(imsize)))


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


# Presets are plain overrides of the defaults above, named like torchtitan's model flavours.
PRESETS: dict[str, dict[str, Any]] = {
    # The lab report's 64x64 LSUN-church network and hyper-parameters.
    "seed64": {},
    # The same design at 32x32 and 128x128 (the reference code only works at 64).
    "sagan32": {"imsize": 32, "g_attention": [16], "d_attention": [8]},
    "sagan128": {"imsize": 128, "g_attention": [32, 64], "d_attention": [16, 8]},
    # Tiny and fast: what the tests and CPU demos train.
    "debug32": {"imsize": 32, "g_conv_dim": 16, "d_conv_dim": 16, "g_attention": [16],
                "d_attention": [8], "batch_size": 8, "steps": 20, "log_every": 1,
                "sample_every": 10, "checkpoint_every": 10, "num_workers": 0},
}

FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def make_config(preset: str = "seed64", **overrides: Any) -> TrainConfig:
    """A preset's config with overrides applied; raises ValueError naming an unknown field."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    unknown = sorted(set(overrides) - FIELD_NAMES)
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    values = {**PRESETS[preset], **overrides, "preset": preset}
    return TrainConfig(**values)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of TrainConfig.to_dict (also accepts partial dicts naming a preset)."""
    data = dict(data)
    return make_config(data.pop("preset", "seed64"), **data)

# One line per field: `sagan train --help` and the API docs show these.
FIELD_HELP: dict[str, str] = {
    "preset": f"named starting point, one of {sorted(PRESETS)}",
    "dataset": "synthetic[:N] | folder:PATH | lsun:PATH:CLASS | cifar10:PATH",
    "center_crop": "centre crop in source pixels before resizing (160 for aligned CelebA)",
    "max_bad_images": "largest fraction of unreadable images to skip before the run fails; 0 = fail on the first",
    "imsize": f"image size, one of {list(IMAGE_SIZES)}",
    "z_dim": "latent size",
    "g_conv_dim": "generator width: channels of the last hidden block",
    "d_conv_dim": "discriminator width: channels of the first block",
    "g_attention": "generator feature-map sizes with self-attention, comma list or 'none'",
    "d_attention": "discriminator feature-map sizes with self-attention, comma list or 'none'",
    "g_norm": "generator normalisation: spectral (SN + BatchNorm, the seed) | batch | none",
    "d_norm": "discriminator normalisation: spectral (the seed) | batch | none",
    "attention": "attention form: seed (C/8 query/key, C value) | pooled (the paper's official code)",
    "loss": "hinge | wgan-gp | bce (non-saturating)",
    "gp_weight": "gradient-penalty weight for wgan-gp",
    "batch_size": "global batch size, split evenly over processes",
    "steps": "generator steps to train",
    "n_critic": "discriminator steps per generator step",
    "g_lr": "generator learning rate",
    "d_lr": "discriminator learning rate",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "lr_decay": "multiply both learning rates by this every lr_decay_every steps ('none' = off)",
    "lr_decay_every": "steps between learning-rate decays",
    "ema_decay": "EMA decay of generator weights for samples and checkpoints' generator (0 = off)",
    "ema_start": "step at which the EMA starts averaging (before it copies G)",
    "seed": "seed for weights, data order and noise",
    "log_every": "steps between metrics.jsonl lines",
    "sample_every": "steps between 8x8 sample grids",
    "checkpoint_every": "steps between checkpoints",
    "keep_checkpoints": "how many recent checkpoints to keep on disk",
    "num_workers": "data-loader worker processes per rank",
    "nproc": "training processes (torchrun); batch_size is split over them",
    "device": "auto | cpu | cuda",
    "amp": "none | bf16 (autocast, for GPUs)",
    "channels_last": "use channels-last memory format",
    "compile": "torch.compile G and D",
}
