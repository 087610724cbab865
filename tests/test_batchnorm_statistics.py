"""BatchNorm statistics: the configured momentum in every BatchNorm, and standing statistics for sampling and
evaluation (BigGAN's re-estimate over K batches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sagan_core import build_models
from sagan_core.cli import main
from sagan_core.metrics.cache import StatsCache
from sagan_core.metrics.evaluate import evaluate_checkpoint
from sagan_core.resnet import ConditionalBatchNorm
from sagan_core.sampling import standing_statistics


def _momenta(model: torch.nn.Module) -> list[float]:
    return [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_batchnorms_get_the_configured_momentum() -> None:
    generator, _ = build_models("resnet32", num_classes=10, g_conv_dim=8, d_conv_dim=8)
    block_norms = [m.bn for m in generator.modules() if isinstance(m, ConditionalBatchNorm)]
    assert block_norms and all(norm.momentum == 0.001 for norm in block_norms)  # the official decay 0.999
    assert generator.bn.momentum == 0.0001  # the final BN: decay 0.9999
    generator, discriminator = build_models("seed64", d_norm="batch")
    assert set(_momenta(generator)) == set(_momenta(discriminator)) == {0.1}  # torch's default
    generator, discriminator = build_models("sagan32", d_norm="batch", bn_momentum=0.05)
    assert set(_momenta(generator)) == set(_momenta(discriminator)) == {0.05}
    generator, _ = build_models("resnet32", num_classes=0, g_conv_dim=8, bn_momentum=0.02,
                                bn_momentum_final=None)
    assert set(_momenta(generator)) == {0.02}  # null final = bn_momentum


@pytest.mark.parametrize(("preset", "classes"), [("debug32", 0), ("resnet32", 3)])
def test_standing_statistics_are_the_average_of_k_batches(preset: str, classes: int) -> None:
    torch.manual_seed(0)
    overrides = {"num_classes": classes, "g_conv_dim": 8} if classes else {}
    generator, _ = build_models(preset, **overrides)
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    inputs: dict[int, list[torch.Tensor]] = {index: [] for index in range(len(norms))}
    for index, norm in enumerate(norms):  # deepcopy keeps the hooks: they see the copy's forwards
        norm.register_forward_pre_hook(lambda _m, args, index=index: inputs[index].append(args[0].detach()))
    before = {k: v.clone() for k, v in generator.state_dict().items()}

    standing = standing_statistics(generator, 128, classes, batches=3, batch_size=5, seed=1)

    assert not standing.training and all(len(seen) == 3 for seen in inputs.values())
    for index, norm in enumerate(m for m in standing.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        batches = inputs[index]
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in batches]).mean(0)  # unbiased
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(norm.running_var, var, rtol=1e-4, atol=1e-5)
        assert norm.momentum == norms[index].momentum and int(norm.num_batches_tracked) == 3
    after = generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the source is untouched, u and v too
    assert not torch.equal(standing.state_dict()[next(k for k in before if "running_mean" in k)],
                           before[next(k for k in before if "running_mean" in k)])


def test_standing_statistics_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--preset", "debug32", "--dataset", "synthetic:32", "--steps", "2", "--device",
                 "cpu", "--num-workers", "0", "--out", str(run)]) == 0

    def sample(*flags: str) -> np.ndarray:
        npz = tmp_path / "raw.npz"
        assert main(["sample", "--checkpoint", str(run), "-n", "8", "-o", str(tmp_path / "g.png"), "--npz",
                     str(npz), *flags]) == 0
        return np.load(npz)["images"]

    running = sample()
    standing = sample("--standing-stats", "2")
    assert not np.array_equal(running, standing)
    assert np.array_equal(standing, sample("--standing-stats", "2"))  # deterministic
    assert main(["sample", "--checkpoint", str(run), "--standing-stats", "-1"]) == 2
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--metrics", "swd", "-n", "16", "--device", "cpu",
                 "--num-workers", "0", "--standing-stats", "2", "--stats-cache",
                 str(tmp_path / "cache")]) == 0
    assert "standing statistics over 2 batches" in capsys.readouterr().out
    record = evaluate_checkpoint(run, metrics=["swd"], n=16, device="cpu",
                                 cache=StatsCache(tmp_path / "cache"))
    assert "running statistics" in record["sampling"]
