"""Dataset spec strings, parsed without torch: the API checks submitted specs with this alone. Also the data's
fingerprint (for the real-statistics cache) and the folder cache that it and data.py's folder scan share.

Specs: `synthetic[:N]` | `shapes[:N]` | `folder:PATH` | `lsun:PATH:CLASS[,CLASS...]` | `cifar10:PATH` (see
data.py), `packed:PATH` (a set `sagan data pack` wrote, see packed.py; `packed:s3://bucket/prefix` is fetched
by the job service's worker) and `ds:ID` (a data set of the job service, which its worker resolves to a packed
copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import atomic_write

KINDS = ("synthetic", "shapes", "folder", "lsun", "cifar10", "packed", "ds")
BUILT_IN = ("synthetic", "shapes")  # drawn on the fly, no files; N images (default DEFAULT_SYNTHETIC_SIZE)
SPEC_FORMS = ("synthetic, synthetic:N, shapes, shapes:N, folder:PATH, lsun:PATH:CLASS[,CLASS...], "
              "cifar10:PATH, packed:PATH, packed:s3://BUCKET/PREFIX, ds:ID")
DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
DEFAULT_SYNTHETIC_SIZE = 10_000
# Bump when the built-in data sets draw differently: cached real statistics of the old drawing then stop
# matching.
SYNTHETIC_VERSION = 1
FOLDER_CACHE_ENV = "SAGAN_DATA_CACHE"
# The file names a folder data set reads as images (sagan_core.data; the service's dataset job keeps only
# these).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))  # CIFAR-10's training split


class DatasetError(ValueError):
    """A dataset spec, path or file is unusable; the message names the offending spec, path or file."""


def dataset_paths(spec: str) -> list[str]:
    """The filesystem paths a spec reads from, as written in the spec (the API checks them against its
    allowed data roots). LSUN classes may not contain a path separator, so PATH covers PATH/CLASS_lmdb."""
    kind, arg = parse_spec(spec)
    if kind in BUILT_IN:
        synthetic_size(spec, arg)
        return []
    if kind == "lsun":
        return [split_lsun(spec, arg)[0]]
    if kind == "ds":
        dataset_id(spec)
        return []
    if kind == "packed" and arg.startswith("s3://"):
        s3_location(spec, arg)
        return []
    return [arg]


def dataset_id(spec: str) -> str:
    """The id in `ds:ID`."""
    arg = spec.partition(":")[2]
    if not DATASET_ID.fullmatch(arg):
        raise DatasetError(f"malformed dataset spec {spec!r}: ds:ID takes a data set id (letters, digits, - "
                           "and _)")
    return arg


def s3_location(spec: str, arg: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at its ends) of `packed:s3://bucket/prefix`."""
    bucket, _, prefix = arg.removeprefix("s3://").partition("/")
    if not bucket or not prefix.strip("/"):
        raise DatasetError(f"malformed dataset spec {spec!r}: expected packed:s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def is_remote(spec: str) -> bool:
    """Whether a spec names data the job service's worker fetches (`ds:ID`, `packed:s3://...`), not a path."""
    kind, _, arg = spec.partition(":")
    return kind == "ds" or (kind == "packed" and arg.startswith("s3://"))


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, argument); the argument is '' only for a plain built-in kind."""
    kind, sep, arg = spec.partition(":")
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r} in spec {spec!r}; valid kinds: {', '.join(KINDS)} "
                           f"(forms: {SPEC_FORMS})")
    if (sep or kind not in BUILT_IN) and not arg:
        raise _malformed(spec)
    return kind, arg


def _malformed(spec: str) -> DatasetError:
    return DatasetError(f"malformed dataset spec {spec!r}; expected one of: {SPEC_FORMS}")


def synthetic_size(spec: str, arg: str) -> int:
    if not arg:
        return DEFAULT_SYNTHETIC_SIZE
    if not arg.isdigit() or int(arg) < 1:
        raise DatasetError(f"malformed dataset spec {spec!r}: {spec.partition(':')[0]}:N needs an integer N "
                           ">= 1")
    return int(arg)


def split_lsun(spec: str, arg: str) -> tuple[str, str]:
    # Split on the last colon so PATH may contain colons; each CLASS must be a plain name so that
    # PATH/CLASS_lmdb cannot escape PATH (dataset_paths relies on that). Several classes, comma-separated,
    # make a labelled data set.
    root, _, category = arg.rpartition(":")
    names = category.split(",")
    if (not root or not all(names) or len(set(names)) != len(names)
            or any("/" in name or os.sep in name for name in names)):
        raise DatasetError(f"malformed dataset spec {spec!r}: expected lsun:PATH:CLASS, "
                           "e.g. lsun:/data/lsun:church_outdoor_train")
    return root, category


def cifar_dir(root: Path) -> Path:
    """The folder holding CIFAR-10's batches: ROOT/cifar-10-batches-py (where the official tarball unpacks)
    if there is one, else ROOT."""
    nested = root / "cifar-10-batches-py"
    return nested if nested.is_dir() else root


def lmdb_env_dir(root: Path, category: str) -> Path:
    """An LSUN category's LMDB environment: ROOT itself when it holds data.mdb, else ROOT/CATEGORY_lmdb."""
    if (root / "data.mdb").is_file():
        return root
    return root / f"{category.removesuffix('_lmdb')}_lmdb"


