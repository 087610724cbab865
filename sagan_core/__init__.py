"""sagan_core: Self-Attention GANs (Zhang et al., 2018) as a library and the `sagan` CLI."""

from .checkpoint import LoadedModel, load_checkpoint
from .config import TrainConfig, make_config
from .models import Discriminator, Generator, build_models

__all__ = ["Discriminator", "Generator", "LoadedModel", "TrainConfig", "build_models", "load_checkpoint",
           "make_config"]
