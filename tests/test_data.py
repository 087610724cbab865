"""Dataset specs: synthetic shapes, image folders, LSUN LMDBs, CIFAR-10 batches, and their errors."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sagan_core.data import (
    BadImageLog,
    SkipUnreadable,
    UnreadableImage,
    build_dataset,
    collate_readable,
)
from sagan_core.dataspec import DEFAULT_SYNTHETIC_SIZE, DatasetError, dataset_paths

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> Image.Image:
    return Image.new("RGB", size, colour)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def assert_colour(item: torch.Tensor, colour: tuple[int, int, int], atol: float = 0.05) -> None:
    """Every pixel of a normalised item is `colour` (mapped from [0, 255] to [-1, 1])."""
    expected = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    assert torch.allclose(item, expected.expand_as(item), atol=atol)


# --- synthetic ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("imsize", [32, 64, 128])
def test_synthetic_shape_range_and_determinism(imsize: int) -> None:
    dataset = build_dataset("synthetic", imsize)
    assert len(dataset) == DEFAULT_SYNTHETIC_SIZE
    items = [dataset[i] for i in range(8)]
    for item in items:
        assert item.shape == (3, imsize, imsize) and item.dtype == torch.float32
        assert item.min() >= -1 and item.max() <= 1
        assert item.std() > 0.05  # a scene, not a blank canvas
    # A fresh dataset object (as in another process) reproduces every item exactly.
    again = build_dataset("synthetic", imsize)
    assert all(torch.equal(a, again[i]) for i, a in enumerate(items))
    assert all(not torch.equal(items[i], items[j]) for i in range(8) for j in range(i + 1, 8))


def test_synthetic_is_identical_in_dataloader_workers() -> None:
    dataset = build_dataset("synthetic:6", 32)
    batch = next(iter(DataLoader(dataset, batch_size=6, num_workers=2)))
    assert torch.equal(batch, torch.stack([dataset[i] for i in range(6)]))


def test_synthetic_size_and_bounds() -> None:
    dataset = build_dataset("synthetic:5", 32)
    assert len(dataset) == 5
    with pytest.raises(IndexError):
        dataset[5]


# --- folder -------------------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "nested" / "deeper").mkdir(parents=True)
    solid(RED).save(root / "a.png")
    solid(BLUE, (40, 40)).save(root / "nested" / "b.PNG")  # extensions match case-insensitively
    solid(RED, (8, 30)).save(root / "nested" / "deeper" / "c.jpg")
    solid(BLUE).convert("L").save(root / "d.bmp")  # greyscale is converted to RGB
    (root / "notes.txt").write_text("not an image")
    (root / "nested" / "e.png.bak").write_bytes(encoded(solid(RED), "PNG"))
    return root


def test_folder_finds_images_recursively_in_sorted_order(image_folder: Path) -> None:
    dataset = build_dataset(f"folder:{image_folder}", 32)
    expected = ["a.png", "d.bmp", "nested/b.PNG", "nested/deeper/c.jpg"]
    assert dataset.files == [str(image_folder / name) for name in expected]
    items = [dataset[i] for i in range(len(dataset))]
    assert all(item.shape == (3, 32, 32) and item.dtype == torch.float32 for item in items)
    assert_colour(items[0], RED, atol=1e-6)  # lossless PNG: exact ToTensor + Normalize(0.5, 0.5)
    assert_colour(items[2], BLUE, atol=1e-6)
    assert_colour(items[3], RED, atol=0.1)  # JPEG is lossy
    grey_blue = round(0.114 * 255)  # ITU-R 601 luma of pure blue
    assert_colour(items[1], (grey_blue,) * 3, atol=1e-2)
    assert len(build_dataset(f"folder:{image_folder}", 64)) == 4


@pytest.mark.parametrize("resize_mode", ["squash", "crop"])
def test_folder_center_crop_happens_before_resize(tmp_path: Path, resize_mode: str) -> None:
    # A blue 64x64 frame around a red 32x32 centre: cropping 32 leaves only red.
    image = solid(BLUE, (64, 64))
    image.paste(solid(RED, (32, 32)), (16, 16))
    image.save(tmp_path / "framed.png")
    spec = f"folder:{tmp_path}"
    assert_colour(build_dataset(spec, 16, center_crop=32, resize_mode=resize_mode)[0], RED, atol=1e-6)
    uncropped = build_dataset(spec, 16, resize_mode=resize_mode)[0]
    assert_colour(uncropped[:, 6:10, 6:10], RED, atol=1e-6)
    assert_colour(uncropped[:, :2, :2], BLUE, atol=1e-6)
    assert torch.equal(uncropped, build_dataset(spec, 16)[0])  # a square image is the same in both modes


@pytest.mark.parametrize("size", [(64, 32), (32, 64)], ids=["wide", "tall"])
def test_a_non_square_image_is_cropped_to_its_centre_or_squashed(tmp_path: Path,
                                                                 size: tuple[int, int]) -> None:
    # Red first quarter, green middle half, blue last quarter along the long side.
    long_side, short_side = max(size), min(size)
    image = solid(GREEN, size)
    quarter = (long_side // 4, short_side) if size[0] > size[1] else (short_side, long_side // 4)
    image.paste(solid(RED, quarter), (0, 0))
    image.paste(solid(BLUE, quarter), (size[0] - quarter[0], size[1] - quarter[1]))
    image.save(tmp_path / "band.png")
    cropped = build_dataset(f"folder:{tmp_path}", 16, resize_mode="crop")[0]
    assert_colour(cropped, GREEN, atol=1e-6)  # the largest centred square is the green middle alone
    squashed = build_dataset(f"folder:{tmp_path}", 16, resize_mode="squash")[0]
    along = squashed if size[0] > size[1] else squashed.transpose(1, 2)  # the long side as the last axis
    assert_colour(along[:, :, :3], RED, atol=1e-6)
    assert_colour(along[:, :, 6:10], GREEN, atol=1e-6)
    assert_colour(along[:, :, -3:], BLUE, atol=1e-6)


@pytest.mark.parametrize("content", [b"definitely not an image",
                                     encoded(solid(RED, (64, 64)), "PNG")[:80]], ids=["garbage", "truncated"])
def test_corrupt_image_error_names_the_file(tmp_path: Path, content: bytes) -> None:
    solid(RED).save(tmp_path / "b_good.png")
    bad = tmp_path / "a_bad.png"
    bad.write_bytes(content)
    dataset = build_dataset(f"folder:{tmp_path}", 32)
    with pytest.raises(DatasetError, match=str(bad)):
        dataset[0]
    assert_colour(dataset[1], RED, atol=1e-6)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_items_are_replaced_by_the_next_readable_one(tmp_path: Path, num_workers: int) -> None:
    solid(RED).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"garbage")
    solid(BLUE).save(tmp_path / "c.png")
    (tmp_path / "d.png").write_bytes(encoded(solid(RED, (64, 64)), "PNG")[:80])  # truncated
    dataset = SkipUnreadable(build_dataset(f"folder:{tmp_path}", 32), tries=3)
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, collate_fn=collate_readable)
    images, labels, skipped = next(iter(loader))  # across worker processes: the names travel with the batch
    assert labels.tolist() == [-1] * 4  # a flat folder has no classes
    for image, colour in zip(images, [RED, BLUE, BLUE, RED], strict=True):  # d wraps around to a
        assert_colour(image, colour, atol=1e-6)
    assert sorted(skipped) == [str(tmp_path / "b.png"), str(tmp_path / "d.png")]
    assert "not a known image format" in skipped[str(tmp_path / "b.png")]
    assert SkipUnreadable(build_dataset(f"folder:{tmp_path}", 32), tries=1)[1][0] is None


def test_bad_image_log_counts_names_once_and_fails_past_the_limit() -> None:
    assert BadImageLog(100, 0.29).limit == 29  # not floor(28.999...)
    assert (BadImageLog(1000, 0.001).limit, BadImageLog(999, 0.001).limit, BadImageLog(5, 1.0).tries) == (1,
                                                                                                          0,
                                                                                                          5)
    log = BadImageLog(1000, 0.002)
    log.record({"a": "cannot read image a: x"})
    log.record({"a": "cannot read image a: x"})
    assert log.count == 1 and log.tries == 3
    other_rank = {"a": "cannot read image a: x", "b": "cannot read image b: y"}
    assert log.merge([log.take_unshared(), other_rank]) == other_rank  # what is new to the run
    assert log.merge([{"b": "cannot read image b: y"}]) == {}
    log.check()
    log.record({"c": "cannot read image c: z"})
    with pytest.raises(DatasetError, match="3 unreadable images, more than max_bad_images 0.002 of 1000 "
                                           r"allows \(2\): a, b, c"):
        log.check()


def test_unreadable_image_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(UnreadableImage("x.png", "truncated")))
    assert (error.name, str(error)) == ("x.png", "cannot read image x.png: truncated")


def test_folder_path_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=f"dataset path does not exist: {missing}"):
        build_dataset(f"folder:{missing}", 32)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=f"no images found under {tmp_path}"):
        build_dataset(f"folder:{tmp_path}", 32)
    with pytest.raises(DatasetError, match=f"not a directory: {tmp_path / 'readme.txt'}"):
        build_dataset(f"folder:{tmp_path / 'readme.txt'}", 32)


# --- lsun ---------------------------------------------------------------------------------------------


def write_lmdb(path: Path, items: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()


@pytest.fixture
def lsun_root(tmp_path: Path) -> Path:
    write_lmdb(tmp_path / "church_outdoor_train_lmdb", {
        b"0a1f": encoded(solid(RED, (48, 36)), "WEBP"),
        b"7c2e": encoded(solid(BLUE, (36, 48)), "JPEG"),
        b"9b00": encoded(solid(RED), "PNG"),
    })
    return tmp_path


def test_lsun_reads_lmdb_values(lsun_root: Path) -> None:
    spec = f"lsun:{lsun_root}:church_outdoor_train"
    dataset = build_dataset(spec, 32)
    assert len(dataset) == 3
    assert_colour(dataset[0], RED, atol=0.1)  # keys come back in LMDB (byte) order
    assert_colour(dataset[1], BLUE, atol=0.1)
    assert_colour(dataset[2], RED, atol=1e-6)
    # The parent has opened the environment; forked workers must still read through their own.
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=2)))
    assert torch.allclose(batch, torch.stack([dataset[i] for i in range(3)]))
    # Picklable for spawned workers, which open the environment themselves.
    assert torch.equal(pickle.loads(pickle.dumps(dataset))[2], dataset[2])


def test_lsun_accepts_the_lmdb_dir_itself(lsun_root: Path) -> None:
    by_root = build_dataset(f"lsun:{lsun_root}:church_outdoor_train", 32)
    by_root[0]
    # A second dataset over the same, already open environment (py-lmdb refuses a second handle).
    direct = build_dataset(f"lsun:{lsun_root / 'church_outdoor_train_lmdb'}:church_outdoor_train", 32)
    assert len(direct) == 3 and torch.equal(direct[0], by_root[0])


def test_lsun_sees_an_lmdb_replaced_in_place(lsun_root: Path) -> None:
    spec = f"lsun:{lsun_root}:church_outdoor_train"
    assert_colour(build_dataset(spec, 32)[0], RED, atol=0.1)
    shutil.rmtree(lsun_root / "church_outdoor_train_lmdb")
    write_lmdb(lsun_root / "church_outdoor_train_lmdb", {b"new": encoded(solid(BLUE), "PNG")})
    dataset = build_dataset(spec, 32)
    assert len(dataset) == 1
    assert_colour(dataset[0], BLUE, atol=1e-6)


def test_lsun_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError,
                       match=f"LMDB directory does not exist: {tmp_path / 'bedroom_train_lmdb'}"):
        build_dataset(f"lsun:{tmp_path}:bedroom_train", 32)
    with pytest.raises(DatasetError, match=f"dataset path does not exist: {tmp_path / 'x'}"):
        build_dataset(f"lsun:{tmp_path / 'x'}:bedroom_train", 32)
    write_lmdb(tmp_path / "empty_lmdb", {})
    with pytest.raises(DatasetError, match=f"no images found in LMDB {tmp_path / 'empty_lmdb'}"):
        build_dataset(f"lsun:{tmp_path}:empty", 32)
    (tmp_path / "fake_lmdb").mkdir()
    with pytest.raises(DatasetError, match=f"cannot open LMDB {tmp_path / 'fake_lmdb'}"):
        build_dataset(f"lsun:{tmp_path}:fake", 32)


def test_lsun_corrupt_value_error_names_the_key(tmp_path: Path) -> None:
    write_lmdb(tmp_path / "church_lmdb", {b"bad-key-42": b"\x00garbage"})
    dataset = build_dataset(f"lsun:{tmp_path}:church", 32)
    with pytest.raises(DatasetError, match="key bad-key-42"):
        dataset[0]


# --- cifar10 ------------------------------------------------------------------------------------------


def write_cifar(root: Path, skip: str | None = None) -> None:
    """Five batches of two 32x32 images each: in batch k, a pure red image and one of grey level 10*k."""
    root.mkdir(parents=True)
    for k in range(1, 6):
        red = np.concatenate([np.full(1024, 255), np.zeros(2048)])
        grey = np.full(3072, 10 * k)
        batch = {b"data": np.stack([red, grey]).astype(np.uint8), b"labels": [0, 1]}
        if f"data_batch_{k}" != skip:
            (root / f"data_batch_{k}").write_bytes(pickle.dumps(batch))
    (root / "test_batch").write_bytes(b"the test split is not part of training")


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_train_split(tmp_path: Path, nested: bool) -> None:
    root = tmp_path / "cifar"
    write_cifar(root / "cifar-10-batches-py" if nested else root)
    dataset = build_dataset(f"cifar10:{root}", 32)
    assert len(dataset) == 10
    assert_colour(dataset[0], RED, atol=1e-6)  # channel-planar rows land in the right channels
    assert_colour(dataset[9], (50, 50, 50), atol=1e-6)
    assert dataset[4].shape == (3, 32, 32) and build_dataset(f"cifar10:{root}", 64)[4].shape == (3, 64, 64)


def test_cifar10_errors(tmp_path: Path) -> None:
    write_cifar(tmp_path / "partial", skip="data_batch_3")
    with pytest.raises(DatasetError, match=f"batch file not found: {tmp_path / 'partial' / 'data_batch_3'}"):
        build_dataset(f"cifar10:{tmp_path / 'partial'}", 32)
    write_cifar(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=str(tmp_path / "corrupt" / "data_batch_2")):
        build_dataset(f"cifar10:{tmp_path / 'corrupt'}", 32)
    with pytest.raises(DatasetError, match="dataset path does not exist"):
        build_dataset(f"cifar10:{tmp_path / 'missing'}", 32)


class CreatesAFile:
    """What an attacker's batch file would hold: unpickling it calls pathlib.Path.touch on a path."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return Path.touch, (self.target,)


