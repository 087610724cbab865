"""The trainer's TensorBoard event files, read back with TensorBoard's own reader (EventAccumulator)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sagan_core.layout import checkpoint_path, event_files, point_latest
from sagan_core.train import train

from .conftest import tiny_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(run: Path) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalar_steps(events: event_accumulator.EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in events.Scalars(tag)]


def test_event_files_hold_the_metrics_evaluations_and_grids(tmp_path: Path) -> None:
    train(tiny_config(steps=4, sample_every=2, eval_every=2, eval_metrics=["swd"], eval_n=32), tmp_path)
    assert event_files(tmp_path)
    events = read_events(tmp_path)
    scalars = set(events.Tags()["scalars"])
    assert {"loss/d", "loss/g", "d_out/real", "d_out/fake", "gamma/g.attn16", "gamma/d.attn8", "lr/g", "lr/d",
            "speed/img_per_s", "data/bad_images", "eval/swd"} <= scalars
    assert scalar_steps(events, "eval/swd") == [0, 2, 4]  # the untrained baseline, then every eval_every
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    training = [record for record in records if "d_loss" in record]
    assert scalar_steps(events, "loss/d") == [record["step"] for record in training] == [1, 2, 3, 4]
    assert [event.value
            for event in events.Scalars("loss/g")] == pytest.approx([r["g_loss"] for r in training])
    grids = events.Images("samples")
    assert [image.step for image in grids] == [2, 4]
    assert (grids[0].width, grids[0].height) == (8 * 34 + 2, 8 * 34 + 2)  # the PNG the trainer wrote


def test_a_resumed_run_continues_the_curves_without_duplicates(tmp_path: Path) -> None:
    config = tiny_config(steps=4, checkpoint_every=2, sample_every=1, keep_checkpoints=5)
    train(config, tmp_path)
    # As if the process had died after step 4 was logged but before its checkpoint: resume from step 2.
    checkpoint_path(tmp_path, 4).unlink()
    point_latest(checkpoint_path(tmp_path, 2))
    train(config, tmp_path, resume=True)
    assert len(event_files(tmp_path)) == 2
    events = read_events(tmp_path)
    assert scalar_steps(events, "loss/d") == [1, 2, 3, 4]
    assert [image.step for image in events.Images("samples")] == [1, 2, 3, 4]
    # Steps 3 and 4 are the resumed process's: the metrics.jsonl it rewrote says the same.
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [event.value
            for event in events.Scalars("loss/d")] == pytest.approx([r["d_loss"] for r in records])


def test_without_tensorboard_a_run_warns_once_and_writes_no_event_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    train(tiny_config(steps=2), tmp_path)
    assert not event_files(tmp_path)
    assert (tmp_path / "metrics.jsonl").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tensorboard" in line]
    assert warnings == ["warning: tensorboard is not installed: this run writes no TensorBoard event files"]
