"""The process of a `dataset` job: bring the data in, pack it, preview it, compute its real statistics.

    python -m worker.dataset_job --dataset-id ID --source SOURCE [--imsizes 32,64] --workdir DIR

The supervisor runs it like a training (worker/supervisor.py: lease, heartbeats, cancel, the run-time limit),
so torch stays out of the worker's main process. It reads the service's settings from the SAGAN_*
environment it inherits. Steps:
1. the source: an uploaded archive (`upload:<store key>`) is downloaded and unpacked by worker/archives.py
   under SAGAN_MAX_DATASET_GB / _FILES / SAGAN_MAX_COMPRESSION_RATIO; `s3://bucket/prefix/` (a bucket of the
   service's S3) is downloaded file by file under the same limits; a spec (folder:, lsun:, cifar10:) is read
   in place, checked against SAGAN_DATA_ROOTS again. Files that are not images are skipped and listed.
2. the image sizes: those asked for, else 32, 64 and 128 up to the smallest side of the images (never
   upscaling past it; at least 32). CIFAR-10 is 32 px; LSUN gets all three.
3. each size packed (sagan_core.packed.pack) and stored under datasets/<id>/<S>px/, index.json last.
4. datasets/<id>/preview.png: a grid of the first 64 images of the smallest size.
5. the SWD real statistics of each size (and the Inception ones where SAGAN_INCEPTION_WEIGHTS is set), for
   the selection stream at a training's default eval_n and the held-out stream an eval job reads, computed
   on the packed copy (keys independent of where it lies) and stored under stats/<entry name>.
6. the row: ready with its counts, or failed with the reason (also printed as `error: ...` for the job).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from sagan_core.dataspec import IMAGE_EXTENSIONS
from sagan_service import datasets
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobspec import DatasetSpec
from sagan_service.limits import GIB
from sagan_service.settings import Settings
from sagan_service.specs import SpecError, check_dataset_spec
from sagan_service.storage import (
    ArtifactStore,
    S3Store,
    dataset_preview_key,
    open_store,
    packed_prefix,
    stats_key,
)

from .archives import ArchiveError, Limits, extract, safe_relative

log = logging.getLogger(__name__)
IMSIZES = (32, 64, 128)
PREVIEW_IMAGES = 64
STATS_STREAMS = ("selection", "held-out")  # a training's evaluations, an eval job's


class DatasetJobError(Exception):
    """Why the data set cannot be built, in plain words."""


def command(spec: DatasetSpec, workdir: Path) -> list[str]:
    """The supervisor's command line for a dataset job (sagan_service.jobspec.DatasetSpec)."""
    imsizes = ["--imsizes", ",".join(map(str, spec.imsizes))] if spec.imsizes else []
    return [sys.executable, "-m", "worker.dataset_job", "--dataset-id", spec.dataset_id, "--source",
            spec.source, *imsizes, "--workdir", str(workdir / "dataset")]


def build(dataset_id: str, source: str, imsizes: list[int] | None, workdir: Path, settings: Settings,
          store: ArtifactStore) -> dict[str, Any]:
    """Steps 1-5; return the row's values for datasets.mark_ready."""
    spec, skipped = _local_spec(source, workdir, settings, store)
    sizes = imsizes or _default_imsizes(spec)
    from sagan_core.packed import INDEX_FILE, index_files, pack  # numpy and PIL: only in this process

    indexes, size_bytes = {}, 0
    for imsize in sizes:
        out = workdir / f"{imsize}px"
        log.info("packing %s at %d px", spec, imsize)
        index = pack(spec, out, imsize=imsize)
        prefix = packed_prefix(dataset_id, imsize)
        for name, nbytes, _ in index_files(index):
            store.put_file(prefix + name, out / name)
            size_bytes += nbytes
        store.put_file(prefix + INDEX_FILE, out / INDEX_FILE)  # last: its presence means the set is complete
        indexes[imsize] = index
    first = indexes[sizes[0]]
    if first["count"] == 0:
        raise DatasetJobError("no readable images in the data set")
    preview = workdir / "preview.png"
    _write_preview(workdir / f"{sizes[0]}px", first, preview)
    store.put_file(dataset_preview_key(dataset_id), preview)
    for imsize in sizes:
        _store_statistics(workdir / f"{imsize}px", imsize, workdir / "stats", settings, store)
    return {"images": first["count"], "classes": list(first.get("class_names") or []),
            "bad_images": {**skipped, **first.get("bad_images", {})}, "imsizes": sizes,
            "size_bytes": size_bytes}


def _limits(settings: Settings) -> Limits:
    return Limits(max_bytes=int(settings.max_dataset_gb * GIB), max_files=settings.max_dataset_files,
                  max_ratio=settings.max_compression_ratio)


def _local_spec(source: str, workdir: Path, settings: Settings,
                store: ArtifactStore) -> tuple[str, dict[str, str]]:
    """A spec the packer reads on this machine, and the files skipped as not images (name -> why)."""
    if source.startswith("upload:"):
        key = source.removeprefix("upload:")
        archive = workdir / PurePosixPath(key).name
        store.download(key, archive)
        root = workdir / "data"
        try:
            extract(archive, root, _limits(settings))
        except ArchiveError as error:
            raise DatasetJobError(f"the archive was refused: {error}") from None
        archive.unlink()
        return _folder_spec(root)
    if source.startswith("s3://"):
        return _folder_spec(_download_prefix(source, workdir / "data", settings))
    try:
        check_dataset_spec(source, "source", settings.allowed_data_roots)
    except SpecError as error:
        raise DatasetJobError(str(error)) from None
    return source, {}


