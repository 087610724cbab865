"""The paper's residual SAGAN (the authors' TensorFlow `generator_test` / `discriminator_test`), at 32, 64 and
128.

G: SN-linear z -> 4x4 feature map, residual up-blocks with (class-)conditional BatchNorm, pooled
self-attention, BN -> ReLU -> SN-conv 3x3 -> tanh. D: an optimised first block, residual down-blocks, pooled
self-attention, ReLU, sum pooling, SN-linear to one logit plus the projection <h, SN-embedding(y)> when
conditional.

g_residual / d_residual add a same-width residual block (no resampling) at the listed feature-map sizes: the
paper's Table 1 compares attention at a size with such a block there.

num_classes 0 is the unconditional variant: plain affine BatchNorm in G and no projection in D. Every weight
starts Xavier-uniform (TF's xavier_initializer, which the official code uses for convs, linears and the
embedding), biases at 0, per-class BN gains at 1 and biases at 0, attention's gamma at 0.

No parallelism lives here: DDP and synchronised BatchNorm are applied by sagan_core.parallel (SyncBatchNorm
conversion reaches the BatchNorm2d inside ConditionalBatchNorm).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, resnet_layout
from .layers import PooledSelfAttention, estimate_spectral_norms, spectral_norm, weight_parametrizations


def _sn_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2))


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine, then a gain and bias per class (the official code's (classes, C)
    gamma and beta tables, so 2 x C x classes parameters). With num_classes 0, ordinary affine BatchNorm."""

    def __init__(self, channels: int, num_classes: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.conditional = num_classes > 0
        self.bn = nn.BatchNorm2d(channels, affine=not self.conditional, momentum=momentum)
        if self.conditional:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self.bn(x)
        if not self.conditional:
            return x
        assert y is not None  # a conditional model is always given classes
        if y.is_floating_point():  # (B, classes) weights of a mix of classes (a walk between two): mixed rows
            gain, bias = y @ self.gain.weight, y @ self.bias.weight
        else:
            gain, bias = self.gain(y), self.bias(y)
        # (B, C) -> (B, C, 1, 1)
        return x * gain[:, :, None, None] + bias[:, :, None, None]


def attention_at(channels: int, resolution: int) -> PooledSelfAttention:
    """The paper's attention layer at a feature map of `resolution` pixels, which it carries as an attribute:
    its place in the model is a block index (the state dict's key), and its gamma is logged by size
    (models.attention_gammas: g.attn32)."""
    layer = PooledSelfAttention(channels)
    layer.resolution = resolution
    return layer


class GeneratorBlock(nn.Module):
    """cBN -> ReLU -> nearest 2x -> conv 3x3 -> cBN -> ReLU -> conv 3x3, plus nearest 2x -> conv 1x1.

    `upsample=False` (the extra block of g_residual, same width): no 2x, and the identity as the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, num_classes: int, bn_momentum: float = 0.1, *,
                 upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.bn1 = ConditionalBatchNorm(in_channels, num_classes, bn_momentum)
        self.conv1 = _sn_conv(in_channels, out_channels, 3)
        self.bn2 = ConditionalBatchNorm(out_channels, num_classes, bn_momentum)
        self.conv2 = _sn_conv(out_channels, out_channels, 3)
        self.shortcut = _sn_conv(in_channels, out_channels, 1) if upsample else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.relu(self.bn1(x, y))
        if self.upsample:
            h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2,
                                                                                   mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class DiscriminatorBlock(nn.Module):
    """ReLU -> conv 3x3 -> ReLU -> conv 3x3 [-> avg-pool 2x2]; shortcut conv 1x1 [-> avg-pool] when the block
    downsamples or changes width, else the identity (the last 1024 -> 1024 block of the official D)."""

    def __init__(self, in_channels: int, out_channels: int, *, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.conv1 = _sn_conv(in_channels, out_channels, 3)
        self.conv2 = _sn_conv(out_channels, out_channels, 3)
        self.shortcut = (_sn_conv(in_channels, out_channels, 1) if downsample or in_channels != out_channels
                         else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        skip = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return h + skip


class OptimizedBlock(nn.Module):
    """D's first block on raw pixels: conv 3x3 -> ReLU -> conv 3x3 -> avg-pool, plus avg-pool -> conv 1x1
    (no ReLU on the image itself)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _sn_conv(3, out_channels, 3)
        self.conv2 = _sn_conv(out_channels, out_channels, 3)
        self.shortcut = _sn_conv(3, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))


