"""The networks: the seed's exact layout, sizes, ablations, attention maths, spectral norm."""

from __future__ import annotations

import pytest
import torch

from sagan_core import build_models
from sagan_core.config import PRESETS, make_config
from sagan_core.layers import PooledSelfAttention, SelfAttention, SpectralNorm, differentiable_attention
from sagan_core.models import count_trainable


def test_seed64_parameter_counts_match_the_lab_report() -> None:
    generator, discriminator = build_models("seed64")
    assert count_trainable(generator) == 3_832_885
    assert count_trainable(discriminator) == 3_175_299


def test_seed64_layout_follows_the_printout() -> None:
    generator, discriminator = build_models("seed64")
    g = dict(generator.main.named_children())
    assert list(g) == ["block1", "block2", "block3", "attn16", "block4", "attn32", "to_rgb"]
    convs = [g[f"block{i}"][0] for i in range(1, 5)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (128, 512, 1), (512, 256, 2), (256, 128, 2), (128, 64, 2)]
    assert all(hasattr(c, "parametrizations") for c in convs)  # spectral norm on every hidden conv
    assert not hasattr(g["to_rgb"][0], "parametrizations")  # ...but not on the last
    assert g["attn16"].query.out_channels == 16 and g["attn32"].value.out_channels == 64
    d = dict(discriminator.main.named_children())
    assert list(d) == ["block1", "block2", "block3", "attn8", "block4", "attn4", "to_logit"]
    assert [d[f"block{i}"][0].out_channels for i in range(1, 5)] == [64, 128, 256, 512]
    assert d["block1"][1].negative_slope == 0.1
    assert d["attn8"].query.out_channels == 32 and d["attn4"].value.out_channels == 512
    assert not hasattr(d["to_logit"], "parametrizations")


@pytest.mark.parametrize("preset,size", [("sagan32", 32), ("seed64", 64), ("sagan128", 128)])
def test_image_sizes(preset: str, size: int) -> None:
    generator, discriminator = build_models(preset, g_conv_dim=16, d_conv_dim=16)
    images = generator(torch.randn(2, 128))
    assert images.shape == (2, 3, size, size)
    # Not "within tanh's range", which holds for any input: an image made of its z, not saturated at ±1.
    assert (images.abs() < 0.99).float().mean() > 0.5
    assert not torch.allclose(images[0], images[1], atol=1e-3)
    assert discriminator(images).shape == (2,)


def test_attention_can_be_ablated_and_moved() -> None:
    generator, discriminator = build_models("seed64", g_attention=[], d_attention=[])
    assert not any(isinstance(m, SelfAttention) for m in [*generator.modules(), *discriminator.modules()])
    generator, _ = build_models("seed64", g_attention=[8, 32])
    assert [n for n, _ in generator.main.named_children() if n.startswith("attn")] == ["attn8", "attn32"]
    with pytest.raises(ValueError, match="g_attention"):
        make_config("seed64", g_attention=[64])


@pytest.mark.parametrize("g_norm,d_norm", [("batch", "batch"), ("none", "none"), ("spectral", "batch")])
def test_normalisation_choices(g_norm: str, d_norm: str) -> None:
    generator, discriminator = build_models("sagan32", g_norm=g_norm, d_norm=d_norm)
    has_sn = any(isinstance(m, SpectralNorm) for m in generator.modules())
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules())
    assert has_sn == (g_norm == "spectral") and has_bn == (g_norm != "none")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in discriminator.modules()) == (d_norm == "batch")
    assert discriminator(generator(torch.randn(4, 128))).shape == (4,)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Qᵀ K) over keys, written out like the paper: q, k (B, C', Nq/Nk), v (B, C, Nk)."""
    attention = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, Nq, Nk)
    return torch.bmm(v, attention.transpose(1, 2))  # (B, C, Nq)


