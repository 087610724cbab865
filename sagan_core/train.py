"""The SAGAN training loop, one process per rank.

Run as `python -m sagan_core.train --config CONFIG.json --out DIR [--resume]`, alone or under
torchrun. `sagan train` writes the config and starts this (through torchrun when nproc > 1).

Every random draw is a function of (seed, step): real batches come from a seeded permutation
per epoch, and z, a conditional generator's classes and the gradient penalty's weights from generators
seeded by (step, slot), each rank taking its slice of the global batch.
So a resumed run repeats a straight run exactly, and N processes see the same global batch as
one process with the same batch_size.

SIGTERM stops a run cleanly: the current step finishes, every rank agrees on that step (a CPU
all-reduce of the flag before each step), rank 0 saves a checkpoint there, and the process exits with
EXIT_STOPPED (75); `--resume` continues from it as if nothing happened.

A run whose losses or weights turn NaN or infinite stops with `diverged at step N (d_loss nan)` and
EXIT_DIVERGED (65), every rank together, without writing a checkpoint of the diverged state (DivergenceWatch).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Self, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .checkpoint import prune_checkpoints, read_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .config import TrainConfig, build_config, config_warnings, read_config_file
from .data import (
    BadImageLog,
    ImageDataset,
    PackedImages,
    Skipped,
    SkipUnreadable,
    SubsetImages,
    build_dataset,
    collate_readable,
)
from .dataspec import DatasetError
from .diffaug import FAKE, REAL, augment, draw
from .exits import EXIT_DIVERGED, EXIT_STOPPED
from .layout import (
    EVALS,
    METRICS,
    checkpoint_path,
    latest_checkpoint,
    point_best,
    real_grid_path,
    sample_path,
)
from .losses import D_LOSSES, G_LOSSES, gradient_penalty
from .metrics.evaluate import EvalPlan, Evaluator
from .metrics.runs import append_jsonl, best_eval, headline, improves, keep_steps_up_to
from .models import attention_gammas, build_discriminator, build_generator
from .parallel import (
    DistContext,
    all_gather_objects,
    all_reduce_mean,
    any_rank,
    control_group,
    init_distributed,
    main_rank_first,
    shutdown_distributed,
    sync_batchnorm,
    wrap_ddp,
)
from .sampling import fixed_noise, generate, grid_labels, write_grid
from .seeding import Stream, seeded
from .studies import compute_spent
from .tensorboard_log import TensorBoardLog

SHUFFLE_WINDOW = 4  # shuffle "blocks": images are shuffled within this many consecutive shards


def epoch_order(size: int, seed: int, epoch: int, blocks: list[int] | None = None) -> torch.Tensor:
    """The data order of an epoch, seeded by (seed, epoch): a permutation of all `size` items, or, given the
    sizes of consecutive blocks (a packed set's shards, config shuffle "blocks"), the blocks in a permuted
    order with the items shuffled within each window of SHUFFLE_WINDOW consecutive blocks of that order, so
    that a reader goes through the set a few shards at a time."""
    generator = seeded(Stream.EPOCH_ORDER, seed, epoch)
    if blocks is None:
        return torch.randperm(size, generator=generator)
    starts = [0, *itertools.accumulate(blocks)]
    shuffled = torch.randperm(len(blocks), generator=generator).tolist()
    parts = []
    for first in range(0, len(shuffled), SHUFFLE_WINDOW):
        window = torch.cat([torch.arange(starts[block], starts[block + 1])
                            for block in shuffled[first:first + SHUFFLE_WINDOW]])
        parts.append(window[torch.randperm(len(window), generator=generator)])
    return torch.cat(parts)


class StepBatchSampler(Sampler[list[int]]):
    """This rank's share of global batch b, for b = start, start + 1, ... forever.

    Epoch e's order is epoch_order(size, seed, e, blocks); the last incomplete global batch is dropped.
    """

    def __init__(self, size: int, config: TrainConfig, ctx: DistContext, start_batch: int,
                 blocks: list[int] | None = None) -> None:
        if size < config.batch_size:
            raise DatasetError(f"data set has {size} images, fewer than batch_size {config.batch_size}")
        self.size, self.seed, self.start, self.blocks = size, config.seed, start_batch, blocks
        self.global_batch = config.batch_size
        self.local = ctx.batch_slice(config.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = self.size // self.global_batch
        batch, epoch, order = self.start, -1, torch.empty(0, dtype=torch.long)
        while True:
            if batch // per_epoch != epoch:
                epoch = batch // per_epoch
                order = epoch_order(self.size, self.seed, epoch, self.blocks)
            first = batch % per_epoch * self.global_batch
            yield order[first:first + self.global_batch][self.local].tolist()
            batch += 1


def shuffle_blocks(dataset: ImageDataset, config: TrainConfig) -> list[int] | None:
    """The blocks epoch_order keeps together: a packed set's shard sizes under shuffle "blocks", else None."""
    return dataset.shard_counts if config.shuffle == "blocks" and isinstance(dataset, PackedImages) else None


@dataclass
class TrainState:
    """Everything a step touches. `*_ddp` are the DDP-wrapped views used for updates."""

    config: TrainConfig
    ctx: DistContext
    generator: nn.Module
    discriminator: nn.Module
    generator_ddp: nn.Module
    discriminator_ddp: nn.Module
    g_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer
    ema: nn.Module | None
    bad_images: BadImageLog
    step: int = 0

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "g_optimizer": self.g_optimizer.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
            "rng": rng_state(),
            "bad_images": dict(self.bad_images.shared),
        }

    def restore(self, payload: dict[str, Any]) -> None:
        self.generator.load_state_dict(payload["generator"])
        self.discriminator.load_state_dict(payload["discriminator"])
        if self.ema is not None:  # a run continued with an EMA from one without: the average starts at G
            self.ema.load_state_dict(payload.get("ema") or payload["generator"])
        self.g_optimizer.load_state_dict(payload["g_optimizer"])
        self.d_optimizer.load_state_dict(payload["d_optimizer"])
        restore_rng_state(payload["rng"])
        self.bad_images.merge([payload.get("bad_images", {})])
        self.step = int(payload["step"])


