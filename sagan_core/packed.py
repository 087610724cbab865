"""Packed data sets: any data set spec turned once into shards of pre-resized uint8 images and their labels.

A packed set is a folder (or an object-store prefix holding the same files):
- `shard-NNNNN.npy`: NumPy arrays of uint8 images, (n, S, S, 3), in the source's order minus unreadable
images;
- `labels.npy`: int32 (count,), data.NO_LABEL (-1) for an unlabelled set;
- `index.json`, written last (its presence means the set is complete): count, image size, preprocessing, the
  classes and their names, the source spec and fingerprint, each file's size and sha256, and the unreadable
  images with the reason each was skipped.

Why our own shards and not LitData or mosaicml-streaming: the trainer needs random access by global index (its
determinism: N ranks see the global batch of one process, a resumed run the same batches), which .npy files
opened as memory maps give with NumPy alone; the job service's worker already fetches, verifies (sha256 per
file) and caches files from the store (worker/data_cache.py); and neither library is installed here. Reading
a batch is one fancy index into a memory map and one float conversion (data.PackedImages), tens of thousands
of images per second per core, with no decoding.

The index part (read_index, index_files, packed_fingerprint) is standard library and NumPy only: the job
service reads it without torch. `pack` loads torch through sagan_core.data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .dataspec import DatasetError, dataset_fingerprint
from .files import atomic_write, file_sha256

if TYPE_CHECKING:
    from .config import ResizeMode

FORMAT, VERSION = "sagan-packed", 1
INDEX_FILE = "index.json"
LABELS_FILE = "labels.npy"
PROGRESS_FILE = "progress.json"  # an unfinished pack's complete shards: a rerun keeps them
Progress = Callable[[int, int], None]  # (items done, items in all)


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.npy"


def read_index(directory: Path) -> dict[str, Any]:
    """A packed set's index; DatasetError if the folder holds none (or not one this code reads)."""
    path = Path(directory) / INDEX_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{directory} is not a packed data set (no {INDEX_FILE}; `sagan data pack` writes "
                           "one last, so an interrupted pack has none)") from None
    except OSError as error:
        raise DatasetError(f"cannot read the packed index {path}: {error}") from None
    return parse_index(data, str(path))


