"""Request and response bodies, kept apart from the database tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from sagan_core.config import MAX_INT, EvalMetric, TrainConfig, config_warnings
from sagan_service.jobspec import read_spec
from sagan_service.models import PRIORITIES, Dataset, Job, WebhookDelivery

MAX_STEP = MAX_INT  # steps are 32-bit integer columns
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Kind = Literal["train", "sample", "eval", "sweep", "dataset"]
DatasetStatus = Literal["queued", "running", "ready", "failed"]
Imsize = Literal[32, 64, 128]  # what the models are built for
Priority = Literal["low", "normal", "high"]  # sagan_service.models.PRIORITIES


# The schema clients see is TrainConfig's, every field with its type, default and description. The body
# itself stays a plain mapping here: a preset's values sit between those defaults and what a client
# sends, so sagan_core.config.build_config (the CLI's and the trainer's way in) validates it.
TrainConfigBody = Annotated[dict[str, Any], WithJsonSchema({
    **TrainConfig.model_json_schema(),
    "description": "`sagan train` fields over the preset's values, e.g. {\"preset\": \"debug32\", \"steps\": "
                   "100}; every field is optional (defaults shown are seed64's)."})]


class WebhookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(max_length=2048,
                     description="http(s) URL on a host SAGAN_WEBHOOK_HOSTS lists; each status change is "
                                 "POSTed to it, signed (docs/service.md: Webhooks)")


class JobOptions(BaseModel):
    """What every kind of job may carry besides its own fields."""

    priority: Priority = Field("normal",
                               description="a free worker takes the highest first, then shares fairly "
                                                     "between owners; high is for admins")
    notify: list[WebhookTarget] = Field(default_factory=list, max_length=5,
                                        description="URLs told of each status change of the job")


class TrainJobCreate(JobOptions):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types: true is no integer

    kind: Literal["train"]
    config: TrainConfigBody = Field(default_factory=dict)


class SampleSource(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types: true is no integer

    job_id: str
    step: int | None = Field(None, ge=0, le=MAX_STEP,
                             description="a committed checkpoint step; null = the latest")


class SampleJobCreate(JobOptions):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types: true is no integer

    kind: Literal["sample"]
    source: SampleSource
    n: int = Field(64, ge=1, le=1024)
    seed: int = Field(0, ge=0, le=MAX_INT)
    classes: list[Annotated[int, Field(ge=0, le=MAX_INT)]] | None = Field(
        None, min_length=1, max_length=1024,
        description="conditional models: one grid row per listed class, per_class images each (n is then "
                    "unused)")
    per_class: int | None = Field(None, ge=1, le=1024,
                                  description="conditional models: images per class (default 8), of every "
                                              "class unless `classes` lists some")
    truncation: float | None = Field(None, gt=0, le=100,
                                     description="BigGAN's truncation trick: every z entry "
                                     "above this in magnitude is drawn again; null = none")
    interpolate: list[Annotated[int, Field(ge=0, le=MAX_INT)]] | None = Field(
        None, min_length=2, max_length=2, description="seeds [A, B]: instead of a grid, a strip of `frames` "
                                                      "images along the latent walk from A's z to B's "
                                                      "(conditional models: from the first of `classes` to "
                                                      "the last, default class 0)")
    frames: int = Field(8, ge=2, le=64, description="images of an `interpolate` walk")

    @model_validator(mode="after")
    def _bounded_grid(self) -> SampleJobCreate:
        if self.classes is not None and len(self.classes) * (self.per_class or 8) > 1024:
            raise ValueError("classes x per_class is more than 1024 images")
        if self.interpolate is not None and (self.per_class is not None or len(self.classes or []) > 2):
            raise ValueError("interpolate walks from one class to another: give at most 2 classes and no "
                             "per_class")
        return self


class EvalSource(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types: true is no integer

    job_id: str
    step: Annotated[int, Field(ge=0, le=MAX_STEP)] | Literal["best"] | None = Field(
        None, description="a committed checkpoint step; null = the latest; \"best\" = the checkpoint of the "
                          "job's best evaluation")


class EvalJobCreate(JobOptions):
    """Measure a training job's checkpoint: `metrics` over `n` samples against `n` images of `dataset`."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types: true is no integer

    kind: Literal["eval"]
    source: EvalSource
    dataset: str | None = Field(None, max_length=4096, description="dataset spec; null = the training job's "
                                                                   "eval_dataset, else its dataset")
    metrics: list[EvalMetric] | None = Field(None, min_length=1, description="fid, kid, is, pr (need the "
                                             "Inception weights on the worker), swd; null = its eval_metrics")
    n: int | None = Field(None, ge=2, le=100_000, description="samples (and real images); null = its eval_n")


ArmsBody = Annotated[list[Any], WithJsonSchema({
    "type": "array", "description": "explicit arms; each child's config is base, then the arm's config, then "
                                    "its seed",
    "items": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._=,+-]{0,99}$"},
        "config": {"type": "object", "description": "TrainConfig fields over the base"}}}})]


