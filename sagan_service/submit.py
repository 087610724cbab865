"""Submitting work: what POST /jobs and POST /datasets do, each request through each step once, in order:

    the request's values --specs--> a typed spec (jobspec) --limits--> within this deployment
        --datasets--> its ds: data sets usable --jobs--> its row(s), within the owner's limits, once per
        Idempotency-Key --queue--> sent, or given up

Nothing here speaks HTTP; the API maps what it raises (api/main.py): SpecError (a 422 naming the field),
OwnerOverLimit (429 with Retry-After), IdempotencyKeyReused (422 on the header), QueueUnavailable (503).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sagan_core.config import ConfigError, EvalMetric, TrainConfig, continued_config

from . import datasets, jobs
from .jobspec import DatasetSpec, JobSpec, SampleSpec, SweepSpec, read_spec
from .limits import check_eval_limits, check_train_limits
from .logs import JOB_ID
from .models import PRIORITIES
from .queue import QueueUnavailable, dispatch_all, queue_for
from .specs import SpecError, check_dataset_spec, eval_job_spec, validate_sweep, validate_train_config
from .webhooks import TargetRefused, WebhookHosts, check_url

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.orm import Session

    from .auth import Principal
    from .models import Dataset, Job
    from .settings import Settings

log = logging.getLogger(__name__)
UPLOAD_SOURCE = "upload:"  # a data set's source that is an archive the API stored: upload:<its store key>


class OwnerOverLimit(Exception):
    """The owner has too many jobs queued or running for this one (SAGAN_MAX_*_PER_OWNER); the message says
    which. Worth trying again after `retry_after_s`."""

    retry_after_s = 30


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key replay that asks for something else than the request that used the key first."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"this Idempotency-Key was used for another request (job {job_id}); use a new key")


@dataclass(frozen=True)
class Submitted:
    """A submitted job (a sweep: with its children). `created` False: an Idempotency-Key replay, the job the
    first request made."""

    job: Job
    created: bool
    children: list[Job] | None = None


@dataclass(frozen=True)
class Submitter:
    """One request's submissions: for `principal` (the owner; its owner_filter: whose jobs and data sets it
    may use), into this deployment (`settings`), once per `idempotency_key`, at `priority` (PRIORITIES); its
    jobs tell `notify`'s URLs of each status change (sagan_service.webhooks)."""

    session: Session
    settings: Settings
    celery: Celery
    principal: Principal
    idempotency_key: str | None = None
    priority: str = "normal"
    notify: tuple[str, ...] = ()

    def train(self, config: dict[str, Any]) -> Submitted:
        """A training job of `config` (preset + overrides)."""
        spec = validate_train_config(config, data_roots=self.settings.allowed_data_roots)
        self._check_train(spec)
        return self._create("train", spec)

    def continue_training(self, *, job_id: str, step: int | Literal["best"] | None, steps: int,
                          changes: dict[str, Any]) -> Submitted:
        """A training job that continues training job `job_id` from its committed checkpoint at `step` (None:
        the latest, "best": its best evaluation's) to `steps` in all, with the source's config but for
        `changes`, which may touch only what a continued run may change (sagan_core.config.CONTINUE_FIELDS).
        The worker starts it from that checkpoint as a resume (G, D, optimisers, EMA, RNG states, step)."""
        checkpoint = jobs.committed_checkpoint(self.session, job_id=job_id, step=step,
                                               owner=self.principal.owner_filter)
        source = jobs.get_job(self.session, job_id)
        try:
            config = continued_config(source.spec, {**changes, "steps": steps}, from_step=checkpoint.step)
        except ConfigError as error:
            raise SpecError("steps" if error.field == "steps" else f"config.{error.field}",
                            str(error)) from None
        spec = validate_train_config(config.to_dict(), data_roots=self.settings.allowed_data_roots)
        self._check_train(spec)
        return self._create("train", spec, continued_from=(job_id, checkpoint.step))

    def sample(self, *, job_id: str, step: int | None, n: int, seed: int, classes: list[int] | None,
               per_class: int | None, truncation: float | None = None,
               interpolate: tuple[int, int] | None = None, frames: int | None = None) -> Submitted:
        """A grid of `n` samples (per class: `per_class` of each of `classes`) from training job `job_id`'s
        checkpoint at `step` (None: the latest), z truncated at `truncation`; or, with `interpolate` (seeds A,
        B), a strip of `frames` images along the walk from A's z to B's (sagan_core.latent_walk)."""
        checkpoint = jobs.committed_checkpoint(self.session, job_id=job_id, step=step,
                                               owner=self.principal.owner_filter)
        spec = SampleSpec(job_id=job_id, step=checkpoint.step, n=n, seed=seed, classes=classes,
                          per_class=per_class, truncation=truncation,
                          interpolate=None if interpolate is None else list(interpolate), frames=frames)
        # "The latest" may have moved on since the key's first request: a replay of it matches any step.
        return self._create("sample", spec, any_step=step is None)

    def evaluation(self, *, job_id: str, step: int | Literal["best"] | None, dataset: str | None,
                   metrics: list[EvalMetric] | None, n: int | None) -> Submitted:
        """`metrics` of training job `job_id`'s checkpoint at `step` (None: the latest, "best": its best
        evaluation's); unset values are the training job's (sagan_service.specs.eval_job_spec)."""
        checkpoint = jobs.committed_checkpoint(self.session, job_id=job_id, step=step,
                                               owner=self.principal.owner_filter)
        source = read_spec("train", jobs.get_job(self.session, job_id).spec)
        spec = eval_job_spec(source, job_id=job_id, step=checkpoint.step, dataset=dataset, metrics=metrics,
                             n=n, data_roots=self.settings.allowed_data_roots)
        check_eval_limits(spec, self.settings)
        datasets.check_dataset_refs(self.session, {"dataset": spec.dataset},
                                    owner=self.principal.owner_filter, imsize=spec.imsize)
        return self._create("eval", spec)

    def sweep(self, *, base: dict[str, Any], axes: dict[str, Any] | None, arms: list[Any] | None,
              study: str | None, seeds: list[Any] | None) -> Submitted:
        """A sweep: every child validated (config and this service's limits), then the sweep and its children
        created at once and the children sent, each to its queue like any job."""
        runs = validate_sweep(base=base, axes=axes, arms=arms, study=study, seeds=seeds,
                              data_roots=self.settings.allowed_data_roots,
                              max_arms=self.settings.max_sweep_arms)
        for run in runs:
            self._check_train(run.config)
        spec = SweepSpec(base=base, axes=axes, arms=arms, study=study, seeds=seeds)
        children = [(run.arm, run.config, queue_for(run.config)) for run in runs]
        notify = self._notify_urls()
        with self._owner_limits() as limits:
            sweep, created = jobs.create_sweep(self.session, spec=spec, children=children,
                                               max_attempts=self.settings.max_attempts,
                                               priority=self._priority(),
                                               idempotency_key=self.idempotency_key,
                                               owner=self.principal.name, limits=limits, notify=notify)
        members = jobs.sweep_children(self.session, job_id=sweep.id)
        self._replay_or_send(sweep, created, "sweep", spec, members,
                             give_up=lambda error: _give_up_sweep(self.session, sweep, error))
        self.session.refresh(sweep)
        return Submitted(sweep, created, members)

    def dataset(self, *, dataset_id: str, name: str, imsizes: Sequence[int] | None, source: str | None = None,
                upload_key: str | None = None) -> tuple[Dataset, Job]:
        """A data set and its queued build job, from the client's `source` (an s3:// prefix, which the job
        checks, or a spec under the data roots, checked here) or from the archive this request stored at
        `upload_key`. A queue that cannot take its message now is left to the reaper, which sends it later."""
        if upload_key is not None:
            source = f"{UPLOAD_SOURCE}{upload_key}"
        elif source is None:
            raise TypeError("give source or upload_key")
        elif not source.startswith("s3://"):
            check_dataset_spec(source, "source", self.settings.allowed_data_roots)
        spec = DatasetSpec(dataset_id=dataset_id, source=source,
                           imsizes=None if imsizes is None else list(imsizes))
        with self._owner_limits() as limits:
            dataset, job = datasets.create_dataset(self.session, spec=spec, owner=self.principal.name,
                                                   name=name, queue=queue_for(spec),
                                                   max_attempts=self.settings.max_attempts, limits=limits)
        log.info("data set %s (%s) submitted by %s: job %s", dataset.id, source, self.principal.name, job.id)
        try:
            dispatch_all(self.celery, [job])
        except QueueUnavailable:
            log.exception("could not send dataset job %s to the queue; the reaper sends it later", job.id)
        return dataset, job

    def _check_train(self, config: TrainConfig) -> None:
        """A training config's limits here, and its `ds:<id>` data sets: the owner's, ready, packed at its
        imsize."""
        check_train_limits(config, self.settings)
        datasets.check_dataset_refs(self.session, {"config.dataset": config.dataset,
                                                   "config.eval_dataset": config.eval_dataset},
                                    owner=self.principal.owner_filter, imsize=config.imsize)

    def _create(self, kind: str, spec: JobSpec, *, any_step: bool = False,
                continued_from: tuple[str, int] | None = None) -> Submitted:
        """Create (or find, for a replayed key) one job of `spec` and send it; a job that could not be sent is
        withdrawn (the client's retry with the same key makes a new one)."""
        notify = self._notify_urls()
        with self._owner_limits() as limits:
            job, created = jobs.create_job(self.session, kind=kind, spec=spec, queue=queue_for(spec),
                                           max_attempts=self.settings.max_attempts, priority=self._priority(),
                                           idempotency_key=self.idempotency_key, owner=self.principal.name,
                                           limits=limits, notify=notify, continued_from=continued_from)
        source = (job.continued_from,
                  job.continued_from_step) if job.continued_from_step is not None else None
        if not created and source != continued_from:  # a replay of a key used to continue another checkpoint
            raise IdempotencyKeyReused(job.id)
        self._replay_or_send(job, created, kind, spec, [job], any_step=any_step,
                             give_up=lambda _: jobs.withdraw_unsent(self.session, job_id=job.id))
        return Submitted(job, created)

    def _priority(self) -> int:
        """The requested priority's level; high only for admins (it overtakes every owner's work)."""
        if self.priority == "high" and not self.principal.admin:
            raise SpecError("priority", "priority high is for admins; use low or normal")
        return PRIORITIES.index(self.priority)

    def _notify_urls(self) -> list[str]:
        """The request's notify URLs, each one this service may call (SAGAN_WEBHOOK_HOSTS), or SpecError
        naming it (`notify.<i>.url`)."""
        hosts = WebhookHosts.parse(self.settings.webhook_hosts)
        for index, url in enumerate(self.notify):
            try:
                check_url(url, hosts)
            except TargetRefused as error:
                raise SpecError(f"notify.{index}.url", str(error)) from None
        return list(self.notify)

    def _replay_or_send(self, job: Job, created: bool, kind: str, spec: JobSpec, to_send: list[Job], *,
                        give_up: Callable[[QueueUnavailable], None], any_step: bool = False) -> None:
        """A replayed key: IdempotencyKeyReused unless it asks for what its first request did. A new job: its
        queue messages (the job's, or a sweep's children's) sent; if the queue is unreachable, give_up(error)
        settles what was not sent and QueueUnavailable goes on to the caller."""
        if not created:
            if not _same_request(job, kind, spec, any_step=any_step):
                raise IdempotencyKeyReused(job.id)
            return
        JOB_ID.set(job.id)
        log.info("%s job submitted by %s (%d queue messages)", job.kind, job.owner, len(to_send))
        try:
            dispatch_all(self.celery, to_send)
        except QueueUnavailable as error:
            log.exception("could not send job %s to the queue", job.id)
            give_up(error)
            raise

    @contextmanager
    def _owner_limits(self) -> Iterator[jobs.OwnerLimits]:
        """SAGAN_MAX_QUEUED_PER_OWNER and SAGAN_MAX_RUNNING_PER_OWNER, and OwnerOverLimit for a job that would
        pass one: past the queued limit with the jobs it adds, or while the running limit's count of the
        owner's jobs run. (An Idempotency-Key replay is checked too: a client retrying at its limit waits like
        any other.)"""
        try:
            yield jobs.OwnerLimits(max_queued=self.settings.max_queued_per_owner,
                                   max_running=self.settings.max_running_per_owner)
        except jobs.OverLimit as over:
            raise OwnerOverLimit(_over_limit_message(over)) from None


