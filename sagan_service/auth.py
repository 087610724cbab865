"""API tokens and who a request acts for.

A token is 32 random bytes (URL-safe text); only its sha256 is stored, so a copy of the database gives
no usable token (a plain hash suffices: the token is random, not a password to guess). Every job has
an owner, the name of the token that submitted it; a token sees its own jobs, an admin token all.
With SAGAN_AUTH=none every request acts as LOCAL, an admin named "local".
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import rows_matched
from .models import ApiToken, utcnow

TOKEN_PREFIX = "sagan_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who a request acts for."""

    name: str
    admin: bool

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs this principal may see; None: all of them."""
        return None if self.admin else self.name


LOCAL = Principal("local", admin=True)


class TokenError(ValueError):
    """A token cannot be created or revoked; the message says why."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str, admin: bool) -> str:
    """Store a new token's hash under `name` and return the token (shown once, never stored)."""
    if not NAME.match(name):
        raise TokenError(f"token name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=hash_token(token), admin=admin, created_at=utcnow()))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise TokenError(f"a token named {name!r} exists already (revoke it first)") from None
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def revoke_token(session: Session, *, name: str) -> bool:
    """Delete the token; False if there is none by that name. Its jobs keep their owner."""
    deleted = rows_matched(session.execute(delete(ApiToken).where(ApiToken.name == name)))
    session.commit()
    return deleted == 1


def lookup(session: Session, token: str) -> Principal | None:
    """The principal a presented token stands for, or None."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    return None if row is None else Principal(row.name, row.admin)


class TokenCache:
    """Looked-up tokens for `seconds`, so a request costs no database round trip for its token (a
    revoked token keeps working at most that long in each API process). Unknown tokens are not cached:
    they cannot fill the memory."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.entries: dict[str, tuple[float, Principal]] = {}
        self.lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        entry = self.entries.get(token)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, token: str, principal: Principal) -> None:
        with self.lock:
            now = time.monotonic()
            if len(self.entries) > 10_000:  # tokens are few; only expired entries pile up
                self.entries = {key: value for key, value in self.entries.items() if value[0] >= now}
            self.entries[token] = (now + self.seconds, principal)
