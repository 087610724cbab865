"""The paper's residual family: the official parameter counts, shapes at every size, the projection D."""

from __future__ import annotations

import pytest
import torch

from sagan_core import build_models
from sagan_core.config import ConfigError, make_config
from sagan_core.models import attention_gammas, count_trainable
from sagan_core.resnet import ConditionalBatchNorm, ResNetDiscriminator, ResNetGenerator

from .conftest import models_to_count


@pytest.mark.parametrize("classes", [1000, 10])
def test_paper128_parameter_counts_match_the_official_graph(classes: int) -> None:
    generator, discriminator = models_to_count("paper128", num_classes=classes)
    assert count_trainable(generator) == 32_222_852 + 9_856 * classes
    assert count_trainable(discriminator) == 38_439_618 + 1_024 * classes
    if classes == 1000:
        assert (count_trainable(generator), count_trainable(discriminator)) == (42_078_852, 39_463_618)


def test_paper128_layout_follows_the_official_code() -> None:
    generator, discriminator = build_models("paper128", num_classes=10)
    assert [(b.conv1.in_channels, b.conv1.out_channels) for b in generator.blocks] == [
        (1024, 1024), (1024, 512), (512, 256), (256, 128), (128, 64)]
    assert list(generator.attention) == ["2"]  # after the third block, 32x32 with 256 channels
    attention = generator.attention["2"]
    assert (attention.theta.out_channels, attention.g.out_channels, attention.out.in_channels) == (32, 128,
                                                                                                   128)
    assert attention.gamma.item() == 0 and attention.theta.bias is None
    assert [b.conv2.out_channels for b in discriminator.blocks] == [64, 128, 256, 512, 1024, 1024]
    assert list(discriminator.attention) == ["1"]  # after the block to 128 channels, 32x32
    assert discriminator.blocks[-1].shortcut is None and not discriminator.blocks[-1].downsample
    # Spectral-norm u/v vectors are buffers, so they are not among the counted parameters.
    assert "linear.parametrizations.weight.0.u" in dict(discriminator.named_buffers())
    cbn = generator.blocks[0].bn1
    assert cbn.gain.weight.shape == (10, 1024) and torch.all(cbn.gain.weight == 1)
    assert not cbn.bn.affine and torch.all(cbn.bias.weight == 0)


@pytest.mark.parametrize("preset,size", [("resnet32", 32), ("resnet64", 64), ("paper128", 128)])
@pytest.mark.parametrize("classes", [0, 5])
def test_shapes_conditional_and_unconditional(preset: str, size: int, classes: int) -> None:
    generator, discriminator = build_models(preset, num_classes=classes, g_conv_dim=8, d_conv_dim=8)
    z, y = torch.randn(2, 128), (torch.tensor([0, 4]) if classes else None)
    images = generator(z, y)
    assert images.shape == (2, 3, size, size)
    # Not "within tanh's range", which holds for any input: an image made of its z, not saturated at ±1.
    assert (images.abs() < 0.99).float().mean() > 0.5
    assert not torch.allclose(images[0], images[1], atol=1e-3)
    assert discriminator(images, y).shape == (2,)
    assert list(generator.attention) and list(discriminator.attention)
    if not classes:  # unconditional: plain affine BatchNorm, no projection
        assert discriminator.embedding is None and generator.blocks[0].bn1.bn.affine
        with pytest.raises(ValueError, match="with labels"):
            generator(z, torch.tensor([0, 1]))
    else:
        with pytest.raises(ValueError, match="without labels"):
            discriminator(images)


def test_projection_discriminator_scores_labels_differently() -> None:
    torch.manual_seed(0)
    _, discriminator = build_models("resnet32", num_classes=4, d_conv_dim=8)
    image = torch.randn(1, 3, 32, 32).repeat(4, 1, 1, 1)
    with torch.no_grad():
        logits = discriminator.eval()(image, torch.arange(4))
    assert len(set(logits.tolist())) == 4  # one image, four labels, four scores


def test_conditional_bn_applies_the_class_gain_and_bias() -> None:
    cbn = ConditionalBatchNorm(3, 2)
    with torch.no_grad():
        cbn.gain.weight[1] = 2.0
        cbn.bias.weight[1] = 0.5
    x = torch.randn(4, 3, 5, 5)
    out = cbn(x, torch.tensor([0, 1, 0, 1]))
    normalised = torch.nn.functional.batch_norm(x, None, None, training=True)
    assert torch.allclose(out[0], normalised[0], atol=1e-5)
    assert torch.allclose(out[1], normalised[1] * 2 + 0.5, atol=1e-5)


def test_num_classes_rules() -> None:
    with pytest.raises(ConfigError, match="num_classes: a conditional model needs arch resnet"):
        make_config("seed64", num_classes=10)
    with pytest.raises(ConfigError, match="attention: the resnet arch supports only pooled"):
        make_config("seed64", arch="resnet")
    assert make_config("seed64", num_classes=None).num_classes == 0
    config = make_config("paper128")
    assert config.num_classes is None and config.g_attention == [32] and config.d_attention == [32]
    assert (config.beta1, config.beta2, config.batch_size, config.g_lr, config.d_lr) == (0.0, 0.999, 256,
                                                                                         1e-4, 4e-4)
    with pytest.raises(ValueError, match="num_classes is null"):
        models_to_count(config)
    assert isinstance(models_to_count(config.model_copy(update={"num_classes": 3}))[0], ResNetGenerator)
    with pytest.raises(ConfigError, match="d_attention: no feature map of size \\[2\\]"):
        make_config("resnet32", d_attention=[2])
    _, discriminator = build_models("resnet32", num_classes=0, d_attention=[8])
    assert isinstance(discriminator, ResNetDiscriminator) and list(discriminator.attention) == ["1"]


def test_the_residual_models_log_each_attention_gamma_by_its_feature_map_size() -> None:
    # Their layers sit in dicts keyed by block index; the metrics and the job page's gamma chart name them
    # by size, as the DCGAN models' (g.attn32), or the chart (and its link to the attention maps) is empty.
    config = make_config("paper128", num_classes=0, g_attention=[32, 64], d_attention=[16], g_conv_dim=8,
                         d_conv_dim=8)  # narrow: the names follow the feature maps' sizes, not their widths
    generator, discriminator = build_models(config)
    assert set(attention_gammas(generator, "g")) == {"g.attn32", "g.attn64"}
    assert attention_gammas(discriminator, "d") == {"d.attn16": 0.0}
