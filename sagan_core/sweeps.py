"""Sweeps: a base config times arms times seeds, as validated training configs, and a local runner.

`expand_sweep` is pure and torch-free (the API calls it): a base mapping of config fields, then exactly one
of an `axes` grid, an explicit list of `arms` or a named `study`, times `seeds`, gives one `SweepRun` per arm
and seed. Every run's config is built and validated before the first one starts; the first fault is a
`SweepError` naming the arm and the field. Precedence for each run: the base preset (the study's unless
the base names one) < the base's fields < the arm's fields < the seed.

A study arm's `relative_to_steps` fields are set last, as that multiple of the run's resolved `steps`
(studies.py: compute-matched arms).

`run_sweep` trains the runs of a sweep on this machine, one `sagan train` process each, into
`<out>/<arm>-s<seed>/`, a given number at a time; a run whose directory already holds its last step is
skipped and an interrupted one resumes, so a stopped sweep continues where it was.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import FIELDS, MAX_INT, ConfigError, TrainConfig, build_config
from .exits import EXIT_DIVERGED, EXIT_STOPPED
from .launch import training_launch
from .layout import latest_checkpoint, step_of, sweep_run_name
from .studies import get_study

DEFAULT_MAX_ARMS = 64
# Arm names become directory names and store keys: no path separators, no spaces.
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]{0,99}")


class SweepError(ValueError):
    """An invalid sweep. `arm` is the arm at fault (None for the base, the axes, the seeds or the size),
    `base` whether the base config alone is, `field` the config field or sweep key; str() is one line
    naming them."""

    def __init__(self, field: str, message: str, *, arm: str | None = None, base: bool = False) -> None:
        self.arm, self.base, self.field, self.message = arm, base, field, message
        where = "base: " if base else f"arm {arm}: " if arm is not None else ""
        super().__init__(f"{where}{field}: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepRun:
    arm: str
    seed: int
    config: TrainConfig

    @property
    def name(self) -> str:
        return sweep_run_name(self.arm, self.seed)


def expand_sweep(*, base: Mapping[str, Any] | None = None, axes: Mapping[str, Any] | None = None,
                 arms: Sequence[Any] | None = None, study: str | None = None,
                 seeds: Sequence[Any] | None = None, max_arms: int = DEFAULT_MAX_ARMS) -> list[SweepRun]:
    """The runs of a sweep, arm by arm and seed by seed within each, every config validated.

    `axes` maps config fields to lists of values (their grid; {} = the base alone, arm `base`), `arms` is a
    list of {"name": ..., "config": {...}}, `study` a name in studies.STUDIES. `seeds` defaults to the base's
    seed. More than `max_arms` runs (arms x seeds) is an error, found before any config is built.
    """
    base = dict(base or {})
    if sum(form is not None for form in (axes, arms, study)) != 1:
        raise SweepError("sweep", "give exactly one of axes, arms or study")
    seed_list = _seeds(seeds if seeds is not None else [base.get("seed", 0)])
    if study is not None:
        chosen = get_study(study) if isinstance(study, str) else None
        if chosen is None:
            raise SweepError("study", "expected a study name")
        base.setdefault("preset", chosen.base)
        arm_list = [(arm.name, dict(arm.config)) for arm in chosen.arms]
        relative = {arm.name: dict(arm.relative_to_steps) for arm in chosen.arms}
    elif arms is not None:
        arm_list, relative = _explicit_arms(arms), {}
    else:
        arm_list, relative = _grid(axes, seeds=len(seed_list), max_arms=max_arms), {}
    _check_size(len(arm_list), len(seed_list), max_arms)
    try:
        build_config(base)
    except ConfigError as error:
        raise SweepError(error.field, error.issues[0][1], base=True) from None
    runs = []
    for arm, overrides in arm_list:
        for seed in seed_list:
            try:
                config = build_config({**base, **overrides, "seed": seed})
                if relative.get(arm):  # a study arm's fields that scale with the run's steps
                    config = build_config({**config.to_dict(), **_scaled(relative[arm], config.steps)})
            except ConfigError as error:
                raise SweepError(error.field, error.issues[0][1], arm=arm) from None
            runs.append(SweepRun(arm=arm, seed=seed, config=config))
    return runs


def _scaled(factors: Mapping[str, float], steps: int) -> dict[str, int]:
    """studies.Arm.relative_to_steps resolved for a run of `steps` G steps: whole steps, at least 1."""
    return {field: max(1, round(factor * steps)) for field, factor in factors.items()}


def _explicit_arms(arms: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(arms, (str, bytes)) or not isinstance(arms, Sequence) or not arms:
        raise SweepError("arms", "expected a non-empty list of {name, config}")
    result, seen = [], set()
    for index, arm in enumerate(arms):
        if not isinstance(arm, Mapping) or set(arm) - {"name", "config"}:
            raise SweepError("arms", f"arm {index} should be an object with a name and a config")
        name = arm.get("name")
        if not isinstance(name, str) or not ARM_NAME.fullmatch(name):
            raise SweepError("name", "should be 1-100 letters, digits or ._=,+- (it names a directory)",
                             arm=str(name) if isinstance(name, str) else str(index))
        if name in seen:
            raise SweepError("name", "two arms have this name", arm=name)
        seen.add(name)
        config = arm.get("config", {})
        if not isinstance(config, Mapping):
            raise SweepError("config", "expected a mapping of config fields", arm=name)
        if "seed" in config:
            raise SweepError("seed", "set the sweep's seeds, not an arm's seed", arm=name)
        result.append((name, dict(config)))
    return result


def _check_size(arms: int, seeds: int, max_arms: int) -> None:
    if arms * seeds > max_arms:
        raise SweepError("arms", f"{arms} arms x {seeds} seeds = {arms * seeds} runs, more than the limit of "
                                 f"{max_arms}")


def _grid(axes: Any, *, seeds: int, max_arms: int) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(axes, Mapping):
        raise SweepError("axes", "expected a mapping of config fields to lists of values")
    for field, values in axes.items():
        if field not in FIELDS:
            raise SweepError(str(field), "unknown config field")
        if field == "seed":
            raise SweepError("seed", "set the sweep's seeds, not a seed axis")
        if not isinstance(values, list) or not values:
            raise SweepError(field, "an axis is a non-empty list of values")
        if not all(_config_value(value) for value in values):
            # Config values are at most a list of scalars (g_attention); deeper nesting is no value of any
            # field.
            raise SweepError(field, "an axis value is a number, text, true, false, null or a list of those")
    if not axes:
        return [("base", {})]
    # Before the product is built: a grid can be astronomically large.
    _check_size(math.prod(len(values) for values in axes.values()), seeds, max_arms)
    arms = []
    for combination in itertools.product(*axes.values()):
        overrides = dict(zip(axes, combination, strict=True))
        name = ",".join(f"{field}={_value_name(value)}" for field, value in overrides.items())
        arms.append((name, overrides))
    names = [name for name, _ in arms]
    if len(set(names)) != len(names):
        raise SweepError("axes", "two values of an axis give the same arm name")
    return arms


def _config_value(value: Any, *, nested: bool = False) -> bool:
    if isinstance(value, list):
        return not nested and all(_config_value(item, nested=True) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _value_name(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "+".join(map(_value_name, value)) or "none"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))[:40]


def _seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise SweepError("seeds", "expected a non-empty list of integers")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_INT:
            raise SweepError("seeds", f"each seed should be an integer from 0 to {MAX_INT}")
    if len(set(seeds)) != len(seeds):
        raise SweepError("seeds", "lists a seed twice")
    return list(seeds)


# ---- running a sweep on this machine ---------------------------------------------------------------------

def run_finished(run_dir: Path, steps: int) -> bool:
    """Whether a run directory holds its last step's checkpoint (the trainer always saves the last step)."""
    latest = latest_checkpoint(run_dir)
    return latest is not None and latest.exists() and step_of(latest) >= steps


