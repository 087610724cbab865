"""worker.supervisor.Attempt driven by a scripted fake launcher instead of a process tree: how each way an
attempt ends (exit, error, cancel, worker stopping, a trainer deaf to the stop, the maximum run time, a lost
lease) settles the job row and what the launcher is asked to do.

Everything but the process tree is real: a SQLite database with the service's schema, a file:// artifact
store, the outbox, the heartbeat and the attempt's own `prepare` (which writes the config and builds the
torchrun command that is never run). The one seam: `FakeAttempt.launch` returns the fake launcher. The
end-to-end versions, with a real `sagan worker` and trainer, are in tests/service (test_stopping.py,
test_lifecycle.py, test_faults.py).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from sagan_core import layout
from sagan_core.config import make_config
from sagan_core.exits import EXIT_STOPPED
from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.migrate import upgrade
from sagan_service.models import Job, utcnow
from sagan_service.settings import Settings
from sagan_service.storage import ArtifactStore, log_key, metrics_key, open_store
from worker.launcher import Launcher
from worker.supervisor import HANDED_BACK, Attempt

WORKER = "test-host:1:attempt"
KILLED = -signal.SIGKILL  # what Popen reports for a tree the launcher had to kill
# Short enough for a fast file, long enough that a loaded machine still sees the order the tests expect.
SHUTDOWN_SECONDS = 1.0
MAX_RUN_SECONDS = 0.3
# A fake still running this long after its first poll ends the attempt (see FakeLauncher.poll): a supervisor
# that misses what it should react to fails its test instead of hanging the run.
HANG_SECONDS = 10.0


@dataclass
class FakeLauncher:
    """A scripted process tree. It exits with `exit_code` on its `exit_after_polls`-th poll (never, if None);
    asked to stop, it exits with EXIT_STOPPED `stops_after_polls` polls later, or runs on if `deaf`.
    `on_poll(n)` runs at the n-th poll, while the attempt supervises: what happens "meanwhile" (a cancel,
    the worker's stop flag, a log line) happens there, at a known point of the loop, without threads."""

    exit_code: int = 0
    exit_after_polls: int | None = None
    stops_after_polls: int = 1
    deaf: bool = False
    on_poll: Callable[[int], None] = lambda _n: None
    # what the attempt asked of it
    command: list[str] = field(default_factory=list)
    polls: int = 0
    refreshes: int = 0
    asked_to_stop_at: list[float] = field(default_factory=list)  # time.monotonic() of each ask_to_stop
    stops: list[float] = field(default_factory=list)  # time.monotonic() of each stop(wait)
    killed: bool = False  # stop() found it still running
    _code: int | None = None
    _exit_at_poll: int | None = None
    _first_poll_at: float | None = None

    @property
    def returncode(self) -> int | None:
        return self._code

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        self.polls += 1
        self._first_poll_at = self._first_poll_at or time.monotonic()
        if time.monotonic() - self._first_poll_at > HANG_SECONDS:
            # The attempt fails the job with this (it settles any supervisor error); the asserts then fail.
            raise RuntimeError(f"the fake launcher was still polled after {HANG_SECONDS:g} s")
        self.on_poll(self.polls)
        if self._exit_at_poll is not None and self.polls >= self._exit_at_poll:
            self._code = EXIT_STOPPED
        elif self.exit_after_polls is not None and self.polls >= self.exit_after_polls:
            self._code = self.exit_code
        return self._code

    def refresh(self) -> None:
        self.refreshes += 1

    def ask_to_stop(self) -> None:
        self.asked_to_stop_at.append(time.monotonic())
        # The supervisor asks again on every poll while it waits (LocalLauncher.ask_to_stop): the first ask
        # starts the trainer's checkpoint-and-exit.
        if not self.deaf and self._exit_at_poll is None:
            self._exit_at_poll = self.polls + self.stops_after_polls

    def stop(self, wait: Callable[[float], object]) -> None:
        self.stops.append(time.monotonic())
        if self._code is None:
            self.killed, self._code = True, KILLED

    @property
    def asked_to_stop(self) -> int:
        return len(self.asked_to_stop_at)


def _is_a_launcher(fake: FakeLauncher) -> Launcher:
    return fake  # mypy checks here that the fake keeps to the protocol the supervisor uses


class FakeAttempt(Attempt):
    """An Attempt whose process tree is `fake`; `prepare` is the real one, its command only recorded."""

    def __init__(self, fake: FakeLauncher, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fake = fake

    def launch(self, command: list[str]) -> Launcher:
        self.fake.command = command
        return self.fake


@dataclass
class Setup:
    sessions: sessionmaker[Session]
    store: ArtifactStore
    settings: Settings
    stop_flag: Path
    tmp_path: Path

    def claimed_job(self, **config: object) -> Job:
        """A queued train job, claimed by this worker as run_job claims it (jobs.claim_next)."""
        spec = make_config("debug32", dataset="synthetic:64", steps=4, device="cpu", **config)
        with self.sessions() as session:
            created, _ = jobs.create_job(session, kind="train", spec=spec, queue="cpu", max_attempts=3)
            job = jobs.claim_next(session, ticket=created.id, worker_id=WORKER,
                                  lease_seconds=self.settings.lease_seconds)
        assert job is not None and job.status == "running" and job.attempt == 1
        return job

    def attempt(self, job: Job, fake: FakeLauncher) -> FakeAttempt:
        workdir = self.tmp_path / "work" / job.id / f"attempt-{job.attempt}"
        return FakeAttempt(fake, job, self.settings, self.store, self.sessions, WORKER, workdir,
                           self.stop_flag)

    def row(self, job_id: str) -> Job:
        with self.sessions() as session:
            return jobs.get_job(session, job_id)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    # Tiny timings: the loop polls every 10 ms and beats every 50 ms; the lease itself stays long, so only
    # the test that takes it away loses it.
    settings = Settings(home=tmp_path / "home", database_url=database,
                        artifacts_url=(tmp_path / "store").as_uri(), poll_seconds=0.01,
                        heartbeat_seconds=0.05, lease_seconds=60, cancel_grace_seconds=1.0,
                        shutdown_seconds=SHUTDOWN_SECONDS, max_run_seconds=0,
                        dependency_outage_seconds=5, mlflow_tracking_uri=None, launcher="local")
    engine = make_engine(database)
    upgrade(engine)
    yield Setup(make_session_factory(engine), open_store(settings), settings, tmp_path / "stopping",
                tmp_path)
    engine.dispose()


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def at_poll(when: int, action: Callable[[], object]) -> Callable[[int], None]:
    """An `on_poll` that does `action` at poll number `when` (the first poll is 1)."""
    def on_poll(poll: int) -> None:
        if poll == when:
            action()
    return on_poll


def test_a_training_that_exits_0_succeeds_and_its_metrics_and_log_are_stored(setup: Setup) -> None:
    job = setup.claimed_job()
    fake = FakeLauncher(exit_code=0, exit_after_polls=3)
    attempt = setup.attempt(job, fake)

    def train() -> None:  # the trainer's progress: a metrics line, a line of output
        append(attempt.out / layout.METRICS, json.dumps({"step": 4, "total_steps": 4, "d_loss": 1.5}) + "\n")
        append(attempt.log_path, "step 4/4\n")

    fake.on_poll = at_poll(2, train)
    assert attempt.run() == "succeeded"

    row = setup.row(job.id)
    assert (row.status, row.error, row.lease_owner) == ("succeeded", None, None)
    assert row.step == 4 and row.metrics is not None and row.metrics["d_loss"] == 1.5
    # the command prepare built (never run): the trainer on the config it wrote
    assert fake.command and (attempt.workdir / "config.json").exists()
    assert fake.asked_to_stop == 0 and not fake.killed
    # store_the_rest drained the outbox before settling
    assert b'"step": 4' in setup.store.get_bytes(metrics_key(job.id))
    assert b"step 4/4" in setup.store.get_bytes(log_key(job.id, job.attempt))


def test_a_failed_training_fails_the_job_with_its_own_error_line(setup: Setup) -> None:
    job = setup.claimed_job()
    fake = FakeLauncher(exit_code=1, exit_after_polls=2)
    attempt = setup.attempt(job, fake)
    # The trainer's "error: ..." comes before torchrun's report of the failed ranks, which must not win.
    fake.on_poll = at_poll(2, lambda: append(
        attempt.log_path, "loading data\nerror: the data set has no images\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: rank 0 failed\n"))
    assert attempt.run() == "failed"

    row = setup.row(job.id)
    assert (row.status, row.error) == ("failed", "the data set has no images")
    assert row.log_tail is not None and "ChildFailedError" in row.log_tail
    assert row.attempt == 1 and row.lease_owner is None
    assert fake.asked_to_stop == 0 and not fake.killed


def test_a_cancel_request_stops_the_tree_and_cancels_the_job(setup: Setup) -> None:
    job = setup.claimed_job()
    fake = FakeLauncher()  # trains until stopped

    def cancel() -> None:
        with setup.sessions() as session:
            jobs.request_cancel(session, job_id=job.id)  # what POST /jobs/{id}/cancel calls

    fake.on_poll = at_poll(2, cancel)
    assert setup.attempt(job, fake).run() == "cancelled"

    assert setup.row(job.id).status == "cancelled"
    assert fake.killed and fake.asked_to_stop == 0  # a cancel does not wait for a checkpoint
    assert fake.refreshes >= 1  # every beat first remembers the tree's processes


def test_a_stopping_worker_asks_the_training_to_stop_and_hands_the_job_back(setup: Setup) -> None:
    job = setup.claimed_job()
    fake = FakeLauncher(stops_after_polls=2, on_poll=at_poll(2, setup.stop_flag.touch))
    assert setup.attempt(job, fake).run() == HANDED_BACK

    row = setup.row(job.id)
    # back in the queue, and the attempt does not count: the next claim is attempt 1 again
    assert (row.status, row.attempt, row.lease_owner, row.error) == ("queued", 0, None, None)
    assert fake.asked_to_stop >= 1 and not fake.killed
    assert fake.returncode == EXIT_STOPPED


def test_a_training_deaf_to_the_stop_is_killed_after_two_thirds_of_the_shutdown_time(setup: Setup) -> None:
    job = setup.claimed_job()
    fake = FakeLauncher(deaf=True, on_poll=at_poll(2, setup.stop_flag.touch))
    started = time.monotonic()
    assert setup.attempt(job, fake).run() == HANDED_BACK

    assert fake.killed and fake.asked_to_stop >= 2  # asked again on every poll until then
    first_ask, kill = fake.asked_to_stop_at[0], fake.stops[0]
    assert kill - first_ask >= SHUTDOWN_SECONDS * 2 / 3
    assert time.monotonic() - started < SHUTDOWN_SECONDS + 5  # and not much later: no hang
    row = setup.row(job.id)
    assert (row.status, row.attempt, row.lease_owner) == ("queued", 0, None)


def test_a_training_past_the_maximum_run_time_is_stopped_and_fails_saying_so(setup: Setup) -> None:
    setup.settings.max_run_seconds = MAX_RUN_SECONDS
    job = setup.claimed_job()
    fake = FakeLauncher()  # trains until asked to stop, then checkpoints and exits with EXIT_STOPPED
    attempt = setup.attempt(job, fake)
    assert attempt.run() == "failed"

    assert fake.asked_to_stop >= 1 and not fake.killed
    assert fake.asked_to_stop_at[0] - attempt.launched_at >= MAX_RUN_SECONDS
    row = setup.row(job.id)
    assert row.status == "failed" and row.lease_owner is None
    assert row.error == (f"stopped after the maximum run time of {MAX_RUN_SECONDS:g} s "
                         "(SAGAN_MAX_RUN_SECONDS); it saved a checkpoint where it stopped")
    assert jobs.failure_cause(row.error) == "time_limit"


def test_a_training_past_the_maximum_run_time_deaf_to_the_stop_is_killed_and_fails(setup: Setup) -> None:
    setup.settings.max_run_seconds = MAX_RUN_SECONDS
    job = setup.claimed_job()
    fake = FakeLauncher(deaf=True)
    assert setup.attempt(job, fake).run() == "failed"

    assert fake.killed and fake.stops[0] - fake.asked_to_stop_at[0] >= SHUTDOWN_SECONDS * 2 / 3
    row = setup.row(job.id)
    assert row.status == "failed" and jobs.failure_cause(row.error) == "time_limit"
    assert row.error.endswith("(SAGAN_MAX_RUN_SECONDS); it did not stop in time and was killed")


def test_a_training_that_finishes_as_its_time_runs_out_still_succeeds(setup: Setup) -> None:
    setup.settings.max_run_seconds = MAX_RUN_SECONDS
    job = setup.claimed_job()
    # Asked to stop, it exits 0 instead (its last step was done): a finished run is not held against it.
    fake = FakeLauncher(deaf=True)

    def exit_0_once_asked(poll: int) -> None:
        if fake.asked_to_stop and fake.exit_after_polls is None:
            fake.exit_after_polls = poll

    fake.on_poll = exit_0_once_asked
    assert setup.attempt(job, fake).run() == "succeeded"
    assert setup.row(job.id).status == "succeeded" and not fake.killed


def test_a_lost_lease_stops_the_tree_and_leaves_the_row_to_its_new_owner(setup: Setup) -> None:
    job = setup.claimed_job()
    new_owner = "other-host:2:attempt"

    def reaped_and_taken() -> None:
        # This worker "stalled": its lease expires, the reaper requeues the job and another worker claims it.
        with setup.sessions() as session:
            session.execute(update(Job).where(Job.id == job.id)
                            .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
            session.commit()
            assert jobs.reap_expired_leases(session) == [job.id]
            assert jobs.claim_next(session, ticket=job.id, worker_id=new_owner, lease_seconds=60)

    fake = FakeLauncher(on_poll=at_poll(2, reaped_and_taken))
    assert setup.attempt(job, fake).run() is None

    assert fake.killed
    row = setup.row(job.id)
    # the new owner's attempt 2, running: nothing of this attempt's end was written into it
    assert (row.status, row.lease_owner, row.attempt, row.error, row.finished_at) == (
        "running", new_owner, 2, None, None)


def test_a_cancel_that_arrives_while_the_worker_hands_the_job_back_is_reported_as_cancelled(
        setup: Setup) -> None:
    setup.settings.heartbeat_seconds = 30  # one beat at the first poll, none after: no beat sees the cancel
    job = setup.claimed_job()

    def cancel_and_stop_the_worker() -> None:
        with setup.sessions() as session:
            jobs.request_cancel(session, job_id=job.id)
        setup.stop_flag.touch()

    fake = FakeLauncher(on_poll=at_poll(2, cancel_and_stop_the_worker))
    status = setup.attempt(job, fake).run()
    assert setup.row(job.id).status == "cancelled"  # hand_back saw the flag
    assert status == "cancelled"  # what run_job acts on: not "queued", or it would send the message again
