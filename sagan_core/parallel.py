"""Process-group setup, DDP wrapping and synchronised BatchNorm.

Works the same under torchrun with N processes (NCCL on GPUs, gloo on CPU) and as one plain
process with no process group at all.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def batch_slice(self, global_batch: int) -> slice:
        """This rank's share of a global batch (which divides evenly over the ranks)."""
        local = global_batch // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


@contextmanager
def main_rank_first(ctx: DistContext) -> Iterator[None]:
    """Run the block on rank 0, then on the other ranks: what rank 0 caches (a folder's file list) the
    others then read instead of doing the same work at the same time. A collective: every rank enters it."""
    if ctx.distributed and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.distributed and ctx.is_main:
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        # Through apply, so that a gradient penalty's double backward sums over ranks too.
        return _AllReduceSum.apply(grad)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose batch statistics span every process: SyncBatchNorm for gloo/CPU.

    torch's SyncBatchNorm only runs on accelerators. Two all-reduces (mean, then the centred
    sum of squares) keep the variance as accurate as single-process BatchNorm; the
    autograd-aware all_reduce sends gradients back through the statistics.
    """

    # Always tracked here (sync_batchnorm converts BatchNorms that track them, with a momentum); torch types
    # them optional for track_running_stats=False and cumulative averaging.
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor
    momentum: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        count = x.numel() // x.shape[1] * dist.get_world_size()
        mean = _AllReduceSum.apply(x.sum(dims)) / count
        centred = x - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / max(count - 1, 1), self.momentum)
        scale = torch.rsqrt(var + self.eps)
        if not self.affine:  # conditional BN: the per-class gain and bias come after
            return centred * scale.view(1, -1, 1, 1)
        scale = scale * self.weight
        return centred * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def sync_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Make the BatchNorm layers of `model` normalise over the global batch."""
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum,
                                            affine=child.affine)
            replacement.load_state_dict(child.state_dict())
            assert child.running_mean is not None  # a BatchNorm that tracks running statistics
            setattr(model, name, replacement.to(child.running_mean.device))
        else:
            sync_batchnorm(child, ctx)
    return model


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP when there are several processes. Buffers are not broadcast: spectral-norm vectors
    evolve identically on every rank, and broadcasting them in place breaks autograd (#22095)."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    with warnings.catch_warnings():
        # torch >= 2.14 suggests forward_sync_buffers, which 2.11 lacks and which syncs at init.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def all_gather_objects(obj: T, ctx: DistContext) -> list[T]:
    """Every rank's picklable obj, in rank order."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def control_group(ctx: DistContext) -> dist.ProcessGroup | None:
    """A CPU (gloo) group for small control messages; None when the default group already is one.

    Call it on every rank at the same point (creating a group is collective). Control messages sent
    through it never wait for a GPU's queued work, so a check every step costs no device sync.
    """
    if not ctx.distributed or dist.get_backend() == "gloo":
        return None
    # every rank joins the group, so none gets the non-member sentinel torch's annotation allows
    return cast(dist.ProcessGroup, dist.new_group(backend="gloo"))


def any_rank(flag: bool, ctx: DistContext, group: dist.ProcessGroup | None) -> bool:
    """True on every rank if `flag` is True on any rank (a collective: all ranks must call it)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def share(total: int, ctx: DistContext) -> range:
    """This rank's contiguous share of items 0..total-1 (the first total % world_size ranks take one more)."""
    base, extra = divmod(total, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (ctx.rank < extra))


GATHER_CHUNK_BYTES = 64 << 20


def gather_rows(local: torch.Tensor, ctx: DistContext) -> torch.Tensor | None:
    """Rank 0 gets every rank's rows concatenated in rank order (with `share`: global item order); other ranks
    get None. A rank with no rows may pass any empty tensor. Sent in chunks of about 64 MiB (on the GPU with
    NCCL), so memory beyond the result stays small."""
    if not ctx.distributed:
        return local
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    # Rows and up to four trailing dimensions of every rank (-1 pads), to agree on the row shape.
    mine = [local.shape[0], *local.shape[1:], *[-1] * (5 - local.dim())] if local.numel() else [0, *[-1] * 4]
    shapes = [torch.zeros(5, dtype=torch.long, device=device) for _ in range(ctx.world_size)]
    dist.all_gather(shapes, torch.tensor(mine, device=device))
    sizes = [int(shape[0]) for shape in shapes]
    if max(sizes) == 0:
        return local if ctx.is_main else None
    row_shape = [int(d) for d in shapes[sizes.index(max(sizes))][1:] if d >= 0]
    row_bytes = max(1, math.prod(row_shape) * local.element_size())
    chunk = max(1, GATHER_CHUNK_BYTES // row_bytes)
    parts: list[list[torch.Tensor]] = [[] for _ in range(ctx.world_size)]
    for start in range(0, max(sizes), chunk):
        rows = min(chunk, max(sizes) - start)
        piece = torch.zeros((rows, *row_shape), dtype=local.dtype, device=device)
        if local.numel():
            sent = local[start:start + rows]
            piece[:sent.shape[0]] = sent.to(device)
        received = [torch.empty_like(piece) for _ in range(ctx.world_size)] if ctx.is_main else None
        dist.gather(piece, received, dst=0)
        if received is not None:
            for rank, tensor in enumerate(received):
                parts[rank].append(tensor[:max(0, min(rows, sizes[rank] - start))].cpu())
    if not ctx.is_main:
        return None
    return torch.cat([part for rank_parts in parts for part in rank_parts])


def broadcast_flags(flags: list[bool], ctx: DistContext) -> list[bool]:
    """Rank 0's flags on every rank."""
    if not ctx.distributed:
        return flags
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor([int(flag) for flag in flags], device=device)
    dist.broadcast(tensor, src=0)
    return [bool(value) for value in tensor.tolist()]
