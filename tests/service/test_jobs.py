"""State transitions in sagan_service.jobs, in-process on SQLite (the embedded default's database)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sagan_core.config import make_config
from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobspec import SweepSpec
from sagan_service.migrate import downgrade, upgrade
from sagan_service.models import Base, utcnow


@pytest.fixture
def session(tmp_path: Path) -> Session:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade(engine)
    with make_session_factory(engine)() as session:
        yield session


def new_job(session: Session, **kwargs) -> str:
    job, created = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                                   max_attempts=2, **kwargs)
    assert created
    return job.id


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_migrations_round_trip_to_exactly_the_models_schema(database: str, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'm.db'}" if database == "sqlite"
           else request.getfixturevalue("empty_schema_url"))
    engine = make_engine(url)
    upgrade(engine)
    downgrade(engine, "base")
    with engine.connect() as connection:
        assert inspect(connection).get_table_names() == ["alembic_version"]  # every table went
    upgrade(engine)
    with engine.connect() as connection:
        # What `alembic revision --autogenerate` would write: nothing, so migrations and models agree
        # (tables, columns, types, nullability, indexes, foreign keys).
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_claim_is_exclusive(session: Session) -> None:
    job_id = new_job(session)
    claimed = jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=30)
    assert claimed is not None and claimed.status == "running" and claimed.attempt == 1
    assert jobs.claim_job(session, job_id=job_id, worker_id="b", lease_seconds=30) is None


def test_heartbeat_only_for_the_owner_and_reports_cancel(session: Session) -> None:
    job_id = new_job(session)
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=30)
    assert jobs.heartbeat(session, job_id=job_id, worker_id="b", lease_seconds=30) == jobs.Lease(False, False)
    lease = jobs.heartbeat(session, job_id=job_id, worker_id="a", lease_seconds=30, step=3, total_steps=10,
                           metrics={"step": 3})
    assert lease == jobs.Lease(True, False)
    assert jobs.request_cancel(session, job_id=job_id).cancel_requested
    assert jobs.heartbeat(session, job_id=job_id, worker_id="a", lease_seconds=30).cancel_requested
    job = jobs.get_job(session, job_id)
    assert (job.step, job.metrics) == (3, {"step": 3})


def test_reaper_requeues_then_fails_after_max_attempts(session: Session) -> None:
    job_id = new_job(session)
    later = utcnow() + timedelta(seconds=60)
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=1)
    assert jobs.reap_expired_leases(session) == []  # lease still valid
    jobs.record_artifact(session, job_id=job_id, kind="checkpoint", step=5, key="k5")
    assert jobs.reap_expired_leases(session, now=later) == [job_id]
    assert jobs.finish_job(session, job_id=job_id, worker_id="a", status="succeeded") is False  # lost it

    again = jobs.claim_job(session, job_id=job_id, worker_id="b", lease_seconds=1)
    assert again is not None and again.attempt == 2 and again.resumed_from_step == 5
    assert jobs.reap_expired_leases(session, now=later) == []
    job = jobs.get_job(session, job_id)
    session.refresh(job)
    assert job.status == "failed" and "lease expired" in job.error


def test_reaper_settles_a_flagged_job_as_cancelled(session: Session) -> None:
    job_id = new_job(session)
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=1)
    jobs.request_cancel(session, job_id=job_id)
    assert jobs.reap_expired_leases(session, now=utcnow() + timedelta(seconds=60)) == []
    assert jobs.get_job(session, job_id).status == "cancelled"


def test_checkpoint_pointer_only_moves_forward(session: Session) -> None:
    job_id = new_job(session)
    for step in (10, 30, 20):
        jobs.record_artifact(session, job_id=job_id, kind="checkpoint", step=step, key=f"k{step}")
    assert jobs.get_job(session, job_id).latest_checkpoint_step == 30
    assert jobs.committed_checkpoint(session, job_id=job_id, step=None).key == "k30"
    with pytest.raises(jobs.JobConflict, match="step 15"):
        jobs.committed_checkpoint(session, job_id=job_id, step=15)


def test_idempotency_key_returns_the_first_job(session: Session) -> None:
    first = new_job(session, idempotency_key="abc")
    job, created = jobs.create_job(session, kind="train", spec=make_config(), queue="default", max_attempts=2,
                                   idempotency_key="abc")
    assert (job.id, created) == (first, False)


def test_finished_jobs_cannot_be_cancelled(session: Session) -> None:
    job_id = new_job(session)
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=30)
    assert jobs.finish_job(session, job_id=job_id, worker_id="a", status="succeeded")
    with pytest.raises(jobs.JobConflict, match="succeeded"):
        jobs.request_cancel(session, job_id=job_id)
    with pytest.raises(jobs.JobNotFound):
        jobs.request_cancel(session, job_id="missing")


def test_stale_queued_jobs_are_taken_once_for_resending(session: Session) -> None:
    fresh, running = new_job(session), new_job(session)
    jobs.claim_job(session, job_id=running, worker_id="a", lease_seconds=30)
    assert jobs.take_stale_queued(session, older_than=timedelta(minutes=1)) == []
    later = utcnow() + timedelta(minutes=2)
    assert jobs.take_stale_queued(session, older_than=timedelta(minutes=1), now=later) == [fresh]
    assert jobs.take_stale_queued(session, older_than=timedelta(minutes=1), now=later) == []


def test_cancel_settles_a_queued_job_and_flags_a_running_one(session: Session) -> None:
    queued, running = new_job(session), new_job(session)
    jobs.claim_job(session, job_id=running, worker_id="a", lease_seconds=30)
    cancelled = jobs.request_cancel(session, job_id=queued)
    assert (cancelled.status, cancelled.finished_at is not None) == ("cancelled", True)
    flagged = jobs.request_cancel(session, job_id=running)
    assert (flagged.status, flagged.cancel_requested, flagged.finished_at) == ("running", True, None)


def test_finish_records_the_final_progress(session: Session) -> None:
    job_id = new_job(session)
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=30)
    assert not jobs.finish_job(session, job_id=job_id, worker_id="b", status="succeeded")
    final = {"step": 10, "total_steps": 10, "d_loss": 0.5}
    assert jobs.finish_job(session, job_id=job_id, worker_id="a", status="succeeded", metrics=final)
    job = jobs.get_job(session, job_id)
    session.refresh(job)
    assert (job.status, job.step, job.total_steps, job.metrics) == ("succeeded", 10, 10, final)


def test_a_job_that_never_reached_the_queue_is_withdrawn_with_its_idempotency_key(session: Session) -> None:
    """The client got a 503, not this job: no list shows it, and its retry with the same key makes a new
    one."""
    first = new_job(session, idempotency_key="k")
    jobs.withdraw_unsent(session, job_id=first)
    job, created = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                                   max_attempts=2, idempotency_key="k")
    assert created and job.id != first
    with pytest.raises(jobs.JobNotFound):
        jobs.get_job(session, first)
    # A job a worker took meanwhile (its message went out after all) stays.
    taken = new_job(session)
    jobs.claim_job(session, job_id=taken, worker_id="w", lease_seconds=30)
    jobs.withdraw_unsent(session, job_id=taken)
    assert jobs.get_job(session, taken).status == "running"


def test_a_sweep_none_of_whose_children_was_sent_is_withdrawn_whole(session: Session) -> None:
    sweep, _ = jobs.create_sweep(session, spec=SweepSpec(), children=[("a", make_config(steps=1), "cpu"),
                                                              ("b", make_config(steps=1), "cpu")],
                                 max_attempts=1, idempotency_key="s")
    jobs.withdraw_unsent(session, job_id=sweep.id)
    assert jobs.list_jobs(session, limit=10) == []  # neither the sweep nor a child is left
    _, created = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                                 max_attempts=2,
                                   idempotency_key="s")
    assert created


def test_hand_back_requeues_without_counting_the_attempt(session: Session) -> None:
    job_id = new_job(session)
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=30)
    jobs.record_artifact(session, job_id=job_id, kind="checkpoint", step=7, key="k7")
    assert jobs.hand_back(session, job_id=job_id, worker_id="b") is None  # only the lease owner
    assert jobs.hand_back(session, job_id=job_id, worker_id="a") == "queued"
    job = jobs.get_job(session, job_id)
    session.refresh(job)
    assert (job.status, job.attempt, job.lease_owner) == ("queued", 0, None)
    again = jobs.claim_job(session, job_id=job_id, worker_id="b", lease_seconds=30)
    assert (again.attempt, again.resumed_from_step) == (1, 7)
    jobs.request_cancel(session, job_id=job_id)
    assert jobs.hand_back(session, job_id=job_id, worker_id="b") == "cancelled"  # flagged
    session.refresh(job)
    assert job.status == "cancelled" and job.finished_at is not None


def test_old_checkpoints_are_forgotten_newest_kept(session: Session) -> None:
    job_id = new_job(session)
    for step in (10, 20, 30, 40):
        jobs.record_artifact(session, job_id=job_id, kind="checkpoint", step=step, key=f"k{step}")
    jobs.record_artifact(session, job_id=job_id, kind="sample", step=10, key="s10")
    assert jobs.drop_old_checkpoints(session, job_id=job_id, keep=2) == [10, 20]
    assert [a.step for a in jobs.list_artifacts(session, job_id=job_id, kind="checkpoint")] == [30, 40]
    assert [a.step for a in jobs.list_artifacts(session, job_id=job_id, kind="sample")] == [10]
    assert jobs.drop_old_checkpoints(session, job_id=job_id, keep=2) == []
    with pytest.raises(jobs.JobConflict, match="step 20"):
        jobs.committed_checkpoint(session, job_id=job_id, step=20)


def test_a_job_seen_waiting_in_the_broker_is_not_resent(session: Session) -> None:
    waiting, lost = new_job(session), new_job(session)
    later = utcnow() + timedelta(minutes=2)
    jobs.note_waiting(session, job_ids={waiting}, now=later)
    assert jobs.take_stale_queued(session, older_than=timedelta(minutes=1), now=later) == [lost]


def test_another_owners_job_is_not_found_and_admins_see_all(session: Session) -> None:
    alice = new_job(session, owner="alice")
    bob = new_job(session, owner="bob")
    assert jobs.get_job(session, alice, owner="alice").id == alice
    assert jobs.get_job(session, alice).id == alice  # no owner filter: an admin
    for call in (lambda: jobs.get_job(session, alice, owner="bob"),
                 lambda: jobs.request_cancel(session, job_id=alice, owner="bob"),
                 lambda: jobs.committed_checkpoint(session, job_id=alice, step=None, owner="bob"),
                 lambda: jobs.get_job(session, "not-a-job-id\x00")):
        with pytest.raises(jobs.JobNotFound):
            call()
    assert [job.id for job in jobs.list_jobs(session, owner="bob")] == [bob]
    assert {job.id for job in jobs.list_jobs(session)} == {alice, bob}
    assert jobs.active_counts(session, owner="alice", up_to=5) == {"queued": 1, "running": 0}
    jobs.claim_job(session, job_id=alice, worker_id="w", lease_seconds=30)
    assert jobs.active_counts(session, owner="alice", up_to=5) == {"queued": 0, "running": 1}
    for _ in range(3):
        jobs.create_job(session, kind="train", spec=make_config(steps=1), queue="cpu", max_attempts=1,
                        owner="alice")
    assert jobs.active_counts(session, owner="alice", up_to=2) == {"queued": 2,
                                                                   "running": 1}  # counted up to 2


def test_idempotency_keys_are_per_owner(session: Session) -> None:
    first = new_job(session, owner="alice", idempotency_key="k")
    again, created = jobs.create_job(session, kind="train", spec=make_config(steps=10), queue="default",
                                     max_attempts=2, idempotency_key="k", owner="alice")
    assert (again.id, created) == (first, False)
    assert new_job(session, owner="bob", idempotency_key="k") != first


def test_recorded_errors_are_plain_and_classified(session: Session) -> None:
    job_id = new_job(session)
    jobs.claim_job(session, job_id=job_id, worker_id="w", lease_seconds=30)
    jobs.finish_job(session, job_id=job_id, worker_id="w", status="failed",
                    error="OSError: cannot write /var/lib/sagan/work/x/out/a.pt\n[SQL: SELECT 1]")
    error = jobs.get_job(session, job_id).error
    assert error == "OSError: cannot write .../a.pt" and jobs.failure_cause(error) == "training"
    assert jobs.failure_cause("worker lost (lease expired) on the last allowed attempt") == "worker_lost"
    assert jobs.failure_cause("the artifact store (S3 at <internal address>, bucket b) was unreachable for "
                              "300 s") \
        == "dependency_outage"


def test_a_nan_evaluation_is_stored_as_null_in_postgres(empty_schema_url: str) -> None:
    # PostgreSQL's json type refuses NaN: a collapsed run's evaluation must not fail the job row's update.
    # A schema of its own: a job claimed in the session's would be requeued when its lease ran out, and the
    # session's worker would then train it (it did, for 40 s, in the middle of other tests).
    engine = make_engine(empty_schema_url)
    upgrade(engine)
    try:
        with make_session_factory(engine)() as session:
            job_id = new_job(session)
            assert jobs.claim_job(session, job_id=job_id, worker_id="w", lease_seconds=60) is not None
            nan = {"step": 0, "source": "train",
                   "metrics": {"swd": float("nan"), "fid": float("inf"), "kid": 1.5}}
            assert jobs.record_evals(session, job_id=job_id, worker_id="w", latest=nan, best=None)
            session.expire_all()
            assert jobs.get_job(session, job_id).latest_eval["metrics"] == {"swd": None, "fid": None,
                                                                            "kid": 1.5}
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_session(request: pytest.FixtureRequest, tmp_path: Path) -> Session:
    url = (f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite"
           else request.getfixturevalue("empty_schema_url"))
    engine = make_engine(url)
    upgrade(engine)
    with make_session_factory(engine)() as session:
        yield session
    engine.dispose()


def test_create_job_admits_within_the_owner_limits_and_replays_a_key(any_session: Session) -> None:
    # On PostgreSQL the lock, counts and insert go in one pipelined round trip (db.run_and_commit); on SQLite
    # one by one: the same rows, the same refusals.
    session, limits = any_session, jobs.OwnerLimits(max_queued=2, max_running=1)
    spec = make_config(steps=7, g_lr=0.5, g_attention=[8, 16])
    first, created = jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3,
                                     owner="carol", idempotency_key="k", limits=limits)
    assert created and first.status == "queued" and first.total_steps == 7
    stored = jobs.get_job(session, first.id)
    assert (stored.spec, stored.queue, stored.owner, stored.max_attempts, stored.attempt) == (spec.to_dict(),
                                                                                              "cpu", "carol",
                                                                                              3, 0)
    assert stored.created_at is not None and stored.dispatched_at is not None
    again, created = jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3,
                                     owner="carol", idempotency_key="k", limits=limits)
    assert (again.id, created) == (first.id, False)
    assert jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3, owner="carol",
                           limits=limits)[1]
    with pytest.raises(jobs.OverLimit) as refused:
        jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3, owner="carol",
                        limits=limits)
    assert (refused.value.queued, refused.value.running, refused.value.adding) == (2, 0, 1)
    with pytest.raises(jobs.OverLimit):  # a replay at the limit waits like any other request
        jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3, owner="carol",
                        idempotency_key="k", limits=limits)
    assert jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3, owner="dan",
                           limits=limits)[1]  # another owner's limits are their own
    jobs.claim_job(session, job_id=first.id, worker_id="w", lease_seconds=30)
    with pytest.raises(jobs.OverLimit) as running:  # one place queued again, but the running limit is reached
        jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3, owner="carol",
                        limits=limits)
    assert (running.value.queued, running.value.running) == (1, 1)
    assert len(jobs.list_jobs(session, owner="carol")) == 2


def test_a_database_error_in_the_one_trip_insert_is_sqlalchemys(any_session: Session) -> None:
    # The API maps sqlalchemy's OperationalError to a 503 and trips its breaker on it: the pipelined path
    # must raise the same types connection.execute would, not the driver's.
    session = any_session
    assert session.get_bind().dialect.driver in ("pysqlite", "psycopg")  # psycopg: the pipelined path
    with pytest.raises(IntegrityError):  # max_attempts is NOT NULL
        jobs.create_job(session, kind="train", spec=make_config(), queue="cpu", max_attempts=None,
                        owner="erin")  # type: ignore[arg-type]
    session.rollback()
    assert jobs.create_job(session, kind="train", spec=make_config(), queue="cpu", max_attempts=1,
                           owner="erin")[1]


def test_a_lost_run_is_requeued_counting_the_attempt_then_fails_when_attempts_are_spent(
        session: Session) -> None:
    job_id = new_job(session)  # max_attempts=2
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=30)
    jobs.record_artifact(session, job_id=job_id, kind="checkpoint", step=7, key="k7")
    assert jobs.retry_lost(session, job_id=job_id, worker_id="b",
                           error="gone") is None  # only the lease owner
    assert jobs.retry_lost(session, job_id=job_id, worker_id="a", error="gone") == "queued"
    again = jobs.claim_job(session, job_id=job_id, worker_id="b", lease_seconds=30)
    assert (again.attempt, again.resumed_from_step) == (2, 7)  # it counted, and resumes from the checkpoint
    assert jobs.retry_lost(session, job_id=job_id, worker_id="b", error="the Ray job was lost") == "failed"
    job = jobs.get_job(session, job_id)
    session.refresh(job)
    assert (job.error, job.lease_owner) == ("the Ray job was lost", None) and job.finished_at is not None


def test_a_lost_run_of_a_job_flagged_for_cancelling_is_cancelled(session: Session) -> None:
    job_id = new_job(session)
    jobs.claim_job(session, job_id=job_id, worker_id="a", lease_seconds=30)
    jobs.request_cancel(session, job_id=job_id)
    assert jobs.retry_lost(session, job_id=job_id, worker_id="a", error="gone") == "cancelled"
