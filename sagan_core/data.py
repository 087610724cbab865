"""Training images, named by one spec string (the `dataset` config field).

Specs: `synthetic[:N]` | `shapes[:N]` | `folder:PATH` | `lsun:PATH:CLASS[,CLASS...]` | `cifar10:PATH`. Every
dataset yields float32 tensors of shape (3, imsize, imsize) in [-1, 1]; those with class labels also say
`num_classes` (0 = unlabelled) and `label(i)`, item i's class, without decoding the image: shapes (its shape
kind), a folder with one sub-folder per class (ImageNet's train layout), CIFAR-10, LSUN with several
categories. A folder's file list is scanned once and cached (see `scan_folder`).
Problems surface as DatasetError naming the spec, path, file or LMDB key at fault, both when a dataset is
built and when an item is loaded (UnreadableImage). Training reads through SkipUnreadable, which replaces
an unreadable item by the next readable one and reports it, and BadImageLog, which counts them and fails
the run past the config's max_bad_images, so a bad file never turns into a traceback inside a worker.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, get_args

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from torchvision import transforms

from .config import ResizeMode
from .dataspec import (
    CIFAR_BATCHES,
    IMAGE_EXTENSIONS,
    DatasetError,
    cached_json,
    cifar_dir,
    folder_cache_dir,
    folder_state,
    lmdb_env_dir,
    parse_spec,
    split_lsun,
    synthetic_size,
)
from .seeding import Stream, seeded

if TYPE_CHECKING:  # lmdb loads with the first LMDB data set: machines without it can use the other kinds
    import lmdb

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NO_LABEL = -1  # label() of an unlabelled data set's items
RESIZE_MODES: tuple[ResizeMode, ...] = get_args(ResizeMode)

PixelStage = Callable[[Image.Image], np.ndarray]
# An image as training sees it, or (build_dataset's `pixels`) as the uint8 array `sagan data pack` stores.
Transform = Callable[[Image.Image], torch.Tensor] | PixelStage


class ImageDataset(Dataset):
    """A data set of images, with class labels when num_classes > 0."""

    num_classes = 0
    class_names: tuple[str, ...] = ()

    def label(self, index: int) -> int:
        """Item index's class in [0, num_classes), or NO_LABEL."""
        return NO_LABEL

    if TYPE_CHECKING:  # every data set has a length (torch's Dataset declares none); only for mypy

        def __len__(self) -> int: ...

    def class_counts(self) -> list[int]:
        """The number of items of each class (num_classes of them; [] if unlabelled), from the labels alone:
        no image is decoded."""
        if not self.num_classes:
            return []
        labels = np.fromiter((self.label(i) for i in range(len(self))), dtype=np.int64, count=len(self))
        return np.bincount(labels, minlength=self.num_classes).tolist()


class SubsetImages(ImageDataset):
    """`count` images of `dataset` (config train_images): a seeded choice that is the same for every run's
    seed, kept in the data set's order, with its labels and classes."""

    def __init__(self, dataset: ImageDataset, count: int) -> None:
        if count > len(dataset):
            raise DatasetError(f"train_images is {count} but the data set has only {len(dataset)} images")
        chosen = torch.randperm(len(dataset), generator=seeded(Stream.TRAIN_SUBSET, 0))[:count]
        self.dataset, self.indices = dataset, sorted(chosen.tolist())
        self.num_classes, self.class_names = dataset.num_classes, dataset.class_names

    def label(self, index: int) -> int:
        return self.dataset.label(self.indices[index])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


