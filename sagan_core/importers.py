"""Converting other SAGAN implementations' weights into our checkpoint format.

heykeetae (github.com/heykeetae/Self-Attention-GAN, the seed's reference code) saves plain state
dicts `{step}_G.pth` / `{step}_D.pth` of its 64x64 networks, which are the seed64 preset layer for
layer: only the key names differ, plus one detail of its spectral norm (see _settle_spectral_norm).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .checkpoint import FORMAT_VERSION
from .config import make_config
from .files import atomic_write
from .layers import SpectralNorm, weight_parametrizations
from .models import Discriminator, Generator

StateDict = dict[str, torch.Tensor]
# (reference prefix, our prefix) pairs; a key is renamed by the first pair whose prefix it has.
Renames = list[tuple[str, str]]

# The reference wraps each spectrally normalised conv as `<seq>.0.module` holding weight_bar (the
# raw weight) and its power-iteration vectors weight_u / weight_v; ours is a torch parametrization.
_SPECTRAL_KEYS = {
    "0.module.weight_bar": "0.parametrizations.weight.original",
    "0.module.weight_u": "0.parametrizations.weight.0.u",
    "0.module.weight_v": "0.parametrizations.weight.0.v",
    "0.module.bias": "0.bias",
}
_STEP_FILE = re.compile(r"^(\d+)_[GD]\.pth$")
# torch < 0.4.1 (which the reference targeted) saved BatchNorm without this counter; it only
# matters for cumulative-average BatchNorm, which neither network uses, so 0 is a safe fill.
_OPTIONAL_SUFFIX = ".num_batches_tracked"


def _renames(attention: Mapping[str, str], last: tuple[str, str]) -> Renames:
    pairs = [(f"l{i}", f"main.block{i}") for i in range(1, 5)]
    for ref, ours in attention.items():
        pairs += [(f"{ref}.{part}_conv", f"{ours}.{part}") for part in ("query", "key", "value")]
        pairs.append((f"{ref}.gamma", f"{ours}.gamma"))
    pairs.append(last)
    return pairs


# Reference attn1/attn2 sit after l3/l4, i.e. on G's 16x16 and 32x32 and D's 8x8 and 4x4 maps.
_GENERATOR_RENAMES = _renames({"attn1": "main.attn16", "attn2": "main.attn32"}, ("last.0", "main.to_rgb.0"))
_DISCRIMINATOR_RENAMES = _renames({"attn1": "main.attn8", "attn2": "main.attn4"}, ("last.0", "main.to_logit"))


def _rename(key: str, renames: Renames, inner: Mapping[str, str]) -> str | None:
    """`key` under the first matching prefix pair, its remainder translated by `inner`; None if no pair."""
    for old, new in renames:
        if key == old:
            return new
        if key.startswith(old + "."):
            rest = key[len(old) + 1:]
            return f"{new}.{inner.get(rest, rest)}"
    return None


def _summary(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _load_state_dict(path: Path) -> StateDict:
    if not path.is_file():
        raise FileNotFoundError(f"state dict not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable PyTorch state dict ({error})") from error
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ValueError(f"{path}: expected a flat state dict of tensors (a heykeetae *_G.pth or *_D.pth)")
    # Saved from nn.DataParallel (the reference's --parallel flag) every key gains this prefix.
    if all(key.startswith("module.") for key in data):
        data = {key.removeprefix("module."): value for key, value in data.items()}
    return dict(data)


def _convert(source: StateDict, path: Path, model: nn.Module, renames: Renames) -> StateDict:
    """Load `source` into `model` under our names, or raise ValueError naming every mismatch."""
    expected = model.state_dict()
    back = [(new, old) for old, new in renames]
    inner_back = {new: old for old, new in _SPECTRAL_KEYS.items()}
    converted: StateDict = {}
    present: set[str] = set()
    unexpected, mismatched = [], []
    for key, value in source.items():
        ours = _rename(key, renames, _SPECTRAL_KEYS)
        if ours not in expected:
            unexpected.append(key)
            continue
        present.add(ours)
        if value.shape != expected[ours].shape:
            mismatched.append(f"{key} {tuple(value.shape)} (expected {tuple(expected[ours].shape)})")
        else:
            converted[ours] = value
    missing = []
    for ours in expected.keys() - present:
        if ours.endswith(_OPTIONAL_SUFFIX):
            converted[ours] = torch.zeros_like(expected[ours])
        else:
            missing.append(_rename(ours, back, inner_back) or ours)
    problems = [f"{label}: {_summary(sorted(keys))}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if keys]
    if problems:
        raise ValueError(f"{path}: not a heykeetae 64x64 checkpoint with conv_dim 64 ({'; '.join(problems)})")
    model.load_state_dict(converted)
    _settle_spectral_norm(model)
    return model.state_dict()


@torch.no_grad()
def _settle_spectral_norm(model: nn.Module) -> None:
    """Advance each spectral norm's (u, v) by the one power iteration the reference runs first.

    The reference updates v then u on every forward, eval included, before dividing the weight by
    sigma = u·Wv; ours only iterates in training and uses the stored vectors in eval. Storing the
    vectors as they will be after that step makes our eval outputs equal the reference's first
    forward after loading the same files.
    """
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            weights = weight_parametrizations(module)
            spectral = weights[0]
            assert isinstance(spectral, SpectralNorm)  # the one parametrization this code registers
            spectral.power_iteration(weights.original, iterations=1)


def _step(path: Path) -> int | None:
    match = _STEP_FILE.match(path.name)
    return int(match.group(1)) if match else None


def import_heykeetae(generator_path: Path, discriminator_path: Path, output: Path) -> Path:
    """Convert the reference's {step}_G.pth / {step}_D.pth pair into a seed64 checkpoint at `output`."""
    generator_path, discriminator_path, output = Path(generator_path), Path(discriminator_path), Path(output)
    g_source, d_source = _load_state_dict(generator_path), _load_state_dict(discriminator_path)
    # Only G has BatchNorm: a cheap check that turns a swapped pair into a readable error.
    if "l1.1.running_mean" not in g_source and "l1.1.running_mean" in d_source:
        raise ValueError(f"{generator_path} looks like a discriminator and {discriminator_path} like a "
                         "generator: pass the *_G.pth file first")
    g_step, d_step = _step(generator_path), _step(discriminator_path)
    if None not in (g_step, d_step) and g_step != d_step:
        raise ValueError(f"generator is from step {g_step} but discriminator from step {d_step}")

    # z_dim is a reference flag that only changes l1's input width. Its conv_dim and image size are
    # flags too, but its attention widths are hard-coded for 64 and 64x64, so no other size runs.
    first = g_source.get("l1.0.module.weight_bar")
    z_dim = first.shape[0] if first is not None and first.dim() == 4 else 128
    config = make_config("seed64", z_dim=z_dim)
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "step": g_step if g_step is not None else (d_step or 0),
        "config": config.to_dict(),
        "generator": _convert(g_source, generator_path, Generator(config), _GENERATOR_RENAMES),
        "discriminator": _convert(d_source, discriminator_path, Discriminator(config),
                                  _DISCRIMINATOR_RENAMES),
        # Weights only: there is no optimiser, EMA or RNG state to resume training from.
        "ema": None,
        "g_optimizer": None,
        "d_optimizer": None,
        "rng": None,
        "source": {"format": "heykeetae", "generator": str(generator_path),
                   "discriminator": str(discriminator_path)},
    }
    return atomic_write(output, lambda f: torch.save(payload, f))


IMPORTERS: dict[str, Callable[[Path, Path, Path], Path]] = {"heykeetae": import_heykeetae}


def import_checkpoint(fmt: str, generator_path: Path, discriminator_path: Path, output: Path) -> Path:
    """Write our checkpoint at `output` from another implementation's G and D files; returns `output`."""
    if fmt not in IMPORTERS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose from {sorted(IMPORTERS)}")
    return IMPORTERS[fmt](generator_path, discriminator_path, output)