def test_cifar10_batches_are_read_without_running_code_from_them(tmp_path: Path) -> None:
    write_cifar(tmp_path / "evil")
    target = tmp_path / "pwned"
    (tmp_path / "evil" / "data_batch_4").write_bytes(pickle.dumps({b"data": CreatesAFile(target)}))
    with pytest.raises(DatasetError, match="refused pathlib.*data_batch_4|data_batch_4.*refused pathlib"):
        build_dataset(f"cifar10:{tmp_path / 'evil'}", 32)
    assert not target.exists()
    # Protocol 2 (bytes through _codecs.encode) and numpy's own forms still load.
    write_cifar(tmp_path / "old")
    for k in range(1, 6):
        batch = {b"data": np.full((2, 3072), k, dtype=np.uint8), b"labels": [0, 1], b"batch_label": b"b"}
        (tmp_path / "old" / f"data_batch_{k}").write_bytes(pickle.dumps(batch, protocol=2))
    assert len(build_dataset(f"cifar10:{tmp_path / 'old'}", 32)) == 10


def test_a_symlinked_file_leading_outside_the_data_set_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    solid(RED).save(outside)
    folder = tmp_path / "images"
    folder.mkdir()
    solid(BLUE).save(folder / "a.png")
    (folder / "inside.png").symlink_to(folder / "a.png")  # a link within the data set is fine
    assert len(build_dataset(f"folder:{folder}", 32)) == 2
    (folder / "b.png").symlink_to(outside)
    with pytest.raises(DatasetError, match=f"{folder / 'b.png'} is a symlink to a file outside the data set"):
        build_dataset(f"folder:{folder}", 32)
    write_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "data_batch_1").unlink()
    write_cifar(tmp_path / "elsewhere")
    (tmp_path / "cifar" / "data_batch_1").symlink_to(tmp_path / "elsewhere" / "data_batch_1")
    with pytest.raises(DatasetError, match="symlink to a file outside the data set"):
        build_dataset(f"cifar10:{tmp_path / 'cifar'}", 32)


