"""Validation of what a client submits, with errors that name the offending field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sagan_core.config import FIELD_NAMES, PRESETS, TrainConfig
from sagan_core.dataspec import DatasetError, dataset_paths


class SpecError(ValueError):
    """A submitted value is invalid; `field` is its dotted location in the request body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def validate_train_config(raw: dict[str, Any], *, data_roots: list[Path]) -> dict[str, Any]:
    """The full TrainConfig dict for a submitted config (preset + overrides), or SpecError."""
    from pydantic import TypeAdapter, ValidationError

    unknown = sorted(set(raw) - FIELD_NAMES)
    if unknown:
        raise SpecError(f"config.{unknown[0]}", f"unknown config field(s): {', '.join(unknown)}")
    preset = raw.get("preset", "seed64")
    if preset not in PRESETS:
        raise SpecError("config.preset", f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    try:
        # pydantic checks the field types (and coerces "5" -> 5); TrainConfig.__post_init__ the values.
        config = TypeAdapter(TrainConfig).validate_python({**PRESETS[preset], **raw, "preset": preset})
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        name = str(first["loc"][0]) if first["loc"] else _field_named_in(message)
        raise SpecError(f"config.{name}" if name else "config", message) from None
    _check_dataset(config, data_roots)
    return config.to_dict()


def _field_named_in(message: str) -> str | None:
    # TrainConfig's ValueErrors start with the field name ("g_conv_dim must be a multiple of 8").
    first_word = message.split(" ", 1)[0].rstrip(":,")
    return first_word if first_word in FIELD_NAMES else None


def _check_dataset(config: TrainConfig, data_roots: list[Path]) -> None:
    try:
        paths = dataset_paths(config.dataset)
        for path in paths:
            if not Path(path).is_absolute():  # the trainer runs elsewhere, in another directory
                raise SpecError("config.dataset", f"dataset path {path} must be absolute")
            resolved = Path(path).expanduser().resolve()
            if not any(resolved.is_relative_to(root) for root in data_roots):
                raise SpecError("config.dataset", f"dataset path {path} is outside the allowed data roots "
                                                  f"(SAGAN_DATA_ROOTS={','.join(map(str, data_roots))})")
        if paths:  # synthetic data needs no look at the disk (nor torch, which sagan_core.data imports)
            from sagan_core.data import check_dataset

            check_dataset(config.dataset, config.imsize, center_crop=config.center_crop)
    except DatasetError as error:
        raise SpecError("config.dataset", str(error)) from None
