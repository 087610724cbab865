"""Secrets out of log text: applied by the worker before an attempt's log is stored and by the API before
it serves one (a log stored by an older worker, or a secret the worker did not know).

Two kinds of secret go: the values of this process's secret settings (the AWS secret key and session token,
API tokens, the passwords in its database, broker and MLflow URLs), and whatever has the shape of one
(`scheme://user:password@`, `Authorization: Bearer ...`, a `sagan_...` token, `password=...`). Every
pattern stays within one line, so redacting a log line by line, or a log and then its continuation, gives
the same text: a follower reading the stored log by byte offset never sees it change under it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

REDACTED = "[redacted]"
# Settings whose whole value is a secret, and settings holding URLs that may carry a password.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "SAGAN_TOKEN", "MLFLOW_TRACKING_TOKEN",
                    "MLFLOW_TRACKING_PASSWORD")
URL_VARIABLES = ("SAGAN_DATABASE_URL", "SAGAN_BROKER_URL", "SAGAN_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
# A shorter value is left alone: redacting it would blank ordinary words (a test's AWS key "test").
MIN_SECRET_LENGTH = 8

_PATTERNS = [
    # URL credentials: keep the scheme and the user, drop the password.
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@"), rf"\g<1>{REDACTED}@"),
    # An HTTP Authorization header (or its value quoted elsewhere), any scheme.
    (re.compile(r"(?i)(\bauthorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:bearer|basic|token)?[ \t]*)[^\s\"',]+"),
     rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)(\bbearer[ \t]+)[A-Za-z0-9._~+/=-]{8,}"), rf"\g<1>{REDACTED}"),
    # This service's API tokens (sagan_service.auth: "sagan_" and 43 URL-safe characters).
    (re.compile(r"\bsagan_[A-Za-z0-9_-]{20,}"), f"sagan_{REDACTED}"),
    # key=value or key: value where the key names a secret.
    (re.compile(r"(?i)(\b[\w.-]*(?:password|passwd|secret|access_key|api_key|token)[\"']?[ \t]*[:=][ "
                r"\t]*[\"']?)"
                r"[^\s\"',]+"), rf"\g<1>{REDACTED}"),
]


def secret_values(environ: Mapping[str, str]) -> list[str]:
    """The secret settings' values in `environ`, longest first (a value inside another goes after it)."""
    values = {environ.get(name, "") for name in SECRET_VARIABLES}
    for name in URL_VARIABLES:
        try:
            values.add(urlsplit(environ.get(name, "")).password or "")
        except ValueError:  # no URL after all: the patterns still look at it
            continue
    return sorted((value for value in values if len(value) >= MIN_SECRET_LENGTH), key=len, reverse=True)


class Redactor:
    """Replaces `values` and the secret-shaped patterns with "[redacted]"."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        values = [value for value in values if value]
        self.values = re.compile("|".join(map(re.escape, values))) if values else None

    def __call__(self, text: str) -> str:
        if self.values is not None:
            text = self.values.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


@functools.cache
def _process_redactor() -> Redactor:
    return Redactor(secret_values(os.environ))


def redact(text: str) -> str:
    """`text` without this process's secrets (read from its environment once) or anything shaped like one."""
    return _process_redactor()(text)


def redact_bytes(data: bytes) -> bytes:
    """redact() for a log's bytes (UTF-8; an invalid byte becomes U+FFFD)."""
    return redact(data.decode("utf-8", errors="replace")).encode()
