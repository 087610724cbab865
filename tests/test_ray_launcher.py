"""The Ray launcher's decisions, driven through a stand-in for Ray's Jobs API client (its list, status, info,
stop and delete calls): what an ended Ray job's status means, which earlier Ray jobs are stopped or deleted,
when an unreachable cluster becomes a lost run, and what the Ray job's environment carries. The real cluster's
side is tests/service/test_ray.py."""

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
from worker.launcher import RunLost
from worker.ray_launcher import STATUS_EVERY_S, RayLauncher, ray_environment


@dataclass
class FakeJobsApi:
    """Ray jobs by submission id: (status, driver exit code, message)."""

    jobs: dict[str, tuple[JobStatus, int | None, str]] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    down: bool = False

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


def launcher(api: FakeJobsApi, tmp_path: Path, **settings: Any) -> RayLauncher:
    job = SimpleNamespace(id="j1", attempt=2)
    return RayLauncher(api, job,
                       Settings(home=tmp_path, ray_address="http://head:8265",
                                poll_seconds=0.01,  # type: ignore[arg-type]
                                          **settings), store=None, log_path=tmp_path / "attempt-2.log")


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
