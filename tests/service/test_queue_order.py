"""The embedded queue (the filesystem transport) hands messages out in the order they were sent, also the many
that one request sends within a millisecond (a sweep's children, in arm order)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from sagan_service.queue import dispatch_all, make_celery
from sagan_service.settings import Settings


@dataclass
class QueuedJob:
    id: str
    queue: str = "cpu"


def test_the_embedded_queue_is_first_in_first_out(tmp_path: Path) -> None:
    celery = make_celery(Settings(home=tmp_path))
    sent = [f"job-{index:02d}" for index in range(40)]
    dispatch_all(celery, [QueuedJob(job_id) for job_id in sent])
    taken = []
    with celery.connection_for_read() as connection:
        channel = connection.default_channel
        for _ in sent:  # what a worker's consumer does: take the next message of its queue
            message = channel._get("cpu")
            body = message["body"]
            if message["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            taken.append(json.loads(body)[0][0])
    assert taken == sent
