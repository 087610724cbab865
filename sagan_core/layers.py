"""Building blocks: spectral normalisation and the two self-attention forms."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize

M = TypeVar("M", bound=nn.Module)

# Power iterations that fit u, v to a model's initial weights. torch's spectral_norm runs 15 at creation,
# which leave a wide random matrix (no gap below its top singular value) up to 8 % off; 100 get within 2 %. A
# fixed count, not "until sigma settles": a stopping test can stop one iteration apart under another thread
# count (torchrun's ranks run one thread each), and u, v would differ far beyond round-off between 1 and N
# processes.
ESTIMATE_ITERATIONS = 100


def _l2normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return v / (v.norm() + eps)


class SpectralNorm(nn.Module):
    """Parametrization W -> W / sigma(W), sigma from one power iteration per training forward.

    Follows the seed's reference implementation so its checkpoints import exactly: the weight is
    flattened along dim 0 for every layer type (ConvTranspose2d included, where torch's own
    spectral_norm uses dim 1), and each step updates v before u. Unlike the reference, u and v
    stay fixed in eval mode, so sampling is deterministic and never changes the model. u and v start
    random: a model fits them to its initial weights with estimate_spectral_norms.
    """

    u: torch.Tensor  # buffers (nn.Module's attribute lookup is typed Tensor | Module)
    v: torch.Tensor

    def __init__(self, weight: torch.Tensor, power_iterations: int = 1) -> None:
        super().__init__()
        rows = weight.shape[0]
        cols = weight.numel() // rows
        self.power_iterations = power_iterations
        self.register_buffer("u", _l2normalize(weight.new_empty(rows).normal_()))
        self.register_buffer("v", _l2normalize(weight.new_empty(cols).normal_()))

    @torch.no_grad()
    def power_iteration(self, weight: torch.Tensor, iterations: int | None = None) -> None:
        matrix = weight.reshape(weight.shape[0], -1)
        for _ in range(self.power_iterations if iterations is None else iterations):
            self.v.copy_(_l2normalize(torch.mv(matrix.t(), self.u)))
            self.u.copy_(_l2normalize(torch.mv(matrix, self.v)))

    @torch.no_grad()
    def estimate(self, weight: torch.Tensor) -> None:
        """ESTIMATE_ITERATIONS power iterations, so that u, v fit `weight` before the first forward.
        Deterministic given u's random start: every rank of a seeded run gets the same."""
        self.power_iteration(weight, iterations=ESTIMATE_ITERATIONS)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # sigma in full precision even under bf16 autocast: the power iteration is a tiny mat-vec. A device
        # without autocast (meta, where a model is built only to count or plan it) needs no such guard.
        device = weight.device.type
        has_autocast = torch.amp.is_autocast_available(device)
        with torch.autocast(device, enabled=False) if has_autocast else nullcontext():
            if self.training:
                self.power_iteration(weight)
            # Clones keep autograd's saved tensors safe from the next in-place power iteration
            # (the DDP in-place error of pytorch#22095).
            u, v = self.u.clone(), self.v.clone()
            sigma = torch.dot(u, torch.mv(weight.reshape(weight.shape[0], -1), v))
            return weight / sigma


def spectral_norm(module: M) -> M:
    parametrize.register_parametrization(module, "weight", SpectralNorm(weight_of(module).detach()))
    return module


def weight_of(module: nn.Module) -> torch.Tensor:
    # nn.Module's attribute lookup is typed Tensor | Module; every module given here has a weight tensor
    return cast(torch.Tensor, module.weight)


def weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    """The parametrizations of a parametrized module's weight (`.original` is the raw weight)."""
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, module.parametrizations)["weight"])


def estimate_spectral_norms(model: nn.Module) -> None:
    """Fit every spectral norm's u, v in `model` to its current weights: call it once a model's weights are
    initialised (or re-initialised); one power iteration per training step cannot catch up with new weights
    (an untrained model would divide by a sigma estimate 70 times too small). A model on the meta device has
    no weights to fit: it is left as it is."""
    for layer in model.modules():
        if parametrize.is_parametrized(layer, "weight"):
            weights = weight_parametrizations(layer)
            for transform in weights:
                if isinstance(transform, SpectralNorm) and not weights.original.is_meta:
                    transform.estimate(weights.original)


