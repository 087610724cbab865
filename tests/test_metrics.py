"""Sample-quality metrics: the numbers (against direct NumPy/SciPy formulas), the SWD, the Inception path with
random weights, the weights check and the real-statistics cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sagan_core.data import build_dataset
from sagan_core.dataspec import dataset_fingerprint
from sagan_core.metrics import scores, swd
from sagan_core.metrics.backbones import InceptionV3
from sagan_core.metrics.cache import STATS_VERSIONS, StatsCache, stats_keys
from sagan_core.metrics.evaluate import SAMPLES, EvalPlan, Evaluator
from sagan_core.metrics.runs import best_eval, improves
from sagan_core.metrics.weights import (
    SHA256,
    InceptionWeights,
    InceptionWeightsError,
    resolve_inception_weights,
)
from sagan_core.models import Generator, build_generator
from sagan_core.parallel import init_distributed
from sagan_core.sampling import indexed_labels, indexed_noise, to_uint8
from sagan_core.seeding import Stream, seeded

from .conftest import subprocess_env, tiny_config


class TinyBackbone:
    """A small deterministic feature extractor standing in for Inception: 4x4 average-pooled pixels (48-d)
    through a fixed random projection and a nonlinearity, and 10 logits."""

    name, weights_sha256 = "tiny-test-backbone", None

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(7)
        self.projection = torch.randn(48, 32, generator=generator) / 48**0.5
        self.classes = torch.randn(32, 10, generator=generator)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = F.adaptive_avg_pool2d(images.float() / 127.5 - 1, 4).flatten(1)
        pool = torch.tanh(pooled @ self.projection * 3)
        return {"pool": pool, "logits": pool @ self.classes}


def _features(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 0.5 + shift


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * covmean))


def test_fid_of_a_set_with_itself_is_zero_and_matches_scipy() -> None:
    a, b = _features(400, 16, 0), _features(300, 16, 1, shift=0.3)
    same = scores.fid(scores.frechet_statistics(a), scores.frechet_statistics(a))
    assert abs(same) < 1e-6
    ours = scores.fid(scores.frechet_statistics(a), scores.frechet_statistics(b))
    assert ours == pytest.approx(_scipy_fid(a.double().numpy(), b.double().numpy()), rel=1e-3)
    assert ours > 1.0


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel() -> None:
    x, y = _features(60, 8, 2), _features(60, 8, 3, shift=0.2)
    mean, std, size = scores.kid(x, y)  # subsets of all 60 rows: every subset gives the same estimate
    assert size == 60
    X, Y = x.double().numpy(), y.double().numpy()
    def kernel(p, q):
        return (p @ q.T / X.shape[1] + 1) ** 3
    m = len(X)
    kxx, kyy, kxy = kernel(X, X), kernel(Y, Y), kernel(X, Y)
    mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
           - 2 * kxy.sum() / m**2)
    assert mean == pytest.approx(mmd, rel=1e-4)
    assert std < 1e-5 * abs(mean)  # float32 round-off only


def test_inception_score_of_uniform_logits_is_1_and_of_n_distinct_classes_is_n() -> None:
    assert scores.inception_score(torch.zeros(100, 1008))[0] == pytest.approx(1.0)
    n = 25
    one_hot = torch.eye(n, 1008) * 100.0  # sample i is surely class i
    assert scores.inception_score(one_hot, splits=1)[0] == pytest.approx(n, rel=1e-6)


def test_precision_and_recall_of_identical_sets_are_1_and_of_distant_sets_0() -> None:
    a = _features(200, 16, 4)
    assert scores.precision_recall(a, a.clone()) == (1.0, 1.0)
    assert scores.precision_recall(a, a + 100.0) == (0.0, 0.0)


def _real_images(indices: range, imsize: int = 32) -> torch.Tensor:
    dataset = build_dataset("synthetic:2048", imsize)
    return to_uint8(torch.stack([dataset[i] for i in indices]))


def _descriptors(images: torch.Tensor) -> list[torch.Tensor]:
    return swd.descriptors(images, list(range(len(images))), 0)


def _swd(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    return swd.swd(_descriptors(a), _descriptors(b), a.shape[-1], 0)


def test_swd_separates_real_from_noise_and_is_deterministic() -> None:
    first, second = _real_images(range(128)), _real_images(range(128, 256))
    noise = torch.randint(0, 256, first.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    of_first = _descriptors(first)
    real_vs_real = swd.swd(of_first, _descriptors(second), 32, 0)
    real_vs_noise = swd.swd(of_first, _descriptors(noise), 32, 0)
    assert set(real_vs_real) == {"swd", "swd_32", "swd_16"}
    assert real_vs_real["swd"] * 5 < real_vs_noise["swd"], (real_vs_real, real_vs_noise)
    assert swd.swd(of_first, of_first, 32, 0)["swd"] == 0.0
    assert _swd(first, second) == real_vs_real  # seeded: the same patches and directions every time


def test_the_held_out_sample_has_other_z_and_other_real_images() -> None:
    held_out_noise = SAMPLES["held-out"][0]
    assert not torch.equal(indexed_noise(0, 0, 8, 4, held_out_noise), indexed_noise(0, 0, 8, 4))
    real = {stream: set(Evaluator(EvalPlan(("swd",), n=32, dataset="synthetic:64", imsize=32, stream=stream),
                                  init_distributed("cpu"))._real_images()[1].tolist()) for stream in SAMPLES}
    assert len(real["selection"]) == len(real["held-out"]) == 32 and not real["selection"] & real["held-out"]
    with pytest.raises(ValueError, match="stream"):
        EvalPlan(("swd",), n=32, dataset="synthetic:64", imsize=32, stream="test")


def class_folder(root: Path, sizes: dict[str, int]) -> Path:
    """A folder data set with one sub-folder (class) per entry of `sizes`, that many 32x32 images each."""
    for name, size in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(size):
            Image.new("RGB", (32, 32), (25 * i, 100, len(name) * 40)).save(root / name / f"{i}.png")
    return root


class LabelLog(nn.Module):
    """A conditional generator that keeps the classes it is asked for."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator, self.num_classes, self.labels = generator, generator.num_classes, []

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.labels.append(y)
        return self.generator(z, y)


