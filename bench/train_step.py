"""Time the trainer's step (the same train_step `sagan train` runs) and print one JSON line per figure.

    python bench/train_step.py --preset seed64 --batch-size 64 --steps 3 [--reference DIR]
    python bench/train_step.py --preset paper128 --batch-size 64,256 --variants fp32,bf16,bf16-cl --flops

--variants runs several precision/layout settings in one process (one line each): fp32, bf16, bf16-cl
(bf16 + channels_last) and bf16-cl-compile (+ torch.compile); without it --amp/--channels-last/--compile
pick one. --flops counts one step's FLOPs with torch.utils.flop_counter (eager, fp32: the same arithmetic in
every variant) and reports achieved TFLOP/s, and model-FLOPs utilisation against --peak-tflops when given.
A conditional preset (num_classes null, as paper128) is timed with --num-classes classes (default 1000,
ImageNet's) on the labelled built-in shapes; unconditional ones on synthetic images.

--reference DIR points at a checkout of heykeetae/Self-Attention-GAN (not vendored here). Its
models are then timed in the same run, following its trainer's step: D(real), G(z), D(G(z))
with G attached, D update, fresh z, G update, with its SpectralNorm and Self_Attn modules.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sagan_core.config import TrainConfig, make_config, parse_flag
from sagan_core.data import build_dataset
from sagan_core.parallel import init_distributed
from sagan_core.train import build_state, real_batches, train_step, with_classes

VARIANTS = {
    "fp32": {"amp": "none", "channels_last": False, "compile": False},
    "bf16": {"amp": "bf16", "channels_last": False, "compile": False},
    "bf16-cl": {"amp": "bf16", "channels_last": True, "compile": False},
    "bf16-cl-compile": {"amp": "bf16", "channels_last": True, "compile": True},
}


def time_steps(step: Callable[[], object], warmup: int, steps: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def make_bench_config(args: argparse.Namespace, batch_size: int, variant: dict[str, Any]) -> TrainConfig:
    overrides = {"batch_size": batch_size, "num_workers": 0, "device": args.device, **variant,
                 **dict(args.override)}
    config = make_config(args.preset, **overrides)
    if config.num_classes is None:
        config = config.model_copy(update={"num_classes": args.num_classes})
    return config


def _step_fn(config: TrainConfig) -> Callable[[], object]:
    ctx = init_distributed(config.device)
    # Labelled images for a conditional model: shapes' 3 classes are valid labels of any num_classes >= 3. The
    # trainer refuses a model with more classes than its data (with_classes); timing a step needs no such
    # check.
    dataset = build_dataset("shapes:1024" if config.num_classes else "synthetic:1024", config.imsize)
    state = build_state(config if config.num_classes else with_classes(config, dataset), ctx, len(dataset))
    batches = real_batches(dataset, state)
    return lambda: train_step(state, batches)


def ours(config: TrainConfig, args: argparse.Namespace, sync: Callable[[], None]) -> float:
    return time_steps(_step_fn(config), args.warmup, args.steps, sync)


def step_flops(config: TrainConfig) -> int:
    """FLOPs of one training step (n_critic D updates and one G update), counted eagerly in fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    step = _step_fn(config.model_copy(update={"amp": "none", "channels_last": False, "compile": False}))
    step()  # the first step's lazy initialisations out of the way
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def reference(args: argparse.Namespace, batch_size: int, sync: Callable[[], None]) -> float:
    sys.path.insert(0, str(args.reference))
    from sagan_models import Discriminator, Generator  # the reference checkout's module

    device = torch.device("cuda" if args.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    generator = Generator(batch_size, 64, 128, 64).to(device)
    discriminator = Discriminator(batch_size, 64, 64).to(device)
    g_opt = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], 1e-4, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam([p for p in discriminator.parameters() if p.requires_grad], 4e-4,
                             betas=(0.0, 0.9))
    real = torch.rand(batch_size, 3, 64, 64, device=device) * 2 - 1

    def step() -> None:
        d_out_real, _, _ = discriminator(real)
        fake, _, _ = generator(torch.randn(batch_size, 128, device=device))
        d_out_fake, _, _ = discriminator(fake)
        d_loss = torch.relu(1.0 - d_out_real).mean() + torch.relu(1.0 + d_out_fake).mean()
        d_opt.zero_grad()
        g_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        fake, _, _ = generator(torch.randn(batch_size, 128, device=device))
        g_out_fake, _, _ = discriminator(fake)
        d_opt.zero_grad()
        g_opt.zero_grad()
        (-g_out_fake.mean()).backward()
        g_opt.step()

    return time_steps(step, args.warmup, args.steps, sync)


def _override(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    return name, parse_flag(name, value)


def _release(cuda: bool) -> None:
    """Free one figure's models and compiled graphs before the next is measured."""
    import gc

    gc.collect()
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed64")
    parser.add_argument("--batch-size", default="64", help="one batch size or several, comma-separated")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--variants",
                        help=f"comma-separated, from {', '.join(VARIANTS)} (replaces the three above)")
    parser.add_argument("--num-classes", type=int, default=1000,
                        help="classes of a preset with num_classes null")
    parser.add_argument("--override", type=_override, action="append", default=[], metavar="FIELD=VALUE",
                        help="any further config field (e.g. g_conv_dim=8 for a tiny smoke run)")
    parser.add_argument("--flops", action="store_true",
                        help="count one step's FLOPs (flop_counter) per batch size")
    parser.add_argument("--peak-tflops", type=float,
                        help="the card's peak dense TFLOP/s, for model-FLOPs utilisation")
    parser.add_argument("--reference", type=Path, help="checkout of heykeetae/Self-Attention-GAN")
    args = parser.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    variants = ({name: VARIANTS[name] for name in args.variants.split(",")} if args.variants else
                {"custom": {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile}})
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"

    for batch_size in (int(size) for size in args.batch_size.split(",")):
        flops = step_flops(make_bench_config(args, batch_size, VARIANTS["fp32"])) if args.flops else None
        _release(cuda)
        ref_seconds = reference(args, batch_size, sync) if args.reference else None
        _release(cuda)
        for name, variant in variants.items():
            config = make_bench_config(args, batch_size, variant)
            result: dict[str, Any] = {
                "bench": "train_step", "preset": args.preset, "batch_size": batch_size, "variant": name,
                "num_classes": config.num_classes, "steps": args.steps, "amp": config.amp,
                "channels_last": config.channels_last, "compile": config.compile, "torch": torch.__version__,
                "device": device_name, "threads": torch.get_num_threads()}
            try:
                seconds = ours(config, args, sync)
            except torch.cuda.OutOfMemoryError:
                print(json.dumps({**result, "error": "out of memory"}), flush=True)
                _release(cuda)
                continue
            result.update(ms_per_step=round(seconds * 1000, 1), img_per_s=round(batch_size / seconds, 2))
            if flops is not None:
                achieved = flops / seconds / 1e12
                result.update(gflop_per_step=round(flops / 1e9, 2), achieved_tflops=round(achieved, 3))
                if args.peak_tflops:
                    result.update(peak_tflops=args.peak_tflops, mfu=round(achieved / args.peak_tflops, 4))
            if ref_seconds is not None:
                result.update(reference_ms_per_step=round(ref_seconds * 1000, 1),
                              reference_img_per_s=round(batch_size / ref_seconds, 2),
                              speedup=round(ref_seconds / seconds, 2))
            print(json.dumps(result), flush=True)
            _release(cuda)


if __name__ == "__main__":
    main()
