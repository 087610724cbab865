"""sagan_core.model_size (torch-free) against torch's count of the built models, and resnet64 against
BigGAN-PyTorch's arch[64]."""

from __future__ import annotations

import pytest

from sagan_core import build_models
from sagan_core.config import IMAGE_SIZES, PRESETS, make_config
from sagan_core.model_size import discriminator_size, generator_size
from sagan_core.models import count_trainable

from .conftest import models_to_count

CASES = [(preset, imsize, classes) for preset in PRESETS for imsize in IMAGE_SIZES
         for classes in ((0, 10) if PRESETS[preset].get("arch") == "resnet" else (0,))]


def test_a_model_built_on_the_meta_device_has_the_real_ones_parameters_and_buffers() -> None:
    # What the counts below rely on: on the meta device the spectral norms skip their fit, nothing else.
    config = make_config("resnet32", num_classes=10, g_conv_dim=16, d_conv_dim=16)
    for real, meta in zip(build_models(config), models_to_count(config), strict=True):
        assert all(tensor.is_meta for tensor in [*meta.parameters(), *meta.buffers()])
        assert [(name, p.shape, p.requires_grad) for name, p in real.named_parameters()] == [
            (name, p.shape, p.requires_grad) for name, p in meta.named_parameters()]
        assert [(name, b.shape) for name, b in real.named_buffers()] == [
            (name, b.shape) for name, b in meta.named_buffers()]


@pytest.mark.parametrize(("preset", "imsize", "classes"), CASES)
def test_the_torch_free_count_equals_torchs(preset: str, imsize: int, classes: int) -> None:
    # The preset itself at its own size; narrowed at the other sizes (the layout rules are the same).
    narrow = {} if imsize == PRESETS[preset].get("imsize", 64) else {"g_conv_dim": 16, "d_conv_dim": 16}
    config = make_config(preset, imsize=imsize, num_classes=classes, **narrow)
    generator, discriminator = models_to_count(config)
    assert generator_size(config.to_dict()).parameters == count_trainable(generator)
    assert discriminator_size(config.to_dict()).parameters == count_trainable(discriminator)


@pytest.mark.parametrize("overrides", [{"g_norm": "batch", "d_norm": "batch", "attention": "pooled"},
                                       {"g_norm": "none", "d_norm": "none", "g_attention": [4, 8, 16]}])
def test_the_count_follows_the_dcgan_ablations(overrides: dict) -> None:
    config = make_config("sagan32", g_conv_dim=16, d_conv_dim=16, **overrides)
    generator, discriminator = models_to_count(config)
    assert generator_size(config.to_dict()).parameters == count_trainable(generator)
    assert discriminator_size(config.to_dict()).parameters == count_trainable(discriminator)


# BigGAN-PyTorch's G_arch(ch)[64] and D_arch(ch)[64] as multiples of ch: G blocks' in and out channels
# (each upsamples), then BN -> ReLU -> conv to RGB; D blocks' out channels, all but the last downsampling.
BIGGAN64_G_IN, BIGGAN64_G_OUT = [16, 16, 8, 4], [16, 8, 4, 2]
BIGGAN64_D_OUT = [1, 2, 4, 8, 16]


def _expected_resnet64_generator(ch: int, z_dim: int, classes: int) -> int:
    """Written out from BigGAN's lists with our blocks' layers (SN weights, biased convs, per-class BN tables,
    the pooled attention at 32x32, the 3rd block's output): independent of sagan_core.model_size."""
    def conv(k: int, a: int, b: int) -> int:
        return k * k * a * b + b

    def bn(c: int) -> int:
        return 2 * c * (classes or 1)

    count = z_dim * 16 * BIGGAN64_G_IN[0] * ch + 16 * BIGGAN64_G_IN[0] * ch
    for a, b in zip(BIGGAN64_G_IN, BIGGAN64_G_OUT, strict=True):
        a, b = a * ch, b * ch
        count += bn(a) + conv(3, a, b) + bn(b) + conv(3, b, b) + conv(1, a, b)
    att = BIGGAN64_G_OUT[2] * ch  # 32x32
    count += 2 * att * (att // 8) + 2 * att * (att // 2) + 1
    last = BIGGAN64_G_OUT[-1] * ch
    return count + 2 * last + conv(3, last, 3)


@pytest.mark.parametrize("classes", [0, 10])
def test_resnet64_is_biggans_64x64_layout(classes: int) -> None:
    generator, discriminator = models_to_count("resnet64", num_classes=classes)
    assert [(b.conv1.in_channels, b.conv1.out_channels) for b in generator.blocks] == [
        (64 * a, 64 * b) for a, b in zip(BIGGAN64_G_IN, BIGGAN64_G_OUT, strict=True)]  # 1024 -> ... -> 128
    assert generator.to_rgb.in_channels == 128
    assert [b.conv2.out_channels for b in discriminator.blocks] == [64 * m for m in BIGGAN64_D_OUT]
    assert [getattr(b, "downsample", True) for b in discriminator.blocks] == [True] * 4 + [False]
    assert count_trainable(generator) == _expected_resnet64_generator(64, 128, classes)


@pytest.mark.parametrize("classes", [0, 10])
@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_the_count_includes_table_1s_residual_controls(size: int, classes: int) -> None:
    # attention128's residual-feat<size> arms: one more same-width residual block in each net there.
    config = make_config("paper128", g_conv_dim=16, d_conv_dim=16, num_classes=classes, g_attention=[],
                         d_attention=[], g_residual=[size], d_residual=[size])
    generator, discriminator = models_to_count(config)
    assert generator_size(config.to_dict()).parameters == count_trainable(generator)
    assert discriminator_size(config.to_dict()).parameters == count_trainable(discriminator)
