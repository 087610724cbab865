"""The training configuration: one typed definition, named presets, and the one way to build it.

Each field of `TrainConfig` carries its type, default, allowed range or choices and help text. The
`sagan train` flags, the `--config` YAML/JSON files, the REST job body (and its OpenAPI schema) and the
trainer all derive from it, and every one of them goes through `build_config`: a preset's values, then
the given mapping over them, validated with one rule. Values are typed as in JSON: an integer field
takes an integer (not "3", 3.0 or true), a float field a finite number, a list field a list. Text (a
command-line flag) is read as a YAML scalar first, exactly as the same text in a YAML file would be.

Torch-free: the API validates job configs with this module alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .dataspec import DatasetError, dataset_paths

MAX_INT = 2**31 - 1  # counts and sizes fit a 32-bit integer (the job service stores steps in one)
IMAGE_SIZES = (32, 64, 128)

Count = Annotated[int, Field(ge=1, le=MAX_INT)]
NonNegative = Annotated[int, Field(ge=0, le=MAX_INT)]
Rate = Annotated[float, Field(ge=0.0)]
Norm = Literal["spectral", "batch", "none"]
# Quality metrics (sagan_core.metrics): Inception-based fid, kid, is, pr and the backbone-free swd.
EvalMetric = Literal["fid", "kid", "is", "pr", "swd"]
# How a non-square image becomes square before resizing (data.build_dataset).
ResizeMode = Literal["squash", "crop"]


# Presets are plain overrides of the defaults above, named like torchtitan's model flavours.
PRESETS: dict[str, dict[str, Any]] = {
    # The lab report's 64x64 LSUN-church network and hyper-parameters.
    "seed64": {},
    # The same design at 32x32 and 128x128 (the reference code only works at 64).
    "sagan32": {"imsize": 32},
    "sagan128": {"imsize": 128},
    # The paper's class-conditional ImageNet model as the official TensorFlow code builds and trains it:
    # residual G and D with pooled attention at 32x32, conditional BN and a projection D, batch 256 over
    # the ranks, Adam(0, 0.999). Classes come from the data set (1000 for ImageNet's folder layout).
    "paper128": {"imsize": 128, "arch": "resnet", "attention": "pooled", "num_classes": None,
                 "batch_size": 256,
                 "beta1": 0.0, "beta2": 0.999, "g_lr": 1e-4, "d_lr": 4e-4, "n_critic": 1, "loss": "hinge",
                 "bn_momentum": 0.001, "bn_momentum_final": 0.0001},
    # The same residual family at 64 (BigGAN-PyTorch's 64x64 widths) and 32 (the SNGAN CIFAR-10 ResNet widths:
    # 256 in G, 128 in D), with the paper's optimiser settings; conditional when the data set has labels.
    "resnet64": {"imsize": 64, "arch": "resnet", "attention": "pooled", "num_classes": None, "beta2": 0.999,
                 "bn_momentum": 0.001, "bn_momentum_final": 0.0001},
    "resnet32": {"imsize": 32, "arch": "resnet", "attention": "pooled", "num_classes": None, "beta2": 0.999,
                 "bn_momentum": 0.001, "bn_momentum_final": 0.0001},
    # Tiny and fast: what the tests and CPU demos train.
    "debug32": {"imsize": 32, "g_conv_dim": 16, "d_conv_dim": 16, "g_attention": [16],
                "d_attention": [8], "batch_size": 8, "steps": 20, "log_every": 1,
                "sample_every": 10, "checkpoint_every": 10, "num_workers": 0},
}

# The residual presets crop the largest centred square, as BigGAN, StudioGAN and the official ImageNet
# converter do; the seed presets squash, as the reference's LSUN loader does (Resize((imsize, imsize))).
for _name in ("paper128", "resnet64", "resnet32"):
    PRESETS[_name]["resize_mode"] = "crop"

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


class ConfigError(ValueError):
    """An invalid config value. `issues` lists (field, message) pairs; str() is the first as one line,
    `<field>: <message>`, worded the same for flags, files and REST bodies (which never echo the input)."""

    def __init__(self, issues: list[tuple[str, str]]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{field}: {message}" for field, message in issues[:1]))

    @property
    def field(self) -> str:
        return self.issues[0][0]


class _FieldIssue(ValueError):
    """Raised inside validators for a check that spans fields, to name the field it blames."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