def build_state(config: TrainConfig, ctx: DistContext, dataset_size: int) -> TrainState:
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    generator = sync_batchnorm(build_generator(config), ctx).to(ctx.device)
    discriminator = sync_batchnorm(build_discriminator(config), ctx).to(ctx.device)
    if config.channels_last:
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    betas = (float(config.beta1), float(config.beta2))  # torch >= 2.14 rejects integer betas
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=config.g_lr, betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.d_lr, betas=betas)
    ema = copy.deepcopy(generator).requires_grad_(False) if config.ema_decay > 0 else None
    generator_ddp, discriminator_ddp = wrap_ddp(generator, ctx), wrap_ddp(discriminator, ctx)
    if config.compile:
        # torch.compile of a module returns an OptimizedModule (an nn.Module); its annotation: a callable
        generator_ddp = cast(nn.Module, torch.compile(generator_ddp))
        discriminator_ddp = cast(nn.Module, torch.compile(discriminator_ddp))
    return TrainState(config, ctx, generator, discriminator, generator_ddp, discriminator_ddp,
                      g_optimizer, d_optimizer, ema, BadImageLog(dataset_size, config.max_bad_images))


def with_classes(config: TrainConfig, dataset: ImageDataset) -> TrainConfig:
    """config with num_classes resolved against the training data (null = the data set's own number), so the
    saved config, and every checkpoint, says what the model is; a conditional model needs labels that fit."""
    classes = dataset.num_classes if config.num_classes is None else config.num_classes
    if classes and not dataset.num_classes:
        raise DatasetError(f"num_classes is {classes} but data set {config.dataset} has no class labels")
    if classes and dataset.num_classes > classes:
        raise DatasetError(f"data set {config.dataset} has {dataset.num_classes} classes, "
                           f"more than num_classes {classes}")
    if classes and dataset.num_classes < classes:  # classes no image has: G would learn them from nothing
        raise DatasetError(f"num_classes is {classes} but data set {config.dataset} has only "
                           f"{dataset.num_classes} classes")
    return config if classes == config.num_classes else config.model_copy(update={"num_classes": classes})


