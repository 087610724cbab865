"""The driver of a training job on Ray: the Ray job's entrypoint, run by Ray on its head node.

`python -m worker.ray_job --job-id ID --worker-id WORKER --stop-switch NAME`, submitted by the Celery worker
(worker/ray_launcher.py). It reserves every worker the job needs at once or fails with a message that says
what could not be placed, then runs Ray Train's TorchTrainer with nodes × nproc workers (each a rank of
worker/ray_rank.py; a GPU each when the job asks for cuda) and exits with rank 0's exit status (what
sagan_core.launch.EXIT_MEANINGS says). A worker group that loses a worker is started again by Ray, up to
SAGAN_MAX_ATTEMPTS - 1 times, and resumes from the latest stored checkpoint. Ray stops the job with SIGTERM
here: the driver sets the StopSwitch, the ranks checkpoint and stop, rank 0 stores the checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys

import ray
from ray.exceptions import GetTimeoutError
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.placement_group import placement_group, remove_placement_group

from sagan_core.config import TrainConfig
from sagan_service import jobs
from sagan_service.db import make_engine, make_session_factory
from sagan_service.jobspec import read_spec
from sagan_service.settings import Settings

from .ray_rank import StopSwitch, rank_main

# What a Ray job's driver exits with when its workers cannot be placed (sagan_core.launch: 2 is a bad input).
EXIT_UNPLACEABLE = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one training job's ranks on this Ray cluster.")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--worker-id", required=True, help="the Celery worker holding the job's lease")
    parser.add_argument("--stop-switch", required=True, help="name of the StopSwitch actor to create")
    args = parser.parse_args(argv)
    settings = Settings()
    config = _job_config(settings, args.job_id)
    ray.init()
    workers = config.nodes * config.nproc
    resources: dict[str, float] = {"GPU": 1} if config.device == "cuda" else {"CPU": 1}
    if not _placeable(workers, resources, settings.ray_placement_timeout_seconds):
        return EXIT_UNPLACEABLE
    switch = StopSwitch.options(name=args.stop_switch).remote()  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: switch.set.remote())
    # Ray Train v2 keeps rank 0's return value (Result.return_value); Ray's annotations predate it.
    trainer = TorchTrainer(
        rank_main,  # type: ignore[arg-type]
        train_loop_config={"job_id": args.job_id, "worker_id": args.worker_id,
                           "stop_switch": args.stop_switch},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=config.device == "cuda"),
        torch_config=TorchConfig(backend="nccl" if config.device == "cuda" else "gloo"),
        run_config=RunConfig(name=args.stop_switch, storage_path=str(settings.work_dir / "ray"),
                             failure_config=FailureConfig(max_failures=settings.max_attempts - 1)))
    result = trainer.fit()
    return int(result.return_value)  # type: ignore[attr-defined]


def _job_config(settings: Settings, job_id: str) -> TrainConfig:
    engine = make_engine(settings.database, pooled=False, timeout_s=settings.statement_timeout_seconds)
    try:
        with make_session_factory(engine)() as session:
            return read_spec("train", jobs.get_job(session, job_id).spec)
    finally:
        engine.dispose()


def _placeable(workers: int, resources: dict[str, float], timeout_s: float) -> bool:
    """Whether the cluster can reserve all `workers` at once (a placement group, which Ray grants whole or
    not at all) within `timeout_s`: a job larger than the cluster fails here instead of waiting for ever."""
    (kind, amount), = resources.items()
    total = ray.cluster_resources().get(kind, 0)
    group = placement_group([resources] * workers, strategy="PACK")
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except GetTimeoutError:
        print(f"error: the Ray cluster could not place {workers} workers of {amount:g} {kind} each within "
              f"{timeout_s:g} s (SAGAN_RAY_PLACEMENT_TIMEOUT_SECONDS); it has {total:g} {kind} in all",
              file=sys.stderr, flush=True)
        return False
    else:
        return True
    finally:
        remove_placement_group(group)


if __name__ == "__main__":
    sys.exit(main())
