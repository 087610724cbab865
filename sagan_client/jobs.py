"""What `sagan jobs` does over the REST API: the POST /jobs body from flags, waiting on a job, and
downloading one into a folder laid out like a `sagan train` run directory."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from sagan_core import layout
from sagan_core.config import FIELDS, ConfigError, parse_flag, read_config_file

from .api import ClientError, SaganClient, route
from .display import progress_line

FINAL = ("succeeded", "failed", "cancelled")
# Config flags that mean the same in a sample or eval job as in a training (`--seed` of the noise, the
# eval_* fields of an evaluation), as POST /jobs names them there.
JOB_FIELDS = {"sample": {"seed": "seed"},
              "eval": {"eval_dataset": "dataset", "eval_metrics": "metrics", "eval_n": "n"}}
# While waiting, an API that answers 503 or not at all (a restart, a database outage) is asked again
# for this long.
WAIT_OUTAGE_SECONDS = 120


def setting(text: str) -> tuple[str, Any]:
    """`--set FIELD=VALUE`: VALUE read as the field's `sagan train` flag would be (config.parse_flag)."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep:
        raise ConfigError([(name or "set", f"expected FIELD=VALUE, got {text!r}")])
    if name not in FIELDS:
        raise ConfigError([(name, "unknown config field")])
    return name, parse_flag(name, value)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The --config file, then the config flags, then --set: unvalidated (the server validates them, with
    its own limits, and a 422 names the field)."""
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    values.update({name: getattr(args, name) for name in FIELDS if hasattr(args, name)})
    values.update(setting(text) for text in args.set or [])
    return values


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /jobs body of `sagan jobs submit` (and of its sample and eval shortcuts)."""
    options = {"priority": args.priority} if args.priority else {}
    return {**_kind_body(args), **options}


def _kind_body(args: argparse.Namespace) -> dict[str, Any]:
    values = config_values(args)
    if args.kind == "train":
        return {"kind": "train", "config": values}
    if args.kind == "sweep":
        return _sweep_body(args, values)
    if args.source is None:
        raise ValueError(f"a {args.kind} job needs --source JOB_ID (a training job)")
    allowed = JOB_FIELDS[args.kind]
    stray = sorted(set(values) - set(allowed))
    if stray:
        takes = ", ".join(sorted(allowed))
        raise ConfigError([(stray[0], f"is a training setting: a {args.kind} job takes only {takes}")])
    if args.step == "best" and args.kind != "eval":
        raise ValueError("--step best: only an eval job picks the best checkpoint")
    body = {"kind": args.kind, "source": {"job_id": args.source, "step": args.step},
            **{allowed[name]: value for name, value in values.items()}}
    if args.kind == "sample":
        body["n"] = args.n
    return body