def fake_classes(config: TrainConfig, ctx: DistContext, step: int, slot: int) -> torch.Tensor | None:
    """This rank's slice of the generator's global classes for (step, slot), uniform; None if
    unconditional."""
    if not config.num_classes:
        return None
    classes = torch.randint(config.num_classes, (config.batch_size,),
                            generator=seeded(Stream.TRAIN_LABELS, config.seed, step, slot))
    return _rank_share(classes, ctx)


def labelled(y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The label argument of a model call: (y,) for a conditional model, nothing for an unconditional one."""
    return () if y is None else (y,)


def noise(config: TrainConfig, ctx: DistContext, step: int, slot: int) -> torch.Tensor:
    """This rank's slice of the global z for (step, slot); slot n_critic is the G step's."""
    z = torch.randn(config.batch_size, config.z_dim,
                    generator=seeded(Stream.TRAIN_NOISE, config.seed, step, slot))
    return _rank_share(z, ctx)


def for_d(config: TrainConfig, ctx: DistContext, images: torch.Tensor, step: int, slot: int, side: int
          ) -> torch.Tensor:
    """What D sees of this rank's `images`: augmented by config.diffaug with the draws of (step, slot, side),
    drawn over the global batch like z; the images themselves without it."""
    if config.diffaug == "none":
        return images
    draws = draw(config.batch_size, config.imsize, seed=config.seed, step=step, slot=slot, side=side)
    return augment(images, config.diffaug, draws.share(ctx.batch_slice(config.batch_size)))


def penalty_weights(config: TrainConfig, ctx: DistContext, step: int, slot: int) -> torch.Tensor:
    """This rank's slice of the global interpolation weights alpha (B,) of the gradient penalty."""
    alpha = torch.rand(config.batch_size, generator=seeded(Stream.PENALTY, config.seed, step, slot))
    return _rank_share(alpha, ctx)


def _rank_share(global_draw: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Drawn on the CPU over the global batch, so N ranks together draw what one process draws."""
    return global_draw[ctx.batch_slice(len(global_draw))].to(ctx.device, non_blocking=True)


def set_learning_rates(state: TrainState) -> None:
    config = state.config
    decay = 1.0 if config.lr_decay is None else config.lr_decay ** (state.step // config.lr_decay_every)
    for optimizer, base in ((state.g_optimizer, config.g_lr), (state.d_optimizer, config.d_lr)):
        for group in optimizer.param_groups:
            group["lr"] = base * decay


def discriminate(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, *,
                 real_y: torch.Tensor | None = None, fake_y: torch.Tensor | None = None,
                 separate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """D's float logits (B,) for real and fake (with their classes when conditional)."""
    if separate:
        # D's BatchNorm normalises real and fake with their own batch statistics, as the reference
        # does: a mixed batch would change what the normalisation ablation compares. Two DDP forwards
        # before one backward are fine without find_unused_parameters: autograd still accumulates
        # each parameter's gradient once, and DDP all-reduces it once.
        return discriminator(real, *labelled(real_y)).float(), discriminator(fake, *labelled(fake_y)).float()
    # One forward over real and fake: half the kernel launches, one spectral-norm power iteration
    # (where the reference runs two) and a single DDP forward per backward.
    assert (real_y is None) == (fake_y is None)  # a conditional model labels both sides
    both_y = () if real_y is None or fake_y is None else (torch.cat([real_y, fake_y]),)
    d_real, d_fake = discriminator(torch.cat([real, fake]), *both_y).float().split(real.shape[0])
    return d_real, d_fake


def train_step(state: TrainState, real_batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
               ) -> dict[str, torch.Tensor]:
    """n_critic discriminator updates, then one generator update. Returns detached stats."""
    config, ctx = state.config, state.ctx
    autocast = (torch.autocast(ctx.device.type, dtype=torch.bfloat16) if config.amp == "bf16"
                else nullcontext())
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    d_loss_fn, g_loss_fn = D_LOSSES[config.loss], G_LOSSES[config.loss]
    set_learning_rates(state)

    for slot in range(config.n_critic):
        images, labels = next(real_batches)
        real = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
        real_y = labels.to(ctx.device, non_blocking=True) if config.num_classes else None
        fake_y = fake_classes(config, ctx, state.step, slot)
        with torch.no_grad(), autocast:  # the D step never backpropagates into G
            fake = state.generator(noise(config, ctx, state.step, slot), *labelled(fake_y))
        real_seen = for_d(config, ctx, real, state.step, slot, REAL)
        fake_seen = for_d(config, ctx, fake.to(real.dtype), state.step, slot, FAKE)
        with autocast:
            d_real, d_fake = discriminate(state.discriminator_ddp, real_seen, fake_seen, real_y=real_y,
                                          fake_y=fake_y, separate=config.d_norm == "batch")
            d_loss = d_loss_fn(d_real, d_fake)
            if config.loss == "wgan-gp":
                # The penalty's double backward runs on the bare module (DDP cannot); its gradients
                # still reach DDP's all-reduce, which hooks the parameters themselves.
                alpha = penalty_weights(config, ctx, state.step, slot)
                d_loss = d_loss + config.gp_weight * gradient_penalty(state.discriminator, real_seen,
                                                                      fake_seen, alpha, labels=real_y)
        state.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        state.d_optimizer.step()

    # G step: D's weights need no gradients, so backpropagate through the bare module.
    state.discriminator.requires_grad_(False)
    g_y = labelled(fake_classes(config, ctx, state.step, config.n_critic))
    with autocast:
        fake = state.generator_ddp(noise(config, ctx, state.step, config.n_critic), *g_y)
        fake_seen = for_d(config, ctx, fake, state.step, config.n_critic, FAKE)
        g_loss = g_loss_fn(state.discriminator(fake_seen, *g_y).float())
    state.g_optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    state.g_optimizer.step()
    state.discriminator.requires_grad_(True)

    if state.ema is not None:
        update_ema(state.ema, state.generator, config.ema_decay if state.step >= config.ema_start else 0.0)
    state.step += 1
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
            "d_out_real": d_real.detach().mean(), "d_out_fake": d_fake.detach().mean()}


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def batch_loader(dataset: ImageDataset, config: TrainConfig, ctx: DistContext, *, start_batch: int,
                 tries: int) -> DataLoader:
    """The loader of this rank's real batches from global batch `start_batch` on, as (images, labels,
    skipped): see StepBatchSampler and SkipUnreadable."""
    # A packed set is read in this process: a batch is one copy out of a memory map, which loader workers
    # would only add a copy through shared memory to.
    workers = 0 if isinstance(dataset, PackedImages) else config.num_workers
    sampler = StepBatchSampler(len(dataset), config, ctx, start_batch, shuffle_blocks(dataset, config))
    return DataLoader(SkipUnreadable(dataset, tries), batch_sampler=sampler,
                      collate_fn=collate_readable, num_workers=workers, pin_memory=ctx.device.type == "cuda",
                      persistent_workers=workers > 0)


def real_batches(dataset: ImageDataset, state: TrainState) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Resumable stream of real (images, labels) batches: starts where step `state.step` left off.

    An unreadable image is replaced by the next readable one (SkipUnreadable) and recorded in
    state.bad_images; past its limit the run fails with a DatasetError naming them.
    """
    config, bad_images = state.config, state.bad_images
    loader = batch_loader(dataset, config, state.ctx, start_batch=state.step * config.n_critic,
                          tries=bad_images.tries)
    for images, labels, skipped in loader:
        bad_images.record(skipped)
        bad_images.check()  # this rank's count is at most the run's, so this never fails too early
        if images is None:  # every item tried was unreadable, and the limit allows the whole set
            raise DatasetError(f"none of the {len(dataset)} images can be read: {', '.join(skipped)}")
        yield images, labels


def share_bad_images(state: TrainState) -> Skipped:
    """Pool the unreadable images every rank met since the last call and fail past the limit, on
    every rank alike; return those new to the run (name -> message)."""
    bad_images = state.bad_images
    new = bad_images.merge(all_gather_objects(bad_images.take_unshared(), state.ctx))
    bad_images.check()
    return new


class RunWriter:
    """Rank 0's files in the run directory: metrics.jsonl, evals.jsonl, sample grids, checkpoints.

    A resumed run first cuts both JSONL files back to its checkpoint's step, so the steps it trains again are
    neither logged nor evaluated twice; a fresh run starts them anew. The best evaluation so far (and the
    `best` pointer) come from the evaluations kept. `hold_checkpoints`: see prune_checkpoints' `hold_untaken`.
    """

    def __init__(self, out_dir: Path, state: TrainState, *, resumed: bool,
                 hold_checkpoints: bool = False) -> None:
        self.out_dir, self.state, self.hold_checkpoints = out_dir, state, hold_checkpoints
        # One class per row when conditional (spread over the classes); the same z for every step's grid.
        self.sample_y = grid_labels(state.config.num_classes or 0)
        self.sample_z = fixed_noise(64 if self.sample_y is None else len(self.sample_y), state.config.z_dim,
                                    state.config.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        last_kept = state.step if resumed else -1
        keep_steps_up_to(out_dir / METRICS, last_kept)
        best = best_eval(keep_steps_up_to(out_dir / EVALS, last_kept), state.config.eval_metrics)
        self.best_value = None if best is None else headline(state.config.eval_metrics, best)
        if best is not None and checkpoint_path(out_dir, best["step"]).exists():
            point_best(checkpoint_path(out_dir, best["step"]))
        self.checkpointed_step: int | None = None
        # Open for the whole run (line-buffered, so readers see each line); close() ends it.
        self.metrics = open(out_dir / METRICS, "a", buffering=1)  # noqa: SIM115
        self.tensorboard = TensorBoardLog.open(out_dir, purge_step=last_kept + 1)

    def log(self, stats: dict[str, float], img_per_s: float) -> None:
        state = self.state
        gammas = {**attention_gammas(state.generator, "g"), **attention_gammas(state.discriminator, "d")}
        # The compute spent so far, so that arms with other batch sizes or n_critic compare at equal cost.
        spent = compute_spent(state.step, n_critic=state.config.n_critic, batch_size=state.config.batch_size)
        record = {"step": state.step, "total_steps": state.config.steps, **stats, **spent, "gamma": gammas,
                  "img_per_s": round(img_per_s, 2), "lr": state.g_optimizer.param_groups[0]["lr"],
                  "bad_images": state.bad_images.count, "time": time.time()}
        self.metrics.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.log(record, d_lr=state.d_optimizer.param_groups[0]["lr"])

    def sample(self) -> None:
        generator = self.state.ema if self.state.ema is not None else self.state.generator
        path = write_grid(generate(generator, self.sample_z, self.sample_y),
                          sample_path(self.out_dir, self.state.step))
        if self.tensorboard is not None:
            self.tensorboard.grid(self.state.step, path)

    def real_grid(self, dataset: ImageDataset) -> None:
        """64 real images, the first the run draws, beside the samples for comparison; once per run."""
        path = real_grid_path(self.out_dir)
        if path.exists():
            return
        # The same replacement of unreadable images as the batches (which also count them).
        readable = SkipUnreadable(dataset, self.state.bad_images.tries)
        config = self.state.config  # the order the batches start from: epoch 0's
        first = epoch_order(len(dataset), config.seed, 0, shuffle_blocks(dataset, config))[:64].tolist()
        images = [image for image, _, _ in map(readable.__getitem__, first) if image is not None]
        if images:  # none readable: the first batch fails the run, naming them
            write_grid(torch.stack(images), path)

    def checkpoint(self) -> Path:
        """Save this step's checkpoint (once per step)."""
        state = self.state
        if self.checkpointed_step != state.step:
            save_checkpoint(self.out_dir, state.checkpoint_payload(), state.config.keep_checkpoints,
                            hold_untaken=self.hold_checkpoints)
            self.checkpointed_step = state.step
        return checkpoint_path(self.out_dir, state.step)

    def evaluation(self, record: dict[str, Any]) -> None:
        """Record an evaluation of this step; a new best also saves this step's checkpoint and points `best`
        at it. The line goes first: a crash before the checkpoint leaves a line the resume cuts off and
        evaluates again, a crash after it leaves a checkpoint whose evaluation is on record."""
        state, metrics = self.state, self.state.config.eval_metrics
        line = {"step": state.step, "source": "train",
                "generator": "ema" if state.ema is not None else "generator", **record, "time": time.time()}
        append_jsonl(self.out_dir / EVALS, line)
        metrics_line = {"step": state.step, "total_steps": state.config.steps, "eval": record["metrics"],
                        "time": line["time"]}
        self.metrics.write(json.dumps(metrics_line) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.log(metrics_line)
        value = headline(metrics, line)
        assert value is not None  # every evaluation computes the first metric
        if improves(metrics, value, self.best_value):
            self.best_value = value
            point_best(self.checkpoint())
            # The previous best may go now.
            prune_checkpoints(self.out_dir, state.config.keep_checkpoints, hold_untaken=self.hold_checkpoints)

    def close(self) -> None:
        self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def build_evaluator(config: TrainConfig, ctx: DistContext) -> Evaluator | None:
    """The run's evaluator when eval_every > 0; a missing Inception weights file fails here, before
    training."""
    if config.eval_every == 0:
        return None
    plan = EvalPlan(tuple(config.eval_metrics), n=config.eval_n,
                    dataset=config.eval_dataset or config.dataset,
                    imsize=config.imsize, center_crop=config.center_crop, resize_mode=config.resize_mode,
                    seed=config.seed,
                    num_workers=config.num_workers)
    return Evaluator(plan, ctx)


def train(config: TrainConfig, out_dir: Path, *, resume: bool = False, hold_checkpoints: bool = False,
          stop_requested: Callable[[], bool] | None = None) -> TrainState:
    """Train to config.steps, writing metrics, evaluations, samples and checkpoints into out_dir (rank 0).

    A SIGTERM during the loop ends it early (state.step < config.steps) with a checkpoint at that step; so
    does `stop_requested()` turning True on any rank (a launcher whose ranks are not processes it can signal,
    such as Ray's workers). `hold_checkpoints`: see prune_checkpoints' `hold_untaken`. A process group that
    already exists (Ray Train makes one) is joined as it is, and left for its maker to end.
    """
    own_group = not torch.distributed.is_initialized()
    ctx = init_distributed(config.device)
    try:
        with main_rank_first(ctx):  # one walk of a folder per job: the other ranks read its cached list
            dataset = build_dataset(config.dataset, config.imsize, center_crop=config.center_crop,
                                    resize_mode=config.resize_mode)
        if config.train_images is not None:
            dataset = SubsetImages(dataset, config.train_images)
        config = with_classes(config, dataset)
        evaluator = build_evaluator(config, ctx)
        state = build_state(config, ctx, len(dataset))
        found = latest_checkpoint(out_dir) if resume else None
        if found is not None:
            state.restore(read_checkpoint(found))
        writer = (RunWriter(out_dir, state, resumed=found is not None, hold_checkpoints=hold_checkpoints)
                  if ctx.is_main else None)
        try:
            if writer is not None:
                for warning in config_warnings(config.to_dict()):
                    print(f"warning: {warning}", file=sys.stderr, flush=True)
                writer.real_grid(dataset)
            if evaluator is not None and found is None:  # the untrained baseline, step 0
                _evaluate(state, evaluator, writer)
            batches = real_batches(dataset, state)  # data-loader workers start here, before the handler
            with StopOnSigterm(ctx, stop_requested) as stop:
                _loop(state, batches, writer, stop, evaluator)
        finally:
            if writer is not None:
                writer.close()
        return state
    finally:
        if own_group:
            shutdown_distributed()


class StopOnSigterm:
    """SIGTERM sets a flag (or `stop_requested()` says so); `agreed()`, called by every rank before each step,
    is True on all of them once any rank has it, so they all stop after the same step."""

    def __init__(self, ctx: DistContext, stop_requested: Callable[[], bool] | None = None) -> None:
        self.ctx, self.requested = ctx, False
        self.previous: Callable[[int, FrameType | None], Any] | int | None = None
        self.stop_requested = stop_requested
        self.group = control_group(ctx)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # only the main thread sets handlers
            self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _on_sigterm(self, _signum: int, _frame: object) -> None:
        self.requested = True  # only a flag: the step in progress finishes first

    def agreed(self) -> bool:
        if self.stop_requested is not None and not self.requested:
            self.requested = self.stop_requested()
        return any_rank(self.requested, self.ctx, self.group)


class Diverged(RuntimeError):
    """The losses or weights turned NaN or infinite: training on would only train garbage."""


class DivergenceWatch:
    """Notes every step's stats on the device (no host sync, so a GPU keeps its queue) and reads them in
    `check`, which every rank calls at the same steps: all of them raise Diverged together when any rank saw
    a non-finite stat. With `weights`, before a checkpoint, it also checks every weight: the step's last
    update can make them non-finite while its stats, computed before that update, are still finite."""

    def __init__(self, state: TrainState, group: Any) -> None:
        self.state, self.group = state, group
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.names: list[str] = []

    def note(self, stats: dict[str, torch.Tensor]) -> None:
        self.names = list(stats)
        self.pending.append((self.state.step, torch.stack(list(stats.values())).float()))

    def check(self, *, weights: bool = False) -> None:
        found = self._first_non_finite()
        if found is None and weights:
            found = self._non_finite_weights()
        if any_rank(found is not None, self.state.ctx, self.group):
            # The earliest step any rank saw (under DDP one rank's NaN reaches the others a step later).
            step, what = min(verdict for verdict in all_gather_objects(found, self.state.ctx) if verdict)
            raise Diverged(f"diverged at step {step} ({what})")

    def _first_non_finite(self) -> tuple[int, str] | None:
        if not self.pending:
            return None
        values = torch.stack([stats for _, stats in self.pending]).cpu()
        steps = [step for step, _ in self.pending]
        self.pending = []
        bad = (~torch.isfinite(values)).nonzero()
        if not len(bad):
            return None
        row, column = bad[0].tolist()  # row-major: the first step, then its first stat
        return steps[row], f"{self.names[column]} {values[row, column].item()}"

    def _non_finite_weights(self) -> tuple[int, str] | None:
        state = self.state
        for name, model in (("generator", state.generator), ("discriminator", state.discriminator),
                            ("ema", state.ema)):
            if model is not None and not torch.stack([p.isfinite().all() for p in model.parameters()]).all():
                return state.step, f"{name} weights not finite"
        return None


def _evaluate(state: TrainState, evaluator: Evaluator, writer: RunWriter | None) -> None:
    """Every rank generates its share; rank 0 records the result."""
    record = evaluator.evaluate(state.ema if state.ema is not None else state.generator, state.config.z_dim)
    if writer is not None:
        assert record is not None  # the writer is rank 0's, which gets the record
        writer.evaluation(record)


def _loop(state: TrainState, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], writer: RunWriter | None,
          stop: StopOnSigterm, evaluator: Evaluator | None = None) -> None:
    config = state.config
    progress = _progress_bar(state, writer)
    window_start, window_steps = time.perf_counter(), 0
    first_step = state.step
    watch = DivergenceWatch(state, stop.group)
    # Reading the stats every step costs a CPU process nothing; a GPU reads them where it waits anyway.
    check_every_step = state.ctx.device.type == "cpu" and not state.ctx.distributed
    while state.step < config.steps:
        if stop.agreed():
            watch.check(weights=True)  # before the checkpoint below
            # A checkpoint where it stopped, unless this step has one already (or nothing was trained).
            if writer is not None and state.step > first_step and state.step % config.checkpoint_every:
                writer.checkpoint()
            if writer is not None:
                print(f"stopped by SIGTERM at step {state.step}; continue with --resume", file=sys.stderr)
            break
        stats = train_step(state, batches)
        watch.note(stats)
        window_steps += 1
        last = state.step == config.steps
        evaluating = evaluator is not None and (state.step % config.eval_every == 0 or last)
        logging_now = state.step % config.log_every == 0 or last
        sampling = state.step % config.sample_every == 0 or last
        saving = state.step % config.checkpoint_every == 0 or last
        # Before anything is written: no grid, evaluation or checkpoint (a new best saves one) of a diverged
        # state, so `latest` and `best` stay finite.
        if check_every_step or evaluating or logging_now or sampling or saving:
            watch.check(weights=evaluating or saving)
        if evaluating:
            evaluation_start = time.perf_counter()
            assert evaluator is not None  # `evaluating` says so
            _evaluate(state, evaluator, writer)
            window_start += time.perf_counter() - evaluation_start  # img/s counts training time only
        # A collective under DDP: there only on log steps, which wait for every rank anyway.
        if logging_now or not state.ctx.distributed:
            for message in share_bad_images(state).values():
                if writer is not None:
                    progress.write(f"warning: skipped {message}", file=sys.stderr)
        if logging_now:
            values = all_reduce_mean(torch.stack(list(stats.values())).float(), state.ctx).tolist()
            elapsed = time.perf_counter() - window_start
            img_per_s = window_steps * config.batch_size / max(elapsed, 1e-9)
            if writer is not None:
                writer.log(dict(zip(stats, values, strict=True)), img_per_s)
                progress.set_postfix(d_loss=f"{values[0]:.3f}", g_loss=f"{values[1]:.3f}",
                                     img_s=f"{img_per_s:.1f}")
            window_start, window_steps = time.perf_counter(), 0
        if writer is not None:
            progress.update(1)
            if sampling:
                writer.sample()
            if saving:
                writer.checkpoint()
    progress.close()


def _progress_bar(state: TrainState, writer: RunWriter | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=state.config.steps, initial=state.step, unit="step", dynamic_ncols=True,
                disable=writer is None or not sys.stderr.isatty())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One rank of a SAGAN training run.")
    parser.add_argument("--config", required=True, help="JSON/YAML file of config fields")
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--hold-checkpoints", action="store_true",
                        help="keep each checkpoint until a `<file>.taken` marker beside it says another "
                             "process has copied it (keep_checkpoints rotation skips it until then)")
    args = parser.parse_args(argv)
    return run(lambda: build_config(read_config_file(args.config)), args.out, resume=args.resume,
               hold_checkpoints=args.hold_checkpoints)


def run(load_config: Callable[[], TrainConfig], out: Path, **options: Any) -> int:
    """train(load_config(), out, **options) with its outcome as an exit status (sagan_core.launch's
    EXIT_MEANINGS): what every launcher of a rank reports, be it this module's `main` or a Ray worker."""
    try:
        config = load_config()
        out.mkdir(parents=True, exist_ok=True)
        state = train(config, out, **options)
    except (ValueError, FileNotFoundError) as error:  # DatasetError is a ValueError
        _report(error)
        return 2
    except Diverged as error:
        _report(error)  # `latest` is the last checkpoint, all of it finite
        return EXIT_DIVERGED
    return EXIT_STOPPED if state.step < config.steps else 0


def _report(error: BaseException) -> None:
    # One write, line and newline together: under torchrun every rank reports the same error into one log, and
    # print's two writes (text, then end) interleaved them into "error: Xerror: X" (seen in a service test).
    sys.stderr.write(f"error: {error}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