def _over_limit_message(over: jobs.OverLimit) -> str:
    if over.queued + over.adding > over.limits.max_queued:
        return (f"{over.owner} has {over.queued} jobs queued and asks for {over.adding} more, over this "
                f"service's limit (SAGAN_MAX_QUEUED_PER_OWNER={over.limits.max_queued}); submit again when "
                "some have finished")
    return (f"{over.owner} has {over.running} jobs running, this service's limit "
            f"(SAGAN_MAX_RUNNING_PER_OWNER={over.limits.max_running}); submit again when some have finished")


def _same_request(job: Job, kind: str, spec: JobSpec, *, any_step: bool) -> bool:
    """Whether a replayed key's job is what `spec` asks for; `any_step`: a sample job of "the latest
    checkpoint", whichever step that was when the key was first used."""
    if job.kind != kind:
        return False
    if any_step and isinstance(spec, SampleSpec):
        return read_spec("sample",
                         job.spec).model_copy(update={"step": spec.step}).to_dict() == spec.to_dict()
    return job.spec == spec.to_dict()


def _give_up_sweep(session: Session, sweep: Job, error: QueueUnavailable) -> None:
    """No child sent: the sweep was never the client's (withdrawn). Some sent: those run on, the rest fail."""
    if error.sent == 0:
        jobs.withdraw_unsent(session, job_id=sweep.id)
    else:
        jobs.fail_queued_sweep(session, job_id=sweep.id, error=f"could not reach the job queue: {error}")
