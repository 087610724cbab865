"""A job's attempt logs: GET /jobs/{id}/logs, whole, from a byte offset, or followed while the job runs.

The API and the workers share only the database and the store. A worker's outbox stores the running
attempt's log (its complete lines, redacted) every couple of seconds under log_key(id, attempt); this route
reads that object. A follower polls it once a second from the offset already sent (a ranged read), so a
line the trainer writes reaches it within a few seconds, wherever the worker runs; it ends once the attempt
is over and everything is sent. Polls await on the event loop: no thread is held between them, and each
store or database call is bounded by SAGAN_API_TIMEOUT_SECONDS (open_store(for_requests=True)).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy.exc import OperationalError

from api.deps import OwnerDep, in_thread, in_thread_of
from api.guards import DependencyDown
from sagan_service import jobs
from sagan_service.models import TERMINAL
from sagan_service.redact import redact_bytes
from sagan_service.storage import ArtifactNotFound, StoreUnavailable, log_key

router = APIRouter(prefix="/jobs", tags=["jobs"])
POLL_SECONDS = 1.0
# The stored log's byte offset after the text served: where a poller asks from next (`offset=`).
OFFSET_HEADER = "X-Log-Offset"
TEXT = "text/plain; charset=utf-8"
# A proxy must pass a followed log on as it comes (nginx buffers unless told).
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Attempts:
    """What a log request needs of the job's row."""

    status: str
    latest: int  # the latest attempt's number; 0: none has started

    def running(self, attempt: int) -> bool:
        """Whether `attempt` may still grow: the latest attempt of a job not yet ended."""
        return attempt == self.latest and self.status not in TERMINAL


@router.get("/{job_id}/logs", response_class=PlainTextResponse,
            responses={200: {"content": {TEXT: {}}, "headers": {OFFSET_HEADER: {
                "description": "the stored log's byte offset after this text: pass it as `offset` to poll"}}},
                       404: {"description": "no such job, or no such attempt"}})
async def get_log(job_id: str, request: Request, owner: OwnerDep,
                  attempt: Annotated[int | None, Query(ge=1, description="default: the latest")] = None,
                  offset: Annotated[int, Query(ge=0, description="a byte offset of the stored log")] = 0,
                  follow: Annotated[bool,
                                    Query(description="stream new lines until the attempt ends")] = False,
                  ) -> Response:
    """An attempt's log as text: the trainer's output (rank 0) and its supervisor's lines, secrets redacted;
    a job that has not started has an empty one. With `follow=true`, streamed as it grows until the job ends
    (without `attempt`, into its next attempt if it is retried)."""
    state = await _attempts(request=request, job_id=job_id, owner=owner)
    if attempt is not None and attempt > state.latest:
        raise HTTPException(404, f"job {job_id} has no attempt {attempt} (attempts so far: {state.latest})")
    if follow:
        lines = _follow(request, job_id, owner, attempt or state.latest, offset, into_next=attempt is None)
        return StreamingResponse(lines, media_type=TEXT, headers=STREAM_HEADERS)
    number = attempt or state.latest
    text, read = await _stored_log(request=request, job_id=job_id, attempt=number, offset=offset,
                                      running=state.running(number))
    return PlainTextResponse(text, media_type=TEXT, headers={OFFSET_HEADER: str(offset + read)})


async def _follow(request: Request, job_id: str, owner: str | None, attempt: int, offset: int, *,
                  into_next: bool) -> AsyncIterator[bytes]:
    """The log from `offset` on, then what is added, polled every POLL_SECONDS, until the attempt is over
    and all of it sent (or the client left). The job's row is read before the log: a worker stores an
    attempt's last lines before it settles the job, so a row that says "over" means the log read after it
    is complete. A database or store that fails a poll is asked again at the next."""
    while not await request.is_disconnected():
        try:
            state = await _attempts(request=request, job_id=job_id, owner=owner)
            text, read = await _stored_log(request=request, job_id=job_id, attempt=attempt, offset=offset,
                                                 running=state.running(attempt))
        except (OperationalError, StoreUnavailable, DependencyDown):
            await asyncio.sleep(POLL_SECONDS)
            continue
        if read:
            offset += read
            yield text
        if not state.running(attempt):  # what was read is all of it: the attempt is over
            if state.latest > attempt and (into_next or not attempt):  # a (first or next) attempt began
                attempt, offset = attempt + 1, 0
                if attempt > 1:
                    yield f"--- attempt {attempt} ---\n".encode()
                continue
            # Else the job ended, or the asked-for attempt did; a job queued again waits for its next attempt.
            if state.status in TERMINAL or (attempt and not into_next):
                return
        await asyncio.sleep(POLL_SECONDS)


@in_thread
def _attempts(request: Request, job_id: str, owner: str | None) -> Attempts:
    request.app.state.dependencies["database"].check()  # fail fast while the database is known to be down
    with request.app.state.read_sessions() as session:
        job = jobs.get_job(session, job_id, owner=owner)
        # A sweep runs nothing itself: its log stays empty (its children have theirs).
        return Attempts(status=job.status, latest=0 if job.kind == "sweep" else job.attempt)


@in_thread_of("store")
def _stored_log(request: Request, job_id: str, attempt: int, offset: int, running: bool) -> tuple[bytes, int]:
    """The stored log from `offset` on, redacted: (the text to send, the stored bytes it covers). Of an
    attempt still running, its complete lines only (a line is redacted whole, and the next read starts on a
    line's first byte); of one that is over, everything. Attempt 0 (none yet), or an attempt that stored no
    line yet: nothing."""
    try:
        data = request.app.state.store.get_bytes_from(log_key(job_id, attempt), offset) if attempt else b""
    except ArtifactNotFound:
        data = b""
    read = data.rfind(b"\n") + 1 if running else len(data)
    return redact_bytes(data[:read]), read  # in this thread: redacting a long log takes a while
