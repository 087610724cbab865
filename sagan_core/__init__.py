"""sagan_core: Self-Attention GANs (Zhang et al., 2018) as a library and the `sagan` CLI.

The public names load on first use, so that `sagan_core.config` or `sagan_core.files` can be
imported (by the API, or a Celery parent that must stay away from CUDA) without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "config", "make_config": "config",
    "Generator": "models", "Discriminator": "models", "build_models": "models",
    "LoadedModel": "checkpoint", "load_checkpoint": "checkpoint",
}
__all__ = ["Discriminator", "Generator", "LoadedModel", "TrainConfig", "build_models", "load_checkpoint",
           "make_config"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sagan_core' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
