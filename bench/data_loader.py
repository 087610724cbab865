"""Images per second of the training loader (the one `sagan train` builds: train.batch_loader) at one image
size, from the same images stored four ways, and optionally the trainer's own img/s from two of them.

  - folder:   a folder of PNGs (--source-px square images, one class folder per class);
  - lmdb:     an LMDB like LSUN's (WebP at --source-px), read through `lsun:`;
  - packed:   the same images packed by `sagan data pack` at --imsize, on local disk;
  - s3-cold:  the packed set (or one of --cold-spec) in an S3 server (moto on loopback), fetched by the
  worker's
              data cache into an empty folder, then read: seconds to the first batch (download, sha256 check,
              open) and img/s after it.
Prints one JSON line.

    python bench/data_loader.py [--images 4096] [--imsize 64] [--batch-size 64] [--workers 2] [--batches 60]
                                [--train-steps 4]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sagan_core.config import make_config
from sagan_core.data import build_dataset
from sagan_core.packed import pack, packed_size, read_index, upload
from sagan_core.parallel import DistContext
from sagan_core.train import batch_loader

CLASSES = ("a", "b")


def source_images(count: int, size: int) -> list[np.ndarray]:
    """Smooth random colour fields (they compress like photos, unlike noise)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    return [np.asarray(Image.fromarray(tile).resize((size, size), Image.BILINEAR)) for tile in small]


def write_folder(root: Path, images: list[np.ndarray]) -> str:
    for i, pixels in enumerate(images):
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png")
    return f"folder:{root}"


def write_lmdb(root: Path, images: list[np.ndarray]) -> str:
    import lmdb

    (root / "church_lmdb").mkdir(parents=True)
    env = lmdb.open(str(root / "church_lmdb"), map_size=1 << 34)
    with env.begin(write=True) as txn:
        for i, pixels in enumerate(images):
            encoded = io.BytesIO()
            Image.fromarray(pixels).save(encoded, format="WEBP", quality=75)
            txn.put(f"{i:08d}".encode(), encoded.getvalue())
    env.close()
    return f"lsun:{root}:church"


def loader_rate(spec: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds to the first batch, then img/s over --batches batches, of this process's training loader."""
    started = time.perf_counter()
    dataset = build_dataset(spec, args.imsize)
    config = make_config("seed64", dataset=spec, imsize=args.imsize, batch_size=args.batch_size,
                         num_workers=args.workers, device="cpu")
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    batches = iter(batch_loader(dataset, config, ctx, start_batch=0, tries=1))
    next(batches)
    first = time.perf_counter() - started
    timed = time.perf_counter()
    for _ in range(args.batches):
        images, _, _ = next(batches)
        assert images is not None and images.shape[-1] == args.imsize
    seconds = time.perf_counter() - timed
    return {"first_batch_s": round(first, 3), "img_per_s": round(args.batches * args.batch_size / seconds, 1)}


def s3_cold(packed: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Upload a packed set to moto's S3 server, then time what a worker with an empty cache does before its
    first batch: the data cache's fetch (every file downloaded, its sha256 checked, renamed into place;
    worker/data_cache.py) and the loader's first batch; then the loader's img/s from the cached copy."""
    import boto3
    from moto.server import ThreadedMotoServer

    from sagan_service.storage import S3Store
    from worker.data_cache import DataCache
    from worker.outages import Outage

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        upload(packed, "s3://bench/set")
        store = S3Store("bench", "", endpoint_url=endpoint, public_endpoint_url=None, max_attempts=3)
        with tempfile.TemporaryDirectory(prefix="sagan-cold-") as cold:
            cache = DataCache(Path(cold), store, 100 * 2**30, Outage("bench S3", 60))
            started = time.perf_counter()
            directory = cache.fetch("set")
            fetched = time.perf_counter() - started
            rate = loader_rate(f"packed:{directory}", args)
        return {"fetch_s": round(fetched, 3), "first_batch_s": round(fetched + rate["first_batch_s"], 3),
                "img_per_s": rate["img_per_s"], "megabytes": round(packed_size(read_index(packed)) / 1e6, 1)}
    finally:
        server.stop()


def train_rate(spec: str, args: argparse.Namespace, out: Path) -> float:
    """The trainer's mean logged img/s over --train-steps steps of seed64 at --imsize (the first step
    excluded)."""
    from sagan_core.train import train

    config = make_config("seed64", dataset=spec, imsize=args.imsize, batch_size=args.batch_size,
                         num_workers=args.workers, device="cpu", steps=args.train_steps + 1, log_every=1,
                         sample_every=10_000, checkpoint_every=10_000)
    train(config, out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [line["img_per_s"] for line in lines if "img_per_s" in line][1:]
    return round(sum(rates) / len(rates), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--imsize", type=int, default=64)
    parser.add_argument("--source-px", type=int, default=256, help="side of the stored source images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2,
                        help="loader worker processes (the packed set ignores "
                                                               "them: it is read in the training process)")
    parser.add_argument("--batches", type=int, default=60, help="batches timed after the first")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also time this many seed64 steps from the "
                                                                   "folder and the packed set (0: no)")
    parser.add_argument("--cold-spec",
                        help="the data set packed for the S3 case (default: the folder's images); "
                                            "e.g. synthetic:87000 for about 1 GB at 64 px")
    parser.add_argument("--skip", default="",
                        help="comma-separated cases to leave out (folder,lmdb,packed,s3)")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {"bench": "data_loader", "images": args.images, "imsize": args.imsize,
                              "source_px": args.source_px, "batch_size": args.batch_size,
                              "workers": args.workers,
                              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                              "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="sagan-bench-data-") as tmp:
        root = Path(tmp)
        os.environ["SAGAN_DATA_CACHE"] = str(root / "scan-cache")
        images = source_images(args.images, args.source_px)
        folder = write_folder(root / "folder", images)
        started = time.perf_counter()
        pack(folder, root / "packed", imsize=args.imsize, workers=args.workers)
        result["pack_s"] = round(time.perf_counter() - started, 2)
        cases = {"folder": folder, "packed": f"packed:{root / 'packed'}"}
        if "lmdb" not in skip:
            cases["lmdb"] = write_lmdb(root / "lmdb", images)
        for name, spec in cases.items():
            if name not in skip:
                result[name] = loader_rate(spec, args)
        if "s3" not in skip:
            cold = root / "packed"
            if args.cold_spec:
                cold = root / "packed-cold"
                pack(args.cold_spec, cold, imsize=args.imsize, workers=args.workers)
                result["cold_spec"] = args.cold_spec
            result["s3_cold"] = s3_cold(cold, args)
        if "folder" in result and "packed" in result:
            result["packed_over_folder"] = round(result["packed"]["img_per_s"]
                                                 / result["folder"]["img_per_s"], 1)
        if args.train_steps:
            result["train_img_per_s"] = {name: train_rate(cases[name], args, root / f"train-{name}")
                                         for name in ("folder", "packed")}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
