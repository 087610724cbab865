"""Named studies and sweep expansion: the arms' configs, grid counts, validation naming arm and field, the
cap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sagan_core.config import ConfigError, make_config
from sagan_core.studies import STUDIES, compute_spent, get_study
from sagan_core.sweeps import SweepError, expand_sweep

from .conftest import subprocess_env


def _arm_values(study: str, fields: tuple[str, ...], **base) -> dict[str, tuple]:
    runs = expand_sweep(study=study, base=base)
    return {run.arm: tuple(getattr(run.config, field) for field in fields) for run in runs}


def _differing_fields(study: str) -> set[str]:
    configs = [run.config.to_dict() for run in expand_sweep(study=study)]
    return {field for field in configs[0] if len({repr(config[field]) for config in configs}) > 1}


def test_normalization_study() -> None:
    assert _arm_values("normalization", ("g_norm", "d_norm")) == {
        "sn-both": ("spectral", "spectral"), "sn-d-only": ("batch", "spectral"),
        "bn-d": ("spectral", "batch"), "none-d": ("spectral", "none")}
    assert _differing_fields("normalization") == {"g_norm", "d_norm"}


def _spent(config) -> dict[str, int]:
    return compute_spent(config.steps, n_critic=config.n_critic, batch_size=config.batch_size)


def test_ttur_study() -> None:
    assert _arm_values("ttur", ("d_lr", "g_lr", "n_critic", "steps"), steps=1000) == {
        "ttur": (4e-4, 1e-4, 1, 1000), "equal-1e-4": (1e-4, 1e-4, 1, 1000),
        "equal-4e-4": (4e-4, 4e-4, 1, 1000),
        "equal-ncritic5": (1e-4, 1e-4, 5, 1000), "equal-ncritic5-matched": (1e-4, 1e-4, 5, 200)}
    assert _differing_fields("ttur") == {"d_lr", "g_lr", "n_critic", "steps"}
    spent = {run.arm: _spent(run.config) for run in expand_sweep(study="ttur", base={"steps": 1000})}
    # The matched arm draws the images and makes the D updates of the n_critic-1 arms, in a fifth of G's
    # steps.
    assert spent["equal-ncritic5-matched"] == {"g_updates": 200, "d_updates": 1000, "images_seen": 64_000}
    assert spent["ttur"] == {"g_updates": 1000, "d_updates": 1000, "images_seen": 64_000}
    assert spent["equal-ncritic5"]["d_updates"] == 5000  # the unmatched arm: equal G steps, 5x D's work
    assert get_study("ttur").arms[-1].to_dict()["relative_to_steps"] == {"steps": 0.2}


def test_attention_study_at_the_seeds_size_and_at_32() -> None:
    # seed64 places attention after the last two blocks: G's 16 and 32 maps, D's 8 and 4.
    assert _arm_values("attention", ("g_attention", "d_attention")) == {
        "none": ([], []), "g-only": ([16, 32], []), "d-only": ([], [8, 4]), "both": ([16, 32], [8, 4])}
    # On a base with its own placement (debug32: G [16], D [8]) "both" is still the seed's placement.
    assert _arm_values("attention", ("g_attention", "d_attention"), preset="debug32") == {
        "none": ([], []), "g-only": ([8, 16], []), "d-only": ([], [8, 4]), "both": ([8, 16], [8, 4])}
    assert _differing_fields("attention") == {"g_attention", "d_attention"}


def test_attention128_study_is_table_1_on_the_residual_128_model() -> None:
    assert get_study("attention128").base == "paper128"
    values = _arm_values("attention128", ("arch", "imsize", "g_attention", "d_attention", "g_residual",
                                          "d_residual"))
    assert values == {"none": ("resnet", 128, [], [], [], []),
                      **{f"feat{size}": ("resnet", 128, [size], [size], [], []) for size in (8, 16, 32, 64)},
                      **{f"residual-feat{size}": ("resnet", 128, [], [], [size], [size])
                         for size in (8, 16, 32, 64)}}
    # feat64 has no 64-pixel map at 32x32: the error names the arm and the field.
    with pytest.raises(SweepError) as raised:
        expand_sweep(study="attention128", base={"preset": "resnet32"})
    assert (raised.value.arm, raised.value.field) == ("feat32", "d_attention")


def test_attention128_arms_build_their_blocks_at_128_unconditional_too() -> None:
    import torch

    from sagan_core.layers import PooledSelfAttention
    from sagan_core.models import build_models
    from sagan_core.resnet import DiscriminatorBlock, GeneratorBlock

    def count(model: torch.nn.Module, kind: type) -> int:
        return sum(isinstance(module, kind) for module in model.modules())

    # Small widths keep it fast; num_classes 0 is the unconditional model an unlabelled data set gives.
    runs = {run.arm: run.config for run in expand_sweep(study="attention128",
                                                        base={"g_conv_dim": 8, "d_conv_dim": 8,
                                                              "num_classes": 0})}
    plain_g, plain_d = build_models(runs["none"])
    for arm, extra_blocks, attention in (("none", 0, 0), ("feat32", 0, 1), ("residual-feat32", 1, 0),
                                         ("residual-feat8", 1, 0)):
        generator, discriminator = build_models(runs[arm])
        assert count(generator, GeneratorBlock) == count(plain_g, GeneratorBlock) + extra_blocks, arm
        assert count(discriminator, DiscriminatorBlock) == count(plain_d,
                                                                 DiscriminatorBlock) + extra_blocks, arm
        assert (count(generator, PooledSelfAttention),
                count(discriminator, PooledSelfAttention)) == (attention,) * 2
        with torch.no_grad():
            images = generator.eval()(torch.randn(2, runs[arm].z_dim))
            assert images.shape == (2, 3, 128, 128) and discriminator(images).shape == (2,)
    generator, discriminator = build_models(runs["residual-feat32"])
    # The control sits where feat32's attention would: after G's block making 32x32, D's first 32x32 block.
    assert list(generator.residual) == list(build_models(runs["feat32"])[0].attention) == ["2"]
    assert list(discriminator.residual) == list(build_models(runs["feat32"])[1].attention) == ["1"]


def test_residual_controls_need_the_residual_model_and_a_feature_map_of_that_size() -> None:
    with pytest.raises(ConfigError, match="g_residual: residual blocks need arch resnet"):
        make_config("sagan128", g_residual=[32])
    with pytest.raises(ConfigError, match=r"d_residual: no feature map of size \[128\]"):
        make_config("paper128", d_residual=[128])


def test_hyperparams_study_is_one_factor_at_a_time_at_equal_images_seen() -> None:
    values = _arm_values("hyperparams", ("beta1", "batch_size", "lr_decay", "g_lr", "d_lr"))
    assert values == {"seed": (0.0, 64, None, 1e-4, 4e-4), "beta1-0.5": (0.5, 64, None, 1e-4, 4e-4),
                      "batch32": (0.0, 32, None, 1e-4, 4e-4), "batch128": (0.0, 128, None, 1e-4, 4e-4),
                      "lr-decay": (0.0, 64, 0.95, 1e-4, 4e-4)}
    for arm, (beta1, batch, decay, *_rates) in values.items():
        if arm != "seed":  # exactly one factor away from the seed arm
            assert [beta1 != 0.0, batch != 64, decay is not None].count(True) == 1, arm
    runs = {run.arm: run.config for run in expand_sweep(study="hyperparams", base={"steps": 1000})}
    assert {arm: config.steps for arm, config in runs.items()} == {
        "seed": 1000, "beta1-0.5": 1000, "batch32": 2000, "batch128": 500, "lr-decay": 1000}
    assert {_spent(config)["images_seen"] for config in runs.values()} == {64_000}


@pytest.mark.parametrize("steps", [200, 1000, 100_000])
def test_the_decay_interval_scales_with_the_run(steps: int) -> None:
    # A twentieth of the run: 19 decays at any length (the default interval of 1000 never decays a short run).
    decay = next(run.config for run in expand_sweep(study="hyperparams", base={"steps": steps})
                 if run.arm == "lr-decay")
    assert decay.lr_decay_every == steps // 20
    assert (steps - 1) // decay.lr_decay_every == 19


def test_every_study_expands_on_its_base_with_seeds() -> None:
    for name, study in STUDIES.items():
        runs = expand_sweep(study=name, seeds=[0, 3])
        assert [run.name for run in runs] == [f"{arm.name}-s{seed}" for arm in study.arms for seed in (0, 3)]
        assert {run.config.preset for run in runs} == {study.base}
        assert [run.config.seed for run in runs] == [0, 3] * len(study.arms)


def test_base_fields_apply_under_the_arms() -> None:
    runs = expand_sweep(study="ttur",
                        base={"preset": "sagan32", "dataset": "shapes", "steps": 7, "d_lr": 1.0})
    assert {(run.config.imsize, run.config.dataset) for run in runs} == {(32, "shapes")}
    # A fifth of 7 steps, rounded (at least 1): a compute-matched arm is exact for steps a multiple of 20.
    assert {run.arm: run.config.steps for run in runs} == {"ttur": 7, "equal-1e-4": 7, "equal-4e-4": 7,
                                                           "equal-ncritic5": 7, "equal-ncritic5-matched": 1}
    assert {run.config.d_lr for run in runs} == {4e-4, 1e-4}  # the arms' rates win over the base's


def test_grid_expansion_counts_and_names() -> None:
    runs = expand_sweep(base={"preset": "debug32"}, axes={"d_norm": ["spectral", "batch"],
                                                            "d_lr": [1e-4, 2e-4, 4e-4]}, seeds=[0, 1])
    assert len(runs) == 12
    assert runs[0].name == "d_norm=spectral,d_lr=0.0001-s0"
    assert {(run.config.d_norm, run.config.d_lr, run.config.seed) for run in runs} == {
        (norm, rate, seed) for norm in ("spectral", "batch") for rate in (1e-4, 2e-4, 4e-4)
                                                                                       for seed in (0, 1)}
    lists = expand_sweep(axes={"g_attention": [[], [8, 16], None]}, base={"preset": "sagan32"})
    assert [run.arm for run in lists] == ["g_attention=none", "g_attention=8+16", "g_attention=default"]
    assert [run.arm for run in expand_sweep(axes={}, base={"preset": "debug32"})] == ["base"]


@pytest.mark.parametrize(("sweep", "arm", "field"), [
    ({"arms": [{"name": "ok", "config": {}}, {"name": "bad", "config": {"d_norm": "layer"}}]}, "bad",
     "d_norm"),
    ({"arms": [{"name": "bad", "config": {"steps": "3"}}]}, "bad", "steps"),
    ({"arms": [{"name": "typo", "config": {"d_nrom": "batch"}}]}, "typo", "d_nrom"),
    ({"arms": [{"name": "a/b", "config": {}}]}, "a/b", "name"),
    ({"arms": [{"name": "a", "config": {}}, {"name": "a", "config": {}}]}, "a", "name"),
    ({"arms": [{"name": "a", "config": {"seed": 3}}]}, "a", "seed"),
    ({"axes": {"d_lr": [1e-4, -1.0]}}, "d_lr=-1.0", "d_lr"),
    ({"axes": {"g_attention": [[8], [64]]}, "base": {"preset": "sagan32"}}, "g_attention=64", "g_attention"),
    ({"axes": {"d_nrom": ["batch"]}}, None, "d_nrom"),
    ({"axes": {"d_norm": "batch"}}, None, "d_norm"),
    ({"study": "attention", "base": {"steps": 0}}, None, "steps"),
    ({"study": "nope"}, None, None),
    ({"arms": [], "seeds": [0]}, None, "arms"),
    ({"axes": {}, "seeds": [1, 1]}, None, "seeds"),
    ({"axes": {}, "seeds": [-1]}, None, "seeds"),
    ({"axes": {}, "arms": [{"name": "a"}]}, None, "sweep"),
])
def test_an_invalid_sweep_names_the_arm_and_field(sweep: dict, arm: str | None, field: str | None) -> None:
    with pytest.raises(ValueError) as raised:
        expand_sweep(**sweep)
    if field is None:  # an unknown study: the names to choose from
        assert "attention" in str(raised.value) and "normalization" in str(raised.value)
        return
    assert isinstance(raised.value, SweepError)
    assert (raised.value.arm, raised.value.field) == (arm, field)
    in_base = "steps" in sweep.get("base", {})
    assert raised.value.base == in_base
    assert str(raised.value).startswith(f"arm {arm}: {field}: " if arm else f"base: {field}: " if in_base
                                        else f"{field}: ")


def test_the_cap_counts_arms_times_seeds_before_building_anything() -> None:
    assert len(expand_sweep(study="attention", seeds=[0, 1], max_arms=8)) == 8
    with pytest.raises(SweepError, match="4 arms x 3 seeds = 12 runs, more than the limit of 8") as raised:
        expand_sweep(study="attention", seeds=[0, 1, 2], max_arms=8)
    assert raised.value.field == "arms"
    # 10^12 arms: refused from the axis lengths, without making the product.
    huge = {name: list(range(1, 11)) for name in ("steps", "batch_size", "z_dim", "log_every", "sample_every",
                                                   "checkpoint_every", "eval_n", "keep_checkpoints",
                                                   "lr_decay_every", "nproc", "n_critic", "ema_start")}
    with pytest.raises(SweepError, match="more than the limit of 64"):
        expand_sweep(axes=huge)


def test_study_list_command_shows_every_study_and_arm() -> None:
    result = subprocess.run([sys.executable, "-m", "sagan_core.cli", "study", "list"], capture_output=True,
                            text=True, env=subprocess_env(), check=True)
    for study in STUDIES.values():
        assert f"{study.name}  (base {study.base}; {len(study.arms)} arms)" in result.stdout
        assert study.question in result.stdout
        for arm in study.arms:
            assert f"    {arm.name} " in result.stdout
    assert 'equal-ncritic5         g_lr=0.0001, d_lr=0.0001, n_critic=5\n' in result.stdout
    assert 'equal-ncritic5-matched g_lr=0.0001, d_lr=0.0001, n_critic=5, steps=0.2 x steps' in result.stdout
