"""Validation of what a client submits, with errors that name the offending field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sagan_core.config import ConfigError, EvalMetric, TrainConfig, build_config
from sagan_core.dataspec import DatasetError, dataset_paths, read_locations
from sagan_core.sweeps import SweepError, SweepRun, expand_sweep

from .jobspec import EvalSpec


class SpecError(ValueError):
    """A submitted value is invalid; `field` is its dotted location in the request body, or `loc` its path
    where a part may hold a dot (a sweep's arm name)."""

    def __init__(self, field: str, message: str, *, loc: list[str] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.loc = loc if loc is not None else field.split(".")


def validate_train_config(raw: dict[str, Any], *, data_roots: list[Path]) -> TrainConfig:
    """The full config for a submitted config (preset + overrides), or SpecError.

    Neither torch nor the data set is touched: the data set's path is checked against the allowed
    roots (and that it exists), and the trainer opens it and names any broken file.
    """
    try:
        config = build_config(raw)
    except ConfigError as error:
        raise SpecError(f"config.{error.field}", str(error)) from None
    _check_dataset(config, data_roots)
    return config


def _check_dataset(config: TrainConfig, data_roots: list[Path]) -> None:
    check_dataset_spec(config.dataset, "config.dataset", data_roots)
    if config.eval_dataset is not None:
        check_dataset_spec(config.eval_dataset, "config.eval_dataset", data_roots)


def check_dataset_spec(spec: str, field: str, data_roots: list[Path]) -> None:
    """A dataset spec's syntax and paths: absolute, under the allowed roots, existing; SpecError on
    `field`."""
    name = field.rpartition(".")[2]
    try:
        paths = dataset_paths(spec)
    except DatasetError as error:
        raise SpecError(field, f"{name}: {error}") from None
    for path in paths:
        if "\0" in path:  # the OS refuses it (ValueError): a client's mistake, not the server's
            raise SpecError(field, f"{name}: a path may not contain a NUL character")
        if not Path(path).is_absolute():  # the trainer runs elsewhere, in another directory
            raise SpecError(field, f"{name}: path {path} must be absolute")
        try:
            resolved = Path(path).expanduser().resolve()
            inside = any(resolved.is_relative_to(root) for root in data_roots)
            exists = inside and resolved.exists()
        except OSError as error:  # e.g. a name longer than the file system allows
            raise SpecError(field, f"{name}: unusable path ({error.strerror})") from None
        if not inside:
            raise SpecError(field, f"{name}: path {path} is outside the allowed data roots "
                                   f"(SAGAN_DATA_ROOTS={','.join(map(str, data_roots))})")
        if not exists:
            raise SpecError(field, f"{name}: path does not exist: {path}")
    _check_read_locations(spec, field, name, data_roots)


def _check_read_locations(spec: str, field: str, name: str, data_roots: list[Path]) -> None:
    """What the data set reads inside its path (CIFAR-10's batches, LSUN's LMDB folders) must really lie under
    the roots too: `cifar10:ROOT/x` whose `x/cifar-10-batches-py` is a link to elsewhere is refused."""
    for location in read_locations(spec):
        try:
            real = location.resolve()
            escapes = location.exists() and not any(real.is_relative_to(root) for root in data_roots)
        except OSError as error:
            raise SpecError(field, f"{name}: unusable path ({error.strerror})") from None
        if escapes:
            raise SpecError(field, f"{name}: {location} is a link leading outside the allowed data roots "
                                   f"(SAGAN_DATA_ROOTS={','.join(map(str, data_roots))})")


def eval_job_spec(config: TrainConfig, *, job_id: str, step: int, dataset: str | None,
                  metrics: list[EvalMetric] | None, n: int | None, data_roots: list[Path]) -> EvalSpec:
    """An eval job's spec: what it measures on the checkpoint at `step` of training job `job_id`, whose config
    is `config`; unset values come from it (its eval_* fields and seed), so results compare with its own
    evaluations."""
    if dataset is not None:
        check_dataset_spec(dataset, "dataset", data_roots)
    return EvalSpec(job_id=job_id, step=step, dataset=dataset or config.eval_dataset or config.dataset,
                    metrics=metrics or config.eval_metrics, n=n or config.eval_n, seed=config.seed,
                    imsize=config.imsize, center_crop=config.center_crop, resize_mode=config.resize_mode)


def validate_sweep(*, base: dict[str, Any], axes: dict[str, Any] | None, arms: list[Any] | None,
                   study: str | None, seeds: list[Any] | None, data_roots: list[Path],
                   max_arms: int) -> list[SweepRun]:
    """Every child run of a submitted sweep, each config validated and its data set checked, or SpecError
    located at the arm and field: `["arms", <arm>, <field>]`, `["base", <field>]`, `["axes", <field>]`, or
    the sweep key (`seeds`, `arms` for too many runs, `study`)."""
    try:
        runs = expand_sweep(base=base, axes=axes, arms=arms, study=study, seeds=seeds, max_arms=max_arms)
    except SweepError as error:
        raise SpecError(error.field, str(error), loc=_sweep_loc(error, axes)) from None
    except ValueError as error:  # an unknown study: the names to choose from
        raise SpecError("study", str(error)) from None
    checked: set[tuple[str, str | None]] = set()
    for run in runs:
        if (run.config.dataset, run.config.eval_dataset) in checked:
            continue
        try:
            _check_dataset(run.config, data_roots)
        except SpecError as error:
            name = error.field.rpartition(".")[2]
            where = ["base", name] if base.get(name) == getattr(run.config, name) else ["arms", run.arm, name]
            raise SpecError(error.field, f"{'base' if where[0] == 'base' else f'arm {run.arm}'}: {error}",
                            loc=where) from None
        checked.add((run.config.dataset, run.config.eval_dataset))
    return runs


def _sweep_loc(error: SweepError, axes: dict[str, Any] | None) -> list[str]:
    if error.base:
        return ["base", error.field]
    if error.arm is not None:
        return ["arms", error.arm, error.field]
    if axes is not None and error.field not in ("sweep", "arms", "seeds", "study", "axes"):
        return ["axes", error.field]
    return [error.field]