def maybe_spectral(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ) v over keys, unscaled as in SAGAN. q, k: (B, Nq/Nk, Cqk); v: (B, Nk, Cv).

    q and k are zero-padded to v's width: the dot products are unchanged, and equal widths let
    scaled_dot_product_attention pick its fused (flash) kernel on CPU as well as on GPUs, which
    never materialises the N x N map (256 MiB per fp32 batch of 64 at 32x32).
    """
    pad = v.shape[-1] - q.shape[-1]
    if pad > 0:
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=1.0)
    return out.squeeze(1)


# Called by every attention forward while recording_attention is active (None otherwise: one global read per
# forward), with the layer, its queries, keys and values as _attention sees them, and the query and key grids.
AttentionRecorder = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int],
                              tuple[int, int]], None]
_recorder: AttentionRecorder | None = None


@contextmanager
def recording_attention(recorder: AttentionRecorder) -> Iterator[None]:
    """Inside this block each attention forward hands (layer, q, k, v, query (h, w), key (h, w)) to `recorder`
    (sagan_core.attention_maps turns them into maps); the layers' math is unchanged."""
    global _recorder
    previous, _recorder = _recorder, recorder
    try:
        yield
    finally:
        _recorder = previous


def differentiable_attention() -> AbstractContextManager:
    """Attention inside this block runs on SDPA's math kernel, whose backward is differentiable again.

    The fused kernels (CPU flash, CUDA flash and memory-efficient) have no double backward
    (pytorch#116350), and which one runs depends on device, dtype and strides (channels_last, or
    just the layer's shape), so only forcing the math kernel works everywhere. Only a gradient
    penalty needs it: every other forward keeps the faster fused kernels.
    """
    return sdpa_kernel(SDPBackend.MATH)


class SelfAttention(nn.Module):
    """The seed's self-attention: 1x1 query/key to C/8, value to C, output gamma * o + x."""

    def __init__(self, channels: int, *, spectral: bool = False) -> None:
        super().__init__()
        self.query = maybe_spectral(nn.Conv2d(channels, channels // 8, 1), spectral)
        self.key = maybe_spectral(nn.Conv2d(channels, channels // 8, 1), spectral)
        self.value = maybe_spectral(nn.Conv2d(channels, channels, 1), spectral)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, N, C)
        if _recorder is not None:
            _recorder(self, q, k, v, (h, w), (h, w))
        o = _attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return self.gamma * o + x


class PooledSelfAttention(nn.Module):
    """The paper's official form: theta/phi to C/8, g to C/2, 2x2 max-pooled keys and values,
    a 1x1 output conv back to C, spectral norm on every conv. Pooling cuts the attention map by 4."""

    resolution: int  # set by the residual models only (resnet.attention_at); models.attention_gammas asks

    def __init__(self, channels: int, *, spectral: bool = True) -> None:
        super().__init__()
        self.theta = maybe_spectral(nn.Conv2d(channels, channels // 8, 1, bias=False), spectral)
        self.phi = maybe_spectral(nn.Conv2d(channels, channels // 8, 1, bias=False), spectral)
        self.g = maybe_spectral(nn.Conv2d(channels, channels // 2, 1, bias=False), spectral)
        self.out = maybe_spectral(nn.Conv2d(channels // 2, channels, 1, bias=False), spectral)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)  # (B, N/4, C/8)
        v = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)  # (B, N/4, C/2)
        if _recorder is not None:
            _recorder(self, q, k, v, (h, w), (h // 2, w // 2))
        o = _attention(q, k, v).transpose(1, 2).reshape(b, c // 2, h, w)
        return self.gamma * self.out(o) + x


def make_attention(form: str, channels: int, *, spectral: bool) -> nn.Module:
    if form == "seed":
        return SelfAttention(channels)  # the seed never normalises its attention convs
    return PooledSelfAttention(channels, spectral=spectral)