def check_run_dirs(runs: Sequence[SweepRun], out: Path) -> None:
    """Refuse to continue into a run directory that holds another config: resuming it would mix two runs."""
    for run in runs:
        saved = Path(out) / run.name / "config.json"
        if not saved.exists():
            continue
        old, new = json.loads(saved.read_text()), run.config.to_dict()
        changed = sorted(name for name in new if old.get(name) != new[name])
        if changed:
            raise SweepError(changed[0], f"{saved.parent} holds a run with another {changed[0]} "
                                         f"({old.get(changed[0])!r}); choose another --out or remove it",
                             arm=run.arm)


def run_sweep(runs: Sequence[SweepRun], out: Path, *, parallel: int = 1,
              log: Callable[[str], None] = print) -> dict[str, int]:
    """Train every unfinished run, `parallel` processes at a time, each `sagan train --resume` into
    `<out>/<arm>-s<seed>/` with its output in `train.log` there. Returns each run's exit status (0 also for a
    run found finished). SIGTERM or Ctrl-C stops the running trainings at a checkpoint and returns."""
    out = Path(out)
    check_run_dirs(runs, out)
    statuses: dict[str, int] = {}
    pending = []
    for run in runs:
        if run_finished(out / run.name, run.config.steps):
            log(f"{run.name}: finished already")
            statuses[run.name] = 0
        else:
            pending.append(run)
    env = dict(os.environ)
    # N trainings share the cores instead of each taking all
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    stopping, signalled = False, set()

    def stop(_signum: int = signal.SIGTERM, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for name, (process, _) in list(running.items()):
            if name not in signalled and process.poll() is None:
                process.send_signal(signal.SIGTERM)  # once: the trainer checkpoints and exits 75
                signalled.add(name)

    # SIGTERM and Ctrl-C (SIGINT) stop the trainings at a checkpoint and let this loop collect them. The
    # trainings have their own session, so a terminal's Ctrl-C reaches them only through here.
    on_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)} \
        if on_main_thread else {}
    total = len(runs)
    try:
        while (pending and not stopping) or running:
            while pending and not stopping and len(running) < parallel:
                run = pending.pop(0)
                running[run.name] = (_start(run, out / run.name, env), time.monotonic())
                log(f"[{len(statuses) + len(running)}/{total}] {run.name}: training "
                    f"({run.config.steps} steps, log in {out / run.name / 'train.log'})")
            time.sleep(0.5)
            if stopping:  # also a training that started just as the signal came
                stop()
            for name, (process, started) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                statuses[name] = code
                took = time.monotonic() - started
                what = {0: "finished", EXIT_STOPPED: "stopped (resume by running the sweep again)",
                        EXIT_DIVERGED: "DIVERGED (see its train.log; its latest checkpoint is finite)"}.get(
                    code, f"FAILED with exit status {code} (see its train.log)")
                log(f"{name}: {what} after {took:.0f} s")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return statuses


def _start(run: SweepRun, run_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    config_path.write_text(json.dumps(run.config.to_dict(), indent=2) + "\n")
    command = training_launch(config_path, run_dir, run.config, resume=True).command
    with open(run_dir / "train.log", "ab") as log_file:
        # Own process group: a Ctrl-C in the terminal reaches the sweep only, which stops each run with
        # SIGTERM (a checkpoint) instead of a KeyboardInterrupt (none).
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

