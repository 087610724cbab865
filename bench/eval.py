"""Time the evaluation path (the same Evaluator `sagan eval` and the trainer use) and print one JSON line.

    python bench/eval.py                          # CPU: img/s of generation + SWD and + Inception at
    32/64/128 python bench/eval.py --device cuda --fid-n 50000     # also: seconds for FID over 50k samples at
    64x64

The generators are the sagan32 / seed64 / sagan128 networks with their initial weights (the speed does not
depend on the weights). The Inception network has random weights unless --inception-weights names the real
file (same architecture, resize and batching: the same speed). Imports only sagan_core and its library
dependencies (torch, torch-fidelity, numpy), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sagan_core.config import make_config
from sagan_core.metrics.cache import StatsCache
from sagan_core.metrics.evaluate import EvalPlan, Evaluator
from sagan_core.models import Generator
from sagan_core.parallel import DistContext

PRESETS = {32: "sagan32", 64: "seed64", 128: "sagan128"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(evaluator: Evaluator, generator: torch.nn.Module, z_dim: int, device: torch.device) -> float:
    """Images per second of generation + features for the evaluator's n samples, after one warm-up batch."""
    warmup = Evaluator(EvalPlan(evaluator.plan.metrics, n=evaluator.plan.batch_size, dataset="synthetic:64",
                                imsize=evaluator.plan.imsize, batch_size=evaluator.plan.batch_size),
                       evaluator.ctx, cache=evaluator.cache, backbone=evaluator.backbone)
    warmup.generated_features(generator, z_dim)
    sync(device)
    start = time.perf_counter()
    evaluator.generated_features(generator, z_dim)
    sync(device)
    return evaluator.plan.n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", default="32,64,128", help="image sizes for the throughput figures")
    parser.add_argument("--swd-n", type=int, default=256, help="samples timed on the SWD path")
    parser.add_argument("--inception-n", type=int, default=32, help="samples timed on the Inception path")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on the CPU, 500 on CUDA")
    parser.add_argument("--fid-n", type=int, default=0,
                        help="with --device cuda: time a full FID of this many "
                                                              "samples at 64x64 (50000 for fid50k); 0 = skip")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="data-loader workers for the real images of the FID run")
    parser.add_argument("--inception-weights", default="random", help="weights file, or 'random'")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch_size or (500 if device.type == "cuda" else 64)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=device)
    cache = StatsCache(tempfile.mkdtemp(prefix="sagan-bench-stats-"))
    result: dict = {"bench": "eval", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "batch_size": batch,
                    "inception_weights": args.inception_weights, "img_per_s": {}}
    backbone = None
    for size in [int(s) for s in args.sizes.split(",")]:
        config = make_config(PRESETS[size], device=args.device)
        torch.manual_seed(0)
        generator = Generator(config).to(device)
        swd = Evaluator(EvalPlan(("swd",), n=args.swd_n, dataset="synthetic", imsize=size, batch_size=batch),
                        ctx, cache=cache)
        inception = Evaluator(EvalPlan(("fid", "is"), n=args.inception_n, dataset="synthetic", imsize=size,
                                       batch_size=batch), ctx, cache=cache,
                              inception_weights=args.inception_weights, backbone=backbone)
        backbone = inception.backbone  # built once
        result["img_per_s"][str(size)] = {
            "generate+swd": round(throughput(swd, generator, config.z_dim, device), 2),
            "generate+inception": round(throughput(inception, generator, config.z_dim, device), 2)}
    if args.fid_n:
        config = make_config("seed64", device=args.device)
        generator = Generator(config).to(device)
        plan = EvalPlan(("fid",), n=args.fid_n, dataset=f"synthetic:{args.fid_n}", imsize=64,
                        batch_size=batch, num_workers=args.num_workers)
        evaluator = Evaluator(plan, ctx, cache=cache, backbone=backbone)
        start = time.perf_counter()
        evaluator.real_statistics()  # cached from then on, as `sagan stats` would
        result["real_stats_seconds"] = round(time.perf_counter() - start, 1)
        sync(device)
        start = time.perf_counter()
        record = evaluator.evaluate(generator, config.z_dim)
        sync(device)
        result[f"fid{args.fid_n // 1000}k_64px_seconds"] = round(time.perf_counter() - start, 1)
        result["fid_real_cache"] = record["real"]["cache"]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