def _download_prefix(url: str, root: Path, settings: Settings) -> Path:
    """Every object under s3://bucket/prefix/ (the service's S3 endpoint and credentials) into `root`, under
    the archive limits (their names checked as archive entries are)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    other = S3Store(bucket, "", endpoint_url=settings.s3_endpoint_url, public_endpoint_url=None,
                    max_attempts=settings.s3_max_attempts)
    keys = [key for key in other.list_keys(prefix) if not key.endswith("/")]
    limits = _limits(settings)
    if len(keys) > limits.max_files:
        raise DatasetJobError(f"{url} holds more than {limits.max_files} files (SAGAN_MAX_DATASET_FILES)")
    if not keys:
        raise DatasetJobError(f"no files under {url}")
    total = 0
    for key in keys:
        try:
            target = root / safe_relative(key.removeprefix(prefix))
        except ArchiveError as error:
            raise DatasetJobError(str(error)) from None
        other.download(key, target)
        total += target.stat().st_size
        if total > limits.max_bytes:
            raise DatasetJobError(f"{url} holds more than {settings.max_dataset_gb:g} GB "
                                  "(SAGAN_MAX_DATASET_GB)")
    return root


def _folder_spec(root: Path) -> tuple[str, dict[str, str]]:
    """folder:<root> (or its one top folder, as a zip of a folder unpacks), after removing what is not an
    image: each listed by its name in the archive. Hidden files (.DS_Store, __MACOSX/) go unlisted."""
    skipped: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part == "__MACOSX" for part in relative.parts):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        elif path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped[relative.as_posix()] = f"not an image file ({path.suffix or 'no extension'})"
            path.unlink()
    entries = [entry for entry in root.iterdir()] if root.is_dir() else []
    if len(entries) == 1 and entries[0].is_dir() and any(child.is_dir() for child in entries[0].iterdir()):
        root = entries[0]  # archive/<top>/<class>/...: the classes are one level down
    return f"folder:{root}", skipped


def _default_imsizes(spec: str) -> list[int]:
    """32, 64, 128 up to the smallest side of a folder's images (at least 32); CIFAR-10 32; others all."""
    if spec.startswith("cifar10:"):
        return [32]
    if not spec.startswith("folder:"):
        return list(IMSIZES)
    from PIL import Image

    smallest = None
    for path in Path(spec.removeprefix("folder:")).rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            try:
                with Image.open(path) as image:  # the header only
                    side = min(image.size)
            except Exception:  # noqa: BLE001 (unreadable: the packer lists it)
                continue
            smallest = side if smallest is None else min(smallest, side)
    return [size for size in IMSIZES if size == IMSIZES[0] or (smallest or 0) >= size]


def _write_preview(packed: Path, index: dict[str, Any], out: Path) -> None:
    """An 8-wide grid of the first PREVIEW_IMAGES images of a packed set."""
    import numpy as np
    from PIL import Image

    images: list[np.ndarray] = []
    for shard in index["shards"]:
        array = np.load(packed / shard["file"], mmap_mode="r")
        images.extend(np.asarray(array[: PREVIEW_IMAGES - len(images)]))
        if len(images) >= PREVIEW_IMAGES:
            break
    size, columns = images[0].shape[0], min(8, len(images))
    rows = -(-len(images) // columns)
    grid = np.zeros((rows * (size + 2) + 2, columns * (size + 2) + 2, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = 2 + (i // columns) * (size + 2), 2 + (i % columns) * (size + 2)
        grid[top:top + size, left:left + size] = image
    Image.fromarray(grid).save(out)


def _store_statistics(packed: Path, imsize: int, cache_dir: Path, settings: Settings,
                      store: ArtifactStore) -> None:
    """The real statistics of one packed size, computed as an evaluation would (sagan_core.metrics), stored
    under stats/<entry name>."""
    from sagan_core.config import TrainConfig
    from sagan_core.metrics.cache import StatsCache
    from sagan_core.metrics.evaluate import EvalPlan, Evaluator
    from sagan_core.parallel import DistContext, pick_device

    metrics: tuple[str, ...] = ("swd",)
    if settings.inception_weights is not None:
        metrics = ("fid", "swd")
    else:
        log.info("SAGAN_INCEPTION_WEIGHTS is not set: only the SWD statistics are computed")
    n = TrainConfig.model_fields["eval_n"].default
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=pick_device("auto"))
    cache = StatsCache(cache_dir)
    for stream in STATS_STREAMS:
        plan = EvalPlan(metrics, n=n, dataset=f"packed:{packed}", imsize=imsize, stream=stream)
        evaluator = Evaluator(plan, ctx, cache=cache,
                              inception_weights=None if settings.inception_weights is None
                              else str(settings.inception_weights))
        evaluator.real_statistics()
        for key in evaluator.stats_keys().values():
            store.put_file(stats_key(key.name), cache.path(key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.dataset_job")
    parser.add_argument("--dataset-id", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--imsizes", type=lambda text: [int(size) for size in text.split(",")])
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings()
    store = open_store(settings)
    engine = make_engine(settings.database)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session:
            datasets.mark_running(session, dataset_id=args.dataset_id)
        try:
            shutil.rmtree(args.workdir, ignore_errors=True)  # a retried attempt starts clean
            args.workdir.mkdir(parents=True)
            values = build(args.dataset_id, args.source, args.imsizes, args.workdir, settings, store)
        except Exception as error:
            reason = str(error) if isinstance(error, DatasetJobError) else f"{type(error).__name__}: {error}"
            log.exception("data set %s failed", args.dataset_id)
            with sessions() as session:
                datasets.mark_failed(session, dataset_id=args.dataset_id, error=reason)
            print(f"error: {reason}", flush=True)
            return 1
        with sessions() as session:
            datasets.mark_ready(session, dataset_id=args.dataset_id, **values)
        print(json.dumps({"dataset": args.dataset_id, **values}), flush=True)
        return 0
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