DIFFAUG_OPERATIONS = ("color", "translation", "cutout")  # sagan_core.diffaug


def diffaug_operations(policy: str) -> tuple[str, ...]:
    """A `diffaug` value's operations in order: `none` -> (); ValueError for an unknown or repeated one."""
    if policy == "none":
        return ()
    names = tuple(name.strip() for name in policy.split(","))
    unknown = [name for name in names if name not in DIFFAUG_OPERATIONS]
    if unknown:
        raise ValueError(f"unknown operation {unknown[0]!r}: use none or a comma-separated list of "
                         f"{', '.join(DIFFAUG_OPERATIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"an operation is listed twice in {policy!r}")
    return names


class TrainConfig(BaseModel):
    """Everything that defines a run. Defaults are the lab report's (the seed's) values."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False,
                              title="TrainConfig", use_attribute_docstrings=True)

    preset: PresetName = "seed64"  # type: ignore[valid-type]  # a Literal built from PRESETS at import
    """named starting point whose values replace these defaults: seed64 (the lab report), sagan32 and
    sagan128 (the same design at 32 and 128 pixels), paper128 (the paper's class-conditional residual model
    and the official code's settings), resnet32 and resnet64 (that residual family at 32 and 64 pixels),
    debug32 (tiny, for tests)"""
    dataset: str = Field("synthetic", max_length=4096)
    """synthetic[:N] | shapes[:N] (built in) | folder:PATH | lsun:PATH:CLASS[,CLASS...] | cifar10:PATH |
    packed:PATH (a set `sagan data pack` wrote) | ds:ID (a data set of the job service); labelled (for
    conditional models): shapes, a folder with a folder per class, cifar10, lsun with several classes, and
    packed sets of those"""
    center_crop: int | None = Field(None, ge=1, le=16384)
    """centre crop in source pixels before resizing (160 for aligned CelebA); null = none"""
    resize_mode: ResizeMode = "squash"
    """how a non-square image becomes square before resizing (after center_crop): crop (the largest centred
    square, as BigGAN and the official ImageNet converter; the paper128 and resnet presets) | squash (the
    whole image, distorted, as the reference's LSUN loader; the seed presets)"""
    shuffle: Literal["global", "blocks"] = "global"
    """order of the images in an epoch: global (a permutation of the whole set) | blocks (packed: and ds: sets
    only: the shards in a permuted order, the images shuffled within each 4 consecutive shards of it, so a
    reader goes through a few shards at a time); both seeded by (seed, epoch)"""
    max_bad_images: float = Field(0.001, ge=0.0, le=1.0)
    """largest fraction of unreadable images to skip before the run fails; 0 = fail on the first"""

    # Model
    arch: Literal["dcgan", "resnet"] = "dcgan"
    """network family: dcgan (the seed's transposed-conv design) | resnet (the paper's residual G and D with
    conditional BN and a projection discriminator, as the official code; spectral norm and pooled
    attention)"""
    num_classes: NonNegative | None = 0
    """classes of a conditional model (resnet only): 0 = unconditional; null = the training data set's number
    of classes (class sub-folders, CIFAR-10's labels, LSUN categories, shapes' kinds; 0 for unlabelled data),
    resolved when training starts and saved in the checkpoint's config"""
    imsize: Literal[32, 64, 128] = 64
    """image size"""
    z_dim: Count = 128
    """latent size"""
    g_conv_dim: Count = 64
    """generator width: channels of the last hidden block (a multiple of 8); resnet: the base width ch whose
    multiples the blocks use (64 gives the paper's 1024 ... 64)"""
    d_conv_dim: Count = 64
    """discriminator width: channels of the first block (a multiple of 8); resnet: the base width ch
    (64 gives the paper's 64 ... 1024)"""
    g_attention: list[Annotated[int, Field(ge=1)]] | None = None
    """generator feature-map sizes with self-attention ([] or 'none' = no attention); null = the seed's
    placement, after the last two generator blocks at any imsize (resnet: one at min(32, imsize/2), the
    paper's 32x32 at 128)"""
    d_attention: list[Annotated[int, Field(ge=1)]] | None = None
    """discriminator feature-map sizes with self-attention ([] or 'none' = no attention); null = the
    seed's placement, after the last two discriminator blocks at any imsize (resnet: one at
    min(32, imsize/2))"""
    g_residual: list[Annotated[int, Field(ge=1)]] = []
    """generator feature-map sizes with an extra residual block (same width, no upsampling) after the block
    that makes them; resnet only: the paper's Table 1 control for attention at that size"""
    d_residual: list[Annotated[int, Field(ge=1)]] = []
    """discriminator feature-map sizes with an extra residual block (same width, no downsampling) after the
    first block of that size; resnet only: the paper's Table 1 control for attention at that size"""
    g_norm: Norm = "spectral"
    """generator normalisation: spectral (SN + BatchNorm, the seed) | batch | none; resnet: spectral only"""
    d_norm: Norm = "spectral"
    """discriminator normalisation: spectral (the seed) | batch | none; resnet: spectral only"""
    attention: Literal["seed", "pooled"] = "seed"
    """attention form: seed (C/8 query/key, C value) | pooled (the paper's official code; resnet: pooled
    only)"""
    # Two fields, not one with a fixed ratio: the official values differ by 10x for no rule, and a saved
    # config should state what each BatchNorm used.
    bn_momentum: float = Field(0.1, gt=0.0, le=1.0)
    """BatchNorm's running-statistics momentum, as torch's (running = (1 - m) running + m batch; 1 - TF's
    decay), for every BatchNorm but the residual G's final one: 0.1 (torch's default) in the dcgan presets,
    the official code's 0.001 (decay 0.999, its conditional BNs) in paper128 and resnet*"""
    bn_momentum_final: float | None = Field(None, gt=0.0, le=1.0)
    """momentum of the residual G's final BatchNorm (before to_rgb); null = bn_momentum; paper128 and resnet*
    use the official code's 0.0001 (decay 0.9999)"""

    # Optimisation (TTUR: D learns 4x faster than G)
    loss: Literal["hinge", "wgan-gp", "bce"] = "hinge"
    """hinge | wgan-gp | bce (non-saturating)"""
    gp_weight: Rate = 10.0
    """gradient-penalty weight for wgan-gp"""
    batch_size: Count = 64
    """global batch size, split evenly over processes"""
    steps: Count = 100_000
    """generator steps to train"""
    n_critic: int = Field(1, ge=1, le=100)
    """discriminator steps per generator step"""
    g_lr: Rate = 1e-4
    """generator learning rate"""
    d_lr: Rate = 4e-4
    """discriminator learning rate"""
    beta1: float = Field(0.0, ge=0.0, lt=1.0)
    """Adam beta1"""
    beta2: float = Field(0.9, ge=0.0, lt=1.0)
    """Adam beta2: 0.9 as the paper's text and the seed say; the official TensorFlow code leaves TF's default
    0.999, which the paper128 and resnet presets use"""
    lr_decay: float | None = Field(None, gt=0.0, le=1.0)
    """multiply both learning rates by this every lr_decay_every steps; null = off (the seed lists 0.95,
    but its reference code never applies it)"""
    lr_decay_every: Count = 1000
    """steps between learning-rate decays"""
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    """EMA decay of generator weights for samples and checkpoints' generator (0 = off)"""
    ema_start: NonNegative = 0
    """step at which the EMA starts averaging (before it copies G)"""
    diffaug: str = Field("none", max_length=64)
    """differentiable augmentation of D's real and generated images (DiffAugment): none, or a comma-separated
    list of color, translation, cutout; for small data sets (the seed: none)"""
    train_images: Count | None = None
    """train on this many images of the data set, the same ones for every seed (a seeded choice); null = all.
    Evaluations still compare with the whole set (or eval_dataset)"""

    # Bookkeeping
    seed: NonNegative = 0
    """seed for weights, data order and noise"""
    log_every: Count = 10
    """steps between metrics.jsonl lines"""
    sample_every: Count = 100
    """steps between 8x8 sample grids"""
    checkpoint_every: Count = 1000
    """steps between checkpoints"""
    keep_checkpoints: int = Field(3, ge=1, le=1000)
    """how many recent checkpoints to keep on disk"""
    num_workers: NonNegative = 2
    """data-loader worker processes per rank"""

    # Evaluation
    eval_every: NonNegative = 0
    """steps between sample-quality evaluations written to evals.jsonl (and metrics.jsonl); 0 = off"""
    eval_metrics: list[EvalMetric] = Field(["swd"], min_length=1)
    """metrics of each evaluation: fid, kid, is, pr (Inception, need SAGAN_INCEPTION_WEIGHTS), swd (no
    weights); the first one picks the run's best checkpoint"""
    eval_n: Count = 10_000
    """generated samples per evaluation, compared with as many real images"""
    eval_dataset: str | None = Field(None, max_length=4096)
    """data set the samples are compared with (a dataset spec); null = the training set"""

    # Execution
    nproc: Count = 1
    """training processes per machine (torchrun); batch_size is split over all nodes x nproc of them"""
    nodes: Count = 1
    """machines the run spans, nproc processes on each (more than 1: the job service runs it on Ray)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto | cpu | cuda"""
    amp: Literal["none", "bf16"] = "none"
    """none | bf16 (autocast, for GPUs)"""
    channels_last: bool = False
    """use channels-last memory format"""
    compile: bool = False
    """torch.compile G and D"""

    @field_validator("imsize", mode="before")
    @classmethod
    def _integer_size(cls, value: Any) -> Any:
        # A Literal of ints otherwise takes 64.0 (it equals 64), which later breaks a shape.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("Input should be 32, 64 or 128")  # noqa: TRY004 (pydantic wants ValueError)
        return value

    @field_validator("dataset", "eval_dataset")
    @classmethod
    def _dataset_syntax(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            dataset_paths(value)  # syntax only: nothing is opened here
        except DatasetError as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("diffaug")
    @classmethod
    def _known_operations(cls, value: str) -> str:
        return ",".join(diffaug_operations(value)) or "none"

    @field_validator("eval_metrics")
    @classmethod
    def _distinct_metrics(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a metric twice")
        return value

    @field_validator("g_conv_dim", "d_conv_dim")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8 (attention projects to C/8)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size % (self.nproc * self.nodes):
            over = (f"nproc {self.nproc}" if self.nodes == 1
                    else f"nodes {self.nodes} x nproc {self.nproc} processes")
            raise _FieldIssue("batch_size", f"{self.batch_size} does not divide evenly over {over}")
        packed = self.dataset.partition(":")[0] in ("packed", "ds")
        if self.shuffle == "blocks" and not packed:
            raise _FieldIssue("shuffle",
                              "blocks needs a packed data set (packed:PATH or ds:ID): other data sets "
                                         "have no shards")
        if packed and self.center_crop:
            raise _FieldIssue("center_crop", "a packed data set was cropped and resized when it was packed: "
                                             "leave center_crop unset")
        if self.arch == "resnet":
            for name, wanted in (("g_norm", "spectral"), ("d_norm", "spectral"), ("attention", "pooled")):
                if getattr(self, name) != wanted:
                    raise _FieldIssue(name, f"the resnet arch supports only {wanted}")
        elif self.num_classes:
            raise _FieldIssue("num_classes", "a conditional model needs arch resnet")
        if self.arch != "resnet" and (self.g_residual or self.d_residual):
            raise _FieldIssue("g_residual" if self.g_residual else "d_residual",
                              "residual blocks need arch resnet")
        # dcgan is always unconditional, so there is nothing to take from the data set.
        placement: dict[str, Any] = {"num_classes": 0} if self.arch == "dcgan" else {}
        for name, allowed in (("g_attention", generator_resolutions(self.imsize, self.arch)),
                              ("d_attention", discriminator_resolutions(self.imsize, self.arch)),
                              ("g_residual", generator_resolutions(self.imsize, self.arch)),
                              ("d_residual", discriminator_resolutions(self.imsize, self.arch))):
            chosen = getattr(self, name)
            if chosen is None:  # the seed's placement after the last two blocks; the paper's 32x32 for resnet
                chosen = [min(32, self.imsize // 2)] if self.arch == "resnet" else allowed[-2:]
            bad = sorted(set(chosen) - set(allowed))
            if bad:
                raise _FieldIssue(name, f"no feature map of size {bad} at imsize {self.imsize}; "
                                        f"choose from {allowed}")
            placement[name] = sorted(set(chosen), reverse=name.startswith("d_"))
        # Stored resolved, so a saved config says exactly where attention sits.
        return self.model_copy(update=placement)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def generator_resolutions(imsize: int, arch: str = "dcgan") -> list[int]:
    """Feature-map sizes after each hidden generator block: dcgan 4, 8, ..., imsize/2; resnet 8, ...,
    imsize."""
    if arch == "resnet":
        return [2**i for i in range(3, int(math.log2(imsize)) + 1)]
    return [2**i for i in range(2, int(math.log2(imsize)))]


def discriminator_resolutions(imsize: int, arch: str = "dcgan") -> list[int]:
    """Distinct feature-map sizes after the discriminator blocks (imsize/2, ..., 4 for dcgan)."""
    if arch == "resnet":
        sizes = [imsize >> sum(down for _, down in resnet_layout(imsize)[1][:i + 1])
                 for i in range(len(resnet_layout(imsize)[1]))]
        return sorted(set(sizes), reverse=True)
    return list(reversed(generator_resolutions(imsize)))


def resnet_layout(imsize: int) -> tuple[list[int], list[tuple[int, bool]]]:
    """The residual family's widths as multiples of g_conv_dim / d_conv_dim.

    Returns (G channels from the 4x4 start through each up-block; D (channels, downsamples) per block).
    128 is the official code (G 16 16 8 4 2 1, D 1 2 4 8 16 16, the last without pooling); 64 is
    BigGAN-PyTorch's arch[64] (G 16 16 8 4 2, ending at 2 ch, not 1; D 1 2 4 8 16, the last without pooling);
    32 is the SNGAN CIFAR-10 ResNet (G 256 wide, D 128 wide at ch 64).
    """
    if imsize == 128:
        return [16, 16, 8, 4, 2, 1], [(1, True), (2, True), (4, True), (8, True), (16, True), (16, False)]
    if imsize == 64:
        return [16, 16, 8, 4, 2], [(1, True), (2, True), (4, True), (8, True), (16, False)]
    return [4, 4, 4, 4], [(2, True), (2, True), (2, False), (2, False)]


FIELDS = TrainConfig.model_fields


def config_warnings(config: Mapping[str, Any]) -> list[str]:
    """Valid settings that the literature advises against, in plain words: the trainer prints them at the
    start of its log and the job page shows them. Takes a config's mapping (TrainConfig.to_dict(), a job's
    spec)."""
    warnings = []
    if config.get("loss") == "wgan-gp" and config.get("d_norm") == "batch":
        warnings.append("loss wgan-gp with d_norm batch: the gradient penalty is defined per sample, and a "
                        "BatchNorm critic mixes the samples of a batch (the WGAN-GP paper rules it out); "
                        "use d_norm none or spectral")
    return warnings


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """The one way to a config: PRESETS[values["preset"]] (default seed64), then `values` over it.

    Raises ConfigError naming the first field at fault.
    """
    if not isinstance(values, Mapping):
        raise ConfigError([("config", "expected a mapping of config fields")])
    unknown = sorted(str(name) for name in values if name not in FIELDS)
    if unknown:
        raise ConfigError([(name, "unknown config field") for name in unknown])
    preset = values.get("preset", "seed64")
    base = PRESETS.get(preset, {}) if isinstance(preset, str) else {}
    try:
        return TrainConfig.model_validate({**base, **values})
    except ValidationError as error:
        raise ConfigError([_issue(item) for item in error.errors()]) from None


# What a continued run (`sagan train --init-from`, POST /jobs/{id}/continue) may set otherwise than the run
# whose checkpoint it starts from: how long and how fast it trains, its EMA, evaluations and bookkeeping, and
# where it runs. Every other field shapes the model, the data or the objective that checkpoint was trained
# with.
CONTINUE_FIELDS = frozenset({
    "steps", "g_lr", "d_lr", "lr_decay", "lr_decay_every", "ema_decay", "ema_start",
    "eval_every", "eval_metrics", "eval_n", "eval_dataset",
    "log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "num_workers",
    "nproc", "nodes", "device", "amp", "channels_last", "compile",
})


def continued_config(source: Mapping[str, Any], changes: Mapping[str, Any], *, from_step: int) -> TrainConfig:
    """The config of a run that continues, from its checkpoint at `from_step`, the run whose saved config is
    `source`: `changes` over it. ConfigError naming the field if a change is invalid, touches a field outside
    CONTINUE_FIELDS, or leaves `steps` (the new total) not above `from_step`."""
    base = build_config(saved_config(source))
    config = build_config({**base.to_dict(), **changes})
    fixed = [name for name in FIELDS if name not in CONTINUE_FIELDS
             and getattr(config, name) != getattr(base, name)]
    if fixed:
        why = ("cannot change when continuing a run: it shapes the model, data or objective its checkpoint "
               f"was trained with (these may change: {', '.join(sorted(CONTINUE_FIELDS))})")
        raise ConfigError([(name, why) for name in fixed])
    if config.steps <= from_step:
        why = f"{config.steps} is not above the checkpoint's step {from_step}: give the new total"
        raise ConfigError([("steps", why)])
    return config


# What a config saved whole by an earlier version (a checkpoint's, a job's) ran with for a field it predates:
# the behaviour from before the field, not its preset's current default.
PREDATED_FIELDS: dict[str, Any] = {"resize_mode": "squash"}


def saved_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config's values (give them to build_config) with the fields it predates set as it ran."""
    return {**PREDATED_FIELDS, **values}


def make_config(preset: str = "seed64", **overrides: Any) -> TrainConfig:
    """`build_config` for Python callers: `make_config("debug32", steps=10)`."""
    return build_config({**overrides, "preset": preset})


def _issue(error: Any) -> tuple[str, str]:
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _FieldIssue):
        return cause.field, str(cause)
    loc = error["loc"]
    # Only the field name: a list's element index is noise to someone who wrote `[16, "x"]`.
    field = str(loc[0]) if loc else "config"
    return field, error["msg"].removeprefix("Value error, ")


# ---- text: YAML/JSON files and command-line flags ---------------------------------------------------------

class YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string; this reads floats as YAML 1.2 and JSON do."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+"
               r"|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"),
    list("-+0123456789."))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (not yet validated: give it to build_config)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError([("config", f"cannot read config file {path}: {error.strerror}")]) from None
    try:
        data = yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as error:
        raise ConfigError([("config", f"{path} is not valid YAML/JSON: {error}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([("config", f"{path}: expected a mapping of config fields")])
    return data


def parse_flag(name: str, text: str) -> Any:
    """A flag's text as the value the same text would be in a YAML file. List fields take a
    comma-separated list ('none' = the empty list, 'default' = null); optional fields take 'none'."""
    word = text.strip().lower()
    annotation = str(FIELDS[name].annotation)
    if "list[" in annotation:
        if word in ("", "none", "[]"):
            return []
        if word in ("null", "default"):
            return None
        return [yaml.load(part, Loader=YamlLoader) for part in text.split(",")]
    if word == "none" and "None" in annotation:
        return None
    return yaml.load(text, Loader=YamlLoader)
