"""Validation of what a client submits, with errors that name the offending field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sagan_core.config import ConfigError, TrainConfig, build_config
from sagan_core.dataspec import dataset_paths


class SpecError(ValueError):
    """A submitted value is invalid; `field` is its dotted location in the request body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def validate_train_config(raw: dict[str, Any], *, data_roots: list[Path]) -> dict[str, Any]:
    """The full config dict for a submitted config (preset + overrides), or SpecError.

    Neither torch nor the data set is touched: the data set's path is checked against the allowed
    roots (and that it exists), and the trainer opens it and names any broken file.
    """
    try:
        config = build_config(raw)
    except ConfigError as error:
        raise SpecError(f"config.{error.field}", str(error)) from None
    _check_dataset(config, data_roots)
    return config.to_dict()


def _check_dataset(config: TrainConfig, data_roots: list[Path]) -> None:
    for path in dataset_paths(config.dataset):  # the syntax was checked with the config
        if not Path(path).is_absolute():  # the trainer runs elsewhere, in another directory
            raise SpecError("config.dataset", f"dataset: path {path} must be absolute")
        resolved = Path(path).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in data_roots):
            raise SpecError("config.dataset", f"dataset: path {path} is outside the allowed data roots "
                                              f"(SAGAN_DATA_ROOTS={','.join(map(str, data_roots))})")
        if not resolved.exists():
            raise SpecError("config.dataset", f"dataset: path does not exist: {path}")