# --- specs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("imagenet:/data", "unknown dataset kind 'imagenet'.*synthetic, shapes, folder, lsun, cifar10"),
    ("", "unknown dataset kind ''"),
    ("folder", "malformed dataset spec 'folder'"),
    ("folder:", "malformed dataset spec 'folder:'"),
    ("synthetic:", "malformed dataset spec 'synthetic:'"),
    ("synthetic:0", "synthetic:N needs an integer N >= 1"),
    ("synthetic:ten", "synthetic:N needs an integer N >= 1"),
    ("lsun:/data", "expected lsun:PATH:CLASS"),
    ("lsun:/data:", "expected lsun:PATH:CLASS"),
    ("lsun:/data:../../etc", "expected lsun:PATH:CLASS"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        build_dataset(spec, 32)
    with pytest.raises(DatasetError, match=message):
        dataset_paths(spec)


def test_dataset_paths() -> None:
    assert dataset_paths("synthetic") == [] and dataset_paths("synthetic:100") == []
    assert dataset_paths("folder:/data/celeba") == ["/data/celeba"]
    assert dataset_paths("lsun:/data/c:d/lsun:church_outdoor_train") == ["/data/c:d/lsun"]
    assert dataset_paths("cifar10:/data/cifar") == ["/data/cifar"]


# --- labels and the folder scan cache ---------------------------------------------------------------------


def test_folder_with_class_subfolders_is_labelled(tmp_path: Path) -> None:
    for name, colour in (("n02", BLUE), ("n01", RED)):
        (tmp_path / name).mkdir()
        for i in range(2):
            solid(colour).save(tmp_path / name / f"{i}.png")
    dataset = build_dataset(f"folder:{tmp_path}", 32)
    assert dataset.num_classes == 2 and dataset.class_names == ("n01", "n02")
    assert [dataset.label(i) for i in range(4)] == [0, 0, 1, 1]
    assert_colour(dataset[2], BLUE, atol=1e-6)
    solid(RED).save(tmp_path / "loose.png")  # an image outside the class folders: no labels at all
    assert build_dataset(f"folder:{tmp_path}", 32).num_classes == 0


def test_unreadable_items_carry_their_replacements_label(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"garbage")
    solid(BLUE).save(tmp_path / "b" / "0.png")
    image, label, skipped = SkipUnreadable(build_dataset(f"folder:{tmp_path}", 32), tries=2)[0]
    assert label == 1 and list(skipped) == [str(tmp_path / "a" / "0.png")]
    assert_colour(image, BLUE, atol=1e-6)


def test_folder_scan_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    (root / "c0").mkdir(parents=True)
    solid(RED).save(root / "c0" / "a.png")
    first = build_dataset(f"folder:{root}", 32).files
    monkeypatch.setattr(Path, "rglob", lambda *_: pytest.fail("the folder was walked again"))
    assert build_dataset(f"folder:{root}",
                         32).files == first  # a second open (another job or rank) reads the list
    monkeypatch.undo()
    solid(BLUE).save(root / "c0" / "b.png")  # the class folder's mtime changes: the scan runs again
    assert len(build_dataset(f"folder:{root}", 32)) == 2


def test_shapes_are_labelled_by_kind() -> None:
    dataset = build_dataset("shapes:60", 32)
    assert dataset.num_classes == 3 and dataset.class_names == ("circle", "square", "triangle")
    labels = [dataset.label(i) for i in range(60)]
    assert set(labels) == {0, 1, 2}
    # The label says what is drawn: a square fills its bounding box's corners, a circle does not.
    image = dataset[labels.index(1)]
    assert (image < 0.9).any()
    assert build_dataset("synthetic:4", 32).num_classes == 0


def test_cifar10_labels(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar")
    dataset = build_dataset(f"cifar10:{tmp_path / 'cifar'}", 32)
    assert dataset.num_classes == 10 and [dataset.label(i) for i in range(4)] == [0, 1, 0, 1]


def test_lsun_categories_make_classes(lsun_root: Path) -> None:
    write_lmdb(lsun_root / "bedroom_train_lmdb", {b"k": encoded(solid(BLUE), "PNG")})
    dataset = build_dataset(f"lsun:{lsun_root}:church_outdoor_train,bedroom_train", 32)
    assert len(dataset) == 4 and dataset.num_classes == 2
    assert [dataset.label(i) for i in range(4)] == [0, 0, 0, 1]
    assert_colour(dataset[3], BLUE, atol=1e-6)
    assert build_dataset(f"lsun:{lsun_root}:bedroom_train", 32).num_classes == 0
    with pytest.raises(DatasetError, match="expected lsun:PATH:CLASS"):
        build_dataset(f"lsun:{lsun_root}:bedroom_train,bedroom_train", 32)