def read_locations(spec: str) -> list[Path]:
    """Where a data set's files are read, named as on disk before any link is followed: the spec's path and
    what is read inside it (CIFAR-10's batch folder and batches, each LSUN category's LMDB folder and data
    file), so that a link anywhere on the way is seen where each one really is. A folder's images are
    checked as it is walked (sagan_core.data refuses links leading out of the folder)."""
    kind, arg = parse_spec(spec)
    if kind in BUILT_IN:
        return []
    if is_remote(spec):
        return []
    if kind == "packed":
        return [Path(arg), Path(arg) / "index.json"]
    if kind == "cifar10":
        batches = cifar_dir(Path(arg))
        return [Path(arg), batches, *(batches / name for name in CIFAR_BATCHES)]
    if kind == "lsun":
        root, categories = split_lsun(spec, arg)
        envs = [lmdb_env_dir(Path(root), category) for category in categories.split(",")]
        return [Path(root), *envs, *(env / "data.mdb" for env in envs)]
    return [Path(arg)]


def dataset_fingerprint(spec: str) -> str:
    """A cheap fingerprint of the data a spec reads: changes when its contents may have changed.

    Synthetic data: its size and drawing version. Files: every file under the spec's paths with its size and
    modification time (file names and stat only, nothing is read), so an LMDB, a CIFAR batch or an image
    that is replaced, added or removed changes it. A folder's is computed once per folder state
    (`folder_state`) and cached beside its scan: ImageNet's 1.28 M stat() calls would otherwise run on every
    evaluation. So it sees the changes that the folder scan sees; delete the cache files for a deeper one.
    """
    kind, arg = parse_spec(spec)
    if kind in BUILT_IN:
        digest = hashlib.sha256(kind.encode())
        digest.update(f":{synthetic_size(spec, arg)}:v{SYNTHETIC_VERSION}".encode())
        return digest.hexdigest()
    if kind == "packed" and not is_remote(spec):
        from .packed import packed_fingerprint, read_index  # NumPy only

        return packed_fingerprint(read_index(_existing(arg)))
    if is_remote(spec):
        raise DatasetError(f"{spec}: the job service's worker resolves it to a local packed:PATH first")
    roots = [_existing(root) for root in dataset_paths(spec)]
    if kind == "folder" and roots[0].is_dir():
        cache = folder_cache_dir() / f"{folder_state(roots[0])}-fingerprint.json"
        return cached_json(cache, lambda: _stat_digest(kind, roots))
    return _stat_digest(kind, roots)


def _existing(root: str) -> Path:
    base = Path(root).resolve()
    if not base.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    return base


def _stat_digest(kind: str, roots: list[Path]) -> str:
    digest = hashlib.sha256(kind.encode())
    for base in roots:
        files = [base] if base.is_file() else sorted(path for path in base.rglob("*") if path.is_file())
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ---- the folder cache: what is derived from a folder's files, computed once per state of the folder -------

def folder_cache_dir() -> Path:
    """Where folder scans are cached: $SAGAN_DATA_CACHE, else ~/.cache/sagan/folders (under
    $XDG_CACHE_HOME)."""
    if os.environ.get(FOLDER_CACHE_ENV):
        return Path(os.environ[FOLDER_CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sagan" / "folders"


def folder_state(resolved: Path) -> str:
    """A key for a folder's state: its resolved path and the modification times of it and of its direct
    sub-folders (one stat each: adding, removing or renaming a file there changes them; a change deeper
    down or a file rewritten in place does not)."""
    stamps = [f"{resolved}\0{resolved.stat().st_mtime_ns}"]
    with os.scandir(resolved) as entries:
        stamps += sorted(f"{entry.name}\0{entry.stat().st_mtime_ns}" for entry in entries if entry.is_dir())
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()


def cached_json(path: Path, compute: Callable[[], Any]) -> Any:
    """The JSON value in `path`, else compute() written there. An unwritable cache only costs the
    computing."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass  # no cache yet (or a torn one): compute
    value = compute()
    try:
        data = json.dumps(value).encode()
        atomic_write(path, lambda f: f.write(data))
    except OSError:
        pass
    return value
