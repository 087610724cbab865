"""sagan_service.submit on SQLite and the embedded queue: what a submission stores and sends, its replays, and
the domain errors the API maps (the HTTP side: test_jobs, test_limits, test_faults, test_datasets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from sagan_core.config import make_config
from sagan_service import jobs, submit
from sagan_service.auth import LOCAL, Principal
from sagan_service.db import make_engine, make_session_factory
from sagan_service.migrate import upgrade
from sagan_service.queue import QueueUnavailable, make_celery, waiting_job_ids
from sagan_service.settings import Settings
from sagan_service.specs import SpecError
from sagan_service.submit import IdempotencyKeyReused, OwnerOverLimit, Submitter

TINY = {"preset": "debug32", "steps": 4, "device": "cpu"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "data").mkdir()
    return Settings(home=tmp_path, data_roots=str(tmp_path / "data"), max_queued_per_owner=3)


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.database)
    upgrade(engine)
    with make_session_factory(engine)() as session:
        yield session
    engine.dispose()


def submitter(session: Session, settings: Settings, key: str | None = None,
              principal: Principal = LOCAL) -> Submitter:
    return Submitter(session, settings, make_celery(settings), principal, key)


def test_a_train_job_is_stored_typed_once_and_sent(session: Session, settings: Settings) -> None:
    submitted = submitter(session, settings, "k").train(TINY)
    assert submitted.created and submitted.children is None
    job = jobs.get_job(session, submitted.job.id)
    assert job.spec == make_config("debug32", steps=4, device="cpu").to_dict()
    assert (job.kind, job.queue, job.total_steps) == ("train", "cpu", 4)
    assert waiting_job_ids(make_celery(settings)) == {job.id}
    again = submitter(session, settings, "k").train(TINY)
    assert (again.job.id, again.created) == (job.id, False)
    with pytest.raises(IdempotencyKeyReused, match=job.id):
        submitter(session, settings, "k").train({**TINY, "steps": 5})


def test_a_replay_of_the_latest_checkpoint_matches_any_step(session: Session, settings: Settings) -> None:
    source = submitter(session, settings).train(TINY).job.id
    jobs.record_artifact(session, job_id=source, kind="checkpoint", step=2, key="k2")
    first = submitter(session, settings, "s").sample(job_id=source, step=None, n=8, seed=0, classes=None,
                                                     per_class=None)
    assert jobs.get_job(session, first.job.id).spec == {"job_id": source, "step": 2, "n": 8, "seed": 0}
    jobs.record_artifact(session, job_id=source, kind="checkpoint", step=4, key="k4")
    again = submitter(session, settings, "s").sample(job_id=source, step=None, n=8, seed=0, classes=None,
                                                     per_class=None)
    assert (again.job.id, again.created) == (first.job.id, False)
    with pytest.raises(IdempotencyKeyReused):  # a step named is a step asked for
        submitter(session, settings, "s").sample(job_id=source, step=4, n=8, seed=0, classes=None,
                                                 per_class=None)


def test_an_eval_job_takes_unset_values_from_its_source(session: Session, settings: Settings) -> None:
    source = submitter(session, settings).train({**TINY, "eval_n": 32, "eval_metrics": ["swd"]}).job.id
    jobs.record_artifact(session, job_id=source, kind="checkpoint", step=4, key="k4")
    job = submitter(session, settings).evaluation(job_id=source, step=None, dataset=None, metrics=None,
                                                  n=None).job
    assert jobs.get_job(session, job.id).spec == {
        "job_id": source, "step": 4, "dataset": "synthetic", "metrics": ["swd"], "n": 32, "seed": 0,
                                                  "imsize": 32,
        "center_crop": None, "resize_mode": "squash"}


def test_a_sweep_stores_the_request_and_one_config_per_child(session: Session, settings: Settings) -> None:
    submitted = submitter(session, settings).sweep(base=TINY, axes={"g_lr": [1e-4, 2e-4]}, arms=None,
                                                   study=None, seeds=None)
    assert jobs.get_job(session, submitted.job.id).spec == {"base": TINY, "axes": {"g_lr": [1e-4, 2e-4]},
                                                            "arms": None, "study": None, "seeds": None}
    assert [child.spec["g_lr"] for child in submitted.children or []] == [1e-4, 2e-4]
    assert submitted.job.total_steps == 8


def test_over_the_owners_limit_is_owner_over_limit(session: Session, settings: Settings) -> None:
    alice = Principal("alice", admin=False)
    for _ in range(3):
        submitter(session, settings, principal=alice).train(TINY)
    with pytest.raises(OwnerOverLimit, match=r"alice has 3 jobs queued .*SAGAN_MAX_QUEUED_PER_OWNER=3"):
        submitter(session, settings, principal=alice).train(TINY)


def test_a_job_the_queue_did_not_take_is_withdrawn(session: Session, settings: Settings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def down(_celery: object, _jobs: list) -> None:
        raise QueueUnavailable("connection refused", 0)

    monkeypatch.setattr(submit, "dispatch_all", down)
    with pytest.raises(QueueUnavailable):
        submitter(session, settings, "k").train(TINY)
    assert jobs.list_jobs(session) == []
    # A data set's build job waits for the reaper instead: the data set is there.
    _, job = submitter(session, settings).dataset(dataset_id="d" * 8, name="n", imsizes=None,
                                                  upload_key="datasets/d/source/upload.zip")
    assert jobs.get_job(session, job.id).status == "queued"


def test_a_data_set_source_is_checked_unless_it_was_uploaded(session: Session, settings: Settings) -> None:
    with pytest.raises(SpecError) as refused:
        submitter(session, settings).dataset(dataset_id="a", name="n", imsizes=None, source="folder:/etc")
    assert refused.value.field == "source"
    dataset, job = submitter(session, settings).dataset(dataset_id="b", name="n", imsizes=[32],
                                                        upload_key="datasets/b/source/upload.zip")
    assert jobs.get_job(session, job.id).spec == {"dataset_id": "b",
                                                  "source": "upload:datasets/b/source/upload.zip",
                                                  "imsizes": [32]}
    assert (dataset.source, dataset.imsizes, job.queue) == ("upload:datasets/b/source/upload.zip", [32],
                                                            "default")
