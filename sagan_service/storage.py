"""One artifact-store interface over a local folder (`file:///dir`) and S3 (`s3://bucket/prefix`).

Layout per job (keys relative to the store root):
    jobs/<id>/checkpoints/step-<n>/model.pt   then   jobs/<id>/checkpoints/step-<n>/COMMITTED
    jobs/<id>/samples/step-<n>.png
    jobs/<id>/samples/real.png                (real training images, for comparison)
    jobs/<id>/metrics.jsonl
    jobs/<id>/evals.jsonl                     a training job's evaluations, or an eval job's result
    jobs/<id>/tensorboard/events.out.tfevents.*   a training's TensorBoard event files (one run per job)
    jobs/<id>/logs/attempt-<k>.log
    jobs/<id>/job.json                        what the folder is: kind, config, owner, status, times
    (records.py) stats/<entry name>                        cached real-data statistics, shared by every job on
    that data datasets/<id>/source/upload.<zip|tar|tar.gz>   an uploaded data set's archive, as it came
    datasets/<id>/<S>px/index.json, shard-*.npy, labels.npy   a data set's packed copy at S px
    (sagan_core.packed) datasets/<id>/preview.png                 a grid of its first images
A checkpoint counts only once its COMMITTED marker exists: a single PUT is atomic, a directory is not.

A store that cannot be reached (S3: no connection, a timeout, a 5xx; a folder: not writable) raises
StoreUnavailable, worded for people; the worker retries those and the API answers 503. Other errors
(a missing bucket, a refused key) are not worth retrying.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

from sagan_core.files import atomic_write

if TYPE_CHECKING:
    from .settings import Settings

COMMIT_MARKER = "COMMITTED"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}/model.pt"


def commit_marker_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}/{COMMIT_MARKER}"


def sample_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/samples/step-{step}.png"


def real_grid_key(job_id: str) -> str:
    return f"jobs/{job_id}/samples/real.png"


def metrics_key(job_id: str) -> str:
    return f"jobs/{job_id}/metrics.jsonl"


def evals_key(job_id: str) -> str:
    return f"jobs/{job_id}/evals.jsonl"


def tensorboard_prefix(job_id: str) -> str:
    """The job's TensorBoard event files: `tensorboard --logdir` on it (or on jobs/) shows the run."""
    return f"jobs/{job_id}/tensorboard/"


def tensorboard_key(job_id: str, name: str) -> str:
    return f"{tensorboard_prefix(job_id)}{name}"


def report_key(job_id: str) -> str:
    """A sweep's comparison report (sagan_core.report), stored once the sweep has finished."""
    return f"jobs/{job_id}/report.html"


def report_figure_key(job_id: str) -> str:
    """The report's summary figure."""
    return f"jobs/{job_id}/report.png"


def stats_key(entry_name: str) -> str:
    """A real-statistics cache entry (sagan_core.metrics.cache.StatsKey.name); not per job: keyed by the
    data."""
    return f"stats/{entry_name}"


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/"


def packed_prefix(dataset_id: str, imsize: int) -> str:
    """Where a data set's packed copy at one image size lies (sagan_core.packed: index.json and its files)."""
    return f"{dataset_prefix(dataset_id)}{imsize}px/"


def dataset_preview_key(dataset_id: str) -> str:
    return f"{dataset_prefix(dataset_id)}preview.png"


def job_record_key(job_id: str) -> str:
    return f"jobs/{job_id}/job.json"