def test_generated_classes_follow_the_data_class_mix(tmp_path: Path) -> None:
    spec = f"folder:{class_folder(tmp_path / 'data', {'a': 2, 'bb': 8})}"
    assert build_dataset(spec, 32).class_counts() == [2, 8]
    labels = indexed_labels(0, 0, 20_000, 2, weights=torch.tensor([2.0, 8.0]))
    assert labels.float().mean().item() == pytest.approx(0.8, abs=0.01)
    # Narrow: 600 images are drawn twice; the labels they are drawn with are what is checked.
    config = tiny_config(arch="resnet", attention="pooled", num_classes=2, dataset=spec, g_conv_dim=8)
    torch.manual_seed(0)
    generator = LabelLog(build_generator(config))
    plan = EvalPlan(("swd",), n=600, dataset=spec, imsize=32, batch_size=200)
    record = Evaluator(plan, init_distributed("cpu"), cache=StatsCache(tmp_path / "cache")).evaluate(
        generator, config.z_dim)
    assert record["class_mix"] == [0.2, 0.8]
    drawn = torch.cat(generator.labels)
    assert len(drawn) == 600 and drawn.float().mean().item() == pytest.approx(0.8, abs=0.05)  # not 50/50
    # The second evaluation reads the counts from the cache with the real statistics.
    again = Evaluator(plan, init_distributed("cpu"), cache=StatsCache(tmp_path / "cache")).evaluate(
        generator, config.z_dim)
    assert again["real"]["cache"] == {"swd": "hit"} and again["class_mix"] == [0.2, 0.8]


def test_swd_of_constant_images_is_finite() -> None:
    real = _real_images(range(64))
    flat = torch.full_like(real, 128)  # a collapsed generator: one grey image
    scores_flat = _swd(real, flat)
    assert all(math.isfinite(value) for value in scores_flat.values()), scores_flat
    assert scores_flat["swd"] > _swd(real, _real_images(range(64, 128)))["swd"]
    assert _swd(flat, flat)["swd"] == 0.0


def test_a_nan_or_infinite_score_ranks_below_every_finite_one() -> None:
    nan, inf = float("nan"), float("inf")
    for metrics in (["fid"], ["is"]):  # lower and higher is better
        assert improves(metrics, 5.0, nan) and improves(metrics, 5.0, inf) and improves(metrics, 5.0, -inf)
        assert not improves(metrics, nan, 5.0) and not improves(metrics, inf, 5.0)
        assert not improves(metrics, nan, nan) and not improves(metrics, inf,
                                                                nan)  # equals: the earliest stays
        assert improves(metrics, nan, None)  # something beats nothing
    assert improves(["fid"], 3.0, 5.0) and improves(["is"], 5.0, 3.0)

    def records(*values: float) -> list[dict]:
        return [{"step": step, "source": "train", "metrics": {"fid": value, "is": value}}
                for step, value in enumerate(values)]

    assert best_eval(records(nan, 5.0, 3.0), ["fid"])["step"] == 2
    assert best_eval(records(nan, 5.0, 3.0), ["is"])["step"] == 1
    assert best_eval(records(3.0, inf), ["is"])["step"] == 0
    assert best_eval(records(nan, nan), ["fid"])["step"] == 0