def build_dataset(spec: str, imsize: int, *, center_crop: int | None = None,
                  resize_mode: ResizeMode = "squash", pixels: bool = False) -> ImageDataset:
    """The dataset a spec names, yielding (3, imsize, imsize) float32 tensors in [-1, 1]: each image centre-
    cropped to `center_crop` pixels if set, then made square (resize_mode "crop": the largest centred square,
    "squash": the whole image) and resized to imsize. `pixels`: yield the resized image as a uint8
    (imsize, imsize, 3) array instead, before the float conversion (what `sagan data pack` stores)."""
    kind, arg = parse_spec(spec)
    if kind == "packed":
        return PackedImages(_packed_dir(spec, arg), imsize, center_crop, pixels=pixels)
    if kind == "ds":
        raise DatasetError(f"{spec} is a data set of the job service: its worker fetches it and trains on "
                           "the packed copy; outside the service, pack the source with `sagan data pack` and "
                           "use packed:DIR")
    transform = _image_stage(imsize, center_crop, resize_mode) if pixels else _transform(imsize, center_crop,
                                                                                         resize_mode)
    if kind == "synthetic":
        return SyntheticShapes(synthetic_size(spec, arg), imsize, transform)
    if kind == "shapes":
        return SimpleShapes(synthetic_size(spec, arg), imsize, transform)
    if kind == "folder":
        return ImageFolder(_existing_dir(arg), transform)
    if kind == "lsun":
        root, category = split_lsun(spec, arg)
        categories = category.split(",")
        if len(categories) > 1 and (Path(root) / "data.mdb").is_file():
            raise DatasetError(f"{root} is one LMDB environment; several categories need their *_lmdb "
                               "folders")
        if len(categories) == 1:
            return LMDBImages(_lmdb_dir(_existing_dir(root), category), transform)
        return LSUNCategories([LMDBImages(_lmdb_dir(_existing_dir(root), name), transform)
                               for name in categories], tuple(categories))
    cifar_root = _existing_dir(arg)
    return CIFAR10Images(_within(cifar_root, cifar_dir(cifar_root)), transform)


def _packed_dir(spec: str, arg: str) -> Path:
    if arg.startswith("s3://"):
        raise DatasetError(f"{spec}: a packed set in an object store is fetched by the job service's worker; "
                           "outside the service, copy it to a folder (e.g. `aws s3 sync`) and use packed:DIR")
    return _existing_dir(arg)