def log_key(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/logs/attempt-{attempt}.log"


class ArtifactNotFound(LookupError):
    """No object under this key."""


class StoreUnavailable(Exception):
    """The store cannot be reached or written for now; the message names it in plain words."""

    def __init__(self, store: str, problem: str, cause: BaseException) -> None:
        super().__init__(f"{store} is {problem} ({cause})")
        self.store, self.problem = store, problem


class ArtifactStore(ABC):
    """Whole-object puts and gets; every put is atomic (readers see the old object or the new one)."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_fileobj(self, key: str, source: BinaryIO) -> None:
        """Store what `source` holds from its position on, read in parts (an upload being spooled)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes, or ArtifactNotFound."""

    @abstractmethod
    def get_bytes_from(self, key: str, start: int) -> bytes:
        """The object's bytes from offset `start` on (b"" when it is no longer), or ArtifactNotFound: what a
        follower of a growing object (an attempt's log) has not read yet."""

    @abstractmethod
    def download(self, key: str, path: Path) -> None:
        """Copy the object to a local file (written atomically), or ArtifactNotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def presigned_url(self, key: str) -> str | None:
        """A URL a browser can GET directly (valid for SAGAN_PRESIGN_SECONDS), or None when the API must
        serve the object itself."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a no-op when there is none."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder-like prefix ending in "/"), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix` (a data set's folder)."""

    @abstractmethod
    def check(self) -> None:
        """A cheap call that raises StoreUnavailable unless the store answers (readiness)."""

    @abstractmethod
    def describe(self) -> str:
        """The store in plain words, e.g. "the artifact store (S3 at http://minio:9000, bucket sagan)"."""

    def commit_checkpoint(self, job_id: str, step: int, path: Path) -> str:
        """Store a checkpoint file and then its commit marker; return the checkpoint's key."""
        key = checkpoint_key(job_id, step)
        self.put_file(key, path)
        self.put_bytes(commit_marker_key(job_id, step), f"{os.path.getsize(path)}\n".encode())
        return key

    def delete_checkpoint(self, job_id: str, step: int) -> None:
        """The reverse of commit_checkpoint: the marker goes first, so no reader sees a half checkpoint."""
        self.delete(commit_marker_key(job_id, step))
        self.delete(checkpoint_key(job_id, step))


class LocalStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as source:
            self.put_fileobj(key, source)

    def put_fileobj(self, key: str, source: BinaryIO) -> None:
        with self._writable():
            atomic_write(self.path(key), lambda handle: shutil.copyfileobj(source, handle))

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._writable():
            atomic_write(self.path(key), lambda handle: handle.write(data))

    @contextlib.contextmanager
    def _writable(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:  # read-only, full, permissions, I/O: the folder's problem, for now
            raise StoreUnavailable(self.describe(), "not writable", error) from error

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as error:
            raise ArtifactNotFound(key) from error

    def get_bytes_from(self, key: str, start: int) -> bytes:
        try:
            with open(self.path(key), "rb") as handle:
                handle.seek(start)
                return handle.read()
        except FileNotFoundError as error:
            raise ArtifactNotFound(key) from error

    def download(self, key: str, path: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise ArtifactNotFound(key)
        with open(source, "rb") as reader:
            atomic_write(path, lambda handle: shutil.copyfileobj(reader, handle))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def presigned_url(self, key: str) -> str | None:
        return None

    def delete(self, key: str) -> None:
        with self._writable():
            self.path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        root = self.root.resolve()
        return sorted(path.relative_to(root).as_posix() for path in folder.rglob("*") if path.is_file())

    def delete_prefix(self, prefix: str) -> None:
        with self._writable():
            shutil.rmtree(self.path(prefix), ignore_errors=True)

    def check(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreUnavailable(self.describe(), "not writable",
                                   OSError(f"no write access to {self.root}"))

    def describe(self) -> str:
        return f"the artifact store (folder {self.root})"


class S3Store(ArtifactStore):
    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None,
                 public_endpoint_url: str | None, max_attempts: int, presign_seconds: int = 900,
                 timeout_s: float | None = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.presign_seconds = presign_seconds
        self.endpoint_url = endpoint_url
        self.client = _s3_client(endpoint_url, max_attempts, timeout_s)
        # Presigned URLs sign the Host header: sign with the endpoint the browser will talk to.
        self.public_client = (_s3_client(public_endpoint_url, max_attempts, timeout_s)
                              if public_endpoint_url and public_endpoint_url != endpoint_url else self.client)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path) -> None:
        with self._reachable():
            self.client.upload_file(str(path), self.bucket, self._key(key))

    def put_fileobj(self, key: str, source: BinaryIO) -> None:
        with self._reachable():  # a multipart upload for a large one: never whole in memory
            self.client.upload_fileobj(source, self.bucket, self._key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._reachable():
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            with self._reachable():
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey as error:
            raise ArtifactNotFound(key) from error

    def get_bytes_from(self, key: str, start: int) -> bytes:
        try:
            with self._reachable():
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                              Range=f"bytes={start}-")["Body"].read()
        except self.client.exceptions.NoSuchKey as error:
            raise ArtifactNotFound(key) from error
        except self.client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") == "InvalidRange":  # nothing past `start` yet
                return b""
            raise

    def download(self, key: str, path: Path) -> None:
        if not self.exists(key):
            raise ArtifactNotFound(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        with self._reachable():
            self.client.download_file(self.bucket, self._key(key), str(tmp))
        os.replace(tmp, path)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._reachable():
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        with self._reachable():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str) -> list[str]:
        keys = []
        with self._reachable():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                               Prefix=self._key(prefix)):
                keys += [item["Key"] for item in page.get("Contents", [])]
        strip = len(self._key(""))
        return sorted(key[strip:] for key in keys)

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        with self._reachable():
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._key(key)} for key in keys[start:start + 1000]], "Quiet": True})

    def check(self) -> None:
        with self._reachable():
            self._probe_client.head_bucket(Bucket=self.bucket)

    @functools.cached_property
    def _probe_client(self) -> Any:
        # Readiness asks once and fast; the other calls retry (see _s3_client).
        return _s3_client(self.endpoint_url, 1, timeout_s=3)

    def describe(self) -> str:
        return f"the artifact store (S3 at {self.endpoint_url or 'AWS'}, bucket {self.bucket})"

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Turn "cannot reach S3 now" (after boto3's own retries) into StoreUnavailable."""
        try:
            yield
        except Exception as error:
            if _unreachable(error):
                raise StoreUnavailable(self.describe(), "unreachable", error) from error
            raise

    def presigned_url(self, key: str) -> str | None:
        return self.public_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                         ExpiresIn=self.presign_seconds)


def _s3_client(endpoint_url: str | None, max_attempts: int, timeout_s: float | None = None) -> Any:
    # Imported here so that file:// users (and the import of this module) never pay for boto3.
    import boto3
    from botocore.config import Config

    timeouts = {} if timeout_s is None else {"connect_timeout": timeout_s, "read_timeout": timeout_s}
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"},
                    # "standard" retries throttling, 5xx and connection errors with jittered backoff.
                    retries={"mode": "standard", "max_attempts": max_attempts}, **timeouts)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _unreachable(error: BaseException) -> bool:
    """A connection failure, a timeout or a 5xx answer, also when boto3's transfer layer wrapped it."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(error, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or error.response.get("Error", {}).get("Code") in ("SlowDown", "RequestTimeout")
    if isinstance(error, RetriesExceededError):
        return True
    if isinstance(error, S3UploadFailedError) and error.__context__ is not None:
        return _unreachable(error.__context__)
    return False


def open_store(settings: Settings, *, for_requests: bool = False) -> ArtifactStore:
    """The store SAGAN_ARTIFACTS_URL names. `for_requests` (the API): each S3 call is tried once with the
    short SAGAN_API_TIMEOUT_SECONDS, so a request answers within seconds; workers retry and wait."""
    url = urlparse(settings.artifacts)
    if url.scheme == "file":
        root = Path(unquote(url.path))
        # A fresh install has no folder until the first artifact: create it now, or readiness would report
        # "not writable" until then. A parent that refuses is left for check() to report.
        with contextlib.suppress(OSError):
            root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root)
    if url.scheme == "s3":
        return S3Store(url.netloc, url.path, endpoint_url=settings.s3_endpoint_url,
                       public_endpoint_url=settings.s3_public_endpoint_url,
                       max_attempts=1 if for_requests else settings.s3_max_attempts,
                       presign_seconds=settings.presign_seconds,
                       timeout_s=settings.api_timeout_seconds if for_requests else None)
    raise ValueError("SAGAN_ARTIFACTS_URL must be file:///dir or s3://bucket/prefix, got "
                     f"{settings.artifacts!r}")