class SweepJobCreate(JobOptions):
    """One child `train` job per arm and seed: a grid over `axes`, a list of `arms` or a named `study` (give
    exactly one), times `seeds`. Every child is validated before any is created; a fault is a 422 whose `loc`
    names the arm and the field (`["body", "arms", <arm>, <field>]`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sweep"]
    base: TrainConfigBody = Field(default_factory=dict)
    axes: dict[str, Any] | None = Field(None,
                                        description="config field -> list of values; the arms are their "
                                                          "grid, named `field=value,...`")
    arms: ArmsBody | None = None
    study: str | None = Field(None, description="a named study (GET /studies); its base preset unless `base` "
                                                "names one")
    seeds: list[Any] | None = Field(None,
                                    description="seeds of every arm (distinct integers); null = [base's "
                                                      "seed or 0]")


class ContinueCreate(JobOptions):
    """A new training job that continues this one's: from its committed checkpoint at `step`, to `steps` in
    all, with its config but for `config`'s fields (those a continued run may change: learning rates, EMA,
    evaluation, cadence, devices; anything that shapes the model or data is a 422 naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types: true is no integer

    steps: int = Field(ge=1, le=MAX_STEP, description="the new total, above the checkpoint's step")
    step: Annotated[int, Field(ge=0, le=MAX_STEP)] | Literal["best"] | None = Field(
        None, description="the checkpoint to continue from; null = the latest; \"best\" = the best "
                          "evaluation's")
    config: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields to change")


JobCreate = Annotated[TrainJobCreate | SampleJobCreate | EvalJobCreate | SweepJobCreate,
                      Field(discriminator="kind")]


class Progress(BaseModel):
    step: int
    total_steps: int | None


class SweepChild(BaseModel):
    id: str
    arm: str
    seed: int
    status: Status
    progress: Progress
    best_eval: dict[str, Any] | None = Field(description="the child's best evaluation, if it evaluates")
    error: str | None


class JobPublic(BaseModel):
    id: str
    kind: Kind
    status: Status
    queue: str
    priority: Priority
    spec: dict[str, Any] = Field(description="train: the full config; sample: the resolved source, n and "
                                             "seed; eval: the resolved source, dataset, metrics, n and seed; "
                                             "sweep: the request's base, study, axes, arms and seeds")
    progress: Progress
    metrics: dict[str, Any] | None = Field(description="rank 0's latest metrics line")
    latest_eval: dict[str, Any] | None = Field(description="the newest evaluation (an eval job: its result)")
    best_eval: dict[str, Any] | None = Field(description="a training job's best evaluation by its first "
                                                         "eval metric; its checkpoint is committed")
    best_held_out_eval: dict[str, Any] | None = Field(
        None, description="in GET /jobs/{id}: the newest held-out evaluation (an eval job's) of the best "
                          "checkpoint, beside best_eval, the selection score it was picked by")
    attempt: int
    max_attempts: int
    resumed_from_step: int | None = Field(description="checkpoint step the current attempt resumed from")
    latest_checkpoint_step: int | None
    cancel_requested: bool
    error: str | None
    log_tail: str | None
    warnings: list[str] = Field(description="a training job's settings that the literature advises against")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    parent_id: str | None = Field(None, description="a sweep's child: the sweep")
    arm: str | None = Field(None, description="a sweep's child: its arm")
    continued_from: str | None = Field(None, description="a continued training: the job it continues")
    continued_from_step: int | None = Field(None, description="a continued training: the checkpoint step it "
                                                              "started from")
    continued_by: list[str] | None = Field(None,
                                           description="in GET /jobs/{id}: the jobs that continue this one")
    children: list[SweepChild] | None = Field(None, description="a sweep (in GET /jobs/{id}): its children, "
                                                                "arm by arm and seed by seed")

    @classmethod
    def from_job(cls, job: Job, children: list[Job] | None = None,
                 best_held_out_eval: dict[str, Any] | None = None,
                 continued_by: list[str] | None = None) -> JobPublic:
        return cls(
            id=job.id, kind=job.kind, status=job.status, queue=job.queue, priority=PRIORITIES[job.priority],
            spec=job.spec,
            progress=Progress(step=job.step, total_steps=job.total_steps), metrics=job.metrics,
            latest_eval=job.latest_eval, best_eval=job.best_eval, best_held_out_eval=best_held_out_eval,
            attempt=job.attempt, max_attempts=job.max_attempts, resumed_from_step=job.resumed_from_step,
            latest_checkpoint_step=job.latest_checkpoint_step, cancel_requested=job.cancel_requested,
            error=job.error, log_tail=job.log_tail, created_at=utc(job.created_at),
            warnings=config_warnings(job.spec) if job.kind == "train" else [],
            started_at=utc(job.started_at), finished_at=utc(job.finished_at), updated_at=utc(job.updated_at),
            parent_id=job.parent_id, arm=job.arm, continued_from=job.continued_from,
            continued_from_step=job.continued_from_step, continued_by=continued_by,
            children=None if children is None else [
                SweepChild(id=child.id, arm=child.arm or "", seed=read_spec("train", child.spec).seed,
                           status=child.status,
                           progress=Progress(step=child.step, total_steps=child.total_steps),
                           best_eval=child.best_eval, error=child.error) for child in children])


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ArtifactItem(BaseModel):
    step: int
    url: str
    created_at: datetime