def parse_index(data: bytes, where: str) -> dict[str, Any]:
    """An index's bytes (read from `where`: a file or a store key) as its dict; DatasetError if it is not one
    this code reads."""
    try:
        index = json.loads(data)
    except ValueError as error:
        raise DatasetError(f"cannot read the packed index {where}: {error}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DatasetError(f"{where} is not a {FORMAT} version {VERSION} index")
    return index


def index_files(index: dict[str, Any]) -> list[tuple[str, int, str]]:
    """Every data file of a packed set as (name, bytes, sha256): what a copy must hold besides the index."""
    entries = [*index["shards"], index["labels"]]
    return [(entry["file"], entry["bytes"], entry["sha256"]) for entry in entries]


def packed_fingerprint(index: dict[str, Any]) -> str:
    """What a packed set's images and labels are, wherever it lies: a copy in another folder or cache has the
    same fingerprint (the real statistics are keyed by it)."""
    content = {"count": index["count"], "preprocessing": index["preprocessing"],
               "files": [sha256 for _, _, sha256 in index_files(index)]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def pack(spec: str, out: Path, *, imsize: int, resize_mode: ResizeMode = "squash",
         center_crop: int | None = None, shard_mb: float = 64, workers: int = 0,
         progress: Progress | None = None) -> dict[str, Any]:
    """Pack the data set `spec` into `out` at `imsize` and return the index.

    Items are preprocessed exactly as training reads the source (data.build_dataset's image stage), so
    `packed:OUT` yields the same floats. Resumable: the shards a previous run of the same pack completed
    (listed in PROGRESS_FILE, checked against their sha256) are kept. `workers` > 0 decodes in that many
    processes. An unreadable image is skipped and listed in the index's bad_images."""
    from .data import build_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preprocessing = {"imsize": imsize, "resize_mode": resize_mode, "center_crop": center_crop}
    source = build_dataset(spec, imsize, center_crop=center_crop, resize_mode=resize_mode, pixels=True)
    per_shard = max(1, int(shard_mb * 2**20) // (imsize * imsize * 3))
    key = {"spec": spec, "fingerprint": dataset_fingerprint(spec), "preprocessing": preprocessing,
           "per_shard": per_shard, "count": len(source)}
    done = _resumable_shards(out, key)
    ranges = [range(start, min(start + per_shard, len(source))) for start in range(0, len(source), per_shard)]
    reader = _ShardReader(spec, imsize, center_crop, resize_mode)
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(reader,)) if workers > 0 else None
    try:
        finished = sum(len(ranges[number]) for number in range(len(done)))
        for number in range(len(done), len(ranges)):
            pixels, labels, bad = _read_shard(reader, ranges[number], pool, workers)
            if progress is not None:
                progress(finished + len(ranges[number]), len(source))
            finished += len(ranges[number])
            done.append(_write_shard(out, number, pixels, labels, bad))
            _save_progress(out, key, done)
    finally:
        if pool is not None:
            pool.shutdown()
    return _finish(out, source, key, done)


def _resumable_shards(out: Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        saved = json.loads((out / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return []
    if saved.get("key") != key:
        return []  # another source, size or preprocessing: start over
    kept = []
    for entry in saved.get("shards", []):
        path = out / entry["file"]
        if (not path.is_file() or path.stat().st_size != entry["bytes"]
                or file_sha256(path) != entry["sha256"]):
            break
        kept.append(entry)
    return kept


def _save_progress(out: Path, key: dict[str, Any], done: list[dict[str, Any]]) -> None:
    data = json.dumps({"key": key, "shards": done}).encode()
    atomic_write(out / PROGRESS_FILE, lambda f: f.write(data))


class _ShardReader:
    """Reads items of the source as uint8 arrays; built again in each worker process from the spec (a data set
    object need not be picklable)."""

    def __init__(self, spec: str, imsize: int, center_crop: int | None, resize_mode: ResizeMode) -> None:
        self.args = (spec, imsize, center_crop, resize_mode)
        self.source: Any = None

    def read(self, indices: Iterable[int]) -> tuple[list[np.ndarray], list[int], dict[str, str]]:
        from .data import UnreadableImage, build_dataset

        if self.source is None:
            spec, imsize, center_crop, resize_mode = self.args
            self.source = build_dataset(spec, imsize, center_crop=center_crop, resize_mode=resize_mode,
                                        pixels=True)
        pixels, labels, bad = [], [], {}
        for index in indices:
            try:
                pixels.append(self.source[index])
            except UnreadableImage as error:
                bad[error.name] = error.reason
                continue
            labels.append(self.source.label(index))
        return pixels, labels, bad

    def __getstate__(self) -> dict[str, Any]:
        return {"args": self.args, "source": None}


_worker_reader: _ShardReader | None = None


def _init_worker(reader: _ShardReader) -> None:
    global _worker_reader
    _worker_reader = reader


def _read_in_worker(indices: list[int]) -> tuple[list[np.ndarray], list[int], dict[str, str]]:
    assert _worker_reader is not None
    return _worker_reader.read(indices)


def _read_shard(reader: _ShardReader, items: range, pool: ProcessPoolExecutor | None, workers: int
                ) -> tuple[list[np.ndarray], list[int], dict[str, str]]:
    if pool is None:
        return reader.read(items)
    chunk = max(1, -(-len(items) // (4 * workers)))
    pixels, labels, bad = [], [], {}
    for part in pool.map(_read_in_worker, [list(items[i:i + chunk]) for i in range(0, len(items), chunk)]):
        pixels += part[0]
        labels += part[1]
        bad.update(part[2])
    return pixels, labels, bad


def _write_shard(out: Path, number: int, pixels: list[np.ndarray], labels: list[int], bad: dict[str, str]
                 ) -> dict[str, Any]:
    path = out / shard_name(number)
    array = np.stack(pixels) if pixels else np.zeros((0, 0, 0, 3), np.uint8)
    atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
    return {"file": path.name, "count": len(pixels), "bytes": path.stat().st_size,
            "sha256": file_sha256(path), "labels": labels, "bad_images": bad}


def _finish(out: Path, source: Any, key: dict[str, Any], done: list[dict[str, Any]]) -> dict[str, Any]:
    labels = np.array([label for entry in done for label in entry["labels"]], dtype=np.int32)
    bad = {name: reason for entry in done for name, reason in entry["bad_images"].items()}
    if len(labels) == 0:
        raise DatasetError(f"none of the {key['count']} images of {key['spec']} can be read: nothing to pack")
    atomic_write(out / LABELS_FILE, lambda f: np.save(f, labels, allow_pickle=False))
    # An empty shard (every image in it unreadable) is kept out of the index: readers never see it.
    shards = [{name: entry[name] for name in ("file", "count", "bytes", "sha256")} for entry in done
              if entry["count"]]
    for entry in done:
        if not entry["count"]:
            (out / entry["file"]).unlink(missing_ok=True)
    index = {"format": FORMAT, "version": VERSION, "count": len(labels),
             "imsize": key["preprocessing"]["imsize"],
             "preprocessing": key["preprocessing"], "num_classes": source.num_classes,
             "class_names": list(source.class_names),
             "source": {"spec": key["spec"], "fingerprint": key["fingerprint"]}, "shards": shards,
             "labels": {"file": LABELS_FILE, "bytes": (out / LABELS_FILE).stat().st_size,
                        "sha256": file_sha256(out / LABELS_FILE)},
             "bad_images": bad}
    data = json.dumps(index, indent=1).encode()
    atomic_write(out / INDEX_FILE, lambda f: f.write(data))
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return index


def verify(directory: Path, index: dict[str, Any] | None = None) -> None:
    """Check every file of a packed set against its index (size and sha256); DatasetError naming the first bad
    one."""
    index = index or read_index(directory)
    for name, size, sha256 in index_files(index):
        path = Path(directory) / name
        if not path.is_file() or path.stat().st_size != size or file_sha256(path) != sha256:
            raise DatasetError(f"packed file {path} is missing or does not match its index (size or sha256)")


def packed_size(index: dict[str, Any]) -> int:
    """The bytes of a packed set's files, its index aside."""
    return sum(size for _, size, _ in index_files(index))


def upload(directory: Path, url: str) -> None:
    """Copy a packed set to `s3://bucket/prefix` with boto3 (endpoint from AWS_ENDPOINT_URL, credentials from
    the usual AWS variables), the index last so that a reader never finds an index before its files."""
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise DatasetError(f"malformed S3 URL {url!r}: expected s3://bucket/prefix")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    prefix = prefix.strip("/")
    names = [name for name, _, _ in index_files(read_index(directory))] + [INDEX_FILE]
    for name in names:
        client.upload_file(str(Path(directory) / name), bucket, f"{prefix}/{name}" if prefix else name)
