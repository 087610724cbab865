"""The Ray launcher's decisions, driven through a stand-in for Ray's Jobs API client (its list, status, info,
log, stop and delete calls) and for the artifact store: what an ended Ray job's status means, which earlier
Ray jobs are stopped or deleted, when an unreachable cluster becomes a lost run, how often a heartbeat reads
the log and the metrics, and what the Ray job's environment carries. The real cluster's side is
tests/service/test_ray.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray", reason="the `ray` extra (make install installs it)")

from ray.job_submission import JobStatus

from sagan_core.exits import EXIT_STOPPED
from sagan_service.settings import Settings
from sagan_service.storage import ArtifactNotFound, metrics_key
from worker.launcher import RunLost
from worker.ray_launcher import READ_EVERY_S, STATUS_EVERY_S, RayLauncher, ray_environment


@dataclass
class FakeJobsApi:
    """Ray jobs by submission id: (status, driver exit code, message)."""

    jobs: dict[str, tuple[JobStatus, int | None, str]] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    down: bool = False
    log_reads: int = 0

    def list_jobs(self) -> list[Any]:
        return [SimpleNamespace(submission_id=sid, status=status)
                for sid, (status, _, _) in self.jobs.items()]

    def get_job_status(self, sid: str) -> JobStatus:
        if self.down:
            raise ConnectionError("connection refused")
        return self.jobs[sid][0]

    def get_job_info(self, sid: str) -> Any:
        status, code, message = self.jobs[sid]
        return SimpleNamespace(status=status, driver_exit_code=code, message=message)

    def get_job_logs(self, sid: str) -> str:
        self.log_reads += 1
        return "\x1b[36m(RayTrainWorker pid=7)\x1b[0m error: boom\n"

    def stop_job(self, sid: str) -> bool:
        self.stopped.append(sid)
        message = self.jobs[sid][2]
        self.jobs[sid] = (JobStatus.STOPPED, None, message)
        return True

    def delete_job(self, sid: str) -> bool:
        self.deleted.append(sid)
        del self.jobs[sid]
        return True


@dataclass
class FakeStore:
    """The metrics file rank 0 stores (none yet: ArtifactNotFound), and how often it was read."""

    metrics: bytes | None = None
    reads: int = 0

    def get_bytes(self, key: str) -> bytes:
        assert key == metrics_key("j1")
        self.reads += 1
        if self.metrics is None:
            raise ArtifactNotFound(key)
        return self.metrics


def launcher(api: FakeJobsApi, tmp_path: Path, store: FakeStore | None = None,
             **settings: Any) -> RayLauncher:
    job = SimpleNamespace(id="j1", attempt=2)
    return RayLauncher(api, job,  # type: ignore[arg-type]
                       Settings(home=tmp_path, ray_address="http://head:8265", poll_seconds=0.01, **settings),
                       store=store or FakeStore(), log_path=tmp_path / "attempt-2.log")


@pytest.mark.parametrize(("status", "code", "expected"), [
    (JobStatus.SUCCEEDED, 0, 0),
    (JobStatus.STOPPED, None, EXIT_STOPPED),  # stopped by us: it checkpointed
    (JobStatus.FAILED, 2, 2),  # the trainer's own status (a bad input, or an unplaceable job)
    (JobStatus.FAILED, 65, 65),  # diverged
])
def test_an_ended_ray_job_means_what_the_trainer_exit_status_would(tmp_path: Path, status: JobStatus,
                                                                    code: int | None, expected: int) -> None:
    api = FakeJobsApi({"sagan-j1-2": (status, code, "")})
    ray_launcher = launcher(api, tmp_path)
    assert ray_launcher.poll() == expected
    assert ray_launcher.returncode == expected
    # Ray's log, without its colours, is the attempt's log (the supervisor reads the trainer's error there).
    assert (tmp_path / "attempt-2.log").read_text() == "(RayTrainWorker pid=7) error: boom\n"


@pytest.mark.parametrize("code", [None, -9, 137])
def test_a_ray_job_that_ended_without_its_own_exit_status_is_a_lost_run(tmp_path: Path,
                                                                        code: int | None) -> None:
    api = FakeJobsApi({"sagan-j1-2": (JobStatus.FAILED, code,
                                      "Job supervisor actor died, last available logs (truncated): ...")})
    ray_launcher = launcher(api, tmp_path)
    with pytest.raises(RunLost, match=r"sagan-j1-2 was lost \(Job supervisor actor died\)$"):
        ray_launcher.poll()
    ray_launcher.stop()  # the supervisor's sweep-up after RunLost: nothing more to stop or raise
    assert api.stopped == []


def test_the_status_is_asked_of_ray_every_few_seconds_not_at_every_poll(tmp_path: Path) -> None:
    api = FakeJobsApi({"sagan-j1-2": (JobStatus.RUNNING, None, "")})
    ray_launcher = launcher(api, tmp_path)
    assert ray_launcher.poll() is None
    api.jobs["sagan-j1-2"] = (JobStatus.SUCCEEDED, 0, "")
    assert ray_launcher.poll() is None  # within STATUS_EVERY_S: not asked again
    ray_launcher.status_asked_at -= STATUS_EVERY_S
    assert ray_launcher.poll() == 0


def test_a_heartbeat_reads_rays_log_and_the_metrics_every_few_seconds_and_the_end_reads_them_once_more(
        tmp_path: Path) -> None:
    api = FakeJobsApi({"sagan-j1-2": (JobStatus.RUNNING, None, "")})
    store = FakeStore()
    ray_launcher = launcher(api, tmp_path, store)
    ray_launcher.refresh()  # nothing stored yet
    assert (api.log_reads, store.reads, ray_launcher.latest_metrics()) == (1, 1, {})
    store.metrics = b'{"step": 1}\n'
    ray_launcher.refresh()  # within READ_EVERY_S: neither is read again
    assert (api.log_reads, store.reads, ray_launcher.latest_metrics()) == (1, 1, {})
    ray_launcher.read_at -= READ_EVERY_S
    ray_launcher.refresh()
    assert (api.log_reads, store.reads, ray_launcher.latest_metrics()) == (2, 2, {"step": 1})
    # The Ray job ends: its last log lines and metrics are read at once, however soon after the last read.
    store.metrics += b'{"step": 2}\n'
    api.jobs["sagan-j1-2"] = (JobStatus.SUCCEEDED, 0, "")
    assert ray_launcher.poll() == 0
    assert (api.log_reads, store.reads, ray_launcher.latest_metrics()) == (3, 3, {"step": 2})
    assert (tmp_path / "attempt-2.log").read_text() == "(RayTrainWorker pid=7) error: boom\n"


def test_an_unreachable_cluster_is_waited_out_then_a_lost_run(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.ray_launcher.STATUS_EVERY_S", 0)
    api = FakeJobsApi({"sagan-j1-2": (JobStatus.RUNNING, None, "")}, down=True)
    ray_launcher = launcher(api, tmp_path, dependency_outage_seconds=0.05)
    assert ray_launcher.poll() is None  # within the outage window: still running as far as we know
    api.down = False
    assert ray_launcher.poll() is None
    api.down = True
    assert ray_launcher.poll() is None  # the window starts again after an answer


    time.sleep(0.06)
    with pytest.raises(RunLost, match="did not answer for 0.05 s"):
        ray_launcher.poll()


def test_the_way_is_cleared_of_earlier_attempts_and_of_this_attempts_finished_run(tmp_path: Path) -> None:
    api = FakeJobsApi({"sagan-j1-1": (JobStatus.RUNNING, None, ""),  # a dead worker's attempt, still training
                       "sagan-j1-2": (JobStatus.STOPPED, None,
                                      ""),  # this attempt, handed back by a stopping worker
                       "sagan-j10-1": (JobStatus.RUNNING, None, "")})  # another job whose id starts the same
    launcher(api, tmp_path)._clear_the_way()
    assert api.stopped == ["sagan-j1-1"] and api.deleted == ["sagan-j1-2"]
    assert set(api.jobs) == {"sagan-j1-1", "sagan-j10-1"}


def test_a_running_ray_job_of_this_attempt_is_left_alone_for_ray_to_refuse_a_second(tmp_path: Path) -> None:
    api = FakeJobsApi({"sagan-j1-2": (JobStatus.RUNNING, None, "")})
    launcher(api, tmp_path)._clear_the_way()
    assert api.stopped == [] and api.deleted == []


def test_the_ray_job_carries_what_its_ranks_need_to_reach_the_store_and_database_and_nothing_machine_local(
        tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="postgresql+psycopg://db/sagan", artifacts_url="s3://b/p",
                        s3_endpoint_url="http://minio:9000", data_roots="/data", shutdown_seconds=45)
    env = ray_environment(settings, {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "HOME": "/root"})
    assert env["SAGAN_DATABASE_URL"] == "postgresql+psycopg://db/sagan" and env["SAGAN_ARTIFACTS_URL"] == "s3://b/p"
    assert env["SAGAN_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("k", "s")
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "45"  # Ray's 3 s would kill a checkpoint half written
    assert not {"SAGAN_HOME", "SAGAN_DATA_ROOTS", "HOME"} & set(env)  # each node's own
