"""Webhooks: a job's `notify` URLs are told of each of its status changes.

    a transition (sagan_service.jobs) --record_status_changes, in its transaction--> one webhook_deliveries
    row
        per notify URL --the sender (webhook_sender.py, beside every reaper)--> POST, signed; retried with
        backoff

The job's creation (queued) is no change; every later status is, a requeue (running -> queued) included. An
event's body is fixed when it is recorded, so every attempt sends the same bytes under the same signature:
`X-Sagan-Signature: sha256=<hex HMAC-SHA256 of the body under the owner's secret>`.

Where requests may go: only to hosts SAGAN_WEBHOOK_HOSTS lists (checked at submission and again at each
delivery), and a host name is resolved at delivery and refused where it leads to a private, loopback or
link-local address that is not itself listed, so a DNS record cannot point the service at its own network.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import insert, select

from .models import ApiToken, Job, WebhookDelivery, utcnow

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.orm import Session

    from .settings import Settings

MAX_TARGETS = 5
MAX_URL_CHARS = 2048
SIGNATURE_HEADER = "X-Sagan-Signature"
EVENT_HEADER = "X-Sagan-Event"
TIMESTAMP_HEADER = "X-Sagan-Timestamp"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# ---- events -----------------------------------------------------------------------------------------------

def record_status_changes(session: Session, which: ColumnElement[bool]) -> None:
    """Add an event per notify URL for each job matching `which` whose status is not the last one recorded for
    it. Every transition calls it after its UPDATE, before its commit, so an event commits with its change or
    not at all; a transition that changed nothing records nothing. Jobs without notify URLs cost one read."""
    jobs = session.execute(select(Job.id, Job.kind, Job.status, Job.notify, Job.error, Job.step,
                                  Job.total_steps)
                           .where(which, Job.notify.is_not(None))).all()
    for job in jobs:
        last = session.execute(select(WebhookDelivery.sequence, WebhookDelivery.status)
                               .where(WebhookDelivery.job_id == job.id)
                               .order_by(WebhookDelivery.sequence.desc()).limit(1)).first()
        previous, sequence = (last.status, last.sequence + 1) if last else ("queued", 1)
        if job.status == previous:
            continue
        now = utcnow()
        payload = json.dumps({"id": event_id(job.id, sequence), "type": "job.status", "job_id": job.id,
                              "kind": job.kind, "status": job.status, "previous_status": previous,
                              "sequence": sequence, "occurred_at": now.isoformat(),
                              "progress": {"step": job.step, "total_steps": job.total_steps},
                              "error": job.error},
                             separators=(",", ":"))
        session.execute(insert(WebhookDelivery), [
            {"job_id": job.id, "url": url, "sequence": sequence, "status": job.status, "payload": payload,
             "attempts": 0, "next_attempt_at": now, "created_at": now} for url in job.notify])


def event_id(job_id: str, sequence: int) -> str:
    """The same for every URL and attempt of one event: what a receiver deduplicates retries by."""
    return f"{job_id}.{sequence}"


def list_deliveries(session: Session, *, job_id: str) -> list[WebhookDelivery]:
    """A job's events and their deliveries, in sequence order."""
    return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
                                .order_by(WebhookDelivery.sequence, WebhookDelivery.url)))


# ---- signatures -------------------------------------------------------------------------------------------

def sign(secret: str, body: bytes) -> str:
    """The X-Sagan-Signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str) -> bool:
    """What a receiver checks (in constant time)."""
    return hmac.compare_digest(sign(secret, body), header)


def owner_secret(session: Session, owner: str, settings: Settings) -> str | None:
    """The secret that signs `owner`'s webhooks: its token's, or for "local" (SAGAN_AUTH=none) the setting or
    the generated file; None for an owner whose token was revoked."""
    secret = session.scalar(select(ApiToken.webhook_secret).where(ApiToken.name == owner))
    if secret is None and owner == "local":
        return local_secret(settings)
    return secret


def local_secret(settings: Settings) -> str:
    """SAGAN_WEBHOOK_SECRET, else SAGAN_HOME/webhook-secret, made (0600) by whichever process needs it
    first."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    path = settings.home / "webhook-secret"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".webhook-secret.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(draft, path)  # atomic, and it fails where another process made the file first
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


# ---- where requests may go --------------------------------------------------------------------------------

class TargetRefused(ValueError):
    """A notify URL this service may not call; the message says why."""


@dataclass(frozen=True)
class WebhookHosts:
    """SAGAN_WEBHOOK_HOSTS: host names, and IP addresses or networks."""

    names: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, text: str) -> WebhookHosts:
        names, networks = set(), []
        for entry in (part.strip().lower() for part in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def lists_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def allows_host(self, host: str) -> bool:
        literal = _ip(host)
        return self.lists_address(literal) if literal is not None else host.rstrip(".") in self.names

    def allows_address(self, address: IPAddress) -> bool:
        """A public address, or one listed: never the service's own network by way of a name."""
        return self.lists_address(address) or (address.is_global and not address.is_multicast)


@dataclass(frozen=True)
class Target:
    """Where one delivery connects: `url` with the checked address in place of the host name."""

    url: str
    host_header: str
    server_name: str | None  # https: the name the TLS certificate must carry


def check_url(url: str, hosts: WebhookHosts) -> tuple[str, str, int]:
    """The URL's scheme, host and port, or TargetRefused: http(s), no credentials, a host `hosts` lists."""
    if not hosts:
        raise TargetRefused("webhooks are off on this service (SAGAN_WEBHOOK_HOSTS lists no host)")
    if len(url) > MAX_URL_CHARS:
        raise TargetRefused(f"a webhook URL may have at most {MAX_URL_CHARS} characters")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise TargetRefused("a webhook URL may not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise TargetRefused(f"not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("a webhook URL is http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("a webhook URL may not carry credentials (the job page shows it)")
    host = parts.hostname
    if not hosts.allows_host(host):
        raise TargetRefused(f"host {host} is not one this service calls (SAGAN_WEBHOOK_HOSTS)")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def resolve_target(url: str, hosts: WebhookHosts,
                   resolve: Callable[[str, int], list[str]] | None = None) -> Target:
    """Where to connect for `url` now: its host checked again and resolved, its first allowed address, or
    TargetRefused. The request goes to that address, so a second DNS answer cannot change it."""
    scheme, host, port = check_url(url, hosts)
    literal = _ip(host)
    addresses = [literal] if literal is not None else [_ip(text)
                                                       for text in (resolve or _resolve)(host, port)]
    allowed = [address for address in addresses if address is not None and hosts.allows_address(address)]
    if not allowed:
        raise TargetRefused(f"{host} resolves to no address this service may call (private, loopback or "
                            "link-local addresses only where SAGAN_WEBHOOK_HOSTS lists them)")
    address, parts = allowed[0], urlsplit(url)
    netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    return Target(url=parts._replace(netloc=netloc).geturl(), host_header=parts.netloc,
                  server_name=host if scheme == "https" and literal is None else None)


def _ip(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    # ::ffff:127.0.0.1 is 127.0.0.1 (Python 3.11 calls the mapped form global).
    return (address.ipv4_mapped or address) if address.version == 6 else address


def _resolve(host: str, port: int) -> list[str]:
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except OSError as error:
        raise TargetRefused(f"{host} does not resolve: {error}") from None
