"""Packed data sets (sagan_core/packed.py): what `sagan data pack` writes, that `packed:DIR` yields the
source's images bit for bit (so training on it equals training on the source, batch for batch, in one process
and under two ranks), resuming an interrupted pack, and the errors a user meets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sagan_core.checkpoint import read_checkpoint
from sagan_core.data import SkipUnreadable, build_dataset, collate_readable
from sagan_core.dataspec import DatasetError, dataset_fingerprint, dataset_paths
from sagan_core.metrics.cache import stats_keys
from sagan_core.packed import INDEX_FILE, PROGRESS_FILE, pack, read_index, verify
from sagan_core.train import train

from .conftest import subprocess_env, tiny_config
from .gloo_runs import train_two_ranks
from .test_train import _weights


def _image_folder(root: Path) -> Path:
    """Two class folders of small PNGs of different shapes and sizes, and one file that is not an image."""
    rng = np.random.default_rng(0)
    for cls, count in (("cats", 5), ("dogs", 4)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            size = (40 + 7 * i, 33 + 5 * i)
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3),
                                         dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "dogs" / "broken.png").write_bytes(b"not a png")
    return root


def test_pack_writes_shards_labels_and_an_index_that_lists_the_unreadable(tmp_path: Path) -> None:
    source = _image_folder(tmp_path / "images")
    index = pack(f"folder:{source}", tmp_path / "packed", imsize=16, shard_mb=16 * 16 * 3 * 4 / 2**20)
    assert index == read_index(tmp_path / "packed")
    assert index["count"] == 9 and index["num_classes"] == 2 and index["class_names"] == ["cats", "dogs"]
    assert [shard["count"] for shard in index["shards"]] == [4, 4, 1]  # 4 per shard; the broken file skipped
    assert list(index["bad_images"]) == [str(source / "dogs" / "broken.png")]
    assert index["source"] == {"spec": f"folder:{source}",
                               "fingerprint": dataset_fingerprint(f"folder:{source}")}
    assert index["preprocessing"] == {"imsize": 16, "resize_mode": "squash", "center_crop": None}
    verify(tmp_path / "packed")
    assert not (tmp_path / "packed" / PROGRESS_FILE).exists()
    shard = np.load(tmp_path / "packed" / "shard-00000.npy", mmap_mode="r")
    assert shard.dtype == np.uint8 and shard.shape == (4, 16, 16, 3)
    assert np.load(tmp_path / "packed" / "labels.npy").tolist() == [0] * 5 + [1] * 4
    # A changed file is caught by its sha256.
    (tmp_path / "packed" / "shard-00001.npy").write_bytes(b"x" * index["shards"][1]["bytes"])
    with pytest.raises(DatasetError, match="shard-00001.npy"):
        verify(tmp_path / "packed")


@pytest.mark.parametrize("spec_of", [lambda root: "shapes:40", lambda root: f"folder:{_image_folder(root)}"],
                         ids=["shapes", "folder"])
@pytest.mark.parametrize("resize_mode", ["squash", "crop"])
def test_packed_images_equal_the_sources_bit_for_bit(tmp_path: Path, spec_of, resize_mode: str) -> None:
    spec = spec_of(tmp_path / "images")
    pack(spec, tmp_path / "packed", imsize=32, resize_mode=resize_mode)
    source = build_dataset(spec, 32, resize_mode=resize_mode)
    packed = build_dataset(f"packed:{tmp_path / 'packed'}", 32)
    readable = [i for i in range(len(source)) if not str(getattr(source, "files", [""] * len(source))[i])
                .endswith("broken.png")]
    assert len(packed) == len(readable) and packed.num_classes == source.num_classes
    for position, i in enumerate(readable):
        assert torch.equal(packed[position], source[i]) and packed.label(position) == source.label(i)
    # The batched path the trainer's loader takes gives the same as item by item.
    images, labels, skipped = collate_readable(SkipUnreadable(packed, 1).__getitems__([3, 0, 3]))
    assert torch.equal(images, torch.stack([packed[3], packed[0], packed[3]])) and skipped == {}
    assert labels.tolist() == [packed.label(3), packed.label(0), packed.label(3)]


def test_training_on_a_packed_set_equals_training_on_its_source(tmp_path: Path) -> None:
    pack("shapes:64", tmp_path / "packed", imsize=32)
    overrides = {"steps": 3, "checkpoint_every": 3}
    train(tiny_config(dataset="shapes:64", **overrides), tmp_path / "source")
    train(tiny_config(dataset=f"packed:{tmp_path / 'packed'}", **overrides), tmp_path / "packed-run")
    source, packed = _weights(tmp_path / "source"), _weights(tmp_path / "packed-run")
    assert source.keys() == packed.keys()
    assert all(torch.equal(source[name], packed[name]) for name in source)


def test_two_ranks_on_a_packed_set_equal_two_ranks_on_its_source(tmp_path: Path) -> None:
    pack("shapes:64", tmp_path / "packed", imsize=32)
    sets = {"source": "shapes:64", "packed-run": f"packed:{tmp_path / 'packed'}"}
    train_two_ranks({tmp_path / name: tiny_config(dataset=spec, steps=2, checkpoint_every=2, batch_size=8)
                     for name, spec in sets.items()})
    source, packed = _weights(tmp_path / "source"), _weights(tmp_path / "packed-run")
    assert all(torch.equal(source[name], packed[name]) for name in source)
    assert read_checkpoint(tmp_path / "packed-run")["step"] == 2


def test_an_interrupted_pack_resumes_keeping_its_complete_shards(tmp_path: Path) -> None:
    out = tmp_path / "packed"
    one_image = 16 * 16 * 3 / 2**20
    calls = []

    def interrupt_after_two_shards(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 3:  # the third shard is read, not yet written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack("shapes:50", out, imsize=16, shard_mb=10 * one_image, progress=interrupt_after_two_shards)
    assert not (out / INDEX_FILE).exists() and (out / PROGRESS_FILE).exists()
    first = (out / "shard-00000.npy").stat().st_mtime_ns
    seen = []
    index = pack("shapes:50", out, imsize=16, shard_mb=10 * one_image, progress=lambda done,
                 total: seen.append(done))
    assert seen == [30, 40, 50]  # shards 0 and 1 kept
    assert (out / "shard-00000.npy").stat().st_mtime_ns == first
    assert index["count"] == 50
    straight = pack("shapes:50", tmp_path / "straight", imsize=16, shard_mb=10 * one_image)
    assert [s["sha256"] for s in straight["shards"]] == [s["sha256"] for s in index["shards"]]


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    pack("shapes:10", tmp_path / "packed", imsize=16)
    with pytest.raises(DatasetError, match="holds 16px images; imsize 32"):
        build_dataset(f"packed:{tmp_path / 'packed'}", 32)
    with pytest.raises(DatasetError, match="center_crop must be unset"):
        build_dataset(f"packed:{tmp_path / 'packed'}", 16, center_crop=12)
    with pytest.raises(DatasetError, match="not a packed data set"):
        build_dataset(f"packed:{tmp_path}", 16)
    with pytest.raises(DatasetError, match="data set of the job service"):
        build_dataset("ds:abc123", 16)
    with pytest.raises(DatasetError, match="ds:ID takes a data set id"):
        dataset_paths("ds:../x")
    with pytest.raises(DatasetError, match="packed:s3://BUCKET/PREFIX"):
        dataset_paths("packed:s3://bucket")
    assert dataset_paths("packed:s3://bucket/sets/a") == []
    assert dataset_paths(f"packed:{tmp_path}") == [str(tmp_path)]


def test_a_packed_sets_statistics_key_does_not_depend_on_where_it_lies(tmp_path: Path) -> None:
    pack("shapes:10", tmp_path / "a", imsize=16)
    pack("shapes:10", tmp_path / "b", imsize=16)

    def key(folder: str) -> object:
        return stats_keys(["swd"], dataset=f"packed:{tmp_path / folder}", imsize=16, center_crop=None,
                          resize_mode="squash", n=10, inception=None)["swd"]

    assert key("a") == key("b") and key("a").dataset == "packed"
    pack("shapes:11", tmp_path / "c", imsize=16)
    assert key("c") != key("a")


def test_sagan_data_pack_uploads_to_s3_with_the_index_last(tmp_path: Path) -> None:
    from tests.service.conftest import S3Server

    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket="sets")
        env = {**subprocess_env(), "AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        result = subprocess.run([sys.executable, "-m", "sagan_core.cli", "data", "pack", "shapes:30",
                                 "--imsize", "16",
                                 "--out", "s3://sets/shapes/16px", "--quiet"], env=env, capture_output=True,
                                text=True, timeout=120, check=True)
        summary = json.loads(result.stdout)
        assert summary["count"] == 30 and summary["classes"] == ["circle", "square", "triangle"]
        keys = [item["Key"]
                for item in client.list_objects_v2(Bucket="sets", Prefix="shapes/16px/")["Contents"]]
        assert sorted(keys) == ["shapes/16px/index.json", "shapes/16px/labels.npy",
                                "shapes/16px/shard-00000.npy"]
        index = json.loads(client.get_object(Bucket="sets", Key="shapes/16px/index.json")["Body"].read())
        assert index["count"] == 30
    finally:
        server.stop()


def test_blocks_shuffle_reads_a_few_shards_at_a_time_in_a_seeded_order() -> None:
    from sagan_core.train import SHUFFLE_WINDOW, epoch_order

    blocks = [10] * 8
    order = epoch_order(80, 3, 1, blocks)
    assert sorted(order.tolist()) == list(range(80))
    assert torch.equal(order, epoch_order(80, 3, 1, blocks)) and not torch.equal(order,
                                                                                 epoch_order(80, 3, 2,
                                                                                             blocks))
    for window in order.split(SHUFFLE_WINDOW * 10):  # each 40 items are 4 whole shards
        shards = torch.bincount(window // 10, minlength=8)
        assert sorted(shards.tolist()) == [0] * 4 + [10] * 4
    assert torch.equal(epoch_order(75, 3, 1), epoch_order(75, 3, 1, None))  # global: one permutation


def test_shuffle_blocks_trains_on_a_packed_set_and_is_refused_elsewhere(tmp_path: Path) -> None:
    from sagan_core.config import ConfigError

    pack("shapes:64", tmp_path / "packed", imsize=32, shard_mb=16 * 32 * 32 * 3 / 2**20)
    state = train(tiny_config(dataset=f"packed:{tmp_path / 'packed'}", shuffle="blocks", steps=2),
                  tmp_path / "run")
    assert state.step == 2
    with pytest.raises(ConfigError, match="shuffle: blocks needs a packed data set"):
        tiny_config(shuffle="blocks")
    with pytest.raises(ConfigError, match="center_crop: a packed data set"):
        tiny_config(dataset="ds:abc", center_crop=20)
