"""Real-data statistics, computed once per (data, backbone) and reused by every later evaluation.

An entry is keyed by the data set spec, a fingerprint of its contents (dataspec.dataset_fingerprint), the
preprocessing (image size, center_crop, resize_mode), the backbone with its weights' sha256 and its part's
version (STATS_VERSIONS), the number of real images and which of them (the selection or the held-out
sample); its file name
is derived from that key, so the service's worker can name the entries a job needs without loading torch
(standard library and NumPy only). Locally the entries live in a folder: `--stats-cache DIR`, else
$SAGAN_STATS_CACHE, else `~/.cache/sagan/stats` (under $XDG_CACHE_HOME if set), shared by all runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..dataspec import dataset_fingerprint
from ..files import atomic_write

ENV_VAR = "SAGAN_STATS_CACHE"
INCEPTION_METRICS = frozenset({"fid", "kid", "is", "pr"})
# The SWD's real side: Laplacian-pyramid patch descriptors (see swd.py).
SWD_BACKBONE = "laplacian-patches-7x7x128-v1"
# Bump a part's version when its entries would hold something else under the same key (the real images'
# preprocessing or the features change): the older entries are then never read. 2: resize_mode joined the key.
STATS_VERSIONS = {"inception": 2, "swd": 2}


@dataclass(frozen=True, slots=True)
class StatsKey:
    dataset: str
    fingerprint: str
    imsize: int
    center_crop: int | None
    resize_mode: str
    backbone: str
    weights_sha256: str | None
    n: int
    version: int
    stream: str = "selection"  # which n real images: see evaluate.SAMPLES

    @property
    def name(self) -> str:
        """The entry's file name: readable parts, then a hash of the whole key."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]
        return f"{self.backbone}-{self.imsize}px-n{self.n}-{digest}.npz"


def stats_keys(metrics: Iterable[str], *, dataset: str, imsize: int, center_crop: int | None,
               resize_mode: str, n: int, inception: tuple[str, str | None] | None,
               stream: str = "selection") -> dict[str, StatsKey]:
    """The entries an evaluation of `metrics` needs, by part: "inception" (keyed by the backbone's name and
    weights sha256, given as `inception`) and/or "swd"."""
    metrics = set(metrics)
    backbones: dict[str, tuple[str, str | None]] = {}
    if metrics & INCEPTION_METRICS:
        assert inception is not None, "Inception metrics need the backbone's name and weights sha256"
        backbones["inception"] = inception
    if "swd" in metrics:
        backbones["swd"] = (SWD_BACKBONE, None)
    fingerprint = dataset_fingerprint(dataset)
    # A packed set's statistics are those of its content, wherever a copy of it lies (another folder, a
    # worker's cache): its fingerprint says what it holds, so the key leaves out its path.
    named = "packed" if dataset.startswith("packed:") else dataset
    return {part: StatsKey(named, fingerprint, imsize, center_crop, resize_mode, backbone, sha256, n,
                           STATS_VERSIONS[part], stream)
            for part, (backbone, sha256) in backbones.items()}


def default_cache_dir() -> Path:
    if folder := os.environ.get(ENV_VAR):
        return Path(folder).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sagan" / "stats"


class StatsCache:
    """A folder of entries, one .npz file each (plain arrays, no pickles), written atomically."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else default_cache_dir()

    def path(self, key: StatsKey) -> Path:
        return self.folder / key.name

    def load(self, key: StatsKey) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        if json.loads(str(arrays.pop("key"))) != asdict(key):  # a hash collision or a hand-copied file
            return None
        return arrays

    def save(self, key: StatsKey, arrays: dict[str, np.ndarray]) -> Path:
        described = {"key": np.array(json.dumps(asdict(key), sort_keys=True)), **arrays}
        # numpy's stub lets **arrays fill the bool allow_pickle, hence the ignore
        return atomic_write(self.path(key), lambda f: np.savez(f, **described))  # type: ignore[arg-type]