def test_seed_attention_equals_the_explicit_softmax_formulation() -> None:
    torch.manual_seed(0)
    layer = SelfAttention(64)
    layer.gamma.data.fill_(0.7)
    x = torch.randn(3, 64, 8, 8)
    q, k, v = (conv(x).flatten(2) for conv in (layer.query, layer.key, layer.value))
    expected = 0.7 * explicit_attention(q, k, v).view_as(x) + x
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_pooled_attention_equals_the_explicit_formulation() -> None:
    torch.manual_seed(0)
    layer = PooledSelfAttention(64).eval()
    layer.gamma.data.fill_(-0.4)
    x = torch.randn(2, 64, 8, 8)
    q = layer.theta(x).flatten(2)
    k = torch.nn.functional.max_pool2d(layer.phi(x), 2).flatten(2)
    v = torch.nn.functional.max_pool2d(layer.g(x), 2).flatten(2)
    expected = -0.4 * layer.out(explicit_attention(q, k, v).view(2, 32, 8, 8)) + x
    assert torch.allclose(layer(x), expected, atol=1e-5)


def _graph_nodes(output: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind output."""
    seen, todo = set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [parent for parent, _ in node.next_functions]
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("form", ["seed", "pooled"])
def test_attention_is_fused_except_where_a_penalty_needs_double_backward(form: str) -> None:
    _, discriminator = build_models("seed64", attention=form)
    x = torch.randn(2, 3, 64, 64)
    fused = "ScaledDotProductFlashAttentionForCpuBackward0"
    assert fused in _graph_nodes(discriminator(x))  # the training step's fast kernel
    with differentiable_attention():
        assert not any("Attention" in name for name in _graph_nodes(discriminator(x)))


def test_gamma_starts_at_zero_so_attention_starts_as_identity() -> None:
    layer = SelfAttention(32)
    x = torch.randn(2, 32, 4, 4)
    assert layer.gamma.item() == 0.0
    assert torch.equal(layer(x), x)


def test_spectral_norm_normalises_along_dim0_and_freezes_in_eval() -> None:
    torch.manual_seed(0)
    generator, _ = build_models("sagan32", g_conv_dim=16)
    conv = generator.main.block2[0]
    sn = conv.parametrizations.weight[0]
    raw = conv.parametrizations.weight.original.detach()
    sn(raw)  # a train-mode forward runs one power iteration...
    sn.power_iteration(raw, iterations=500)  # ...and many converge to the top singular vectors
    matrix = conv.weight.detach().reshape(raw.shape[0], -1)  # dim 0, even for ConvTranspose2d
    assert torch.linalg.matrix_norm(matrix, ord=2).item() == pytest.approx(1.0, abs=1e-3)
    generator.eval()
    u_before = sn.u.clone()
    generator(torch.randn(2, 128))
    assert torch.equal(sn.u, u_before)


def _sigma_errors(model: torch.nn.Module) -> dict[str, float]:
    """Each spectral norm's relative error: its estimate u·Wv against W's true largest singular value."""
    errors = {}
    for name, layer in model.named_modules():
        if hasattr(layer, "parametrizations"):
            sn, raw = layer.parametrizations.weight[0], layer.parametrizations.weight.original.detach()
            matrix = raw.reshape(raw.shape[0], -1)
            true = torch.linalg.matrix_norm(matrix, ord=2).item()
            errors[name] = abs(torch.dot(sn.u, torch.mv(matrix, sn.v)).item() - true) / true
    return errors


@pytest.mark.parametrize("preset", list(PRESETS))
def test_spectral_norm_estimates_fit_the_initial_weights(preset: str) -> None:
    # Every preset's architecture; conditional residual ones with 10 classes; the big ones narrowed (same
    # layout, the true sigma's SVDs would take minutes).
    overrides = ({"num_classes": 10} if PRESETS[preset].get("arch") == "resnet" else {}) | (
        {"g_conv_dim": 32, "d_conv_dim": 32} if preset in ("paper128", "sagan128", "resnet64") else {})
    torch.manual_seed(0)
    for model in build_models(preset, **overrides):
        errors = _sigma_errors(model)
        assert errors and max(errors.values()) < 0.05, {k: round(v, 3)
                                                        for k, v in errors.items() if v >= 0.05}


@pytest.mark.parametrize("preset", ["resnet32", "resnet64"])
def test_an_untrained_residual_generator_is_not_saturated_in_eval_mode(preset: str) -> None:
    torch.manual_seed(0)
    generator, _ = build_models(preset, num_classes=10)
    with torch.no_grad():
        images = generator.eval()(torch.randn(8, 128), torch.arange(8))
    assert (images.abs() > 0.99).float().mean() < 0.5  # a stale sigma gave only -1 and 1