class ArtifactList(BaseModel):
    items: list[ArtifactItem]


class MetricsList(BaseModel):
    items: list[dict[str, Any]]


class EvalList(BaseModel):
    items: list[dict[str, Any]] = Field(description="evals.jsonl records, oldest first")


class Preset(BaseModel):
    name: str
    overrides: dict[str, Any] = Field(description="the fields this preset sets over TrainConfig's defaults")
    config: dict[str, Any] = Field(description="the resolved config of this preset alone")


class PresetList(BaseModel):
    items: list[Preset]


class StudyArm(BaseModel):
    name: str
    config: dict[str, Any] = Field(description="the TrainConfig fields this arm sets over the base")
    relative_to_steps: dict[str, float] = Field(
        default_factory=dict, description="fields this arm sets to that multiple of the sweep's `steps` (so "
                                          "that arms compare at equal compute: images seen, D updates)")


class Study(BaseModel):
    name: str
    base: str = Field(description="the base preset")
    question: str
    arms: list[StudyArm]


class StudyList(BaseModel):
    items: list[Study]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: str = Field(description='"ok", or why not')
    broker: str = Field(description='"ok", or why not')
    store: str = Field(description='"ok", or why not (the artifact store)')


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
@overload
def utc(value: datetime | None) -> datetime | None: ...


def utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class DatasetCreate(BaseModel):
    """A data set read from where it lies: an S3 prefix of images, or a spec under SAGAN_DATA_ROOTS."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=255)
    source: str = Field(min_length=1, max_length=4096,
                        description="s3://bucket/prefix/ (the service's S3), or folder:/..., lsun:/..., "
                                    "cifar10:/... under SAGAN_DATA_ROOTS")
    imsizes: list[Imsize] | None = Field(None, min_length=1, max_length=3,
                                         description="image sizes to pack; null = 32, 64 and 128 up to the "
                                                     "smallest side of the images (at least 32)")


class DatasetJob(BaseModel):
    id: str
    kind: Kind
    status: Status


class DatasetPublic(BaseModel):
    id: str
    name: str
    owner: str
    status: DatasetStatus
    source: str
    error: str | None = None
    images: int | None = None
    classes: list[str] | None = None
    bad_images: dict[str, str] | None = None
    imsizes: list[int] | None = None
    size_bytes: int | None = None
    job_id: str | None = Field(None, description="the job that builds it")
    preview_url: str | None = None
    jobs: list[DatasetJob] | None = Field(None, description="the jobs that named it (ds:<id>), oldest first")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, status: str, error: str | None, preview_url: str | None = None,
                     jobs: list[Job] | None = None) -> DatasetPublic:
        return cls(id=dataset.id, name=dataset.name, owner=dataset.owner, status=status,
                   source=dataset.source,
                   error=error, images=dataset.images, classes=dataset.classes, bad_images=dataset.bad_images,
                   imsizes=dataset.imsizes, size_bytes=dataset.size_bytes, job_id=dataset.job_id,
                   preview_url=preview_url, created_at=utc(dataset.created_at),
                   jobs=None if jobs is None
                   else [DatasetJob(id=job.id, kind=job.kind, status=job.status) for job in jobs],
                   updated_at=utc(dataset.updated_at))


class DatasetList(BaseModel):
    items: list[DatasetPublic]


class DeliveryPublic(BaseModel):
    """One status change of a job and its delivery to one notify URL."""

    sequence: int = Field(description="the job's status changes, counted from 1")
    status: Status
    url: str
    state: Literal["pending", "delivered", "failed"] = Field(description="failed: no more attempts")
    attempts: int
    answer_code: int | None = Field(description="the last attempt's HTTP status; null: no answer")
    answer: str | None = Field(description="the start of the last answer's body, or why there was none")
    answered_at: datetime | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    created_at: datetime

    @classmethod
    def from_delivery(cls, delivery: WebhookDelivery) -> DeliveryPublic:
        state = ("delivered" if delivery.delivered_at is not None
                 else "pending" if delivery.next_attempt_at is not None else "failed")
        return cls(sequence=delivery.sequence, status=delivery.status, url=delivery.url, state=state,
                   attempts=delivery.attempts, answer_code=delivery.answer_code, answer=delivery.answer,
                   answered_at=utc(delivery.answered_at), delivered_at=utc(delivery.delivered_at),
                   next_attempt_at=utc(delivery.next_attempt_at), created_at=utc(delivery.created_at))


class DeliveryList(BaseModel):
    items: list[DeliveryPublic] = Field(description="in sequence order")
