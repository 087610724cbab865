"""Continuing a run (`sagan train --init-from`), truncation and latent walks (`sagan sample`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from sagan_core.checkpoint import read_checkpoint
from sagan_core.cli import main
from sagan_core.config import ConfigError, continued_config, make_config
from sagan_core.latent_walk import sample_walk, walk
from sagan_core.models import build_generator
from sagan_core.sampling import fixed_noise, generate, truncated_noise

TINY = ["--preset", "debug32", "--dataset", "synthetic:64", "--device", "cpu", "--checkpoint-every", "3",
        "--sample-every", "3", "--ema-decay", "0.9", "--lr-decay", "0.5", "--lr-decay-every", "2"]


def _state(run: Path) -> dict[str, torch.Tensor]:
    payload = read_checkpoint(run)
    return {f"{part}.{name}": value for part in ("generator", "discriminator", "ema")
            for name, value in payload[part].items()}


def test_init_from_gives_the_same_weights_as_one_uninterrupted_run(tmp_path: Path) -> None:
    assert main(["train", *TINY, "--steps", "6", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *TINY, "--steps", "3", "--out", str(tmp_path / "first")]) == 0
    # Only the new total is given: everything else comes from the source checkpoint's config.
    assert main(["train", "--init-from", f"{tmp_path / 'first'}:3", "--steps", "6",
                 "--out", str(tmp_path / "continued")]) == 0
    straight, continued = _state(tmp_path / "straight"), _state(tmp_path / "continued")
    assert straight.keys() == continued.keys()
    assert all(torch.equal(straight[name], continued[name]) for name in straight)
    assert read_checkpoint(tmp_path / "first")["step"] == 3  # the source is left as it was
    assert json.loads((tmp_path / "continued" / "config.json").read_text())["steps"] == 6
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "continued" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 5, 6]


def test_a_continued_run_may_change_rates_and_ema_but_not_the_architecture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "debug32", "--dataset", "synthetic:64", "--device", "cpu", "--steps",
                 "2", "--checkpoint-every", "2", "--out", str(tmp_path / "first")]) == 0
    continued = ["train", "--init-from", str(tmp_path / "first"), "--out", str(tmp_path / "next")]
    assert main([*continued, "--steps", "4", "--g-conv-dim", "32"]) == 2
    assert "g_conv_dim: cannot change when continuing a run" in capsys.readouterr().err
    assert main([*continued, "--steps", "2"]) == 2
    assert "steps: 2 is not above the checkpoint's step 2" in capsys.readouterr().err
    # A source without an EMA: the continued run's average starts from its generator.
    assert main([*continued, "--steps", "3", "--g-lr", "0.001", "--ema-decay", "0.5"]) == 0
    payload = read_checkpoint(tmp_path / "next")
    assert payload["step"] == 3 and payload["config"]["g_lr"] == 0.001 and payload["ema"] is not None


def test_continued_config_names_the_first_field_it_may_not_change() -> None:
    source = make_config("debug32", steps=10).to_dict()
    assert continued_config(source, {"steps": 20, "d_lr": 1e-3}, from_step=10).d_lr == 1e-3
    with pytest.raises(ConfigError) as refused:
        continued_config(source, {"steps": 20, "imsize": 64}, from_step=10)
    assert refused.value.field == "imsize"


def test_truncation_draws_again_every_entry_above_psi() -> None:
    z, truncated = fixed_noise(64, 128, seed=5), truncated_noise(64, 128, seed=5, psi=0.5)
    assert torch.equal(truncated_noise(64, 128, seed=5), z)  # no psi: the usual z
    assert truncated.abs().max() <= 0.5
    inside = z.abs() <= 0.5
    assert torch.equal(truncated[inside], z[inside])  # entries within psi stay
    assert not torch.equal(truncated[~inside], z[~inside])
    with pytest.raises(ValueError, match="above 0"):
        truncated_noise(1, 8, seed=0, psi=0.0)


def test_a_walk_starts_at_seed_a_ends_at_seed_b_and_its_gif_has_k_frames(tmp_path: Path) -> None:
    path = walk(128, (3, 7), 5)
    assert torch.equal(path.z[0], fixed_noise(1, 128, 3)[0])
    assert torch.allclose(path.z[-1], fixed_noise(1, 128, 7)[0], atol=1e-6)
    assert path.labels is None
    assert main(["train", "--preset", "debug32", "--dataset", "synthetic:64", "--device", "cpu", "--steps",
                 "2", "--checkpoint-every", "2", "--out", str(tmp_path / "run")]) == 0
    gif = sample_walk(tmp_path / "run", tmp_path / "walk.gif", seeds=(3, 7), frames=5)
    with Image.open(gif) as image:
        assert image.n_frames == 5 and image.size == (32, 32)
    assert main(["sample", "--checkpoint", str(tmp_path / "run"), "--interpolate", "3,7", "--frames", "4",
                 "--truncation", "1.0", "-o", str(tmp_path / "strip.png")]) == 0
    assert Image.open(tmp_path / "strip.png").size == (4 * 34 + 2, 34 + 2)  # one row of 4 frames


def test_a_conditional_walk_goes_from_one_class_to_another() -> None:
    config = make_config("resnet32", num_classes=3, g_conv_dim=16, d_conv_dim=16)
    path = walk(config.z_dim, (0, 1), 3, num_classes=3, classes=[2, 0])
    assert path.labels.tolist() == [[0.0, 0.0, 1.0], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]]
    generator = build_generator(config)
    ends = generate(generator, path.z[[0, 2]], path.labels[[0, 2]])
    assert torch.allclose(ends, generate(generator, path.z[[0, 2]], torch.tensor([2, 0])), atol=1e-5)
    with pytest.raises(ValueError, match="unconditional"):
        walk(128, (0, 1), 3, classes=[1])
