"""Evaluating a generator: stream its samples and the real images through the feature extractors, then
compare. Memory does not grow with the images: they are generated (or loaded) in batches and only their
features are kept (Inception pool features and logits, SWD patch descriptors of at most swd.MAX_IMAGES).

With several ranks each one generates (and, on a cache miss, loads) its contiguous share of the samples and
the features are gathered on rank 0 in sample order, so N ranks compute what one rank computes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import ResizeMode
from ..layout import resolve_checkpoint
from ..parallel import DistContext, all_gather_objects, broadcast_flags, gather_rows, pick_device, share
from ..sampling import evaluation_mode, indexed_labels, indexed_noise, standing_statistics, to_uint8
from ..seeding import Stream, seeded
from . import swd
from .cache import INCEPTION_METRICS, StatsCache, StatsKey, stats_keys
from .weights import resolve_inception_weights

if TYPE_CHECKING:
    from ..data import ImageDataset
    from .backbones import Backbone

METRICS = ("fid", "kid", "is", "pr", "swd")
SWD_SEED = 0  # patch positions and projection directions: the same in every evaluation
# An evaluation's sample, by name: its z and class streams, and whether its real images come from the start or
# the end of the one seeded order. Training evaluations pick the best checkpoint on "selection"; `sagan eval`
# scores checkpoints on "held-out" by default, so the best's number is not the one it was picked by (other z,
# and other real images when the data set holds at least 2n; a smaller one's real sides overlap).
SAMPLES = {"selection": (Stream.EVAL_NOISE, Stream.EVAL_LABELS, False),
           "held-out": (Stream.HELD_OUT_NOISE, Stream.HELD_OUT_LABELS, True)}


@dataclass(frozen=True, slots=True)
class EvalPlan:
    """What an evaluation computes: `metrics` over `n` samples (z from `seed`) against `n` real images."""

    metrics: tuple[str, ...]
    n: int
    dataset: str
    imsize: int
    center_crop: int | None = None
    resize_mode: ResizeMode = "squash"
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    stream: str = "selection"  # a key of SAMPLES
    standing_stats: int = 0  # > 0: BatchNorm standing statistics over this many batches (sampling.py)

    def __post_init__(self) -> None:
        if self.stream not in SAMPLES:
            raise ValueError(f"stream: {self.stream!r} is not one of {', '.join(SAMPLES)}")
        unknown = [name for name in self.metrics if name not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"metrics: unknown {unknown} (choose from {', '.join(METRICS)})" if unknown
                             else "metrics: name at least one")
        if self.n < 2:
            raise ValueError("n must be >= 2")


@dataclass
class Features:
    """One side's features in sample order."""

    pool: torch.Tensor | None = None  # (N, 2048)
    logits: torch.Tensor | None = None  # (N, 1008), generated side only
    patches: list[torch.Tensor] | None = None  # per pyramid level (M * 128, 3, 7, 7)
    statistics: dict[str, np.ndarray] | None = None  # FID's mu and sigma
    count: int = 0
    class_counts: list[int] | None = None  # real side: the whole data set's items per class ([] unlabelled)


@dataclass
class _Collector:
    """One rank's features, batch by batch."""

    backbone: Backbone | None
    logits: bool
    swd_total: int | None  # the number of samples in the whole set, when SWD descriptors are wanted
    imsize: int
    pool_parts: list[torch.Tensor] = field(default_factory=list)
    logit_parts: list[torch.Tensor] = field(default_factory=list)
    patch_parts: list[list[torch.Tensor]] = field(default_factory=list)

    def add(self, first_index: int, images: torch.Tensor) -> None:
        if self.backbone is not None:
            out = self.backbone(images)
            self.pool_parts.append(out["pool"].float().cpu())
            if self.logits:
                self.logit_parts.append(out["logits"].float().cpu())
        if self.swd_total is not None:
            rows = [row for row in range(images.shape[0]) if swd.selected(first_index + row, self.swd_total)]
            if rows:
                self.patch_parts.append(swd.descriptors(images[rows], [first_index + r for r in rows],
                                                        SWD_SEED))

    def gathered(self, ctx: DistContext, count: int) -> Features | None:
        """Every rank's features on rank 0 (None elsewhere); every rank must call it."""
        def gather(parts: list[torch.Tensor]) -> torch.Tensor:
            # gather_rows gives None off rank 0, where the features are thrown away (returned as None)
            return cast(torch.Tensor, gather_rows(torch.cat(parts) if parts else torch.empty(0), ctx))

        features = Features(count=count)
        if self.backbone is not None:
            features.pool = gather(self.pool_parts)
            features.logits = gather(self.logit_parts) if self.logits else None
        if self.swd_total is not None:
            features.patches = [gather([part[level] for part in self.patch_parts])
                                for level in range(len(swd.resolutions(self.imsize)))]
        return features if ctx.is_main else None


