"""What a job runs, typed: one model per job kind, made once by sagan_service.submit and read back from the
`jobs.spec` column by whoever runs or shows the job. Torch-free (the API imports it).

    kind      spec                           stored (jobs.spec)
    train     sagan_core.config.TrainConfig  TrainConfig.to_dict(): the full config (a continued job's source
                                             checkpoint is no part of it: jobs.continued_from/_step)
    sample    SampleSpec                     {job_id, step, n, seed} (+ classes, per_class, truncation,
                                             interpolate, frames when asked)
    eval      EvalSpec                       {job_id, step, dataset, metrics, n, seed, imsize, center_crop,
                                              resize_mode}
    sweep     SweepSpec                      the request's {base, axes, arms, study, seeds}
    dataset   DatasetSpec                    {dataset_id, source, imsizes}

The stored JSON keeps the shape every earlier version wrote, so older rows read back: a train row through
`build_config(saved_config(row))` (a field the row predates runs as it did then), an eval row without
`resize_mode` as "squash".

How to read one (the worker, the reaper, a report): `spec = read_spec(job.kind, job.spec)`, then attributes
(`spec.steps`, `spec.dataset`); with a literal kind the type checker knows the model:
`read_spec("eval", job.spec).metrics`. A row that is no valid spec of its kind raises ValueError (ConfigError
for train, pydantic's ValidationError for the others). How to store one: `spec.to_dict()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast, overload

from pydantic import BaseModel, ConfigDict, Field

from sagan_core.config import PREDATED_FIELDS, EvalMetric, ResizeMode, TrainConfig, build_config, saved_config


class _StoredSpec(BaseModel):
    # Strict: specs are made from validated values and read back from JSON, where 1 is no "1" and no true.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored in jobs.spec (the same method as TrainConfig's)."""
        return self.model_dump(mode="json")


class SampleSpec(_StoredSpec):
    """A grid of samples from a training job's committed checkpoint."""

    job_id: str
    step: int
    n: int
    seed: int
    classes: list[int] | None = None
    per_class: int | None = None
    truncation: float | None = None  # BigGAN's truncation trick's psi (sagan_core.sampling.truncated_noise)
    interpolate: list[int] | None = None  # seeds A, B: a strip of `frames` images along the walk between them
    frames: int | None = None

    def to_dict(self) -> dict[str, Any]:
        # Only when asked, so a plain sample job's spec is what it always was.
        return self.model_dump(mode="json", exclude={name for name in OPTIONAL_SAMPLE_FIELDS
                                                     if getattr(self, name) is None})


OPTIONAL_SAMPLE_FIELDS = ("classes", "per_class", "truncation", "interpolate", "frames")


class EvalSpec(_StoredSpec):
    """Metrics of a training job's checkpoint, resolved against its config
    (sagan_service.specs.eval_job_spec)."""

    job_id: str
    step: int
    dataset: str
    metrics: list[EvalMetric]
    n: int
    seed: int
    imsize: int
    center_crop: int | None
    resize_mode: ResizeMode = PREDATED_FIELDS["resize_mode"]  # rows stored before it existed squashed


class SweepSpec(_StoredSpec):
    """A sweep as requested; its children are train jobs, each with its own TrainConfig."""

    model_config = ConfigDict(strict=False)  # the request's JSON values, kept as they came

    base: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, Any] | None = None
    arms: list[Any] | None = None
    study: str | None = None
    seeds: list[Any] | None = None


class DatasetSpec(_StoredSpec):
    """A data set's build: `source` (an upload's `upload:<key>`, an s3:// prefix or a spec) packed at
    `imsizes` (None: the sizes the images allow)."""

    dataset_id: str
    source: str
    imsizes: list[int] | None


JobSpec = TrainConfig | SampleSpec | EvalSpec | SweepSpec | DatasetSpec
_MODELS: dict[str, type[_StoredSpec]] = {"sample": SampleSpec, "eval": EvalSpec, "sweep": SweepSpec,
                                         "dataset": DatasetSpec}


@overload
def read_spec(kind: Literal["train"], raw: Mapping[str, Any]) -> TrainConfig: ...
@overload
def read_spec(kind: Literal["sample"], raw: Mapping[str, Any]) -> SampleSpec: ...
@overload
def read_spec(kind: Literal["eval"], raw: Mapping[str, Any]) -> EvalSpec: ...
@overload
def read_spec(kind: Literal["sweep"], raw: Mapping[str, Any]) -> SweepSpec: ...
@overload
def read_spec(kind: Literal["dataset"], raw: Mapping[str, Any]) -> DatasetSpec: ...
@overload
def read_spec(kind: str, raw: Mapping[str, Any]) -> JobSpec: ...


def read_spec(kind: str, raw: Mapping[str, Any]) -> JobSpec:
    """The typed spec of a job of `kind` from its stored JSON (a row of any version); ValueError if it is
    none."""
    if kind == "train":
        return build_config(saved_config(raw))
    if kind not in _MODELS:
        raise ValueError(f"no job kind {kind!r}")
    # model_validate returns the class it is called on; mypy sees only _MODELS' value type
    return cast(JobSpec, _MODELS[kind].model_validate(raw))
