"""Service settings from `SAGAN_*` environment variables; unset values give the embedded default.

The embedded default needs no server: SQLite, a filesystem Celery transport and a local artifact folder,
all under SAGAN_HOME. Settings are built on demand (never at import), so a worker does not need the
API's configuration to import this module. S3 credentials come from the standard AWS_* variables,
which boto3 reads itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAGAN_", extra="ignore")

    home: Path = Path(".sagan")
    database_url: str | None = None
    broker_url: str | None = None
    artifacts_url: str | None = None
    s3_endpoint_url: str | None = None
    # Presigned URLs sign the Host header, so links for browsers are signed against this endpoint.
    s3_public_endpoint_url: str | None = None
    s3_max_attempts: int = Field(5, ge=1)
    # Comma-separated directories that dataset paths of submitted jobs must lie under.
    data_roots: str = ""

    lease_seconds: float = Field(60.0, gt=0)
    heartbeat_seconds: float = Field(10.0, gt=0)
    # How often the supervisor looks at the training directory and the cancel flag.
    poll_seconds: float = Field(1.0, gt=0)
    reaper_seconds: float = Field(15.0, gt=0)
    # Threads per API process for blocking work (database, S3); see api/main.py.
    api_threads: int = Field(8, ge=1)
    # The API's calls to a dependency (api/guards.py): the connect and read timeout of its S3 and broker
    # calls and the database's statement timeout, in seconds; a request then answers 503 naming it.
    api_timeout_seconds: float = Field(5.0, gt=0, le=300)
    # After such a failure the API answers 503 at once for this long instead of asking the dependency again.
    fail_fast_seconds: float = Field(10.0, ge=0)
    # Threads of each of the artifact store's and the broker's routes, apart from the api_threads that
    # routes needing only the database use, so a hung store or broker cannot take those.
    api_dependency_threads: int = Field(4, ge=1)
    # PostgreSQL's statement_timeout for workers and the reaper (the API uses api_timeout_seconds); a
    # statement stopped by it is an outage the worker rides out like any other.
    statement_timeout_seconds: float = Field(30.0, gt=0)
    # A queued job whose message has not been seen in the broker for this long is sent again (the
    # message was lost: never sent, or lost with a broker restart). With Redis and the embedded queue
    # the reaper looks into the queues, so a job merely waiting its turn is never sent twice.
    redispatch_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    # Most children (arms x seeds) one sweep may create.
    max_sweep_arms: int = Field(64, ge=1)
    cancel_grace_seconds: float = Field(10.0, ge=0)
    # GPUs a worker may use (CUDA_VISIBLE_DEVICES=0..N-1 for its jobs); None = whatever it sees.
    gpus: int | None = Field(None, ge=0)
    # The FID Inception weights file (pt_inception-2015-12-05-6726825d.pth) for FID/KID/IS/PR evaluations;
    # workers pass it to their jobs (sagan_core reads the same variable). None: SWD only.
    inception_weights: Path | None = None
    # Redis redelivers an unacknowledged task after this long: keep it above the longest job.
    visibility_timeout: int = Field(7 * 24 * 3600, gt=0)
    # A running job rides out an unreachable database or artifact store (training goes on, artifacts
    # wait on the worker's disk) for this long; a longer outage fails it, naming the dependency.
    dependency_outage_seconds: float = Field(300.0, gt=0)
    # A stopping worker (SIGTERM) gives its running training this long to checkpoint and that
    # checkpoint this long to reach the store before it hands the job back; keep it well below the
    # stop grace period of the container (docker-compose.yml: 2 minutes).
    shutdown_seconds: float = Field(60.0, gt=0)
    # Where a worker keeps the packed data sets (ds:<id>, packed:s3://...) its jobs read, shared by every
    # worker and job on the machine (worker/data_cache.py); None: SAGAN_HOME/data-cache.
    data_cache_dir: Path | None = None
    # Its size: the least recently used sets that no job is reading are evicted to stay below it.
    data_cache_gb: float = Field(20.0, gt=0)
    # How a worker runs its jobs' trainings: `local` (torchrun on its own machine) or `ray` (submitted to the
    # Ray cluster at ray_address; worker/ray_launcher.py). A job with nodes > 1 always goes to Ray.
    launcher: Literal["local", "ray"] = "local"
    # A fork server already running on this machine (`python -m worker.forkserver --socket PATH`), which
    # `sagan worker` uses instead of starting its own: the workers of one machine then pay its imports once.
    # Its processes run as whoever started it, with the environment each job asks for.
    forkserver_socket: Path | None = None
    # The Ray cluster's Jobs API address (its dashboard), e.g. http://ray-head:8265; None: no Ray.
    ray_address: str | None = None
    # How long a Ray job may wait for all its workers' resources (its placement group) before it fails as
    # more than the cluster can hold; a lost Ray job (head restart, node loss) is an attempt that resumes.
    ray_placement_timeout_seconds: float = Field(600.0, gt=0)


    # Security (docs/security.md). `tokens`: every request but /healthz, /readyz and the HTML shells needs
    # `Authorization: Bearer <token>` (sagan token create); `none`: no checks, every job is owned by
    # "local" (what `sagan up` uses on a loopback address).
    auth: Literal["tokens", "none"] = "tokens"
    # Whether /docs, /redoc and /openapi.json are served without a token.
    docs_public: bool = True
    # How long an API process trusts a token it looked up: a revoked token stops working within this.
    token_cache_seconds: float = Field(5.0, ge=0)
    # Lifetime of presigned artifact links (sample grids, checkpoints).
    presign_seconds: int = Field(900, ge=1, le=7 * 24 * 3600)
    # Request bodies over this many bytes get 413.
    max_body_bytes: int = Field(1_000_000, ge=1024)

    # Limits on what one POST /jobs may ask for (docs/security.md); 422 names the limit and the field.
    max_conv_dim: int = Field(512, ge=8)  # g_conv_dim, d_conv_dim
    max_z_dim: int = Field(1024, ge=1)
    # The devices a worker has: nproc may not exceed it (a job asking for more would never start).
    worker_devices: int = Field(8, ge=1)
    # CPU cores a worker has: num_workers (data-loader processes per rank) may not exceed it.
    worker_cores: int = Field(16, ge=1)
    max_synthetic_size: int = Field(1_000_000, ge=1)
    max_steps: int = Field(10_000_000, ge=1)
    max_center_crop: int = Field(4096, ge=1)
    max_eval_n: int = Field(100_000, ge=2)
    # All the evaluation samples of one training run (evaluations x eval_n).
    max_eval_samples: int = Field(10_000_000, ge=2)
    # The estimated training memory per process (sagan_service/limits.py: estimate_training_bytes).
    max_job_memory_gb: float = Field(64.0, gt=0)
    # A training attempt running longer is stopped like a graceful stop (it checkpoints) and fails with a
    # message saying so; 0 = no limit.
    max_run_seconds: float = Field(7 * 24 * 3600.0, ge=0)
    # A POST /jobs is refused with 429 while its owner has this many jobs queued, or running.
    max_queued_per_owner: int = Field(50, ge=1)
    max_running_per_owner: int = Field(8, ge=1)
    # Data sets (POST /datasets): an uploaded archive over this is refused with 413 while it streams in;
    # the dataset job refuses an archive whose files would unpack to more than SAGAN_MAX_DATASET_GB, more
    # than SAGAN_MAX_DATASET_FILES entries, or an entry that grows more than SAGAN_MAX_COMPRESSION_RATIO
    # times (a zip bomb).
    max_upload_gb: float = Field(10.0, gt=0)
    max_dataset_gb: float = Field(50.0, gt=0)
    max_dataset_files: int = Field(2_000_000, ge=1)
    max_compression_ratio: float = Field(100.0, gt=1)

    # Webhooks (docs/service.md: Webhooks): comma-separated host names, IP addresses or networks
    # (10.0.0.0/8) that a job's notify URLs may name; empty: a job with `notify` is refused. A listed name
    # that resolves to a private or loopback address is reached only where that address (or its network)
    # is listed too.
    webhook_hosts: str = ""
    # Signs the webhooks of owner "local" (SAGAN_AUTH=none); unset: one generated into
    # SAGAN_HOME/webhook-secret. Token owners' secrets are in api_tokens (`sagan token secret NAME`).
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)  # connect and read, per attempt
    # Attempts per event and URL; retries wait SAGAN_WEBHOOK_BACKOFF_SECONDS, doubling each time (at most an
    # hour).
    webhook_attempts: int = Field(10, ge=1)
    webhook_backoff_seconds: float = Field(5.0, gt=0)
    # How often the sender (beside every reaper) looks for events due.
    webhook_poll_seconds: float = Field(1.0, gt=0)

    # Log lines: `json` (one object per line, with the job id where there is one) or `text`.
    log_format: Literal["json", "text"] = "text"

    # An MLflow tracking server (e.g. http://mlflow:5000): each training job becomes a run of the experiment
    # SAGAN_MLFLOW_EXPERIMENT, a sweep a parent run (worker/mlflow_sync.py; needs the `mlflow` extra).
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "sagan"

    @field_validator("ray_address", "mlflow_tracking_uri")
    @classmethod
    def _unset_when_empty(cls, value: str | None) -> str | None:
        # docker-compose.yml passes `${RAY_ADDRESS:-}` to every service: empty where no Ray is in the stack.
        return value or None

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'sagan.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def artifacts(self) -> str:
        return self.artifacts_url or (self.home / "artifacts").as_uri()

    @property
    def allowed_data_roots(self) -> list[Path]:
        return [Path(root).expanduser().resolve() for root in self.data_roots.split(",") if root.strip()]

    @property
    def work_dir(self) -> Path:
        """Where workers keep the training directories of running jobs."""
        return self.home / "work"

    @property
    def data_cache_root(self) -> Path:
        return (self.data_cache_dir or self.home / "data-cache").expanduser().resolve()