class Evaluator:
    """Evaluates generators against one data set; keep it across evaluations (it holds the backbone).

    The real side comes from the statistics cache when it has the entry, else from one streaming pass over
    the data (then stored); the record says which.
    """

    def __init__(self, plan: EvalPlan, ctx: DistContext, *, cache: StatsCache | None = None,
                 inception_weights: str | None = None, backbone: Backbone | None = None) -> None:
        self.plan, self.ctx = plan, ctx
        self.cache = cache if cache is not None else StatsCache()
        self.backbone: Backbone | None = None
        if set(plan.metrics) & INCEPTION_METRICS:
            if backbone is None:
                from .backbones import InceptionV3  # torch-fidelity loads only for the Inception metrics

                backbone = InceptionV3(resolve_inception_weights(inception_weights), ctx.device)
            self.backbone = backbone

    def evaluate(self, generator: nn.Module, z_dim: int) -> dict[str, Any] | None:
        """The record of one evaluation on rank 0 (None on other ranks); every rank must call it."""
        started = time.perf_counter()
        real, cache_status = self.real_statistics()
        plan = self.plan
        statistics = "running statistics"
        if plan.standing_stats:  # the same copy on every rank: its batches depend on the seed alone
            generator = standing_statistics(generator, z_dim, getattr(generator, "num_classes", 0),
                                            plan.standing_stats, plan.batch_size, plan.seed)
            statistics = f"standing statistics over {plan.standing_stats} batches of {plan.batch_size}"
        class_mix = self.class_mix(generator, real)
        fake = self.generated_features(generator, z_dim, class_mix)
        if not self.ctx.is_main:
            return None
        assert fake is not None  # rank 0 holds the gathered features
        record: dict[str, Any] = {
            "metrics": self._scores(fake, real), "n": plan.n, "seed": plan.seed, "stream": plan.stream,
            "dataset": plan.dataset,
            "imsize": plan.imsize, "sampling": f"eval mode (BatchNorm {statistics}), float32, uint8 images",
            "real": {"n": real.count, "cache": cache_status}}
        if self.backbone is not None:
            record["backbone"] = self.backbone.name
            record["inception_weights_sha256"] = self.backbone.weights_sha256
        if class_mix is not None:
            record["class_mix"] = [round(float(share), 6) for share in class_mix]
        if real.patches is not None:
            record["swd_images"] = min(real.count, fake.count, swd.MAX_IMAGES)
        record["seconds"] = round(time.perf_counter() - started, 2)
        return record

    # -- the real side -----------------------------------------------------------------------

    def real_statistics(self) -> tuple[Features, dict[str, str]]:
        """Rank 0: the real side's Features and {part: "hit" | "miss"} (the cache entry's path on a miss is
        `self.cache.path(key)`). The other ranks return nothing but take their share of the pass over the
        data when an entry is missing; every rank must call it."""
        plan = self.plan
        keys, entries = {}, {}
        if self.ctx.is_main:
            keys = self.stats_keys()
            entries = {part: entry for part, key in keys.items()
                       if (entry := self.cache.load(key)) is not None}
        missing = broadcast_flags([part in keys and part not in entries for part in ("inception", "swd")],
                                  self.ctx)
        if any(missing):
            dataset, order = self._real_images()
            computed = self._collect(self._loaded(dataset, order), len(order), inception=missing[0],
                                     patches=missing[1], logits=False)
            if computed is not None:  # rank 0
                computed.class_counts = dataset.class_counts()
                entries.update(self._store(keys, computed))
        if not self.ctx.is_main:
            return Features(), {}
        real = Features()
        if (entry := entries.get("inception")) is not None:
            real.pool = torch.from_numpy(entry["pool"])
            real.statistics = {"mu": entry["mu"], "sigma": entry["sigma"]}
            real.count = int(entry["count"])
        if (entry := entries.get("swd")) is not None:
            real.patches = [torch.from_numpy(entry[f"patches_{size}"])
                            for size in swd.resolutions(plan.imsize)]
            real.count = int(entry["count"])
        real.class_counts = next(iter(entries.values()))["class_counts"].tolist()
        return real, {part: "miss" if missing[index] else "hit"
                      for index, part in enumerate(("inception", "swd")) if part in keys}

    def stats_keys(self) -> dict[str, StatsKey]:
        """The cache entries of this plan's real side, by part ("inception", "swd")."""
        plan = self.plan
        inception = None if self.backbone is None else (self.backbone.name, self.backbone.weights_sha256)
        return stats_keys(plan.metrics, dataset=plan.dataset, imsize=plan.imsize,
                          center_crop=plan.center_crop,
                          resize_mode=plan.resize_mode, n=plan.n, inception=inception, stream=plan.stream)

    def _store(self, keys: dict[str, StatsKey], computed: Features) -> dict[str, dict[str, np.ndarray]]:
        entries = {}
        count, class_counts = np.array(computed.count), np.array(computed.class_counts, dtype=np.int64)
        if computed.pool is not None:
            from .scores import frechet_statistics

            entries["inception"] = {"pool": computed.pool.numpy(), **frechet_statistics(computed.pool),
                                    "count": count, "class_counts": class_counts}
        if computed.patches is not None:
            entries["swd"] = {**{f"patches_{size}": level.numpy() for size, level
                                 in zip(swd.resolutions(self.plan.imsize), computed.patches, strict=True)},
                              "count": count, "class_counts": class_counts}
        for part, entry in entries.items():
            self.cache.save(keys[part], entry)
        return entries

    def _real_images(self) -> tuple[ImageDataset, torch.Tensor]:
        """The data set and the indices of its evaluation images: a seeded random n of them (the first n of
        one order, or the last n for the held-out sample), or all."""
        from ..data import build_dataset  # only on a cache miss: a cached evaluation never opens the data

        plan = self.plan
        dataset = build_dataset(plan.dataset, plan.imsize, center_crop=plan.center_crop,
                                resize_mode=plan.resize_mode)
        order = torch.randperm(len(dataset), generator=seeded(Stream.REAL_ORDER, 0))
        return dataset, (order.flip(0) if SAMPLES[plan.stream][2] else order)[:plan.n]

    def _loaded(self, dataset: Dataset, order: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        mine = share(len(order), self.ctx)
        loader = DataLoader(Subset(dataset, order[mine.start:mine.stop].tolist()),
                            batch_size=self.plan.batch_size, num_workers=self.plan.num_workers)
        first = mine.start
        for batch in loader:
            yield first, to_uint8(batch).to(self.ctx.device)
            first += batch.shape[0]

    # -- the generated side ------------------------------------------------------------------

    def class_mix(self, generator: nn.Module, real: Features) -> torch.Tensor | None:
        """A conditional generator's class probabilities in evaluations: the evaluation data's class
        frequencies, as its real side has them (uniform if it is unlabelled); None if unconditional. Every
        rank must call it (rank 0 read the counts with the real statistics)."""
        num_classes = getattr(generator, "num_classes", 0)
        if not num_classes:
            return None
        counts = all_gather_objects(real.class_counts, self.ctx)[0] or [1] * num_classes
        if len(counts) > num_classes:
            raise ValueError(f"data set {self.plan.dataset} has {len(counts)} classes, more than the "
                             f"generator's num_classes {num_classes}")
        weights = torch.zeros(num_classes, dtype=torch.float64)
        weights[:len(counts)] = torch.tensor(counts, dtype=torch.float64)
        return weights / weights.sum()

    def generated_features(self, generator: nn.Module, z_dim: int,
                           class_mix: torch.Tensor | None = None) -> Features | None:
        """The plan's n samples' features, on rank 0 (None elsewhere); every rank must call it. A conditional
        generator's classes follow `class_mix` (default uniform)."""
        return self._collect(self._generated(generator, z_dim, class_mix), self.plan.n,
                             inception=self.backbone is not None, patches="swd" in self.plan.metrics,
                             logits="is" in self.plan.metrics)

    def _generated(self, generator: nn.Module, z_dim: int,
                   class_mix: torch.Tensor | None) -> Iterator[tuple[int, torch.Tensor]]:
        mine = share(self.plan.n, self.ctx)
        device = next(generator.parameters()).device
        noise_stream, label_stream, _ = SAMPLES[self.plan.stream]
        with evaluation_mode(generator), torch.no_grad():
            for first in range(mine.start, mine.stop, self.plan.batch_size):
                count = min(self.plan.batch_size, mine.stop - first)
                z = indexed_noise(self.plan.seed, first, count, z_dim, noise_stream).to(device)
                # A conditional generator's classes are drawn from (seed, i) too, with the class mix's odds.
                num_classes = getattr(generator, "num_classes", 0)
                y = () if not num_classes else (indexed_labels(self.plan.seed, first, count, num_classes,
                                                               label_stream, class_mix).to(device),)
                yield first, to_uint8(generator(z, *y).float())

    def _collect(self, batches: Iterator[tuple[int, torch.Tensor]], total: int, *, inception: bool,
                 patches: bool, logits: bool) -> Features | None:
        collector = _Collector(self.backbone if inception else None, logits, total if patches else None,
                               self.plan.imsize)
        for first, images in batches:
            collector.add(first, images)
        return collector.gathered(self.ctx, total)

    # -- the numbers -------------------------------------------------------------------------

    def _scores(self, fake: Features, real: Features) -> dict[str, float]:
        from . import scores  # torch-fidelity's functions

        wanted, out = set(self.plan.metrics), {}
        if "fid" in wanted:
            assert fake.pool is not None and real.statistics is not None  # the backbone ran for "fid"
            out["fid"] = scores.fid(scores.frechet_statistics(fake.pool), real.statistics)
        if "kid" in wanted:
            assert fake.pool is not None and real.pool is not None
            out["kid"], out["kid_std"], out["kid_subset_size"] = scores.kid(fake.pool, real.pool)
        if "is" in wanted:
            assert fake.logits is not None
            out["is"], out["is_std"] = scores.inception_score(fake.logits)
        if "pr" in wanted:
            assert fake.pool is not None and real.pool is not None
            precision, recall = scores.precision_recall(fake.pool, real.pool)
            out.update(precision=precision, recall=recall,
                       f_score=2 * precision * recall / max(precision + recall, 1e-12))
        if "swd" in wanted:
            assert real.patches is not None and fake.patches is not None
            out.update(swd.swd(real.patches, fake.patches, self.plan.imsize, SWD_SEED))
        return out


def evaluate_checkpoint(checkpoint: str | Path, *, metrics: Sequence[str] | None = None, n: int | None = None,
                        dataset: str | None = None, seed: int | None = None, batch_size: int = 64,
                        num_workers: int = 0, device: str = "auto", inception_weights: str | None = None,
                        cache: StatsCache | None = None, stream: str = "held-out",
                        standing_stats: int = 0) -> dict[str, Any]:
    """Evaluate a checkpoint (`FILE.pt`, `RUN`, `RUN:STEP` or `RUN:best`) in this process; unset arguments
    come from its config (eval_metrics, eval_n, eval_dataset or dataset, seed: the training evaluations').
    By default on the held-out sample, not the one training evaluations picked the best checkpoint by.
    standing_stats K > 0: G's BatchNorm uses standing statistics over K batches of batch_size."""
    from ..checkpoint import load_checkpoint

    path = resolve_checkpoint(checkpoint)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=pick_device(device))
    model = load_checkpoint(path, device=ctx.device)
    config = model.config
    plan = EvalPlan(tuple(metrics or config.eval_metrics), n=n or config.eval_n,
                    dataset=dataset or config.eval_dataset or config.dataset, imsize=config.imsize,
                    center_crop=config.center_crop, resize_mode=config.resize_mode,
                    seed=config.seed if seed is None else seed,
                    batch_size=batch_size, num_workers=num_workers, stream=stream,
                    standing_stats=standing_stats)
    evaluator = Evaluator(plan, ctx, cache=cache, inception_weights=inception_weights)
    record = evaluator.evaluate(model.generator, config.z_dim)
    assert record is not None  # one rank
    return {"step": model.step, "source": "eval", "checkpoint": str(path),
            "generator": "ema" if model.ema else "generator", **record, "time": time.time()}
