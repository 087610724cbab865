"""Time the trainer's step (the same train_step `sagan train` runs) and print one JSON line.

    python bench/train_step.py --preset seed64 --batch-size 64 --steps 3 [--reference DIR]

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sagan_core.config import make_config
from sagan_core.data import build_dataset
from sagan_core.parallel import init_distributed
from sagan_core.train import build_state, real_batches, train_step


def time_steps(step, warmup: int, steps: int, sync) -> float:
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def ours(args: argparse.Namespace, sync) -> float:
    overrides = {"batch_size": args.batch_size, "num_workers": 0, "amp": args.amp,
                 "channels_last": args.channels_last, "compile": args.compile, "device": args.device}
    config = make_config(args.preset, **overrides)
    ctx = init_distributed(config.device)
    dataset = build_dataset("synthetic:1024", config.imsize)
    state = build_state(config, ctx, len(dataset))
    batches = real_batches(dataset, state)
    return time_steps(lambda: train_step(state, batches), args.warmup, args.steps, sync)


def reference(args: argparse.Namespace, sync) -> float:
    sys.path.insert(0, str(args.reference))
    from sagan_models import Discriminator, Generator  # the reference checkout's module

    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    generator = Generator(args.batch_size, 64, 128, 64).to(device)
    discriminator = Discriminator(args.batch_size, 64, 64).to(device)
    g_opt = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], 1e-4, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam([p for p in discriminator.parameters() if p.requires_grad], 4e-4,
                             betas=(0.0, 0.9))
    real = torch.rand(args.batch_size, 3, 64, 64, device=device) * 2 - 1

    def step() -> None:
        d_out_real, _, _ = discriminator(real)
        fake, _, _ = generator(torch.randn(args.batch_size, 128, device=device))
        d_out_fake, _, _ = discriminator(fake)
        d_loss = torch.relu(1.0 - d_out_real).mean() + torch.relu(1.0 + d_out_fake).mean()
        d_opt.zero_grad()
        g_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        fake, _, _ = generator(torch.randn(args.batch_size, 128, device=device))
        g_out_fake, _, _ = discriminator(fake)
        d_opt.zero_grad()
        g_opt.zero_grad()
        (-g_out_fake.mean()).backward()
        g_opt.step()

    return time_steps(step, args.warmup, args.steps, sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed64")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--reference", type=Path, help="checkout of heykeetae/Self-Attention-GAN")
    args = parser.parse_args()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    seconds = ours(args, sync)
    result = {"bench": "train_step", "preset": args.preset, "batch_size": args.batch_size,
              "steps": args.steps, "amp": args.amp, "channels_last": args.channels_last,
              "compile": args.compile, "ms_per_step": round(seconds * 1000, 1),
              "img_per_s": round(args.batch_size / seconds, 2), "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "threads": torch.get_num_threads()}
    if args.reference:
        ref_seconds = reference(args, sync)
        result.update(reference_ms_per_step=round(ref_seconds * 1000, 1),
                      reference_img_per_s=round(args.batch_size / ref_seconds, 2),
                      speedup=round(ref_seconds / seconds, 2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