def _sweep_body(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    arms = read_config_file(args.arms).get("arms") if args.arms else None
    body = {"kind": "sweep", "base": base, "study": args.study, "arms": arms, "seeds": args.seeds,
            "axes": dict(args.axis) if args.axis else None}
    return {name: value for name, value in body.items() if value is not None}


def wait(client: SaganClient, job_id: str, interval: float, out: TextIO = sys.stderr) -> dict[str, Any]:
    """Poll the job until it ends, showing its progress line (rewritten in place on a terminal, else a new
    line each time it changes); the job's final JSON."""
    shown, outage_since = None, None
    live = out.isatty()
    while True:
        try:
            job: dict[str, Any] = client.get(route("jobs", job_id))
            outage_since = None
        except ClientError as error:
            if not error.transient or shown is None:  # a wrong URL or id fails at once
                raise
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > WAIT_OUTAGE_SECONDS:
                raise
            time.sleep(interval)
            continue
        line = progress_line(job)
        if line != shown:
            out.write(f"\r\033[K{line}" if live else f"{line}\n")
            out.flush()
            shown = line
        if job["status"] in FINAL:
            if live:
                out.write("\n")
            return job
        time.sleep(interval)


def print_log(client: SaganClient, job_id: str, *, attempt: int | None, follow: bool,
              out: BinaryIO | None = None) -> None:
    """An attempt's log (default the latest) to `out` (stdout); `follow`: as it grows, until the job ends."""
    out = out or sys.stdout.buffer
    for part in client.stream(route("jobs", job_id, "logs"), attempt=attempt, follow=str(follow).lower()):
        out.write(part)
        out.flush()  # a followed line shows as it arrives, also through a pipe


def checkpoint_step(job: dict[str, Any], which: str) -> int | None:
    """--checkpoint STEP|best|latest|none as a step; None: none wanted, or `latest` of a job that has none
    (yet), which downloads the rest."""
    if which == "none":
        return None
    step: int | None  # the API's JSON
    if which == "latest":
        step = job.get("latest_checkpoint_step")
        return step
    if which == "best":
        if not job.get("best_eval"):
            raise ClientError(f"job {job['id']} has no evaluation, so no best checkpoint (set eval_every)")
        step = job["best_eval"]["step"]
        return step
    try:
        return int(which)
    except ValueError:
        raise ValueError(f"--checkpoint: a step, best, latest or none (got {which!r})") from None


def download(client: SaganClient, job: dict[str, Any], out: Path, checkpoint: str) -> list[Path]:
    """The job's record (job.json), its config (config.json, as `sagan train` writes it), metrics.jsonl,
    evals.jsonl, its sample grids, TensorBoard event files, one checkpoint and a sweep's report: `sagan sample
    --checkpoint OUT` and `sagan report OUT` read the folder as a run. A sweep's children go into
    `OUT/<arm>-s<seed>/` each (as `sagan sweep` lays them out), so `tensorboard --logdir OUT` shows one run
    per arm and seed."""
    job_id = job["id"]
    step = checkpoint_step(job, checkpoint) if job["kind"] == "train" else None
    out.mkdir(parents=True, exist_ok=True)
    written = [_write(out / "job.json", json.dumps(job, indent=2) + "\n")]
    if job["kind"] == "train":
        written.append(_write(out / "config.json", json.dumps(job["spec"], indent=2) + "\n"))
    for name, series in ((layout.METRICS, "metrics"), (layout.EVALS, "evals")):
        items = client.get(route("jobs", job_id, series))["items"]
        written.append(_write(out / name, "".join(json.dumps(item) + "\n" for item in items)))
    for sample in client.get(route("jobs", job_id, "samples"))["items"]:
        written.append(client.download(sample["url"], layout.sample_path(out, sample["step"])))
    if job["kind"] == "train":
        for event_file in client.get(route("jobs", job_id, "tensorboard"))["items"]:
            written.append(client.download(event_file["url"], out / event_file["name"]))
    if step is not None:
        target = client.download(route("jobs", job_id, "checkpoints", str(step)),
                                 layout.checkpoint_path(out, step))
        layout.point_latest(target)
        if job.get("best_eval") and job["best_eval"]["step"] == step:
            layout.point_best(target)
        written.append(target)
    if job["kind"] == "sweep" and job["status"] == "succeeded":
        written.append(client.download(route("jobs", job_id, "report"), out / "report.html"))
    for child in job.get("children") or []:
        run_dir = out / layout.sweep_run_name(child["arm"], child["seed"])
        written += download(client, client.get(route("jobs", child["id"])), run_dir, checkpoint)
    return written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_job_report(client: SaganClient, job: dict[str, Any], out: Path) -> Path:
    """A sweep's report as the server builds it; a training job's, built here from its downloaded run (curves,
    final grid, evaluations) by `sagan report`'s code."""
    if job["kind"] == "sweep":
        return client.download(route("jobs", job["id"], "report"), out)
    if job["kind"] != "train":
        raise ClientError(f"job {job['id']} is a {job['kind']} job: reports are of training jobs and sweeps")
    from sagan_core.report import load_run, write_report  # matplotlib: only for this command

    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / job["id"]
        download(client, job, run_dir, "none")
        return write_report([load_run(run_dir)], out, title=f"Job {job['id']}")
