"""What one job may ask of this deployment: server-side limits checked at POST /jobs.

TrainConfig (sagan_core.config) says what is a valid run anywhere; these limits depend on the machines
behind this service (SAGAN_MAX_*, SAGAN_WORKER_DEVICES, SAGAN_WORKER_CORES), so they live here. A value
over a limit is a SpecError (422) naming the field and the setting.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from sagan_core.config import discriminator_resolutions, generator_resolutions
from sagan_core.dataspec import BUILT_IN, parse_spec, synthetic_size

from .settings import Settings
from .specs import SpecError

GIB = 2**30
# Per trainable parameter: fp32 weights, gradients and Adam's two moments, and an EMA copy of G's.
BYTES_PER_PARAMETER = 4 * 4
# Per activation element of one image: the fp32 value kept for the backward pass, times 3 for what a
# block keeps around it (BatchNorm's and ReLU's outputs, the gradient flowing back).
BYTES_PER_ACTIVATION = 4 * 3


def check_train_limits(config: dict[str, Any], settings: Settings) -> None:
    """A validated training config (TrainConfig.to_dict()) against this deployment's limits."""
    for field in ("g_conv_dim", "d_conv_dim"):
        _at_most(config, field, settings.max_conv_dim, "SAGAN_MAX_CONV_DIM")
    _at_most(config, "z_dim", settings.max_z_dim, "SAGAN_MAX_Z_DIM")
    _at_most(config, "nproc", settings.worker_devices, "SAGAN_WORKER_DEVICES")
    _at_most(config, "num_workers", settings.worker_cores, "SAGAN_WORKER_CORES")
    _at_most(config, "steps", settings.max_steps, "SAGAN_MAX_STEPS")
    _check_work(config, settings)
    _at_most(config, "eval_n", settings.max_eval_n, "SAGAN_MAX_EVAL_N")
    if config.get("center_crop") is not None:
        _at_most(config, "center_crop", settings.max_center_crop, "SAGAN_MAX_CENTER_CROP")
    check_dataset_size(config["dataset"], "config.dataset", settings)
    if config.get("eval_dataset") is not None:
        check_dataset_size(config["eval_dataset"], "config.eval_dataset", settings)
    need = estimate_training_bytes(config)
    if need > settings.max_job_memory_gb * GIB:
        raise SpecError("config.batch_size",
                        f"batch_size: this model at batch size {config['batch_size']} needs an estimated "
                        f"{need / GIB:.1f} GiB per process, over this service's limit of "
                        f"{settings.max_job_memory_gb:g} GiB (SAGAN_MAX_JOB_MEMORY_GB); use a smaller batch, "
                        "width, z_dim or image size, or more processes (nproc)")


def _check_work(config: dict[str, Any], settings: Settings) -> None:
    """What a run costs beyond its G steps: n_critic D steps each (SAGAN_MAX_STEPS bounds those too), and the
    samples of all its evaluations (step 0, every eval_every steps and the last: SAGAN_MAX_EVAL_SAMPLES)."""
    d_steps = config["steps"] * config["n_critic"]
    if d_steps > settings.max_steps:
        raise SpecError("config.n_critic", f"n_critic: steps {config['steps']} x n_critic {config['n_critic']} = "
                                           f"{d_steps} discriminator steps, over this service's limit of "
                                           f"{settings.max_steps} (SAGAN_MAX_STEPS)")
    if config["eval_every"]:
        evaluations = config["steps"] // config["eval_every"] + 2  # the untrained step 0 and the last, at most
        samples = evaluations * config["eval_n"]
        if samples > settings.max_eval_samples:
            raise SpecError("config.eval_every",
                            f"eval_every: {evaluations} evaluations of eval_n {config['eval_n']} samples = {samples} "
                            f"samples, over this service's limit of {settings.max_eval_samples} "
                            "(SAGAN_MAX_EVAL_SAMPLES); evaluate less often or on fewer samples")


def check_eval_limits(spec: dict[str, Any], settings: Settings) -> None:
    """An eval job's resolved spec (sagan_service.specs.eval_job_spec): its sample count and data set."""
    if spec["n"] > settings.max_eval_n:
        raise SpecError("n", f"n: {spec['n']} is over this service's limit of {settings.max_eval_n} "
                             "(SAGAN_MAX_EVAL_N)")
    check_dataset_size(spec["dataset"], "dataset", settings)


