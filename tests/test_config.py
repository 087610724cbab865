"""The one config surface: types, ranges, presets, attention placement, and one wording for errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sagan_core.config import (
    FIELDS,
    PRESETS,
    ConfigError,
    TrainConfig,
    build_config,
    make_config,
    parse_flag,
    read_config_file,
    saved_config,
)
from sagan_core.models import Discriminator, Generator

from .conftest import subprocess_env


def error_of(values: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        build_config(values)
    return str(caught.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"steps": "3"}, "steps: Input should be a valid integer"),
    ({"steps": True}, "steps: Input should be a valid integer"),  # booleans are not numbers
    ({"imsize": 64.0}, "imsize: Input should be 32, 64 or 128"),
    ({"imsize": 48}, "imsize: Input should be 32, 64 or 128"),
    ({"g_lr": math.nan}, "g_lr: Input should be a finite number"),
    ({"d_lr": math.inf}, "d_lr: Input should be a finite number"),
    ({"g_lr": -1.0}, "g_lr: Input should be greater than or equal to 0"),
    ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
    ({"seed": 2**31}, "seed: Input should be less than or equal to 2147483647"),
    ({"g_conv_dim": 12}, "g_conv_dim: must be a multiple of 8 (attention projects to C/8)"),
    ({"batch_size": 9, "nproc": 2}, "batch_size: 9 does not divide evenly over nproc 2"),
    ({"loss": "l2"}, "loss: Input should be 'hinge', 'wgan-gp' or 'bce'"),
    ({"preset": "seed65"},
     "preset: Input should be 'seed64', 'sagan32', 'sagan128', 'paper128', 'resnet64', 'resnet32' or "
     "'debug32'"),
    ({"colour": "red"}, "colour: unknown config field"),
    ({"g_attention": [16, "x"]}, "g_attention: Input should be a valid integer"),
    ({"g_attention": [64]},
     "g_attention: no feature map of size [64] at imsize 64; choose from [4, 8, 16, 32]"),
    ({"dataset": "imagenet:/x"}, "dataset: unknown dataset kind 'imagenet'"),
    ({"channels_last": 1}, "channels_last: Input should be a valid boolean"),
])
def test_wrong_types_and_ranges_are_one_error_naming_the_field(values: dict, message: str) -> None:
    assert error_of(values).startswith(message)


def test_the_error_never_echoes_the_input() -> None:
    assert "SECRET" not in error_of({"steps": "SECRET"})


def test_floats_take_integers_and_yaml_12_exponents(tmp_path: Path) -> None:
    assert make_config(g_lr=1).g_lr == 1.0 and isinstance(make_config(g_lr=1).g_lr, float)
    (tmp_path / "c.yaml").write_text("g_lr: 1e-4\nd_lr: 4.0e-4\nlr_decay: null\n")
    config = build_config(read_config_file(tmp_path / "c.yaml"))
    assert (config.g_lr, config.d_lr, config.lr_decay) == (1e-4, 4e-4, None)
    assert parse_flag("g_lr", "1e-4") == 1e-4 and parse_flag("steps", "3") == 3


@pytest.mark.parametrize(("name", "text", "value"), [
    ("g_attention", "16,32", [16, 32]), ("g_attention", "none", []), ("g_attention", "default", None),
    ("lr_decay", "none", None), ("center_crop", "160", 160), ("channels_last", "true", True),
    ("dataset", "synthetic:32", "synthetic:32"),
])
def test_flag_text_reads_like_yaml(name: str, text: str, value: object) -> None:
    assert parse_flag(name, text) == value


@pytest.mark.parametrize("imsize", [32, 64, 128])
def test_presets_place_attention_after_the_last_two_blocks_at_any_size(imsize: int) -> None:
    config = make_config("seed64", imsize=imsize, g_conv_dim=16, d_conv_dim=16)
    assert config.g_attention == [imsize // 4, imsize // 2]  # the last two generator blocks
    assert config.d_attention == [8, 4]  # the last two discriminator blocks
    generator, discriminator = Generator(config), Discriminator(config)
    names = [name for name, _ in generator.main.named_children()]
    assert names[-4:] == ["attn" + str(imsize // 4), f"block{len(names) - 3}", f"attn{imsize // 2}", "to_rgb"]
    assert [n for n, _ in discriminator.main.named_children() if n.startswith("attn")] == ["attn8", "attn4"]


def test_explicit_attention_still_wins_and_is_validated() -> None:
    assert make_config("seed64", imsize=32, g_attention=[4]).g_attention == [4]
    assert make_config("seed64", d_attention=[]).d_attention == []
    with pytest.raises(ConfigError, match="d_attention: no feature map of size \\[2\\]"):
        make_config("seed64", d_attention=[2])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_survives_json_round_trip(preset: str) -> None:
    config = make_config(preset)
    assert build_config(json.loads(json.dumps(config.to_dict()))) == config
    assert set(config.to_dict()) == set(FIELDS)


def test_every_field_has_help_and_a_typed_schema_with_its_default() -> None:
    schema = TrainConfig.model_json_schema()["properties"]
    assert set(schema) == set(FIELDS)
    for name, field in FIELDS.items():
        assert field.description, name
        assert schema[name]["description"] == field.description
        assert schema[name]["default"] == field.default
        assert "type" in schema[name] or "anyOf" in schema[name] or "enum" in schema[name], name


def test_one_wording_from_flags_files_and_python(tmp_path: Path) -> None:
    expected = error_of({"steps": "3"})
    (tmp_path / "bad.yaml").write_text('steps: "3"\n')
    from_file = _train_stderr(["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "a")])
    from_flag = _train_stderr(["--steps", "'3'", "--out", str(tmp_path / "b")])
    assert from_file == from_flag == f"sagan train: error: {expected}"
    assert _train_stderr(["--steps", "many", "--out", str(tmp_path / "c")]) == (
        "sagan train: error: steps: Input should be a valid integer")


def _train_stderr(args: list[str]) -> str:
    result = subprocess.run([sys.executable, "-m", "sagan_core.cli", "train", *args], check=False,
                            capture_output=True,
                            text=True, env=subprocess_env(), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


def test_trainer_reads_the_saved_json_through_the_same_function(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**make_config("debug32").to_dict(), "steps": "2"}))
    result = subprocess.run([sys.executable, "-m", "sagan_core.train", "--config", str(config_file), "--out",
                             str(tmp_path / "run")], check=False, capture_output=True, text=True,
                            env=subprocess_env(), timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == "error: steps: Input should be a valid integer"


def test_the_config_module_loads_no_torch() -> None:
    code = "import sys, sagan_core.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)


def test_residual_presets_crop_non_square_images_and_the_seed_presets_squash() -> None:
    for preset in ("paper128", "resnet64", "resnet32"):
        assert make_config(preset).resize_mode == "crop", preset
    for preset in ("seed64", "sagan32", "sagan128", "debug32"):
        assert make_config(preset).resize_mode == "squash", preset
    assert make_config("paper128", resize_mode="squash").resize_mode == "squash"
    assert "resize_mode: Input should be 'squash' or 'crop'" in error_of({"resize_mode": "pad"})
    # A config saved (in a checkpoint, by the job service) before the field existed ran squashed.
    older = {name: value for name, value in make_config("paper128").to_dict().items()
             if name != "resize_mode"}
    assert build_config(saved_config(older)).resize_mode == "squash"
    assert build_config(saved_config(make_config("paper128").to_dict())).resize_mode == "crop"