def test_swd_descriptors_do_not_depend_on_the_batch_an_image_is_in() -> None:
    images = _real_images(range(10), imsize=64)
    whole = swd.descriptors(images, list(range(10)), 3)
    halves = [swd.descriptors(images[:4], [0, 1, 2, 3], 3),
              swd.descriptors(images[4:], list(range(4, 10)), 3)]
    assert [level.shape for level in whole] == [(10 * 128, 3, 7, 7)] * 3  # levels 64, 32, 16
    for level, (a, b) in zip(whole, zip(*halves, strict=True), strict=True):
        assert torch.equal(level, torch.cat([a, b]))


def test_laplacian_pyramid_reconstructs_the_image() -> None:
    images = _real_images(range(4)).float()
    pyramid = swd.laplacian_pyramid(images, 2)
    assert [level.shape[-1] for level in pyramid] == [32, 16]
    up = torch.zeros_like(images)
    up[:, :, ::2, ::2] = pyramid[1]
    assert torch.allclose(pyramid[0] + 4.0 * swd._blur(up), images, atol=1e-4)


def test_inception_v3_with_random_weights_gives_pool_features_and_logits() -> None:
    network = InceptionV3(InceptionWeights(None, None))
    images = _real_images(range(3))
    out = network(images)
    assert out["pool"].shape == (3, 2048) and out["logits"].shape == (3, 1008)
    assert out["pool"].dtype == torch.float32 and torch.isfinite(out["pool"]).all()
    assert out["pool"].std(0).mean() > 1e-4  # the features depend on the image
    again = InceptionV3(InceptionWeights(None, None))(images[:1])  # same random network, any batch size
    assert torch.allclose(again["pool"], out["pool"][:1], rtol=1e-4, atol=1e-5)
    # Other image sizes go through the same resize to 299.
    assert network(_real_images(range(2), imsize=64))["pool"].shape == (2, 2048)


def test_evaluation_with_random_inception_weights_runs_every_metric(tmp_path: Path) -> None:
    config = tiny_config()
    generator = Generator(config)
    plan = EvalPlan(("fid", "kid", "is", "pr", "swd"), n=8, dataset="synthetic:64", imsize=32, batch_size=4)
    record = Evaluator(plan, init_distributed("cpu"), cache=StatsCache(tmp_path),
                       inception_weights="random").evaluate(generator, config.z_dim)
    assert record["backbone"] == "inception-v3-random-init" and record["inception_weights_sha256"] is None
    assert {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "f_score",
            "swd"} <= set(record["metrics"])
    assert all(np.isfinite(value) for value in record["metrics"].values())
    assert record["real"] == {"n": 8, "cache": {"inception": "miss", "swd": "miss"}}


def test_pipeline_fid_equals_a_direct_computation_on_the_same_features(tmp_path: Path) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    generator = Generator(config).eval()
    backbone = TinyBackbone()
    plan = EvalPlan(("fid", "kid"), n=96, dataset="synthetic:64", imsize=32, batch_size=40)
    record = Evaluator(plan, init_distributed("cpu"), cache=StatsCache(tmp_path),
                       backbone=backbone).evaluate(generator, config.z_dim)
    with torch.no_grad():
        fake = backbone(to_uint8(generator(indexed_noise(0, 0, 96, config.z_dim))))["pool"]
    dataset = build_dataset("synthetic:64", 32)
    order = torch.randperm(64, generator=seeded(Stream.REAL_ORDER, 0))  # all 64: n exceeds the data set
    real = backbone(to_uint8(torch.stack([dataset[int(i)] for i in order])))["pool"]
    assert record["real"]["n"] == 64
    assert record["metrics"]["fid"] == pytest.approx(_scipy_fid(fake.double().numpy(), real.double().numpy()),
                                                     rel=1e-3)


