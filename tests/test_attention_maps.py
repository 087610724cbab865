"""Attention maps (sagan_core.attention_maps, `sagan attention`): what the layers compute, for both attention
forms, DCGAN and residual models, conditional or not, and D on a real image."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sagan_core.attention_maps import AttentionCapture, capture, from_npz, render_png, to_npz
from sagan_core.checkpoint import FORMAT_VERSION, LoadedModel
from sagan_core.cli import main
from sagan_core.config import TrainConfig, make_config
from sagan_core.layers import PooledSelfAttention, SelfAttention, _attention, recording_attention
from sagan_core.layout import checkpoint_path, point_latest
from sagan_core.models import build_models

# Small models of each kind: (preset, overrides) -> the attention layers they have.
DCGAN_SEED = ("debug32", {})  # g.attn16, d.attn8, the seed's form
DCGAN_POOLED = ("debug32", {"attention": "pooled"})
RESNET_CONDITIONAL = ("resnet32", {"num_classes": 3, "g_conv_dim": 8, "d_conv_dim": 8})  # pooled, 16 and 16
RESNET_PLAIN = ("resnet32", {"num_classes": 0, "g_conv_dim": 8, "d_conv_dim": 8})


def loaded(preset: str, overrides: dict) -> LoadedModel:
    config = make_config(preset, **overrides)
    if config.num_classes is None:
        config = config.model_copy(update={"num_classes": 0})
    torch.manual_seed(0)
    generator, discriminator = build_models(config)
    return LoadedModel(generator=generator.eval(), discriminator=discriminator.eval(), config=config, step=0)


def attention_layer(network: nn.Module) -> nn.Module:
    return next(m for m in network.modules() if isinstance(m, (SelfAttention, PooledSelfAttention)))


@pytest.mark.parametrize("kind", [DCGAN_SEED, DCGAN_POOLED, RESNET_CONDITIONAL, RESNET_PLAIN],
                         ids=["dcgan-seed", "dcgan-pooled", "resnet-conditional", "resnet"])
def test_each_querys_weights_sum_to_one_over_the_keys(kind: tuple[str, dict]) -> None:
    model = loaded(*kind)
    captured = capture(model, seed=3, index=5)
    assert captured.image.shape == (32, 32, 3) and captured.image.dtype == np.uint8
    assert {layer.name[0] for layer in captured.layers} == {"g", "d"}
    for layer in captured.layers:
        h, w = layer.grid
        pooled = layer.form == "pooled"
        assert layer.key_grid == ((h // 2, w // 2) if pooled else (h, w)), layer.name
        assert layer.weights.shape == (h * w, layer.key_grid[0] * layer.key_grid[1])
        assert np.allclose(layer.weights.sum(axis=1), 1, atol=1e-5), layer.name
        assert (layer.weights >= 0).all()
        assert layer.query_map(31, 0, 32).sum() == pytest.approx(1, abs=1e-5)
    assert (captured.label is not None) == bool(model.config.num_classes)


def test_recorded_weights_are_the_layers_own() -> None:
    """The weights times the values give what the layer's fused attention computed (nothing recomputed
    apart)."""
    seen = []

    def check(_layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_grids: tuple) -> None:
        weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)
        seen.append(torch.allclose(weights @ v, _attention(q, k, v), atol=1e-5))

    for kind in (DCGAN_SEED, DCGAN_POOLED):
        model = loaded(*kind)
        with recording_attention(check), torch.no_grad():
            model.discriminator(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert seen == [True, True]


@pytest.mark.parametrize("kind", [DCGAN_SEED, RESNET_CONDITIONAL], ids=["seed-form", "pooled-form"])
def test_attention_forced_to_one_key_shows_that_position(kind: tuple[str, dict]) -> None:
    model = loaded(*kind)
    layer = attention_layer(model.generator)
    pooled = isinstance(layer, PooledSelfAttention)
    query_conv, key_conv = (layer.theta, layer.phi) if pooled else (layer.query, layer.key)
    target = (11, 6)  # in G's 16x16 feature map

    def one_key(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        forced = torch.zeros_like(out)
        forced[:, :, target[0], target[1]] = 10.0  # q . k = 10 * channels there, 0 at every other key
        return forced

    query_conv.register_forward_hook(lambda _m, _i, out: torch.ones_like(out))
    key_conv.register_forward_hook(one_key)
    captured = capture(model, seed=0, index=0)
    g_map = captured.select("g.attn16")[0]
    key = (target[0] // 2, target[1] // 2) if pooled else target
    for y, x in [(0, 0), (31, 31), (17, 4)]:
        weights = g_map.query_map(y, x, 32)
        assert np.unravel_index(weights.argmax(), weights.shape) == key
        assert weights.max() > 0.99
    # In the figure: the heat is in the image pixels that key covers (a 2x2 feature cell: 2 px; pooled: 4 px).
    figure = np.asarray(Image.open(io.BytesIO(render_png(captured, [(3, 3)], "g.attn16"))).convert("RGB"),
                        dtype=float)
    scale, cell = 128 // 32, (4 if pooled else 2)
    panel = figure[:128, 128 + 4:128 + 4 + 128].sum(axis=2)  # the map's panel, after the image's
    hot = np.zeros((32, 32), dtype=bool)
    hot[key[0] * cell:(key[0] + 1) * cell, key[1] * cell:(key[1] + 1) * cell] = True
    hot = np.kron(hot, np.ones((scale, scale), dtype=bool))
    cross = np.zeros_like(hot)
    cross[6:23, 6:23] = True  # the query's mark, white and black
    assert panel[hot & ~cross].min() > panel[~hot & ~cross].max() + 100


def test_d_on_a_real_image(tmp_path: Path) -> None:
    picture = tmp_path / "real.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(picture)
    plain = capture(loaded(*DCGAN_SEED), image=picture)
    assert [layer.name for layer in plain.layers] == ["d.attn8"]
    assert plain.image.shape == (32, 32, 3)
    conditional = loaded(*RESNET_CONDITIONAL)
    with pytest.raises(ValueError, match="give --class"):
        capture(conditional, image=picture)
    with pytest.raises(ValueError, match="classes 0 to 2"):
        capture(conditional, image=picture, label=3)
    with pytest.raises(ValueError, match="no classes"):
        capture(loaded(*DCGAN_SEED), image=picture, label=0)
    scored = capture(conditional, image=picture, label=2)
    assert [layer.name for layer in scored.layers] == ["d.attn16"] and scored.label == 2
    assert np.allclose(scored.layers[0].weights.sum(axis=1), 1, atol=1e-5)


def test_a_capture_survives_its_npz() -> None:
    captured = capture(loaded(*RESNET_CONDITIONAL), seed=1, index=2, label=1)
    again = from_npz(to_npz(captured))
    assert isinstance(again, AttentionCapture) and again.label == 1
    assert np.array_equal(again.image, captured.image)
    for before, after in zip(captured.layers, again.layers, strict=True):
        assert (after.name, after.form, after.grid, after.key_grid) == (before.name, before.form, before.grid,
                                                                        before.key_grid)
        assert np.allclose(after.weights.astype(np.float32), before.weights, atol=1e-3)


def save_run(run: Path, config: TrainConfig, step: int = 7) -> None:
    generator, discriminator = build_models(config)
    path = checkpoint_path(run, step)
    path.parent.mkdir(parents=True)
    torch.save({"format_version": FORMAT_VERSION, "config": config.to_dict(),
                "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(), "step": step}, path)
    point_latest(path)


def test_the_command_writes_the_figure_and_the_raw_maps(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    save_run(run, make_config("debug32", num_classes=0))
    figure, raw = tmp_path / "map.png", tmp_path / "map.json"
    assert main(["attention", "--checkpoint", f"{run}:7", "--seed", "2", "--index", "3",
                 "--queries", "4,4", "30,12", "-o", str(figure), "--json", str(raw)]) == 0
    # Two rows (a query each) of the image, g.attn16 and d.attn8, each panel 128 px with a caption.
    assert Image.open(figure).size == (3 * 128 + 2 * 4, 2 * (128 + 14))
    maps = json.loads(raw.read_text())
    assert [query["y"] for query in maps["queries"]] == [4, 30]
    layers = maps["queries"][1]["layers"]
    assert [layer["name"] for layer in layers] == ["g.attn16", "d.attn8"]
    assert np.sum(layers[0]["weights"]) == pytest.approx(1, abs=1e-4)
    capsys.readouterr()
    assert main(["attention", "--checkpoint", str(run), "--query", "1,1", "--layer", "g.attn99",
                 "-o", str(tmp_path / "no.png")]) == 2
    assert "no attention layer 'g.attn99' (this model's: g.attn16, d.attn8)" in capsys.readouterr().err
    assert main(["attention", "--checkpoint", str(run), "--query", "32,1", "-o",
                 str(tmp_path / "no.png")]) == 2
    assert "outside the 32x32 image" in capsys.readouterr().err
    save_run(tmp_path / "plain", make_config("debug32", num_classes=0, g_attention=[], d_attention=[]))
    assert main(["attention", "--checkpoint", str(tmp_path / "plain"), "--query", "1,1",
                 "-o", str(tmp_path / "no.png")]) == 2
    assert "no attention layers" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()
