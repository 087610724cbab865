"""Which queued job a free worker takes (jobs.claim_next): priority first, then fair share between owners,
then the oldest; on SQLite (the embedded default) and PostgreSQL, and with workers claiming at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from sagan_core.config import make_config
from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobspec import SweepSpec
from sagan_service.migrate import upgrade
from sagan_service.models import PRIORITIES, Job, utcnow
from tests.service.conftest import TINY, Api, Workers, make_token, start_api


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = (f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite"
           else request.getfixturevalue("empty_schema_url"))
    engine = make_engine(url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def submit(session: Session, owner: str, *, queue: str = "cpu", priority: str = "normal") -> str:
    job, _ = jobs.create_job(session, kind="train", spec=make_config(steps=1), queue=queue, max_attempts=1,
                             owner=owner, priority=PRIORITIES.index(priority))
    return job.id


def take(session: Session, ticket: str, worker: str = "w") -> str | None:
    job = jobs.claim_next(session, ticket=ticket, worker_id=worker, lease_seconds=60)
    return None if job is None else job.id


def test_higher_priority_first_whichever_message_is_taken(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        low = submit(session, "alice", priority="low")
        normal = submit(session, "alice")
        high = submit(session, "root", priority="high")
        assert [take(session, low) for _ in range(3)] == [high, normal, low]
        assert take(session, low) is None  # a message left over runs nothing
        assert not jobs.queue_has_work(session, ticket=low)


def test_the_owner_with_fewest_unfinished_jobs_goes_next_and_a_sweep_keeps_its_order(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        sweep, _ = jobs.create_sweep(session,
                                     spec=SweepSpec(base={}, arms=[{"name": "x"}], seeds=list(range(6))),
                                     children=[(f"arm{index}", make_config(steps=1, seed=index), "cpu")
                                               for index in range(6)], max_attempts=1, owner="alice")
        children = [child.id for child in jobs.sweep_children(session, job_id=sweep.id)]
        first, second = take(session, children[0], "w1"), take(session, children[0], "w2")
        assert [first, second] == children[:2]  # nobody else waits: alice's sweep in arm order
        singles = [submit(session, "bob") for _ in range(3)]
        # alice has 6 jobs unfinished, bob 3: bob's oldest next, although alice's waited longer.
        assert take(session, children[5], "w3") == singles[0]
        jobs.finish_job(session, job_id=first, worker_id="w1", status="succeeded")
        jobs.finish_job(session, job_id=second, worker_id="w2", status="succeeded")
        # alice 4 unfinished (none running), bob 3 (one running): bob still goes first, running more than
        # she does; then the rest of alice's sweep in its order.
        assert [take(session, singles[2]) for _ in range(7)] == [singles[1], singles[2], *children[2:6], None]


def test_owners_with_as_much_unfinished_take_turns(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        alice = [submit(session, "alice") for _ in range(2)]
        carol = [submit(session, "carol") for _ in range(2)]
        # 2 and 2 each time: the owner whose last job started longest ago (carol never) goes next.
        assert [take(session, alice[0]) for _ in range(4)] == [alice[0], carol[0], alice[1], carol[1]]


def test_a_message_takes_only_from_its_own_queue(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        gpu = submit(session, "alice", queue="gpu")
        cpu = submit(session, "bob", queue="cpu", priority="low")
        assert take(session, cpu) == cpu
        assert take(session, cpu) is None and jobs.queue_has_work(session, ticket=gpu)
        assert take(session, gpu) == gpu


def test_workers_claiming_at_once_run_every_job_once(empty_schema_url: str) -> None:
    engine = make_engine(empty_schema_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with sessions() as session:
        queued = [submit(session, owner) for owner in ("alice", "bob", "carol") for _ in range(10)]
    taken: list[str] = []
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        with sessions() as session:
            start.wait()
            while (job_id := take(session, queued[0], name)) is not None:
                taken.append(job_id)

    threads = [threading.Thread(target=worker, args=(f"w{index}",)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()
    assert sorted(taken) == sorted(queued)  # each once, none left behind


def test_two_workers_run_a_high_priority_job_and_another_owners_job_before_a_sweeps_third(
        service_env: dict[str, str], empty_schema_url: str, tmp_path: Path) -> None:
    # Its own database and queue: the session's worker must not take these jobs.
    env = {**service_env, "SAGAN_DATABASE_URL": empty_schema_url,
           "SAGAN_BROKER_URL": "redis://127.0.0.1:6379/11"}
    redis.Redis.from_url(env["SAGAN_BROKER_URL"]).flushdb()
    service, admin = start_api(env, tmp_path)
    pool = Workers(env, tmp_path)
    try:
        alice, bob = (Api(admin.base_url, make_token(env, name)) for name in ("alice", "bob"))
        run = {**TINY, "steps": 10, "sample_every": 10, "checkpoint_every": 10}
        sweep = alice.submit({"kind": "sweep", "base": run, "arms": [{"name": "a"}], "seeds": [0, 1, 2]})
        single = bob.submit({"kind": "train", "config": run})
        urgent = admin.submit({"kind": "train", "config": run, "priority": "high"})
        for _ in range(2):
            pool.start()
        admin.wait_status(sweep["id"], {"succeeded", "failed"}, 300)
        children = [admin.job(child["id"]) for child in admin.job(sweep["id"])["children"]]
        jobs = [admin.wait_status(job["id"], {"succeeded", "failed"}, 120) for job in (single, urgent)]
        assert [job["status"] for job in [*children, *jobs]] == ["succeeded"] * 5
        assert [job["attempt"] for job in [*children, *jobs]] == [1] * 5  # nothing ran twice
        # However the first two claims fell (before or after the last two POSTs), the high job, then bob's
        # (he runs nothing, alice something or has started before), go before alice's third.
        assert max(job["started_at"] for job in jobs) < min(child["started_at"] for child in children[2:])
    finally:
        pool.stop_all()
        service.stop()


def test_a_queued_job_held_for_a_moment_by_another_transaction_is_still_claimed(
        empty_schema_url: str) -> None:
    # The reaper stamps queued jobs (note_waiting, take_stale_queued) in transactions of their own; SKIP
    # LOCKED skips a row so held. The ticket must wait for it, not run nothing while the job stays queued
    # (seen in test_queue_order: a worker's first message found "nothing queued" beside its reaper's pass).
    engine = make_engine(empty_schema_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session:
            job_id = submit(session, "alice")
        with sessions() as reaper:
            reaper.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow()))  # held
            timer = threading.Timer(0.2, reaper.commit)
            timer.start()
            with sessions() as session:
                assert take(session, job_id) == job_id
            timer.join()
    finally:
        engine.dispose()
