"""SAGAN generator and discriminator (DCGAN-style, as in the seed), sized by TrainConfig, and the builders
that pick the family by config.arch (the residual family lives in sagan_core.resnet).

No parallelism lives here: DDP and synchronised BatchNorm are applied by sagan_core.parallel.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .config import TrainConfig, make_config
from .layers import (
    PooledSelfAttention,
    SelfAttention,
    estimate_spectral_norms,
    make_attention,
    maybe_spectral,
)


class Generator(nn.Module):
    """z (B, z_dim) -> images (B, 3, S, S) in [-1, 1].

    block1: ConvTranspose 4x4 from 1x1 to 4x4 with conv_dim * S/8 channels; each further block
    doubles the resolution and halves the channels; attention after the blocks whose output size
    is listed in config.g_attention; to_rgb is a plain ConvTranspose + tanh (no normalisation).
    """

    num_classes = 0  # unconditional: called with z alone

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        g_attention = config.g_attention
        assert g_attention is not None  # TrainConfig fills the default placement
        self.z_dim = config.z_dim
        spectral = config.g_norm == "spectral"
        batchnorm = config.g_norm in ("spectral", "batch")
        channels = config.g_conv_dim * config.imsize // 8
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels, resolution = config.z_dim, 1
        for index in range(1, int(math.log2(config.imsize)) - 1):
            first = index == 1
            conv = nn.ConvTranspose2d(in_channels, channels, 4, 1 if first else 2, 0 if first else 1)
            block = [maybe_spectral(conv, spectral)]
            if batchnorm:
                block.append(nn.BatchNorm2d(channels, momentum=config.bn_momentum))
            block.append(nn.ReLU())
            layers[f"block{index}"] = nn.Sequential(*block)
            resolution = 4 if first else resolution * 2
            if resolution in g_attention:
                layers[f"attn{resolution}"] = make_attention(config.attention, channels, spectral=spectral)
            in_channels, channels = channels, channels // 2
        layers["to_rgb"] = nn.Sequential(nn.ConvTranspose2d(in_channels, 3, 4, 2, 1), nn.Tanh())
        self.main = nn.Sequential(layers)
        estimate_spectral_norms(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], -1, 1, 1))


class Discriminator(nn.Module):
    """images (B, 3, S, S) -> logits (B,).

    Each block halves the resolution and doubles the channels (conv_dim first) down to 4x4,
    with LeakyReLU(0.1); attention after the blocks listed in config.d_attention; the last
    4x4 conv to one logit has no normalisation.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        d_attention = config.d_attention
        assert d_attention is not None  # TrainConfig fills the default placement
        spectral = config.d_norm == "spectral"
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels, channels = 3, config.d_conv_dim
        resolution: int = config.imsize
        for index in range(1, int(math.log2(config.imsize)) - 1):
            block = [maybe_spectral(nn.Conv2d(in_channels, channels, 4, 2, 1), spectral)]
            if config.d_norm == "batch" and index > 1:
                block.append(nn.BatchNorm2d(channels, momentum=config.bn_momentum))
            block.append(nn.LeakyReLU(0.1))
            layers[f"block{index}"] = nn.Sequential(*block)
            resolution //= 2
            if resolution in d_attention:
                layers[f"attn{resolution}"] = make_attention(config.attention, channels, spectral=spectral)
            in_channels, channels = channels, channels * 2
        layers["to_logit"] = nn.Conv2d(in_channels, 1, 4)
        self.main = nn.Sequential(layers)
        estimate_spectral_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def build_generator(config: TrainConfig) -> nn.Module:
    """G for config.arch; a conditional one takes (z, y), the others z alone."""
    from .resnet import ResNetGenerator

    _require_classes(config)
    return ResNetGenerator(config) if config.arch == "resnet" else Generator(config)


def build_discriminator(config: TrainConfig) -> nn.Module:
    """D for config.arch; a conditional one takes (x, y), the others x alone."""
    from .resnet import ResNetDiscriminator

    _require_classes(config)
    return ResNetDiscriminator(config) if config.arch == "resnet" else Discriminator(config)


def _require_classes(config: TrainConfig) -> None:
    if config.num_classes is None:
        raise ValueError("num_classes is null (take it from the data set): resolve it with "
                         "config.model_copy(update={'num_classes': n}) before building a model")


def build_models(preset: str | TrainConfig = "seed64", **overrides: Any) -> tuple[nn.Module, nn.Module]:
    """(G, D) for a preset name with config overrides, or for a full TrainConfig."""
    config = preset if isinstance(preset, TrainConfig) else make_config(preset, **overrides)
    return build_generator(config), build_discriminator(config)


def attention_gammas(model: nn.Module, prefix: str) -> dict[str, float]:
    """Each attention layer's gamma, keyed like 'g.attn32' (logged to follow attention's weight): the DCGAN
    models name their layers so, the residual ones' layers carry their `resolution` (resnet.attention_at)."""
    return {f"{prefix}.attn{module.resolution}" if hasattr(module, "resolution")
            else f"{prefix}.{name.rsplit('.', 1)[-1]}": module.gamma.item()
            for name, module in model.named_modules()
            if isinstance(module, SelfAttention | PooledSelfAttention)}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
