"""`sagan import-checkpoint --format heykeetae`: reference weights give the same outputs in our models.

The reference code (heykeetae/Self-Attention-GAN) is not vendored, so the networks below are a
from-scratch stand-in that saves the same state-dict keys and computes the same forward: its
spectral norm runs one power iteration (v, then u) on every call, train or eval, and its
attention forms the full softmax(q kᵀ) matrix with bmm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from sagan_core.checkpoint import load_checkpoint
from sagan_core.cli import main
from sagan_core.importers import import_checkpoint

Z_DIM, BATCH = 128, 4


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm() + 1e-12)


class RefSpectralNorm(nn.Module):
    """Wraps `module` (saved as `<name>.module.*`) and owns its weight as weight_bar/_u/_v."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        weight = module.weight.detach()
        del module.weight  # replaced on each forward by weight_bar / sigma
        module.register_parameter("weight_bar", nn.Parameter(weight.clone()))
        module.register_parameter("weight_u", nn.Parameter(unit(torch.randn(weight.shape[0])), False))
        module.register_parameter("weight_v", nn.Parameter(unit(torch.randn(weight[0].numel())), False))
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        matrix = m.weight_bar.view(m.weight_bar.shape[0], -1)
        with torch.no_grad():
            m.weight_v.copy_(unit(matrix.t() @ m.weight_u))
            m.weight_u.copy_(unit(matrix @ m.weight_v))
        m.weight = m.weight_bar / torch.dot(m.weight_u, matrix @ m.weight_v)
        return m(x)


class RefAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.query_conv(x).view(b, -1, h * w).transpose(1, 2)  # (B, N, C/8)
        key = self.key_conv(x).view(b, -1, h * w)  # (B, C/8, N)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (B, N queries, N keys)
        out = torch.bmm(self.value_conv(x).view(b, c, h * w), attention.transpose(1, 2))
        return self.gamma * out.view(b, c, h, w) + x


class RefGenerator(nn.Module):
    """The reference's 64x64 G with conv_dim 64: 512 -> 256 -> 128 (+attn) -> 64 (+attn) -> RGB."""

    def __init__(self) -> None:
        super().__init__()
        widths = [Z_DIM, 512, 256, 128, 64]
        for i in range(1, 5):
            conv = nn.ConvTranspose2d(widths[i - 1], widths[i], 4, *((1, 0) if i == 1 else (2, 1)))
            setattr(self, f"l{i}", nn.Sequential(RefSpectralNorm(conv), nn.BatchNorm2d(widths[i]), nn.ReLU()))
        self.last = nn.Sequential(nn.ConvTranspose2d(64, 3, 4, 2, 1), nn.Tanh())
        self.attn1, self.attn2 = RefAttention(128), RefAttention(64)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.l3(self.l2(self.l1(z.view(*z.shape, 1, 1)))))
        return self.last(self.attn2(self.l4(x)))


class RefDiscriminator(nn.Module):
    """The reference's 64x64 D with conv_dim 64: 64 -> 128 -> 256 (+attn) -> 512 (+attn) -> logit."""

    def __init__(self) -> None:
        super().__init__()
        widths = [3, 64, 128, 256, 512]
        for i in range(1, 5):
            conv = nn.Conv2d(widths[i - 1], widths[i], 4, 2, 1)
            setattr(self, f"l{i}", nn.Sequential(RefSpectralNorm(conv), nn.LeakyReLU(0.1)))
        self.last = nn.Sequential(nn.Conv2d(512, 1, 4))
        self.attn1, self.attn2 = RefAttention(256), RefAttention(512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.l3(self.l2(self.l1(x))))
        return self.last(self.attn2(self.l4(x))).squeeze()


