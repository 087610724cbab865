"""The typed job specs: each kind stores the JSON it always did and reads it back, older rows included."""

from __future__ import annotations

import pytest

from sagan_core.config import make_config
from sagan_service.jobspec import DatasetSpec, EvalSpec, SampleSpec, SweepSpec, read_spec

SPECS = {
    "train": make_config("debug32", steps=5, eval_every=5),
    "sample": SampleSpec(job_id="j", step=10, n=16, seed=3, classes=[0, 2], per_class=4),
    "eval": EvalSpec(job_id="j", step=10, dataset="shapes:64", metrics=["swd", "fid"], n=64, seed=0,
                     imsize=32, center_crop=None, resize_mode="crop"),
    "sweep": SweepSpec(base={"preset": "debug32"}, axes={"g_lr": [1e-4, 2e-4]}, seeds=[0, 1]),
    "dataset": DatasetSpec(dataset_id="d", source="upload:datasets/d/source/upload.zip", imsizes=None),
}


@pytest.mark.parametrize("kind", list(SPECS))
def test_each_kind_reads_back_what_it_stores(kind: str) -> None:
    spec = SPECS[kind]
    assert read_spec(kind, spec.to_dict()) == spec
    assert read_spec(kind, spec.to_dict()).to_dict() == spec.to_dict()


def test_the_stored_json_keeps_its_shape() -> None:
    assert SPECS["train"].to_dict() == make_config("debug32", steps=5, eval_every=5).model_dump(mode="json")
    assert list(SPECS["eval"].to_dict()) == ["job_id", "step", "dataset", "metrics", "n", "seed", "imsize",
                                             "center_crop", "resize_mode"]
    assert SPECS["sweep"].to_dict() == {"base": {"preset": "debug32"}, "axes": {"g_lr": [1e-4, 2e-4]},
                                        "arms": None, "study": None, "seeds": [0, 1]}
    assert SPECS["dataset"].to_dict() == {"dataset_id": "d", "source": "upload:datasets/d/source/upload.zip",
                                          "imsizes": None}
    # An unconditional sample job's spec is what it always was: no classes or per_class keys.
    assert SampleSpec(job_id="j", step=1, n=8, seed=0).to_dict() == {"job_id": "j", "step": 1, "n": 8,
                                                                     "seed": 0}


def test_an_old_train_row_without_newer_fields_reads_as_it_ran() -> None:
    row = make_config("resnet64").to_dict()
    for newer in ("nodes", "resize_mode", "shuffle"):
        del row[newer]
    config = read_spec("train", row)
    # nodes and shuffle: their defaults; resize_mode: squash, as before it existed, not the preset's crop.
    assert (config.nodes, config.shuffle, config.resize_mode) == (1, "global", "squash")
    assert config.arch == "resnet" and config.imsize == 64


def test_an_old_eval_row_without_resize_mode_squashes() -> None:
    row = SPECS["eval"].to_dict()
    del row["resize_mode"]
    assert read_spec("eval", row).resize_mode == "squash"


@pytest.mark.parametrize(("kind", "row"), [
    ("train", {"steps": "many"}),
    ("sample", {"job_id": "j", "step": "1", "n": 8, "seed": 0}),  # JSON types: "1" is no step
    ("eval", {"job_id": "j"}),
    ("dataset", {"dataset_id": "d", "source": "s", "imsizes": None, "extra": 1}),
    ("nonsense", {}),
])
def test_a_row_that_is_no_spec_of_its_kind_is_a_value_error(kind: str, row: dict) -> None:
    with pytest.raises(ValueError):
        read_spec(kind, row)
