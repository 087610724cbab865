"""A job's data sets that lie in a store, turned into local packed copies before the job runs.

`ds:<id>` (a data set of the job service: its packed copy at the job's image size lies under
datasets/<id>/<S>px/ in the artifact store) and `packed:s3://bucket/prefix` (a packed set in any bucket of
the worker's S3 endpoint) become `packed:<directory in the worker's data cache>`; other specs are read in
place and stay as they are. The job's stored spec keeps what the user wrote: only the trainer's
config.json and the eval command get the local path (and the real statistics' keys are computed on it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

from sagan_core.config import TrainConfig
from sagan_core.dataspec import dataset_id, is_remote, parse_spec, s3_location
from sagan_service.jobspec import EvalSpec, JobSpec
from sagan_service.settings import Settings
from sagan_service.storage import ArtifactStore, S3Store, packed_prefix

in_store = is_remote  # a set in a store, not a path on this machine
S = TypeVar("S", bound=JobSpec)


def packed_location(dataset: str, imsize: int, *, store: ArtifactStore,
                    settings: Settings) -> tuple[ArtifactStore, str] | None:
    """The store and prefix of the packed set a spec names, or None for a spec read in place."""
    if not is_remote(dataset):
        return None
    kind, arg = parse_spec(dataset)
    if kind == "ds":  # the id's syntax keeps the key inside datasets/<id>/
        return store, packed_prefix(dataset_id(dataset), imsize)
    bucket, prefix = s3_location(dataset, arg)
    # The artifact store's endpoint and credentials: the bucket is one more bucket of the same S3.
    other = S3Store(bucket, "", endpoint_url=settings.s3_endpoint_url, public_endpoint_url=None,
                    max_attempts=settings.s3_max_attempts)
    return other, prefix


def dataset_fields(spec: JobSpec) -> dict[str, str]:
    """The data sets a job's spec names, by field (a training's `dataset` and `eval_dataset`, an eval's
    `dataset`); none for the other kinds."""
    names = ("dataset", "eval_dataset") if isinstance(spec, TrainConfig) else ("dataset",) if isinstance(
        spec, EvalSpec) else ()
    return {name: value for name in names if (value := getattr(spec, name)) is not None}


def resolve_dataset_specs(spec: S, *, store: ArtifactStore, settings: Settings,
                          open_set: Callable[[ArtifactStore, str], Path]) -> S:
    """A copy of a job's spec whose data sets in a store name their local copies: `open_set(store, prefix)`
    brings one into the cache and returns its directory (the supervisor holds it there until the attempt
    ends). One set named by two fields is opened once."""
    resolved: dict[str, str] = {}
    opened: dict[str, str] = {}
    for field, dataset in dataset_fields(spec).items():
        if dataset not in opened:
            imsize = spec.imsize  # type: ignore[union-attr]
            location = packed_location(dataset, imsize, store=store, settings=settings)
            opened[dataset] = dataset if location is None else f"packed:{open_set(*location)}"
        resolved[field] = opened[dataset]
    # model_copy returns the spec's own class, which mypy cannot follow through the bound of S (a union).
    return cast(S, spec.model_copy(update=resolved))