def test_a_second_evaluation_reads_the_cache_instead_of_the_data(tmp_path: Path, monkeypatch) -> None:
    import sagan_core.data

    opened = []
    real_build = sagan_core.data.build_dataset
    monkeypatch.setattr(sagan_core.data, "build_dataset", lambda *a,
                        **k: opened.append(a) or real_build(*a, **k))
    config = tiny_config()
    generator = Generator(config)
    plan = EvalPlan(("fid", "swd"), n=16, dataset="synthetic:64", imsize=32, batch_size=8)
    evaluator = Evaluator(plan, init_distributed("cpu"), cache=StatsCache(tmp_path), backbone=TinyBackbone())
    first = evaluator.evaluate(generator, config.z_dim)
    second = Evaluator(plan, init_distributed("cpu"), cache=StatsCache(tmp_path),
                       backbone=TinyBackbone()).evaluate(generator, config.z_dim)
    assert first["real"]["cache"] == {"inception": "miss", "swd": "miss"}
    assert second["real"]["cache"] == {"inception": "hit", "swd": "hit"}
    assert len(opened) == 1  # one pass over the real images, in the first evaluation only
    assert second["metrics"] == first["metrics"]
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_the_cache_key_follows_the_data_contents(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    before = dataset_fingerprint(f"folder:{folder}")
    assert dataset_fingerprint(f"folder:{folder}") == before
    Image.new("RGB", (8, 8), "blue").save(folder / "b.png")
    assert dataset_fingerprint(f"folder:{folder}") != before
    assert dataset_fingerprint("synthetic:64") != dataset_fingerprint("synthetic:65")


def test_a_second_fingerprint_of_a_folder_stats_none_of_its_files(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    for name in ("n01", "n02"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), "red").save(folder / name / f"{i}.png")
    spec = f"folder:{folder}"
    first = dataset_fingerprint(spec)
    touched: list[Path] = []
    real_stat, real_scandir = os.stat, os.scandir
    monkeypatch.setattr(os, "stat", lambda path, *a,
                        **k: touched.append(Path(path)) or real_stat(path, *a, **k))
    monkeypatch.setattr(os, "scandir", lambda path=".": touched.append(Path(path)) or real_scandir(path))
    assert dataset_fingerprint(spec) == first  # another evaluation, job or rank
    monkeypatch.undo()
    assert touched and not [path for path in touched if path.is_file()]  # the folder's own stamps only
    Image.new("RGB", (8, 8), "blue").save(folder / "n02" / "3.png")  # the class folder's mtime changes
    assert dataset_fingerprint(spec) != first


def test_the_cache_key_holds_the_preprocessing_and_a_version_for_every_part() -> None:
    def keys(**preprocessing):
        return stats_keys(("fid", "swd"), dataset="synthetic:64", imsize=32, n=16,
                          inception=("inception", "abc"),
                          **{"center_crop": None, "resize_mode": "squash", **preprocessing})

    plain = keys()
    for part in ("inception", "swd"):
        assert plain[part].version == STATS_VERSIONS[part]
        names = {plain[part].name, keys(resize_mode="crop")[part].name, keys(center_crop=24)[part].name}
        assert len(names) == 3, part


def test_an_entry_under_the_old_key_format_is_not_read(tmp_path: Path) -> None:
    cache = StatsCache(tmp_path)
    keys = stats_keys(("fid", "swd"), dataset="synthetic:64", imsize=32, center_crop=None,
                      resize_mode="squash", n=16, inception=("inception", "abc"))
    for key in keys.values():
        # The entry as the code before resize_mode and the versions named and wrote it.
        old = json.dumps({name: value for name, value in asdict(key).items()
                          if name not in ("resize_mode", "version")}, sort_keys=True)
        old_path = tmp_path / f"{key.backbone}-32px-n16-{hashlib.sha256(old.encode()).hexdigest()[:20]}.npz"
        np.savez(old_path, key=np.array(old), count=np.array(16))
        assert cache.path(key) != old_path and cache.load(key) is None
        shutil.copy(old_path, cache.path(key))  # not even when copied to the new name
        assert cache.load(key) is None


def test_a_wrong_or_missing_weights_file_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    wrong = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    wrong.write_bytes(b"not the weights")
    with pytest.raises(InceptionWeightsError) as error:
        resolve_inception_weights(wrong)
    message = str(error.value)
    assert str(wrong) in message and SHA256 in message
    assert hashlib.sha256(b"not the weights").hexdigest() in message
    assert "SAGAN_INCEPTION_WEIGHTS" in message and "--inception-weights" in message
    monkeypatch.delenv("SAGAN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(InceptionWeightsError, match="no Inception weights file is configured"):
        resolve_inception_weights()
    with pytest.raises(InceptionWeightsError, match="not found: .*missing.pth"):
        resolve_inception_weights(tmp_path / "missing.pth")


def test_training_with_fid_and_no_weights_fails_before_training_without_a_traceback(tmp_path: Path) -> None:
    env = {**subprocess_env(), "SAGAN_INCEPTION_WEIGHTS": str(tmp_path / "nothing.pth")}
    result = subprocess.run([sys.executable, "-m", "sagan_core.cli", "train", "--preset", "debug32",
                             "--dataset", "synthetic:64", "--device", "cpu", "--eval-every", "2",
                             "--eval-metrics", "fid,swd", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Inception weights file not found: {tmp_path / 'nothing.pth'}" in result.stderr
    assert SHA256 in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
