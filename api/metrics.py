"""The service's Prometheus metrics at GET /metrics (a training job's own metrics are /jobs/{id}/metrics).

Job metrics are read from the jobs table at scrape time, so every API process (and replica) reports the
same numbers and nothing is lost with a restart: jobs by status, kind and queue; how long jobs waited in
the queue (submission to the start of their latest attempt) and ran (that start to the end), as
histograms over every job in the table; failed jobs by cause. Request latency is measured here, per
API process (with `sagan api --workers N`, a scrape sees the process that answers it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.schemas import utc
from sagan_service.jobs import failure_cause
from sagan_service.models import STATUSES, Job

# Seconds: a sample job waits and runs seconds, a training hours or days.
JOB_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class JobCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            counts = session.execute(select(Job.status, Job.kind, Job.queue, func.count())
                                     .group_by(Job.status, Job.kind, Job.queue)).all()
            times = session.execute(select(Job.kind, Job.created_at, Job.started_at, Job.finished_at)
                                    .where(Job.started_at.is_not(None))).all()
            errors = session.execute(select(Job.error, func.count()).where(Job.status == "failed")
                                     .group_by(Job.error)).all()
        jobs = GaugeMetricFamily("sagan_jobs", "Jobs in the database by status, kind and queue",
                                 labels=["status", "kind", "queue"])
        seen = {(status, kind, queue): count for status, kind, queue, count in counts}
        for status in STATUSES:  # every status, so a dashboard sees 0 rather than nothing
            if not any(key[0] == status for key in seen):
                seen[(status, "train", "default")] = 0
        for (status, kind, queue), count in sorted(seen.items()):
            jobs.add_metric([status, kind, queue], count)
        yield jobs

        waits: dict[str, list[float]] = {}
        runs: dict[str, list[float]] = {}
        for kind, created, started, finished in times:
            assert started is not None  # the query selects started jobs only
            waits.setdefault(kind, []).append((utc(started) - utc(created)).total_seconds())
            if finished is not None:
                runs.setdefault(kind, []).append((utc(finished) - utc(started)).total_seconds())
        yield _histogram("sagan_job_queue_wait_seconds", "From submission to the start of the job's latest "
                         "attempt", waits)
        yield _histogram("sagan_job_run_seconds", "From the start of the job's latest attempt to its end "
                         "(finished jobs)", runs)

        causes: Counter[str] = Counter()
        for error, count in errors:
            causes[failure_cause(error)] += count
        failures = GaugeMetricFamily("sagan_job_failures", "Failed jobs by cause", labels=["cause"])
        for cause, count in sorted(causes.items()):
            failures.add_metric([cause], count)
        yield failures


def _histogram(name: str, documentation: str, values: dict[str, list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["kind"])
    for kind, seconds in sorted(values.items()):
        buckets = [(str(bound), sum(1 for value in seconds if value <= bound)) for bound in JOB_BUCKETS]
        family.add_metric([kind], [*buckets, ("+Inf", len(seconds))], sum_value=sum(seconds))
    return family


def make_registry(sessions: sessionmaker[Session]) -> tuple[CollectorRegistry, Histogram]:
    """The app's registry (its own, so that several apps in one process do not collide) with the job
    collector, and the request-latency histogram in it."""
    registry = CollectorRegistry()
    registry.register(JobCollector(sessions))
    latency = Histogram("sagan_http_request_duration_seconds", "API request latency by route",
                        ["method", "route", "status"], buckets=REQUEST_BUCKETS, registry=registry)
    return registry, latency


class RequestLatency:
    """Pure ASGI middleware observing each request's latency, labelled with its route's template
    (`/jobs/{job_id}`, not the id: one series per route)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            latency = getattr(scope["app"].state, "request_latency", None)
            if latency is not None:
                latency.labels(scope["method"], route, str(status)).observe(time.perf_counter() - start)
