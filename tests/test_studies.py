"""Named studies and sweep expansion: the arms' configs, grid counts, validation naming arm and field, the cap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sagan_core.studies import STUDIES, get_study
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


def test_ttur_study() -> None:
    assert _arm_values("ttur", ("d_lr", "g_lr", "n_critic")) == {
        "ttur": (4e-4, 1e-4, 1), "equal-1e-4": (1e-4, 1e-4, 1), "equal-4e-4": (4e-4, 4e-4, 1),
        "equal-ncritic5": (1e-4, 1e-4, 5)}
    assert _differing_fields("ttur") == {"d_lr", "g_lr", "n_critic"}


def test_attention_study_at_the_seeds_size_and_at_32() -> None:
    # seed64 places attention after the last two blocks: G's 16 and 32 maps, D's 8 and 4.
    assert _arm_values("attention", ("g_attention", "d_attention")) == {
        "none": ([], []), "g-only": ([16, 32], []), "d-only": ([], [8, 4]), "both": ([16, 32], [8, 4])}
    # On a base with its own placement (debug32: G [16], D [8]) "both" is still the seed's placement.
    assert _arm_values("attention", ("g_attention", "d_attention"), preset="debug32") == {
        "none": ([], []), "g-only": ([8, 16], []), "d-only": ([], [8, 4]), "both": ([8, 16], [8, 4])}
    assert _differing_fields("attention") == {"g_attention", "d_attention"}


def test_attention128_study_is_the_papers_placements() -> None:
    assert get_study("attention128").base == "sagan128"
    assert _arm_values("attention128", ("imsize", "g_attention", "d_attention")) == {
        "none": (128, [], []), "feat8": (128, [8], [8]), "feat16": (128, [16], [16]),
        "feat32": (128, [32], [32]), "feat64": (128, [64], [64])}
    # feat64 has no 64-pixel map at 32x32: the error names the arm and the field.
    with pytest.raises(SweepError) as raised:
        expand_sweep(study="attention128", base={"preset": "sagan32"})
    assert (raised.value.arm, raised.value.field) == ("feat32", "g_attention")


def test_hyperparams_study_is_one_factor_at_a_time() -> None:
    values = _arm_values("hyperparams", ("beta1", "batch_size", "lr_decay", "g_lr", "d_lr"))
    assert values == {"seed": (0.0, 64, None, 1e-4, 4e-4), "beta1-0.5": (0.5, 64, None, 1e-4, 4e-4),
                      "batch32": (0.0, 32, None, 1e-4, 4e-4), "batch128": (0.0, 128, None, 1e-4, 4e-4),
                      "lr-decay": (0.0, 64, 0.95, 1e-4, 4e-4)}
    for arm, (beta1, batch, decay, *_rates) in values.items():
        if arm != "seed":  # exactly one factor away from the seed arm
            assert [beta1 != 0.0, batch != 64, decay is not None].count(True) == 1, arm


def test_every_study_expands_on_its_base_with_seeds() -> None:
    for name, study in STUDIES.items():
        runs = expand_sweep(study=name, seeds=[0, 3])
        assert [run.name for run in runs] == [f"{arm.name}-s{seed}" for arm in study.arms for seed in (0, 3)]
        assert {run.config.preset for run in runs} == {study.base}
        assert [run.config.seed for run in runs] == [0, 3] * len(study.arms)


def test_base_fields_apply_under_the_arms() -> None:
    runs = expand_sweep(study="ttur", base={"preset": "sagan32", "dataset": "shapes", "steps": 7, "d_lr": 1.0})
    assert {(run.config.imsize, run.config.dataset, run.config.steps) for run in runs} == {(32, "shapes", 7)}
    assert {run.config.d_lr for run in runs} == {4e-4, 1e-4}  # the arms' rates win over the base's


def test_grid_expansion_counts_and_names() -> None:
    runs = expand_sweep(base={"preset": "debug32"}, axes={"d_norm": ["spectral", "batch"],
                                                            "d_lr": [1e-4, 2e-4, 4e-4]}, seeds=[0, 1])
    assert len(runs) == 12
    assert runs[0].name == "d_norm=spectral,d_lr=0.0001-s0"
    assert {(run.config.d_norm, run.config.d_lr, run.config.seed) for run in runs} == {
        (norm, rate, seed) for norm in ("spectral", "batch") for rate in (1e-4, 2e-4, 4e-4) for seed in (0, 1)}
    lists = expand_sweep(axes={"g_attention": [[], [8, 16], None]}, base={"preset": "sagan32"})
    assert [run.arm for run in lists] == ["g_attention=none", "g_attention=8+16", "g_attention=default"]
    assert [run.arm for run in expand_sweep(axes={}, base={"preset": "debug32"})] == ["base"]


@pytest.mark.parametrize(("sweep", "arm", "field"), [
    ({"arms": [{"name": "ok", "config": {}}, {"name": "bad", "config": {"d_norm": "layer"}}]}, "bad", "d_norm"),
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
    assert 'equal-ncritic5   g_lr=0.0001, d_lr=0.0001, n_critic=5' in result.stdout
