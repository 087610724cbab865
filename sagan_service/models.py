"""Database tables. The API's response schemas live apart from these, in api/schemas.py."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
PRIORITIES = ("low", "normal", "high")
KINDS = ("train", "sample", "eval", "sweep", "dataset")
DATASET_STATUSES = ("queued", "running", "ready", "failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """A UUIDv7: ids sort by creation time, so the last id of a page is the pagination cursor."""
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | (0x7 << 76) | (int.from_bytes(os.urandom(10), "big") & ((1 << 76) - 1))
    value = (value & ~(0b11 << 62)) | (0b10 << 62)  # RFC 4122 variant bits
    return str(uuid.UUID(int=value))


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_owner_status", "owner", "status"),
                      Index("ix_jobs_queue_status_priority", "queue", "status", "priority"),
                      Index("ix_jobs_owner_started_at", "owner", "started_at"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    # The token name that submitted it (sagan_service.auth); "local" with SAGAN_AUTH=none. Only its owner
    # and admins see the job. Indexed with the status: the per-owner limits count queued and running jobs.
    owner: Mapped[str] = mapped_column(String(64), default="local")
    queue: Mapped[str] = mapped_column(String(64), default="default")
    # train: the full TrainConfig dict; sample: {"job_id", "step", "n", "seed"} with the step resolved;
    # eval: {"job_id", "step", "dataset", "metrics", "n", "seed"}, the step resolved;
    # sweep: {"base", "study", "axes", "arms", "seeds"} as submitted (one of study, axes, arms set).
    spec: Mapped[dict[str, Any]] = mapped_column()
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # A sweep's child: the sweep's id and the child's arm (its seed is spec["seed"]). Deleting a sweep
    # deletes its children.
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    arm: Mapped[str | None] = mapped_column(String(128))
    # A train job that continues another one's training (POST /jobs/{id}/continue): that job and the step of
    # its committed checkpoint this one starts from. Lineage only, apart from parent_id, which sweeps own.
    continued_from: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL", name="fk_jobs_continued_from"), index=True)
    continued_from_step: Mapped[int | None] = mapped_column(Integer)
    # PRIORITIES' index: a free worker takes the highest first, then shares fairly between owners.
    priority: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The URLs told of each status change (sagan_service.webhooks); null (SQL NULL, not JSON null): none.
    notify: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))

    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    # The checkpoint step the current attempt resumed from (None: it started from scratch).
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    # When the job's message was last sent to the queue; the reaper sends a queued job again when
    # this grows old (a message lost between the commit and the send, or with a worker that died
    # after taking it but before claiming).
    dispatched_at: Mapped[datetime | None] = mapped_column()
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    # Moves only after the checkpoint's commit marker is stored.
    latest_checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    # The newest evaluation record and the best one (a training job's, by its first eval metric; the best
    # one's checkpoint is committed); an eval job's result is its latest.
    latest_eval: Mapped[dict[str, Any] | None] = mapped_column()
    best_eval: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Artifact(Base):
    """A sample grid or a committed checkpoint in the artifact store, recorded after it is stored."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "kind", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "sample" | "checkpoint"
    step: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """An API token: only its sha256 is stored (the token itself is printed once, at creation)."""

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Signs the webhooks of this owner's jobs (HMAC-SHA256), so it is kept in the clear: `sagan token secret`.
    webhook_secret: Mapped[str] = mapped_column(String(64), default=lambda: secrets.token_hex(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A data set of the service (POST /datasets): its files under datasets/<id>/ in the artifact store, built
    by the job `job_id` (kind "dataset"). Jobs name it `ds:<id>`."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255))
    # queued and running follow its job; the dataset job sets ready (or failed, with `error`).
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # "upload:<store key of the archive>" or a data set spec (folder:, lsun:, cifar10:, s3://...).
    source: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    images: Mapped[int | None] = mapped_column(Integer)
    classes: Mapped[list[str] | None] = mapped_column(JSON)
    bad_images: Mapped[dict[str, Any] | None] = mapped_column()  # name -> why it was skipped
    # Asked for (null: the default rule) until the job sets the sizes it packed.
    imsizes: Mapped[list[int] | None] = mapped_column(JSON)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """A job's `sequence`-th status change, to POST to one of its notify URLs (sagan_service.webhooks):
    written in the transition's transaction, then sent, in sequence order per job and URL, by the webhook
    sender."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("job_id", "url", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    sequence: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)  # the exact body signed and sent, the same on every attempt
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When to try (again); null once delivered or given up, so only pending rows are in the index.
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    answer_code: Mapped[int
                        | None] = mapped_column(Integer)  # the last attempt's HTTP status; null: no answer
    answer: Mapped[str | None] = mapped_column(Text)  # its first characters, or why there was none
    answered_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
