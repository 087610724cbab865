"""Time for one attention map (`sagan attention`) on the CPU, at 64x64 (seed64: G's layers at 16 and 32, D's
at 8 and 4, the seed's full-key form). Untrained weights: the time does not depend on what the model learned.
Prints one JSON line:
  - process_s: `sagan attention --query ... -o map.png` as a user runs it, start of Python to PNG written
  - first_s:   in one process, loading the checkpoint, G and D forwards with the weights captured, the figure
  - warm_s:    the same without the load (the model in memory), median of --repeats
  - stored_s:  rendering one query's figure from a stored capture (what the API does after the first request)
    python bench/attention_map.py [--preset seed64] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads, here and in the child (default torch's)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from sagan_core.attention_maps import capture, from_npz, render_png, to_npz
    from sagan_core.checkpoint import FORMAT_VERSION, load_checkpoint
    from sagan_core.config import make_config
    from sagan_core.models import build_models

    config = make_config(args.preset, num_classes=0)
    query = [(config.imsize // 2, config.imsize // 3)]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.pt"
        generator, discriminator = build_models(config)
        torch.save({"format_version": FORMAT_VERSION, "config": config.to_dict(), "step": 0,
                    "generator": generator.state_dict(), "discriminator": discriminator.state_dict()},
                   checkpoint)

        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sagan_core.cli", "attention", "--checkpoint", str(checkpoint),
                        "--query", f"{query[0][0]},{query[0][1]}", "-o", str(Path(folder) / "map.png")],
                       check=True, capture_output=True, env=env)
        process_s = time.perf_counter() - started

        started = time.perf_counter()
        model = load_checkpoint(checkpoint)
        render_png(capture(model, seed=0, index=0), query)
        first_s = time.perf_counter() - started

    warm = []
    for index in range(args.repeats):
        started = time.perf_counter()
        render_png(capture(model, seed=0, index=index + 1), query)
        warm.append(time.perf_counter() - started)
    stored = from_npz(to_npz(capture(model, seed=0, index=0)))
    started = time.perf_counter()
    render_png(stored, query)
    stored_s = time.perf_counter() - started
    print(json.dumps({"preset": args.preset, "imsize": config.imsize,
                      "torch_threads": torch.get_num_threads(),
                      "load_average_1m": round(os.getloadavg()[0], 2), "process_s": round(process_s, 3),
                      "first_s": round(first_s, 3), "warm_s": round(statistics.median(warm), 3),
                      "stored_s": round(stored_s, 4)}), flush=True)


if __name__ == "__main__":
    main()
