"""Named studies: the lab report's planned experiments (and the SAGAN paper's Table 1) as plain data.

A study is a base preset, the one question it answers and its arms; an arm is a name and the config
fields it sets over the base (and over whatever the caller adds: data set, steps, ...). Every arm writes
the values it compares explicitly, the seed's included, so an arm means the same on any base preset
(debug32 has its own attention placement, for one). `sweeps.expand_sweep` turns a study into runs.

Arms compare at equal compute where their settings change it: an arm's `relative_to_steps` sets fields to a
multiple of the run's `steps` (the sweep's, which its caller chooses) when the sweep expands. An arm with 5 D
updates per G step trains a fifth of the steps (`steps: 0.2`), so it draws as many real images and makes as
many D updates as the arms with one; a batch of 32 trains twice the steps of the seed's 64, a batch of 128
half. A decay interval set as a share of the run (`lr_decay_every: 0.05`) decays the same number of times
at any run length. Rounded to whole steps: exact when `steps` is a multiple of 20.

Torch-free: the API lists and expands studies with this module alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import PRESETS


@dataclass(frozen=True, slots=True, kw_only=True)
class Arm:
    """One variant of a study: `config` holds TrainConfig fields set over the base."""

    name: str
    config: Mapping[str, Any]
    # Count fields set to round(factor x the run's steps), at least 1, when the sweep expands.
    relative_to_steps: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config),
                "relative_to_steps": dict(self.relative_to_steps)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Study:
    name: str
    base: str
    question: str
    arms: tuple[Arm, ...]

    def __post_init__(self) -> None:
        if self.base not in PRESETS:
            raise ValueError(f"study {self.name}: unknown base preset {self.base}")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"study {self.name}: two arms share a name")
        for arm in self.arms:
            if set(arm.relative_to_steps) & set(arm.config) or not all(
                    factor > 0 for factor in arm.relative_to_steps.values()):
                raise ValueError(f"study {self.name}, arm {arm.name}: relative_to_steps needs positive "
                                 "factors for fields the arm does not set")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base, "question": self.question,
                "arms": [arm.to_dict() for arm in self.arms]}


def _study(name: str, base: str, question: str, arms: dict[str, dict[str, Any]],
           relative_to_steps: dict[str, dict[str, float]] | None = None) -> Study:
    """arms: arm name -> the config fields it sets; relative_to_steps: arm name -> its
    Arm.relative_to_steps."""
    relative = relative_to_steps or {}
    if set(relative) - set(arms):
        raise ValueError(f"study {name}: relative_to_steps names an arm it does not have")
    return Study(name=name, base=base, question=question,
                 arms=tuple(Arm(name=arm, config=config, relative_to_steps=relative.get(arm, {}))
                            for arm, config in arms.items()))


# The seed's values, written out where an arm keeps them.
_SEED_NORMS = {"g_norm": "spectral", "d_norm": "spectral"}
_SEED_RATES = {"g_lr": 1e-4, "d_lr": 4e-4, "n_critic": 1}
# null = the seed's placement (after the last two blocks of each net), [] = no attention.
_SEED_PLACEMENT = None
# The feature-map sizes of the paper's Table 1 (feat8 ... feat64).
_TABLE1_SIZES = (8, 16, 32, 64)

STUDIES: dict[str, Study] = {study.name: study for study in (
    _study("normalization", "seed64",
           "Does spectral normalisation in both networks (the seed) train better than SN in the "
           "discriminator only, batch norm in the discriminator, or no normalisation in the discriminator?",
           {"sn-both": _SEED_NORMS,
            # G keeps its BatchNorm but loses SN: SN-GAN's setting, which the paper compares against.
            "sn-d-only": {"g_norm": "batch", "d_norm": "spectral"},
            "bn-d": {"g_norm": "spectral", "d_norm": "batch"},
            "none-d": {"g_norm": "spectral", "d_norm": "none"}}),
    _study("ttur", "seed64",
           "Does the two time-scale update rule (D 4e-4, G 1e-4: the seed) beat equal learning rates, "
           "and equal rates with five discriminator steps per generator step, at equal G steps and at equal "
           "compute?",
           {"ttur": _SEED_RATES,
            "equal-1e-4": {"g_lr": 1e-4, "d_lr": 1e-4, "n_critic": 1},
            "equal-4e-4": {"g_lr": 4e-4, "d_lr": 4e-4, "n_critic": 1},
            # n_critic counts D steps per G step, and `steps` counts G steps: this arm does 5x D's work...
            "equal-ncritic5": {"g_lr": 1e-4, "d_lr": 1e-4, "n_critic": 5},
            # ... and this one the others' D updates and real images, in a fifth of the G steps.
            "equal-ncritic5-matched": {"g_lr": 1e-4, "d_lr": 1e-4, "n_critic": 5}},
           relative_to_steps={"equal-ncritic5-matched": {"steps": 0.2}}),
    _study("attention", "seed64",
           "What does self-attention add, and in which network: none, the generator only, the discriminator "
           "only, or both (the seed)?",
           {"none": {"g_attention": [], "d_attention": []},
            "g-only": {"g_attention": _SEED_PLACEMENT, "d_attention": []},
            "d-only": {"g_attention": [], "d_attention": _SEED_PLACEMENT},
            "both": {"g_attention": _SEED_PLACEMENT, "d_attention": _SEED_PLACEMENT}}),
    # The paper's Table 1 on its model (the residual 128 network; conditional when the data has labels): one
    # attention layer in each network at the feature map of that size, or, as the control, one more residual
    # block there instead. A study of its own rather than arms of `attention` that appear at 128 only: a
    # study is one fixed table, and feat32/feat64 do not exist at 32 or 64 pixels (those bases fail
    # validation naming the arm).
    _study("attention128", "paper128",
           "Where should attention sit at 128x128 (the paper's Table 1): at the 8, 16, 32 or 64 pixel "
           "feature maps of both networks, against no attention and against a residual block at the same "
           "place?",
           {"none": {"g_attention": [], "d_attention": [], "g_residual": [], "d_residual": []},
            **{f"feat{size}": {"g_attention": [size], "d_attention": [size], "g_residual": [],
                               "d_residual": []}
               for size in _TABLE1_SIZES},
            **{f"residual-feat{size}": {"g_attention": [], "d_attention": [], "g_residual": [size],
                                        "d_residual": [size]} for size in _TABLE1_SIZES}}),
    # One factor at a time from the seed rather than the full 2 x 3 x 2 grid (12 arms): each arm answers
    # one of the three questions against the same seed arm, at the seed arm's compute.
    _study("hyperparams", "seed64",
           "How sensitive is the seed to Adam's beta1 (0 vs 0.5), the batch size (32, 64, 128 at the seed's "
           "rates, each seeing as many real images) and a learning-rate decay of 0.95 every twentieth of the "
           "run?",
           {"seed": {"beta1": 0.0, "batch_size": 64, "lr_decay": None},
            "beta1-0.5": {"beta1": 0.5, "batch_size": 64, "lr_decay": None},
            "batch32": {"beta1": 0.0, "batch_size": 32, "lr_decay": None},
            "batch128": {"beta1": 0.0, "batch_size": 128, "lr_decay": None},
            "lr-decay": {"beta1": 0.0, "batch_size": 64, "lr_decay": 0.95}},
           # The lab report gives no decay interval: 19 decays over any run, to 0.95^19 = 0.38 of the rates.
           relative_to_steps={"batch32": {"steps": 2.0}, "batch128": {"steps": 0.5},
                              "lr-decay": {"lr_decay_every": 0.05}}),
    # DiffAugment's question, on the data set the base names cut to 1k and 10k of its images (the same ones
    # for every seed); evaluations compare with the whole set, so memorising the subset does not pay.
    _study("diffaug", "sagan32",
           "Does differentiable augmentation (color, translation, cutout on both D inputs) keep training on "
           "1,000 or 10,000 images from collapsing, and what does it cost when the data is plentiful?",
           {f"{policy}-{size}": {"diffaug": value, "train_images": count}
            for size, count in (("1k", 1_000), ("10k", 10_000))
            for policy, value in (("none", "none"), ("on", "color,translation,cutout"))}),
)}


def compute_spent(step: int, *, n_critic: int, batch_size: int) -> dict[str, int]:
    """What a run has spent by G step `step`: its G updates, D updates (n_critic per G step) and the real
    images D drew (a global batch per D update). metrics.jsonl records them; the report plots against images
    seen."""
    return {"g_updates": step, "d_updates": step * n_critic, "images_seen": step * n_critic * batch_size}


def get_study(name: str) -> Study:
    """The named study; ValueError listing the names otherwise."""
    try:
        return STUDIES[name]
    except KeyError:
        raise ValueError(f"unknown study {name!r}; choose from {', '.join(STUDIES)}") from None
