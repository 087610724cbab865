"""Named studies: the lab report's planned experiments (and the SAGAN paper's Table 1) as plain data.

A study is a base preset, the one question it answers and its arms; an arm is a name and the config
fields it sets over the base (and over whatever the caller adds: data set, steps, ...). Every arm writes
the values it compares explicitly, the seed's included, so an arm means the same on any base preset
(debug32 has its own attention placement, for one). `sweeps.expand_sweep` turns a study into runs.

Torch-free: the API lists and expands studies with this module alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import PRESETS


@dataclass(frozen=True, slots=True, kw_only=True)
class Arm:
    """One variant of a study: `config` holds TrainConfig fields set over the base."""

    name: str
    config: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config)}


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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base, "question": self.question,
                "arms": [arm.to_dict() for arm in self.arms]}


def _study(name: str, base: str, question: str, arms: dict[str, dict[str, Any]]) -> Study:
    return Study(name=name, base=base, question=question,
                 arms=tuple(Arm(name=arm, config=config) for arm, config in arms.items()))


# The seed's values, written out where an arm keeps them.
_SEED_NORMS = {"g_norm": "spectral", "d_norm": "spectral"}
_SEED_RATES = {"g_lr": 1e-4, "d_lr": 4e-4, "n_critic": 1}
# null = the seed's placement (after the last two blocks of each net), [] = no attention.
_SEED_PLACEMENT = None

STUDIES: dict[str, Study] = {study.name: study for study in (
    _study("normalization", "seed64",
           "Does spectral normalisation in both networks (the seed) train better than SN in the discriminator "
           "only, batch norm in the discriminator, or no normalisation in the discriminator?",
           {"sn-both": _SEED_NORMS,
            # G keeps its BatchNorm but loses SN: SN-GAN's setting, which the paper compares against.
            "sn-d-only": {"g_norm": "batch", "d_norm": "spectral"},
            "bn-d": {"g_norm": "spectral", "d_norm": "batch"},
            "none-d": {"g_norm": "spectral", "d_norm": "none"}}),
    _study("ttur", "seed64",
           "Does the two time-scale update rule (D 4e-4, G 1e-4: the seed) beat equal learning rates, "
           "and equal rates with five discriminator steps per generator step?",
           {"ttur": _SEED_RATES,
            "equal-1e-4": {"g_lr": 1e-4, "d_lr": 1e-4, "n_critic": 1},
            "equal-4e-4": {"g_lr": 4e-4, "d_lr": 4e-4, "n_critic": 1},
            # n_critic counts D steps per G step, and `steps` counts G steps: this arm does 5x D's work.
            "equal-ncritic5": {"g_lr": 1e-4, "d_lr": 1e-4, "n_critic": 5}}),
    _study("attention", "seed64",
           "What does self-attention add, and in which network: none, the generator only, the discriminator "
           "only, or both (the seed)?",
           {"none": {"g_attention": [], "d_attention": []},
            "g-only": {"g_attention": _SEED_PLACEMENT, "d_attention": []},
            "d-only": {"g_attention": [], "d_attention": _SEED_PLACEMENT},
            "both": {"g_attention": _SEED_PLACEMENT, "d_attention": _SEED_PLACEMENT}}),
    # The paper's Table 1: one attention layer in each network at the feature map of that size. A study of
    # its own rather than arms of `attention` that appear at 128 only: a study is one fixed table, and
    # feat32/feat64 do not exist at 32 or 64 pixels (those bases fail validation naming the arm).
    _study("attention128", "sagan128",
           "Where should attention sit at 128x128 (the paper's Table 1): at the 8, 16, 32 or 64 pixel feature "
           "maps of both networks, against no attention?",
           {"none": {"g_attention": [], "d_attention": []},
            **{f"feat{size}": {"g_attention": [size], "d_attention": [size]} for size in (8, 16, 32, 64)}}),
    # One factor at a time from the seed rather than the full 2 x 3 x 2 grid (12 arms): each arm answers
    # one of the three questions against the same seed arm.
    _study("hyperparams", "seed64",
           "How sensitive is the seed to Adam's beta1 (0 vs 0.5), the batch size (32, 64, 128 at the seed's "
           "rates) and a learning-rate decay of 0.95 every lr_decay_every steps?",
           {"seed": {"beta1": 0.0, "batch_size": 64, "lr_decay": None},
            "beta1-0.5": {"beta1": 0.5, "batch_size": 64, "lr_decay": None},
            "batch32": {"beta1": 0.0, "batch_size": 32, "lr_decay": None},
            "batch128": {"beta1": 0.0, "batch_size": 128, "lr_decay": None},
            "lr-decay": {"beta1": 0.0, "batch_size": 64, "lr_decay": 0.95}}),
)}


def compute_spent(step: int, *, n_critic: int, batch_size: int) -> dict[str, int]:
    """What a run has spent by G step `step`: its G updates, D updates (n_critic per G step) and the real images
    D drew (a global batch per D update). metrics.jsonl records them; the report plots against images seen."""
    return {"g_updates": step, "d_updates": step * n_critic, "images_seen": step * n_critic * batch_size}


def get_study(name: str) -> Study:
    """The named study; ValueError listing the names otherwise."""
    try:
        return STUDIES[name]
    except KeyError:
        raise ValueError(f"unknown study {name!r}; choose from {', '.join(STUDIES)}") from None
