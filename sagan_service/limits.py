"""What one job may ask of this deployment: server-side limits checked at POST /jobs.

TrainConfig (sagan_core.config) says what is a valid run anywhere; these limits depend on the machines
behind this service (SAGAN_MAX_*, SAGAN_WORKER_DEVICES, SAGAN_WORKER_CORES), so they live here. A value
over a limit is a SpecError (422) naming the field and the setting.
"""

from __future__ import annotations

import math

from sagan_core.config import TrainConfig
from sagan_core.dataspec import BUILT_IN, parse_spec, synthetic_size
from sagan_core.model_size import discriminator_size, generator_size, parameter_count

from .jobspec import EvalSpec
from .settings import Settings
from .specs import SpecError

GIB = 2**30
# Per trainable parameter: fp32 weights, gradients and Adam's two moments, and an EMA copy of G's.
BYTES_PER_PARAMETER = 4 * 4
# Per activation element of one image: the fp32 value kept for the backward pass, times 3 for what a
# block keeps around it (BatchNorm's and ReLU's outputs, the gradient flowing back).
BYTES_PER_ACTIVATION = 4 * 3


def check_train_limits(config: TrainConfig, settings: Settings) -> None:
    """A validated training config against this deployment's limits."""
    _at_most(config.g_conv_dim, "g_conv_dim", settings.max_conv_dim, "SAGAN_MAX_CONV_DIM")
    _at_most(config.d_conv_dim, "d_conv_dim", settings.max_conv_dim, "SAGAN_MAX_CONV_DIM")
    _at_most(config.z_dim, "z_dim", settings.max_z_dim, "SAGAN_MAX_Z_DIM")
    _at_most(config.nproc, "nproc", settings.worker_devices, "SAGAN_WORKER_DEVICES")
    if config.nodes > 1 and settings.ray_address is None:
        raise SpecError("config.nodes",
                        f"nodes: {config.nodes} machines need a Ray cluster, and this service has "
                                        "none (SAGAN_RAY_ADDRESS is not set); use nodes: 1")
    _at_most(config.num_workers, "num_workers", settings.worker_cores, "SAGAN_WORKER_CORES")
    _at_most(config.steps, "steps", settings.max_steps, "SAGAN_MAX_STEPS")
    _check_work(config, settings)
    _at_most(config.eval_n, "eval_n", settings.max_eval_n, "SAGAN_MAX_EVAL_N")
    if config.center_crop is not None:
        _at_most(config.center_crop, "center_crop", settings.max_center_crop, "SAGAN_MAX_CENTER_CROP")
    check_dataset_size(config.dataset, "config.dataset", settings)
    if config.eval_dataset is not None:
        check_dataset_size(config.eval_dataset, "config.eval_dataset", settings)
    need = estimate_training_bytes(config)
    if need > settings.max_job_memory_gb * GIB:
        raise SpecError("config.batch_size",
                        f"batch_size: this model at batch size {config.batch_size} needs an estimated "
                        f"{need / GIB:.1f} GiB per process, over this service's limit of "
                        f"{settings.max_job_memory_gb:g} GiB (SAGAN_MAX_JOB_MEMORY_GB); use a smaller batch, "
                        "width, z_dim or image size, or more processes (nproc)")


def _check_work(config: TrainConfig, settings: Settings) -> None:
    """What a run costs beyond its G steps: n_critic D steps each (SAGAN_MAX_STEPS bounds those too), and the
    samples of all its evaluations (step 0, every eval_every steps and the last: SAGAN_MAX_EVAL_SAMPLES)."""
    d_steps = config.steps * config.n_critic
    if d_steps > settings.max_steps:
        raise SpecError("config.n_critic", f"n_critic: steps {config.steps} x n_critic {config.n_critic} = "
                                           f"{d_steps} discriminator steps, over this service's limit of "
                                           f"{settings.max_steps} (SAGAN_MAX_STEPS)")
    if config.eval_every:
        evaluations = config.steps // config.eval_every + 2  # the untrained step 0 and the last, at most
        samples = evaluations * config.eval_n
        if samples > settings.max_eval_samples:
            raise SpecError("config.eval_every",
                            f"eval_every: {evaluations} evaluations of eval_n {config.eval_n} samples = "
                            f"{samples} samples, over this service's limit of {settings.max_eval_samples} "
                            "(SAGAN_MAX_EVAL_SAMPLES); evaluate less often or on fewer samples")


def check_eval_limits(spec: EvalSpec, settings: Settings) -> None:
    """An eval job's resolved spec (sagan_service.specs.eval_job_spec): its sample count and data set."""
    if spec.n > settings.max_eval_n:
        raise SpecError("n", f"n: {spec.n} is over this service's limit of {settings.max_eval_n} "
                             "(SAGAN_MAX_EVAL_N)")
    check_dataset_size(spec.dataset, "dataset", settings)


def check_dataset_size(spec: str, field: str, settings: Settings) -> None:
    """A built-in data set's N against SAGAN_MAX_SYNTHETIC_SIZE (the worker draws all N images)."""
    kind, arg = parse_spec(spec)
    if kind in BUILT_IN and synthetic_size(spec, arg) > settings.max_synthetic_size:
        name = field.rpartition(".")[2]
        raise SpecError(field,
                        f"{name}: {kind}:N is over this service's limit of {settings.max_synthetic_size} "
                               "images (SAGAN_MAX_SYNTHETIC_SIZE)")


def estimate_training_bytes(config: TrainConfig) -> int:
    """A rough upper estimate of one training process's memory: parameters × 16 bytes (weights, gradients,
    Adam's moments, EMA) plus the images of its share of the batch × their activation elements × 12 bytes.

    Both from sagan_core.model_size, which follows config.arch (the DCGAN or the residual networks):
    parameters exactly as torch counts them, activations as each conv's or linear's output map, the input
    image and each attention map (N × N, or N × N/4 pooled) for one image; D sees real and fake (2 × the
    batch). A residual model whose num_classes is null (taken from the data set at start) is counted without
    class tables. seed64: 7.0 M parameters; paper128 with 1000 classes: 81.5 M."""
    values = config.to_dict()  # what sagan_core.model_size reads
    generator, discriminator = generator_size(values), discriminator_size(values)
    per_rank = math.ceil(config.batch_size / (config.nproc * config.nodes))
    activations = generator.activations + 2 * discriminator.activations
    return parameter_count(values) * BYTES_PER_PARAMETER + per_rank * activations * BYTES_PER_ACTIVATION


def _at_most(value: int, field: str, limit: int, setting: str) -> None:
    """A training config's `field` (its `value`) against `limit`; SpecError on config.<field>."""
    if value > limit:
        raise SpecError(f"config.{field}",
                        f"{field}: {value} is over this service's limit of {limit} ({setting})")