def _xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv, linear and embedding that spectral norm wraps
    (the official initialiser), then spectral norm's u, v fitted to them; BN tables and attention's gamma
    keep their own starts."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.Embedding)) and hasattr(layer, "parametrizations"):
            with torch.no_grad():
                nn.init.xavier_uniform_(weight_parametrizations(layer).original)
            bias = getattr(layer, "bias", None)
            if bias is not None:
                nn.init.zeros_(bias)
    estimate_spectral_norms(module)


class ResNetGenerator(nn.Module):
    """(z (B, z_dim), y (B,) class indices, (B, classes) class weights, or None) -> images (B, 3, S, S) in
    [-1, 1]."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        g_attention = config.g_attention
        assert g_attention is not None  # TrainConfig fills the default placement
        widths, _ = resnet_layout(config.imsize)
        channels = [m * config.g_conv_dim for m in widths]
        self.z_dim, self.num_classes = config.z_dim, int(config.num_classes or 0)
        self.start_channels = channels[0]
        self.linear = spectral_norm(nn.Linear(config.z_dim, 4 * 4 * channels[0]))
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        self.residual = nn.ModuleDict()  # g_residual's extra blocks, before attention at the same size
        resolution = 4
        for in_channels, out_channels in pairwise(channels):
            self.blocks.append(GeneratorBlock(in_channels, out_channels, self.num_classes,
                                              config.bn_momentum))
            resolution *= 2
            if resolution in config.g_residual:
                self.residual[str(len(self.blocks) - 1)] = GeneratorBlock(
                    out_channels, out_channels, self.num_classes, config.bn_momentum, upsample=False)
            if resolution in g_attention:
                self.attention[str(len(self.blocks) - 1)] = attention_at(out_channels, resolution)
        final_momentum = config.bn_momentum if config.bn_momentum_final is None else config.bn_momentum_final
        # Unconditional, with its affine, as the official code.
        self.bn = nn.BatchNorm2d(channels[-1], momentum=final_momentum)
        self.to_rgb = _sn_conv(channels[-1], 3, 3)
        _xavier_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is None) != (self.num_classes == 0):
            raise ValueError(f"generator with num_classes {self.num_classes} called with"
                             f"{'out' if y is None else ''} labels")
        h = self.linear(z).view(z.shape[0], self.start_channels, 4, 4)  # (B, C0, 4, 4)
        for index, block in enumerate(self.blocks):
            h = block(h, y)
            if str(index) in self.residual:
                h = self.residual[str(index)](h, y)
            if str(index) in self.attention:
                h = self.attention[str(index)](h)
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))


class ResNetDiscriminator(nn.Module):
    """(images (B, 3, S, S), y (B,) or None) -> logits (B,)."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        d_attention = config.d_attention
        assert d_attention is not None  # TrainConfig fills the default placement
        _, plan = resnet_layout(config.imsize)
        self.num_classes = int(config.num_classes or 0)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        self.residual = nn.ModuleDict()  # d_residual's extra blocks, before attention at the same size
        resolution: int = config.imsize
        in_channels, placed = 3, set()
        for index, (multiple, downsample) in enumerate(plan):
            out_channels = multiple * config.d_conv_dim
            self.blocks.append(OptimizedBlock(out_channels) if index == 0
                               else DiscriminatorBlock(in_channels, out_channels, downsample=downsample))
            resolution //= 2 if downsample else 1
            # After the first block of a listed size: the blocks without downsampling repeat a size.
            if resolution not in placed:
                if resolution in config.d_residual:
                    self.residual[str(index)] = DiscriminatorBlock(out_channels, out_channels,
                                                                   downsample=False)
                if resolution in d_attention:
                    self.attention[str(index)] = attention_at(out_channels, resolution)
                placed.add(resolution)
            in_channels = out_channels
        self.linear = spectral_norm(nn.Linear(in_channels, 1))
        self.embedding = (spectral_norm(nn.Embedding(self.num_classes, in_channels)) if self.num_classes
                          else None)
        _xavier_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is None) != (self.num_classes == 0):
            raise ValueError(f"discriminator with num_classes {self.num_classes} called with"
                             f"{'out' if y is None else ''} labels")
        h = x
        for index, block in enumerate(self.blocks):
            h = block(h)
            if str(index) in self.residual:
                h = self.residual[str(index)](h)
            if str(index) in self.attention:
                h = self.attention[str(index)](h)
        h = F.relu(h).sum(dim=(2, 3))  # (B, C): sum pooling, as the official code (not a mean)
        logits = self.linear(h).squeeze(1)
        if self.embedding is not None:
            logits = logits + (self.embedding(y) * h).sum(dim=1)  # the projection term <h, e_y>
        return logits
