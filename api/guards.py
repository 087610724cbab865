"""What keeps one hung dependency (the artifact store, the job queue's broker, the database) from freezing
the API: each has its own small thread pool, so its slow calls cannot take the threads that other routes
need, and a breaker, so that after it failed the API answers 503 at once for a while instead of asking it
again on every request (fail fast). The calls themselves carry short timeouts (sagan_service.storage,
.queue, .db: SAGAN_API_TIMEOUT_SECONDS); retries belong to the worker, never to a request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio


class DependencyDown(Exception):
    """A dependency that failed moments ago: refused without asking it (503, Retry-After)."""

    def __init__(self, what: str, retry_after: float) -> None:
        super().__init__(f"{what} is unreachable right now; try again shortly")
        self.retry_after = retry_after


@dataclass
class Dependency:
    """One dependency's thread pool and breaker. `what` names it for people ("the artifact store")."""

    what: str
    threads: int | None  # None: the API's shared threads (api_threads)
    cooldown_s: float
    failure: type[Exception]  # what the dependency's calls raise when it is unreachable
    failed_at: float = -float("inf")
    limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise DependencyDown while the breaker is open (for cooldown_s after the last failure)."""
        left = self.failed_at + self.cooldown_s - time.monotonic()
        if left > 0:
            raise DependencyDown(self.what, left)

    def trip(self) -> None:
        self.failed_at = time.monotonic()

    def pool(self) -> anyio.CapacityLimiter | None:
        """The limiter of this dependency's threads (None: the shared ones)."""
        # Made on first use: an anyio limiter belongs to the running event loop.
        if self.limiter is None and self.threads is not None:
            self.limiter = anyio.CapacityLimiter(self.threads)
        return self.limiter
