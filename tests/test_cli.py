"""The `sagan` command as a user runs it: train, sample, help, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sagan_core.cli import build_parser, main
from sagan_core.config import FIELDS, read_config_file

from .conftest import subprocess_env


def test_every_config_field_is_a_documented_flag_with_its_default() -> None:
    help_text = subprocess.run([sys.executable, "-m", "sagan_core.cli", "train", "--help"],
                               capture_output=True, text=True, env=subprocess_env(), check=True).stdout
    flat = " ".join(help_text.split())  # argparse wraps lines
    for name, field in FIELDS.items():
        assert "--" + name.replace("_", "-") in help_text, name
        assert field.description and " ".join(field.description.split()) in flat, name
    for flag in ("--config", "--out", "--resume", "--nproc"):
        assert flag in help_text
    assert "--steps INT generator steps to train (default: 100000; 1 <= x <= 2147483647)" in flat
    assert "--amp {none,bf16}" in flat and "(default: false)" in flat


def test_plain_sagan_lists_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "sagan_core.cli"], check=False, capture_output=True,
                            text=True, env=subprocess_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for command in ("train", "sample", "import-checkpoint", "api", "worker", "up", "db"):
        assert f"    {command}" in result.stdout, command


def test_core_subcommands_are_stable() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"train", "sample", "import-checkpoint"} <= set(commands)


def test_train_then_sample(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("preset: debug32\nsteps: 3\nsample_every: 2\nlog_every: 5\n")
    run = tmp_path / "run"
    code = main(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(run), "--sample-every", "1",
                 "--dataset", "synthetic:32", "--g-attention", "none", "--lr-decay", "0.9"])
    assert code == 0
    saved = read_config_file(run / "config.json")
    assert saved["steps"] == 3 and saved["sample_every"] == 1  # the flag beats the file
    assert saved["g_attention"] == [] and saved["lr_decay"] == 0.9
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["real.png", "step-1.png", "step-2.png", "step-3.png"]

    grid, npz = tmp_path / "grid.png", tmp_path / "raw.npz"
    assert main(["sample", "--checkpoint", str(run), "-n", "16", "-o", str(grid), "--npz", str(npz),
                 "--seed", "3"]) == 0
    assert Image.open(grid).size == (4 * 34 + 2, 4 * 34 + 2)
    arrays = np.load(npz)
    assert arrays["images"].shape == (16, 32, 32, 3) and arrays["images"].dtype == np.uint8
    assert int(arrays["step"]) == 3
    again = tmp_path / "again.npz"
    main(["sample", "--checkpoint", str(run / "checkpoints" / "step-3.pt"), "-n", "16", "-o",
          str(tmp_path / "g2.png"), "--npz", str(again), "--seed", "3"])
    assert np.array_equal(np.load(again)["images"], arrays["images"])  # same seed, same pictures


def test_conditional_train_then_sample_by_class(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--preset", "resnet32", "--g-conv-dim", "8", "--d-conv-dim", "8", "--batch-size",
                 "8", "--steps", "1", "--num-workers", "0", "--dataset", "shapes:32", "--device", "cpu",
                 "--out", str(run)]) == 0
    assert read_config_file(run / "config.json")["num_classes"] is None  # as asked; the checkpoint has 3
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run), "--classes", "2,0", "--per-class", "3", "-o",
                 str(grid)]) == 0
    assert Image.open(grid).size == (3 * 34 + 2, 2 * 34 + 2)
    out_dir = tmp_path / "each"
    assert main(["sample", "--checkpoint", str(run), "--per-class", "2", "--out-dir", str(out_dir)]) == 0
    assert len(list(out_dir.iterdir())) == 6  # two of each of the three classes
    assert main(["sample", "--checkpoint", str(run), "--classes", "7", "-o", str(grid)]) == 2
    assert "classes must be in [0, 3)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", str(run), "--classes", "a,b"])
    assert "expected comma-separated class numbers" in capsys.readouterr().err


def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--preset", "debug32", "--imsize", "48", "--out", str(tmp_path)]) == 2
    assert "imsize" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "nothing.pt")]) == 2
    assert "nothing.pt" in capsys.readouterr().err


def test_the_service_side_imports_no_torch() -> None:
    """The API and the Celery parent use sagan_core's config and file helpers without loading torch
    (a CUDA context in a forked parent breaks its children)."""
    code = ("import sys, api.main, worker.app, worker.guard, sagan_service.reaper, sagan_service.specs, "
            "sagan_service.storage; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)


def test_listing_the_commands_loads_no_database_queue_or_store_library() -> None:
    """Every `sagan` call builds the whole parser, the service's commands included: SQLAlchemy, Celery and
    boto3 load only when a command runs that uses them (`sagan_service.queue` pulled SQLAlchemy in for
    `sagan worker`'s help text, 0.2 of a client command's 0.5 s)."""
    code = ("import sys; from sagan_core.cli import build_parser; build_parser(); "
            "loaded = {'sqlalchemy', 'celery', 'boto3', 'torch'} & sys.modules.keys(); "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)
