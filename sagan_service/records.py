"""`jobs/<id>/job.json` in the artifact store: what a job's folder is (kind, config, owner, status, times),
for a person browsing the bucket (MinIO's console) who would otherwise see only a UUID.

Whoever changes a job's state writes it after the change, through publish_job_record: the worker when it
claims and settles an attempt, the reaper for the jobs it settles, the API when it cancels. The database
stays the source of truth; a store that is away only leaves the record behind until the next change.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .models import Job
from .storage import ArtifactStore, StoreUnavailable, job_record_key

log = logging.getLogger(__name__)


def job_record(job: Job) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return None if value is None else value.isoformat()

    return {"id": job.id, "kind": job.kind, "owner": job.owner, "status": job.status, "queue": job.queue,
            "config": job.spec, "attempt": job.attempt, "max_attempts": job.max_attempts, "step": job.step,
            "total_steps": job.total_steps, "latest_checkpoint_step": job.latest_checkpoint_step,
            "cancel_requested": job.cancel_requested, "error": job.error, "created_at": iso(job.created_at),
            "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
            "updated_at": iso(job.updated_at)}


def publish_job_record(store: ArtifactStore, job: Job) -> None:
    """Write the job's record; a store that fails is logged, never raised: the state change stands, and
    a caller such as the worker right after its claim must not be stranded by it."""
    try:
        store.put_bytes(job_record_key(job.id), json.dumps(job_record(job), indent=2).encode())
    except StoreUnavailable as error:
        log.warning("job %s: job.json not updated (%s)", job.id, error)
    except Exception:
        log.exception("job %s: job.json not updated", job.id)