def check_dataset_size(spec: str, field: str, settings: Settings) -> None:
    """A built-in data set's N against SAGAN_MAX_SYNTHETIC_SIZE (the worker draws all N images)."""
    kind, arg = parse_spec(spec)
    if kind in BUILT_IN and synthetic_size(spec, arg) > settings.max_synthetic_size:
        name = field.rpartition(".")[2]
        raise SpecError(field, f"{name}: {kind}:N is over this service's limit of {settings.max_synthetic_size} "
                               "images (SAGAN_MAX_SYNTHETIC_SIZE)")


def estimate_training_bytes(config: dict[str, Any]) -> int:
    """A rough upper estimate of one training process's memory: parameters × 16 bytes (weights, gradients,
    Adam's moments, EMA) plus the images of its share of the batch × their activation elements × 12
    bytes. G's activations are one image's feature maps (channels × size² per block) plus each attention
    layer's size² × size² map; D's the same for its blocks, and D sees real and fake (2 × the batch).

    It follows the models' shapes (sagan_core.models): G starts at 4×4 with g_conv_dim × imsize/8
    channels and halves them per doubling of the size; D mirrors it from d_conv_dim. Measured against
    seed64: 7.0 M parameters estimated (G 3.83 M and D 3.18 M counted by torch)."""
    imsize = config["imsize"]
    g_sizes, g_channels, g_attention, d_sizes, d_channels, d_attention = _shapes(config)
    g_acts = sum(c * s * s for c, s in zip(g_channels, g_sizes)) + 3 * imsize * imsize \
        + sum(s**4 for s, _ in g_attention)
    d_acts = 3 * imsize * imsize + sum(c * s * s for c, s in zip(d_channels, d_sizes)) \
        + sum(s**4 for s, _ in d_attention)
    per_rank = math.ceil(config["batch_size"] / config["nproc"])
    return estimate_parameters(config) * BYTES_PER_PARAMETER + per_rank * (g_acts + 2 * d_acts) * BYTES_PER_ACTIVATION


def estimate_parameters(config: dict[str, Any]) -> int:
    """G's and D's weights: their 4×4 convolutions and each attention layer's projections (C²·5/4 for the
    C/8 query and key and the C value); biases and norms are left out (under 0.2 % of seed64)."""
    z = config["z_dim"]
    _, g_channels, g_attention, _, d_channels, d_attention = _shapes(config)
    g_params = z * g_channels[0] * 16 + sum(16 * a * b for a, b in itertools.pairwise(g_channels)) \
        + 16 * g_channels[-1] * 3
    d_params = 16 * 3 * d_channels[0] + sum(16 * a * b for a, b in itertools.pairwise(d_channels)) \
        + 16 * d_channels[-1]
    return g_params + d_params + sum(c * c * 5 // 4 for _, c in g_attention + d_attention)


def _shapes(config: dict[str, Any]) -> tuple[list[int], list[int], list[tuple[int, int]], list[int], list[int],
                                              list[tuple[int, int]]]:
    """Feature-map sizes, channels and attention layers of G (growing from 4×4) and D (shrinking to 4×4)."""
    imsize = config["imsize"]
    g_sizes = generator_resolutions(imsize)  # 4, 8, ..., imsize/2
    g_channels = [config["g_conv_dim"] * (imsize // 8) // 2**i for i in range(len(g_sizes))]
    d_sizes = discriminator_resolutions(imsize)  # imsize/2, ..., 4
    d_channels = [config["d_conv_dim"] * 2**i for i in range(len(d_sizes))]
    return (g_sizes, g_channels, _attention(config.get("g_attention"), g_sizes, g_channels),
            d_sizes, d_channels, _attention(config.get("d_attention"), d_sizes, d_channels))


def _attention(chosen: list[int] | None, sizes: list[int], channels: list[int]) -> list[tuple[int, int]]:
    """(feature-map size, channels) of each attention layer; None = the seed's last two blocks."""
    chosen = sizes[-2:] if chosen is None else chosen
    return [(size, channel) for size, channel in zip(sizes, channels) if size in chosen]


def _at_most(config: dict[str, Any], field: str, limit: int, setting: str) -> None:
    if config[field] > limit:
        raise SpecError(f"config.{field}", f"{field}: {config[field]} is over this service's limit of {limit} "
                                           f"({setting})")