class UnreadableImage(DatasetError):
    """An item that cannot be decoded; `name` is its file path or LMDB key."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)  # as args, so that it survives pickling
        self.name, self.reason = name, reason

    def __str__(self) -> str:
        return f"cannot read image {self.name}: {self.reason}"


# What a training item carries besides its image: the items skipped to reach it, name -> message.
Skipped = dict[str, str]


class SkipUnreadable(Dataset):
    """Item i as (image, label, skipped), where an unreadable item i is replaced by the next readable item
    after it (cyclically) with that item's label, and skipped names the unreadable ones passed over.

    The replacement depends on i alone, so N ranks, any number of workers and a resumed run all see
    the same batches. At most `tries` items are tried; the image is None when none of them reads.
    """

    def __init__(self, dataset: ImageDataset, tries: int) -> None:
        self.dataset, self.tries = dataset, tries

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, Skipped]:
        skipped: Skipped = {}
        for offset in range(self.tries):
            position = (index + offset) % len(self.dataset)
            try:
                return self.dataset[position], self.dataset.label(position), skipped
            except UnreadableImage as error:
                skipped[error.name] = str(error)
        return None, NO_LABEL, skipped

    def __getitems__(self, indices: list[int]) -> ReadyBatch | list[tuple[torch.Tensor | None, int, Skipped]]:
        # A data set that reads whole batches at once (a packed set: nothing to decode, nothing unreadable)
        # hands the collate function a finished batch.
        if isinstance(self.dataset, PackedImages):
            return self.dataset.batch(indices)
        return [self[index] for index in indices]


class ReadyBatch(NamedTuple):
    images: torch.Tensor  # (B, 3, S, S) float32
    labels: torch.Tensor  # (B,) int64


def collate_readable(items: ReadyBatch | list[tuple[torch.Tensor | None, int, Skipped]]
                     ) -> tuple[torch.Tensor | None, torch.Tensor, Skipped]:
    """SkipUnreadable's items as (images (B, 3, S, S), or None if one is missing; labels (B,); everything
    skipped).

    The names travel with the batch because DataLoader workers are other processes: the main
    process is the one place that sees every skip.
    """
    if isinstance(items, ReadyBatch):
        return items.images, items.labels, {}
    skipped = {name: message for _, _, part in items for name, message in part.items()}
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    if any(image is None for image, _, _ in items):
        return None, labels, skipped
    return default_collate([image for image, _, _ in items]), labels, skipped  # shared memory inside workers


class BadImageLog:
    """The unreadable images a run has met, and how many it may skip: more than
    floor(max_fraction x size) distinct ones fail the run.

    `record` takes what this process's batches skipped; `take_unshared` and `merge` pool that over
    processes (`merge` returns the names new to the run); `check` raises past the limit.
    """

    def __init__(self, size: int, max_fraction: float) -> None:
        self.size, self.max_fraction = size, max_fraction
        # Rounded first so that 0.29 of 100 images allows 29, not floor(28.999...) = 28.
        self.limit = math.floor(round(max_fraction * size, 6))
        self.shared: Skipped = {}  # pooled over every process: the count in metrics, kept in checkpoints
        self.unshared: Skipped = {}  # met here since the last take_unshared, disjoint from shared

    @property
    def count(self) -> int:
        return len(self.shared) + len(self.unshared)

    @property
    def tries(self) -> int:
        """Items SkipUnreadable may try for one index: one more than the limit (or the whole set)."""
        return min(self.limit + 1, self.size)

    def record(self, skipped: Skipped) -> None:
        for name, message in skipped.items():
            if name not in self.shared:
                self.unshared.setdefault(name, message)

    def take_unshared(self) -> Skipped:
        taken, self.unshared = self.unshared, {}
        return taken

    def merge(self, parts: list[Skipped]) -> Skipped:
        new = {name: message for part in parts for name, message in part.items() if name not in self.shared}
        self.shared.update(new)
        return new

    def check(self) -> None:
        if self.count > self.limit:
            names = [*self.shared, *self.unshared]
            raise DatasetError(f"{self.count} unreadable images, more than max_bad_images "
                               f"{self.max_fraction:g} of {self.size} allows ({self.limit}): "
                               f"{', '.join(names)}")


class SyntheticShapes(ImageDataset):
    """Procedural coloured circles, rectangles and triangles on a solid or gradient background.

    Item i is drawn from a generator seeded with i alone, so it is the same in every process and worker
    and needs no download; shapes are placed in fractions of the image so every imsize shows the same scene.
    """

    def __init__(self, size: int, imsize: int, transform: Transform) -> None:
        self.size = size
        self.imsize = imsize
        self.transform = transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor | np.ndarray:
        if not 0 <= index < self.size:
            raise IndexError(f"synthetic index {index} out of range [0, {self.size})")
        return self.transform(self._draw(random.Random(index)))

    def _draw(self, rng: random.Random) -> Image.Image:
        s = self.imsize
        image = self._background(rng)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 4)):
            shape = rng.choice(("circle", "rectangle", "triangle"))
            colour = _random_colour(rng)
            cx, cy = rng.uniform(0.1, 0.9) * s, rng.uniform(0.1, 0.9) * s
            radius = rng.uniform(0.08, 0.3) * s
            if shape == "circle":
                draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
            elif shape == "rectangle":
                half_w, half_h = radius, rng.uniform(0.3, 1.0) * radius
                draw.rectangle([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=colour)
            else:
                angle = rng.uniform(0, 2 * math.pi)
                corners = [angle + k * 2 * math.pi / 3 + rng.uniform(-0.4, 0.4) for k in range(3)]
                draw.polygon([(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in corners],
                             fill=colour)
        return image

    def _background(self, rng: random.Random) -> Image.Image:
        s = self.imsize
        start = _random_colour(rng)
        if rng.random() < 0.5:
            return Image.new("RGB", (s, s), start)
        ramp = np.linspace(0.0, 1.0, s)
        # Horizontal or vertical two-colour gradient.
        t = np.tile(ramp, (s, 1)) if rng.random() < 0.5 else np.tile(ramp[:, None], (1, s))
        begin, end = np.array(start, dtype=float), np.array(_random_colour(rng), dtype=float)
        return Image.fromarray((begin + (end - begin) * t[..., None]).round().astype(np.uint8), "RGB")


class SimpleShapes(SyntheticShapes):
    """One large circle, square or triangle per image, in one of six saturated colours, on white.

    An easy built-in data set: a small GAN learns recognisable shapes from it within minutes on a CPU
    (the demo job trains on it), where `synthetic`'s overlapping shapes on gradients take far longer.

    Labelled by shape kind (circle 0, square 1, triangle 2), so conditional models train on it too.
    """

    COLOURS = ((220, 40, 40), (40, 170, 60), (40, 80, 220), (240, 190, 30), (160, 50, 200), (30, 180, 200))
    KINDS = ("circle", "square", "triangle")
    num_classes = len(KINDS)
    class_names = KINDS

    def label(self, index: int) -> int:
        return self.KINDS.index(random.Random(index).choice(self.KINDS))  # _draw's first draw

    def _draw(self, rng: random.Random) -> Image.Image:
        s = self.imsize
        image = Image.new("RGB", (s, s), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        shape, colour = rng.choice(self.KINDS), rng.choice(self.COLOURS)
        cx, cy = rng.uniform(0.4, 0.6) * s, rng.uniform(0.4, 0.6) * s
        radius = rng.uniform(0.25, 0.35) * s
        if shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        elif shape == "square":
            half = radius * 0.85
            draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=colour)
        else:  # pointing up, as a reader expects a triangle
            draw.polygon([(cx, cy - radius), (cx - radius * 0.95, cy + radius * 0.75),
                          (cx + radius * 0.95, cy + radius * 0.75)], fill=colour)
        return image


class ImageFolder(ImageDataset):
    """Every image file under a directory, recursively, in sorted path order. (rglob does not descend into
    symlinked directories; a symlinked file that leads outside the directory is refused.)

    Labelled when every image lies in a sub-folder and there are at least two of them (ImageNet's train
    layout): the class is the sub-folder, numbered in sorted name order.
    """

    def __init__(self, root: Path, transform: Transform) -> None:
        self.root = root
        self.transform = transform
        relative = scan_folder(root)
        if not relative:
            raise DatasetError(f"no images found under {root} (extensions: "
                               f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        self.files = [str(root / name) for name in relative]
        tops = [name.split("/", 1)[0] if "/" in name else None for name in relative]
        names = sorted({top for top in tops if top is not None})
        if None not in tops and len(names) >= 2:
            self.class_names = tuple(names)
            self.num_classes = len(names)
            index = {name: i for i, name in enumerate(names)}
            # int32: compact for 1.28 M files
            self.labels = np.array([index[top] for top in tops if top is not None], dtype=np.int32)

    def label(self, index: int) -> int:
        return int(self.labels[index]) if self.num_classes else NO_LABEL

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor | np.ndarray:
        path = self.files[index]
        return self.transform(_open_rgb(path, path))


class LMDBImages(ImageDataset):
    """An LSUN-style LMDB environment whose values are encoded images (keys are arbitrary)."""

    def __init__(self, path: Path, transform: Transform) -> None:
        self.path = path.resolve()
        self.transform = transform
        import lmdb

        try:
            env = _environment(self.path)
        except (lmdb.Error, OSError) as error:
            raise DatasetError(f"cannot open LMDB {path}: {error}") from error
        with env.begin() as txn:
            self.keys: list[bytes] = list(txn.cursor().iternext(keys=True, values=False))
        if not self.keys:
            raise DatasetError(f"no images found in LMDB {path}")

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> torch.Tensor | np.ndarray:
        key = self.keys[index]
        name = f"LMDB {self.path} key {key.decode('utf-8', 'backslashreplace')}"
        with _environment(self.path).begin() as txn:
            value = txn.get(key)
        if value is None:
            raise UnreadableImage(name, "no value")
        return self.transform(_open_rgb(io.BytesIO(value), name))


class LSUNCategories(ImageDataset):
    """Several LSUN categories as one labelled data set: the items of category k (in spec order) have label
    k."""

    def __init__(self, parts: list[LMDBImages], names: tuple[str, ...]) -> None:
        self.parts, self.class_names, self.num_classes = parts, names, len(parts)
        self.ends = np.cumsum([len(part) for part in parts])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self.ends, index, side="right"))
        return part, index - (int(self.ends[part - 1]) if part else 0)

    def __getitem__(self, index: int) -> torch.Tensor | np.ndarray:
        part, offset = self._locate(index)
        return self.parts[part][offset]

    def label(self, index: int) -> int:
        return self._locate(index)[0]


class CIFAR10Images(ImageDataset):
    """The CIFAR-10 training split (the five python-format data batches) with its ten labels."""

    num_classes = len(CIFAR_CLASSES)
    class_names = CIFAR_CLASSES

    def __init__(self, root: Path, transform: Transform) -> None:
        self.root = root
        self.transform = transform
        batches = [_load_cifar_batch(_within(root, root / name)) for name in CIFAR_BATCHES]
        # (N, 3072) rows are channel-planar; PIL wants (N, 32, 32, 3).
        planar = np.concatenate([data for data, _ in batches])
        self.images = np.ascontiguousarray(planar.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        self.labels = np.concatenate([labels for _, labels in batches])

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | np.ndarray:
        return self.transform(Image.fromarray(self.images[index], "RGB"))


class PackedImages(ImageDataset):
    """A packed set (sagan_core.packed): shards of uint8 images read through memory maps, opened lazily in
    each process. Reads whole batches at once (`batch`): one fancy index per shard and one float
    conversion."""

    def __init__(self, root: Path, imsize: int, center_crop: int | None, *, pixels: bool = False) -> None:
        from .packed import read_index

        self.root, self.pixels = root, pixels
        self.index = read_index(root)
        packed_size = self.index["imsize"]
        if imsize != packed_size:
            raise DatasetError(f"packed:{root} holds {packed_size}px images; imsize {imsize} needs a set "
                               f"packed at {imsize} (`sagan data pack ... --imsize {imsize}`)")
        if center_crop:
            raise DatasetError(f"packed:{root} was cropped and resized when packed "
                               f"({self.index['preprocessing']}): "
                               "center_crop must be unset")
        self.num_classes = int(self.index["num_classes"])
        self.class_names = tuple(self.index["class_names"])
        self.files = [_within(root, root / shard["file"]) for shard in self.index["shards"]]
        self.ends = np.cumsum([shard["count"] for shard in self.index["shards"]])
        self.labels = np.load(_within(root, root / self.index["labels"]["file"]), allow_pickle=False)
        if len(self.labels) != self.index["count"] or int(self.ends[-1]) != self.index["count"]:
            raise DatasetError(f"packed:{root}: its shards or labels do not match its index's count")
        self._shards: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.index["count"])

    def label(self, index: int) -> int:
        return int(self.labels[index])

    @property
    def shard_counts(self) -> list[int]:
        return [int(shard["count"]) for shard in self.index["shards"]]

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist() if self.num_classes else []

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._shards:  # a memory map per process (a DataLoader worker opens its own)
            self._shards[number] = np.load(self.files[number], mmap_mode="r", allow_pickle=False)
        return self._shards[number]

    def pixels_of(self, indices: np.ndarray) -> np.ndarray:
        """The uint8 images of `indices`, (len, S, S, 3), in that order."""
        shard_of = np.searchsorted(self.ends, indices, side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        size = self.index["imsize"]
        out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        for number in np.unique(shard_of):
            where = shard_of == number
            out[where] = self._shard(int(number))[indices[where] - starts[number]]
        return out

    def __getitem__(self, index: int) -> torch.Tensor | np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"packed index {index} out of range [0, {len(self)})")
        pixels = self.pixels_of(np.array([index]))[0]
        return pixels if self.pixels else to_float(pixels)

    def batch(self, indices: list[int]) -> ReadyBatch:
        chosen = np.asarray(indices, dtype=np.int64)
        return ReadyBatch(to_float(self.pixels_of(chosen)),
                          torch.from_numpy(self.labels[chosen].astype(np.int64)))


def _within(root: Path, path: Path) -> Path:
    """`path`, unless it is a symlink leading outside `root`: a data set names a directory (which the job
    service checks against its allowed data roots), and a link inside must not hand out files elsewhere."""
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        raise DatasetError(f"{path} is a symlink to a file outside the data set {root}: refused")
    return path


def _existing_dir(path: str) -> Path:
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a directory: {root}")
    return root


def scan_folder(root: Path) -> list[str]:
    """The image files under root (relative, '/'-separated, sorted), walked once and then read from a cache.

    ImageNet's 1.28 M files take minutes to walk on network storage, and every job and rank would walk them
    again. The cache file is named by the folder's state (dataspec.folder_state: its resolved path and the
    modification times of it and of its direct sub-folders), in the folder cache directory. A change deeper
    down is not seen: delete the cache file (named there by the key).
    """
    resolved = root.resolve()
    return cached_json(folder_cache_dir() / f"{folder_state(resolved)}.json", lambda: _image_files(resolved))


def _image_files(resolved: Path) -> list[str]:
    return sorted(_within(resolved, path).relative_to(resolved).as_posix() for path in resolved.rglob("*")
                  if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def _lmdb_dir(root: Path, category: str) -> Path:
    env_dir = lmdb_env_dir(root, category)
    if env_dir == root:  # PATH is itself the *_lmdb environment
        _within(root, root / "data.mdb")
        return root
    _within(root, env_dir)
    if not env_dir.is_dir():
        raise DatasetError(f"LMDB directory does not exist: {env_dir}")
    _within(root, env_dir / "data.mdb")
    return env_dir


# py-lmdb allows one handle per environment per process, and a handle must not be used across fork(), so
# each process opens its own on first use (a DataLoader worker too) and shares it between datasets. The
# data file's inode is part of the key so that long-lived processes (API, job workers) see an LMDB that
# was replaced in place instead of the old mapping.
_envs: dict[tuple[Path, int], lmdb.Environment] = {}
_envs_pid = os.getpid()


def _environment(path: Path) -> lmdb.Environment:
    import lmdb

    global _envs_pid
    if _envs_pid != os.getpid():
        # A forked child inherits the parent's handles and may not open the same files again until they
        # are closed; with lock=False closing only unmaps this process's copy.
        for env in _envs.values():
            env.close()
        _envs.clear()
        _envs_pid = os.getpid()
    key = (path, os.stat(path / "data.mdb").st_ino)
    if key not in _envs:
        # Read-only without locks, readahead or meminit: many reader processes over a static file.
        _envs[key] = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
    return _envs[key]


class CIFARUnpickler(pickle.Unpickler):
    """Loads CIFAR-10's python batches and nothing else: a pickle may name any callable to run while it
    loads (os.system, ...), so only the few a batch needs (a dict of bytes, lists and one uint8 ndarray,
    as Python 2's cPickle or Python 3 with numpy 1 or 2 wrote it) are found; any other is refused."""

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # Python 3's protocol-2 form of bytes
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR-10 batch holds only arrays, "
                                         "lists and bytes")
        return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"CIFAR-10 batch file not found: {path}")
    # Read only by the trainer (never the API); CIFARUnpickler refuses anything but CIFAR's own types.
    try:
        with open(path, "rb") as f:
            batch = CIFARUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError,
            IndexError) as error:
        raise DatasetError(f"not a CIFAR-10 python batch file: {path} ({error})") from error
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"CIFAR-10 batch {path} has data of shape {data.shape}, expected (N, 3072)")
    if labels.shape != (len(data),
                        ) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CIFAR_CLASSES):
        raise DatasetError(f"CIFAR-10 batch {path} has labels that do not match its {len(data)} images")
    return data, labels


