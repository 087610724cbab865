"""The webhook sender: POSTs the events that sagan_service.webhooks recorded, in order per job and URL.

It runs in a thread of its own beside every reaper (each API process, each `sagan reaper`), where
SAGAN_WEBHOOK_HOSTS lists a host. Any number may run: a sender takes a delivery with a conditional UPDATE that
moves its next attempt past the attempt's time limit, so one sender sends it, and one that dies meanwhile
leaves it to be sent again then (receivers deduplicate by X-Sagan-Event). A later event to a URL waits while
an earlier one to it is pending. Nothing here holds up a job: transitions only insert rows, and sending has
short timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import aliased

from .db import rows_matched
from .models import Job, WebhookDelivery, utcnow
from .webhooks import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TargetRefused,
    WebhookHosts,
    event_id,
    owner_secret,
    resolve_target,
    sign,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Row
    from sqlalchemy.orm import Session, sessionmaker

    from .settings import Settings

log = logging.getLogger(__name__)
BATCH = 50  # deliveries taken per pass
CONNECTIONS = 4  # sent at once (to different URLs or jobs)
ANSWER_CHARS = 200  # of an answer kept for the job page
MAX_BACKOFF_SECONDS = 3600.0


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the HTTP status (None: no answer) and the first characters of the body, or
    why."""

    code: int | None
    text: str

    @property
    def delivered(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


def backoff(attempts: int, base_seconds: float) -> timedelta:
    """The wait after the `attempts`-th failed attempt: base, doubling, at most an hour."""
    return timedelta(seconds=min(base_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS))


def deliver_due(sessions: sessionmaker[Session], settings: Settings, pool: ThreadPoolExecutor) -> int:
    """Send every delivery due now that no earlier pending event to the same URL holds back, and record the
    answers; return how many were delivered (each may free the next event of its job)."""
    now = utcnow()
    with sessions() as session:
        taken = _take_due(session, now, hold=timedelta(seconds=2 * settings.webhook_timeout_seconds + 5))
        secrets = {owner: owner_secret(session, owner, settings) for owner in {row.owner for row in taken}}
        session.commit()
    hosts = WebhookHosts.parse(settings.webhook_hosts)
    answers = list(pool.map(lambda row: post(row, secrets[row.owner], hosts,
                                             settings.webhook_timeout_seconds),
                            taken))
    with sessions() as session:
        for row, answer in zip(taken, answers, strict=True):
            _record(session, row, answer, settings)
        session.commit()
    return sum(answer.delivered for answer in answers)


def _take_due(session: Session, now: datetime, *, hold: timedelta) -> list[Row[*tuple[Any, ...]]]:
    earlier = aliased(WebhookDelivery)
    held_back = select(earlier.id).where(earlier.job_id == WebhookDelivery.job_id,
                                         earlier.url == WebhookDelivery.url,
                                         earlier.sequence < WebhookDelivery.sequence,
                                         earlier.next_attempt_at.is_not(None)).exists()
    due = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.job_id, WebhookDelivery.sequence, WebhookDelivery.url,
               WebhookDelivery.payload, WebhookDelivery.attempts, Job.owner)
        .join(Job, Job.id == WebhookDelivery.job_id)
        .where(WebhookDelivery.next_attempt_at <= now, ~held_back)
        .order_by(WebhookDelivery.id).limit(BATCH)).all()
    # Another sender may have taken some since: the UPDATE's row count says which are this one's.
    return [row for row in due
            if rows_matched(session.execute(update(WebhookDelivery)
                               .where(WebhookDelivery.id == row.id, WebhookDelivery.next_attempt_at <= now)
                               .values(next_attempt_at=now + hold))) == 1]


def _record(session: Session, row: Row[Any], answer: Answer, settings: Settings) -> None:
    now, attempts = utcnow(), row.attempts + 1
    retry = not answer.delivered and attempts < settings.webhook_attempts
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(
        attempts=attempts, answer_code=answer.code, answer=answer.text, answered_at=now,
        delivered_at=now if answer.delivered else None,
        next_attempt_at=now + backoff(attempts, settings.webhook_backoff_seconds) if retry else None))
    if not answer.delivered:  # the host only: a URL's path or query may hold the receiver's own secret
        log.warning("webhook %s to %s: %s%s", event_id(row.job_id, row.sequence), urlsplit(row.url).hostname,
                    answer.code or "no answer", "" if retry else f"; given up after {attempts} attempts")


def post(row: Row[Any], secret: str | None, hosts: WebhookHosts, timeout_s: float) -> Answer:
    """One attempt: the event's body, signed, to the checked address of its URL; redirects are not
    followed."""
    import httpx

    if secret is None:
        return Answer(None, f"not sent: owner {row.owner} has no webhook secret (no token of that name)")
    try:
        target = resolve_target(row.url, hosts)
    except TargetRefused as error:
        return Answer(None, f"not sent: {error}"[:ANSWER_CHARS])
    body = row.payload.encode()
    headers = {"Content-Type": "application/json", "User-Agent": "sagan-webhooks", "Host": target.host_header,
               EVENT_HEADER: event_id(row.job_id, row.sequence), TIMESTAMP_HEADER: str(int(time.time())),
               SIGNATURE_HEADER: sign(secret, body)}
    extensions = {"sni_hostname": target.server_name} if target.server_name else {}
    try:
        with (httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client,
              client.stream("POST", target.url, content=body, headers=headers,
                            extensions=extensions) as response):
            text = _first_chars(response)
    except httpx.HTTPError as error:
        return Answer(None, f"no answer: {type(error).__name__}: {error}"[:ANSWER_CHARS])
    if response.is_redirect:
        text = f"a redirect (not followed) to {response.headers.get('location', '?')}"[:ANSWER_CHARS]
    return Answer(response.status_code, text)


def _first_chars(response: Any) -> str:
    """The start of the body, read no further: a receiver's answer may be anything."""
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= ANSWER_CHARS:
            break
    return data[:ANSWER_CHARS].decode(errors="replace")


class WebhookSender:
    """deliver_due every SAGAN_WEBHOOK_POLL_SECONDS in a thread of its own (start), until stop()."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions, self.settings = sessions, settings
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    @classmethod
    def start(cls, sessions: sessionmaker[Session], settings: Settings) -> WebhookSender | None:
        """A running sender, or None where SAGAN_WEBHOOK_HOSTS is empty (no webhook may be sent)."""
        if not WebhookHosts.parse(settings.webhook_hosts):
            return None
        sender = cls(sessions, settings)
        sender.thread.start()
        return sender

    def stop(self) -> None:
        """After the attempts in flight (each within SAGAN_WEBHOOK_TIMEOUT_SECONDS)."""
        self.stopping.set()
        self.thread.join(2 * self.settings.webhook_timeout_seconds + 5)

    def _run(self) -> None:
        with ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="webhook") as pool:
            while not self.stopping.is_set():
                try:
                    while deliver_due(self.sessions, self.settings, pool) and not self.stopping.is_set():
                        pass  # a delivered event may free the next one of its job: send it now
                except Exception:
                    log.exception("webhook pass failed; retrying next interval")
                self.stopping.wait(self.settings.webhook_poll_seconds)