@torch.no_grad()
def trained_looking(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Nonzero gammas, non-trivial BatchNorm, and u/v moved away from their random start."""
    for name, module in model.named_modules():
        if isinstance(module, RefAttention):
            module.gamma.fill_(0.7 if name == "attn1" else -0.4)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.2, 0.2)
    model.train()
    for _ in range(3):
        model(inputs)
    return model.eval()


@dataclass(frozen=True)
class Reference:
    """Saved 1000_G.pth / 1000_D.pth in `dir`, and the reference's first eval outputs after saving."""

    directory: Path
    z: torch.Tensor
    images: torch.Tensor
    logits: torch.Tensor

    @property
    def g(self) -> Path:
        return self.directory / "1000_G.pth"

    @property
    def d(self) -> Path:
        return self.directory / "1000_D.pth"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """A reference-format G and D with trained-looking weights, saved under the reference's names."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("heykeetae")
    z = torch.randn(BATCH, Z_DIM)
    generator = trained_looking(RefGenerator(), torch.randn(BATCH, Z_DIM))
    discriminator = trained_looking(RefDiscriminator(), torch.randn(BATCH, 3, 64, 64))
    with torch.no_grad():  # default init gives logits of ~0.01, too small for a 1e-4 tolerance to mean much
        discriminator.last[0].weight.mul_(100)
    torch.save(generator.state_dict(), directory / "1000_G.pth")
    torch.save(discriminator.state_dict(), directory / "1000_D.pth")
    with torch.no_grad():
        images = generator(z)
        logits = discriminator(images)
    return Reference(directory, z, images, logits)


def assert_reproduces(reference: Reference, checkpoint: Path) -> None:
    model = load_checkpoint(checkpoint)
    with torch.no_grad():
        images = model.generator(reference.z)
        logits = model.discriminator(reference.images)
    assert (images - reference.images).abs().max() < 1e-4
    assert (logits - reference.logits).abs().max() < 1e-4


def test_import_reproduces_reference_outputs(reference: Reference, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    assert main(["import-checkpoint", "--format", "heykeetae", str(reference.g), str(reference.d),
                 "-o", str(out)]) == 0
    model = load_checkpoint(out)
    assert model.step == 1000
    assert (model.config.preset, model.config.imsize, model.config.z_dim) == ("seed64", 64, Z_DIM)
    assert_reproduces(reference, out)
    # Values large enough for the 1e-4 tolerance to bite.
    assert reference.images.std() > 0.05 and reference.logits.abs().min() > 0.1


def test_data_parallel_and_pre_0_4_files_import(reference: Reference, tmp_path: Path) -> None:
    """nn.DataParallel prefixes every key with `module.`; old torch saved no num_batches_tracked."""
    state = torch.load(reference.g)
    legacy = {f"module.{key}": value for key, value in state.items()
              if not key.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "G.pth")
    import_checkpoint("heykeetae", tmp_path / "G.pth", reference.d, tmp_path / "model.pt")
    assert load_checkpoint(tmp_path / "model.pt").step == 1000  # taken from the D file's name
    assert_reproduces(reference, tmp_path / "model.pt")


def test_missing_key_is_named(reference: Reference, tmp_path: Path) -> None:
    state = torch.load(reference.g)
    del state["attn1.gamma"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "1000_G.pth")
    with pytest.raises(ValueError, match=r"missing keys: attn1\.gamma.*unexpected keys: extra\.weight"):
        import_checkpoint("heykeetae", tmp_path / "1000_G.pth", reference.d, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_other_network_size_is_a_shape_error(reference: Reference, tmp_path: Path) -> None:
    state = torch.load(reference.d)
    state["l1.0.module.weight_bar"] = torch.zeros(32, 3, 4, 4)  # conv_dim 32
    torch.save(state, tmp_path / "1000_D.pth")
    with pytest.raises(ValueError,
                       match=r"l1\.0\.module\.weight_bar \(32, 3, 4, 4\) \(expected \(64, 3, 4, 4\)\)"):
        import_checkpoint("heykeetae", reference.g, tmp_path / "1000_D.pth", tmp_path / "out.pt")


def test_bad_files_give_clear_errors(reference: Reference, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    g, d = reference.g, reference.d
    text = tmp_path / "notes_G.pth"
    text.write_text("not a checkpoint")
    later = tmp_path / "2000_D.pth"
    later.write_bytes(d.read_bytes())
    out = str(tmp_path / "out.pt")
    for args, message in (
        ([str(text), str(d)], "not a readable PyTorch state dict"),
        ([str(g), str(later)], "generator is from step 1000 but discriminator from step 2000"),
        ([str(d), str(g)], "looks like a discriminator"),
        ([str(tmp_path / "absent_G.pth"), str(d)], "not found"),
    ):
        assert main(["import-checkpoint", "--format", "heykeetae", *args, "-o", out]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown checkpoint format 'biggan'"):
        import_checkpoint("biggan", g, d, tmp_path / "out.pt")