def _open_rgb(source: str | IO[bytes], name: str) -> Image.Image:
    """Decode an image fully (so truncation shows up here) as RGB; `name` identifies it in errors."""
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except UnidentifiedImageError as error:
        # PIL's message shows the file object's repr, which says nothing for an in-memory LMDB value.
        raise UnreadableImage(name, "not a known image format") from error
    # PIL reports unreadable, corrupt or truncated data with any of these.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImage(name, str(error)) from error


def _image_stage(imsize: int, center_crop: int | None, resize_mode: ResizeMode) -> PixelStage:
    """An image as the uint8 (imsize, imsize, 3) array training sees before the float conversion."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode {resize_mode!r}: choose from {', '.join(RESIZE_MODES)}")
    steps: list[Any] = [transforms.CenterCrop(center_crop)] if center_crop else []
    if resize_mode == "crop":
        steps.append(_largest_centred_square)
    steps += [transforms.Resize((imsize, imsize)), np.array]
    return transforms.Compose(steps)


def to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 images, (S, S, 3) or (N, S, S, 3), as float32 (3, S, S) or (N, 3, S, S) in [-1, 1]: the same
    operations as torchvision's ToTensor then Normalize(0.5, 0.5), so a packed image equals its source's
    bit for bit."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    tensor = tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.contiguous().float().div_(255).sub_(0.5).div_(0.5)


def _transform(imsize: int, center_crop: int | None, resize_mode: ResizeMode) -> Transform:
    return transforms.Compose([_image_stage(imsize, center_crop, resize_mode), to_float])


def _largest_centred_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    return transforms.functional.center_crop(image, [side, side])


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)
