"""The networks' sizes from a config alone: trainable parameters and the activations one image leaves for the
backward pass, for both families (sagan_core.models' DCGAN design and sagan_core.resnet's residual one).

Torch-free: the job service's memory limit (sagan_service.limits) uses it without importing torch. It mirrors
the model definitions layer by layer, and tests/test_model_size.py holds it equal to torch's count for every
preset, image size and class count: change it with them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .config import resnet_layout


@dataclass
class NetworkSize:
    """One network: trainable parameters, and activation elements per image (each conv's or linear's output,
    the input image, each attention map)."""

    parameters: int = 0
    activations: int = 0

    def conv(self, kernel: int, in_channels: int, out_channels: int, size: int, *, bias: bool = True) -> None:
        """A conv (or linear, kernel 1 and size 1) whose output map is size x size."""
        self.parameters += kernel * kernel * in_channels * out_channels + (out_channels if bias else 0)
        self.activations += out_channels * size * size

    def attention(self, form: str, channels: int, size: int) -> None:
        """sagan_core.layers' SelfAttention ("seed": biased C/8 query and key, C value) or PooledSelfAttention
        (bias-free C/8 theta and phi, C/2 g, C/2 -> C out, keys and values 2x2 max-pooled); gamma in both."""
        c8 = channels // 8
        if form == "seed":
            self.parameters += 2 * (channels * c8 + c8) + channels * channels + channels + 1
            self.activations += size**4
        else:
            self.parameters += 2 * channels * c8 + 2 * channels * (channels // 2) + 1
            self.activations += size**2 * (size // 2) ** 2


def generator_size(config: Mapping[str, Any]) -> NetworkSize:
    """G of a resolved config (TrainConfig.to_dict(); num_classes null counts as 0, no class tables)."""
    return _resnet_generator(config) if config["arch"] == "resnet" else _dcgan_generator(config)


def discriminator_size(config: Mapping[str, Any]) -> NetworkSize:
    """D of a resolved config, as generator_size."""
    return _resnet_discriminator(config) if config["arch"] == "resnet" else _dcgan_discriminator(config)


def parameter_count(config: Mapping[str, Any]) -> int:
    """G's and D's trainable parameters together."""
    return generator_size(config).parameters + discriminator_size(config).parameters


def _dcgan_generator(config: Mapping[str, Any]) -> NetworkSize:
    net, imsize = NetworkSize(), config["imsize"]
    channels, in_channels, size = config["g_conv_dim"] * imsize // 8, config["z_dim"], 1
    for index in range(1, int(math.log2(imsize)) - 1):
        size = 4 if index == 1 else size * 2
        net.conv(4, in_channels, channels, size)  # a transposed conv: the same weights as a conv
        if config["g_norm"] in ("spectral", "batch"):
            net.parameters += 2 * channels  # BatchNorm's affine
        if size in config["g_attention"]:
            net.attention(config["attention"], channels, size)
        in_channels, channels = channels, channels // 2
    net.conv(4, in_channels, 3, imsize)
    return net


def _dcgan_discriminator(config: Mapping[str, Any]) -> NetworkSize:
    imsize = config["imsize"]
    net = NetworkSize(activations=3 * imsize * imsize)  # the input image
    in_channels, channels, size = 3, config["d_conv_dim"], imsize
    for index in range(1, int(math.log2(imsize)) - 1):
        size //= 2
        net.conv(4, in_channels, channels, size)
        if config["d_norm"] == "batch" and index > 1:
            net.parameters += 2 * channels
        if size in config["d_attention"]:
            net.attention(config["attention"], channels, size)
        in_channels, channels = channels, channels * 2
    net.conv(4, in_channels, 1, 1)
    return net


def _resnet_generator(config: Mapping[str, Any]) -> NetworkSize:
    net, classes = NetworkSize(), config["num_classes"] or 0
    channels = [multiple * config["g_conv_dim"] for multiple in resnet_layout(config["imsize"])[0]]
    net.conv(1, config["z_dim"], 16 * channels[0], 1)  # the linear to a 4x4 map

    def batchnorm(width: int) -> None:  # per-class gains and biases, or BatchNorm's own affine
        net.parameters += 2 * width * (classes or 1)

    size = 4
    for in_channels, out_channels in pairwise(channels):
        size *= 2
        batchnorm(in_channels)
        net.conv(3, in_channels, out_channels, size)
        batchnorm(out_channels)
        net.conv(3, out_channels, out_channels, size)
        net.conv(1, in_channels, out_channels, size)  # the shortcut
        if size in config["g_residual"]:  # a same-width block, identity shortcut (Table 1's control)
            batchnorm(out_channels)
            net.conv(3, out_channels, out_channels, size)
            batchnorm(out_channels)
            net.conv(3, out_channels, out_channels, size)
        if size in config["g_attention"]:
            net.attention("pooled", out_channels, size)
    net.parameters += 2 * channels[-1]  # the final BatchNorm, unconditional
    net.conv(3, channels[-1], 3, size)
    return net


def _resnet_discriminator(config: Mapping[str, Any]) -> NetworkSize:
    size = config["imsize"]
    net, classes = NetworkSize(activations=3 * size * size), config["num_classes"] or 0  # the input image
    in_channels, placed = 3, set()
    for index, (multiple, downsample) in enumerate(resnet_layout(size)[1]):
        out_channels = multiple * config["d_conv_dim"]
        net.conv(3, in_channels, out_channels, size)
        net.conv(3, out_channels, out_channels, size)
        if index == 0 or downsample or in_channels != out_channels:
            net.conv(1, in_channels, out_channels, size)  # the shortcut
        size //= 2 if downsample else 1
        if size not in placed:  # after the first block of that size
            if size in config["d_residual"]:  # a same-width block, identity shortcut
                net.conv(3, out_channels, out_channels, size)
                net.conv(3, out_channels, out_channels, size)
            if size in config["d_attention"]:
                net.attention("pooled", out_channels, size)
            placed.add(size)
        in_channels = out_channels
    net.conv(1, in_channels, 1, 1)
    net.parameters += classes * in_channels  # the projection's class embedding
    return net
