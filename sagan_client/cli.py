"""`sagan login`, `sagan jobs ...` and `sagan datasets ...`, registered through the `sagan.commands` entry
points. Every failure is one line on stderr (the server's own words) and a non-zero exit status; `--json`
prints the server's JSON instead of text, for scripts."""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# `sagan train`'s config flags and `sagan sweep`'s readers of --axis and --seeds: one definition of each.
from sagan_core.cli import add_config_flags, add_sweep_flags

from . import display
from .api import ClientError, SaganClient, route
from .credentials import Server, resolve_server, save_login
from .jobs import download, job_body, print_log, wait, write_job_report

Command = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help="the API's base URL (default $SAGAN_URL, else the `sagan login` file)")
    server.add_argument("--token", help="API token (default $SAGAN_TOKEN, else the `sagan login` file)")
    server.add_argument("--json", action="store_true", help="print the server's JSON (for scripts)")

    login = subparsers.add_parser("login", help="store the job service's URL and your token for `sagan jobs`",
                                  description="Check the token against the server, then write them to "
                                              "$SAGAN_CONFIG_DIR/credentials.json (default ~/.config/sagan), "
                                              "readable by you only.")
    login.add_argument("url", help="the API's base URL, e.g. http://127.0.0.1:8000")
    login.add_argument("--token", help="API token (default $SAGAN_TOKEN, else asked for)")
    login.set_defaults(func=_guarded(cmd_login))

    jobs = subparsers.add_parser("jobs", help="submit, follow and fetch jobs of the job service") \
        .add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    _add_submit(jobs.add_parser("submit", parents=[server], help="submit a train, sample, eval or sweep job",
                                description="Submit a job; config flags as `sagan train`'s (the server "
                                            "validates them: a 422 names the field). Prints the job's id."))
    listing = jobs.add_parser("list", parents=[server], help="jobs, newest first")
    listing.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--kind", choices=["train", "sample", "eval", "sweep", "dataset"])
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50, at most 200)")
    listing.set_defaults(func=_guarded(cmd_jobs_list))
    for name, func, text in (("show", cmd_jobs_show, "a job's status, progress, evaluations and error"),
                             ("cancel", cmd_jobs_cancel, "cancel a job (a running one stops in seconds)")):
        command = jobs.add_parser(name, parents=[server], help=text)
        command.add_argument("id", help="job id")
        command.set_defaults(func=_guarded(func))
    logs = jobs.add_parser("logs", parents=[server], help="a job's log (-f: follow it while the job runs)",
                           description="The latest attempt's log (trainer output and supervisor lines, "
                                       "secrets redacted), or --attempt K's; with -f, new lines as they are "
                                       "written, until the job ends.")
    logs.add_argument("id", help="job id")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new lines until the job ends")
    logs.add_argument("--attempt", type=int, metavar="K", help="an earlier attempt (default: the latest)")
    logs.set_defaults(func=_guarded(cmd_jobs_logs))
    waiting = jobs.add_parser("wait", parents=[server], help="follow a job until it ends; exit status 0 only "
                                                             "if it succeeded")
    waiting.add_argument("id", help="job id")
    _add_interval(waiting)
    waiting.set_defaults(func=_guarded(cmd_jobs_wait))
    fetch = jobs.add_parser("download", parents=[server], help="a job's grids, metrics, evals and checkpoint",
                            description="Into --out, laid out like a `sagan train` run directory: job.json, "
                                        "config.json, metrics.jsonl, evals.jsonl, samples/step-<n>.png, "
                                        "checkpoints/step-<n>.pt, TensorBoard event files; a sweep's "
                                        "report.html and each child's run in <arm>-s<seed>/.")
    fetch.add_argument("id", help="job id")
    fetch.add_argument("--out", type=Path, help="folder (default ./<id>)")
    fetch.add_argument("--checkpoint", default="latest", metavar="STEP|best|latest|none",
                       help="which checkpoint of a training job (default latest: the newest, if any)")
    fetch.set_defaults(func=_guarded(cmd_jobs_download))
    _add_shortcuts(jobs, server)

    datasets = subparsers.add_parser("datasets", help="data sets of the job service") \
        .add_subparsers(dest="datasets_command", metavar="COMMAND", required=True)
    datasets.add_parser("list", parents=[server], help="data sets, newest first") \
        .set_defaults(func=_guarded(cmd_datasets_list))
    for name, func, text in (("show", cmd_datasets_show, "a data set's status, images, classes and users"),
                             ("delete", cmd_datasets_delete, "delete a data set and its files")):
        command = datasets.add_parser(name, parents=[server], help=text)
        command.add_argument("id", help="data set id")
        command.set_defaults(func=_guarded(func))
    upload = datasets.add_parser("upload", parents=[server], help="upload a .zip or .tar(.gz) of images",
                                 description="Upload an archive (class sub-folders make a labelled set); a "
                                             "dataset job packs it. Train on it with --dataset ds:<id>.")
    upload.add_argument("file", type=Path, help="the archive")
    upload.add_argument("--name", help="the data set's name (default: the file's, less .zip, .tar, .tgz)")
    upload.set_defaults(func=_guarded(cmd_datasets_upload))


def _add_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["train", "sample", "eval", "sweep"], default="train")
    parser.add_argument("--config", type=Path, help="YAML/JSON file of config fields (a sweep: its base)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="a config field, read as its flag (repeat for more; over --config and flags)")
    parser.add_argument("--wait", action="store_true", help="then follow it as `sagan jobs wait`")
    parser.add_argument("--priority", choices=["low", "normal", "high"],
                        help="a free worker takes the highest first, then shares fairly between owners "
                             "(default normal; high: admins only)")
    _add_interval(parser)
    jobs = parser.add_argument_group("sample and eval jobs")
    jobs.add_argument("--source", metavar="JOB_ID", help="the training job whose checkpoint to use")
    jobs.add_argument("--step", type=_checkpoint_step, metavar="STEP|latest|best",
                      help="its checkpoint (default latest; best: the best evaluation's, eval jobs only); an "
                           "eval job's --eval-dataset, --eval-metrics and --eval-n default to the training's")
    jobs.add_argument("-n", type=int, default=64, help="a sample job's images (default 64); --seed: noise")
    sweeps = parser.add_argument_group("sweeps (the config fields are the base of every arm)")
    add_sweep_flags(sweeps, studies="GET /studies, `sagan study list`")
    add_config_flags(parser)
    parser.set_defaults(func=_guarded(cmd_jobs_submit))


def _add_shortcuts(jobs: argparse._SubParsersAction[argparse.ArgumentParser],
                   server: argparse.ArgumentParser) -> None:
    """`sagan jobs sample|eval|report ID`: a sample or eval job of a training job, waited for, with its
    result; a job's report page."""
    sample = jobs.add_parser("sample", parents=[server],
                             help="a grid of samples from a training job's checkpoint",
                             description="Submit a sample job of training job ID, wait for it, and save its "
                                         "grid (as `sagan jobs submit --kind sample --source ID --wait`).")
    sample.add_argument("-n", type=int, default=64, help="images (default 64)")
    sample.add_argument("--out", type=Path, help="the grid's PNG (default ./<sample job id>.png)")
    evaluation = jobs.add_parser("eval", parents=[server], help="measure a training job's checkpoint",
                                 description="Submit an eval job of training job ID, wait for it, and print "
                                             "its metrics; unset --eval-* values are the training's.")
    for parser, kind, fields in ((sample, "sample", ["seed"]),
                                 (evaluation, "eval", ["eval_dataset", "eval_metrics",
                                                                                      "eval_n"])):
        parser.add_argument("source", metavar="ID", help="the training job")
        parser.add_argument("--step", type=_checkpoint_step, metavar="STEP|latest|best",
                            help="its checkpoint (default latest; best: the best evaluation's, eval only)")
        add_config_flags(parser, fields, title="as in `sagan train`")
        _add_interval(parser)
        parser.set_defaults(func=_guarded(cmd_jobs_shortcut), kind=kind, config=None, set=None, priority=None)
    report = jobs.add_parser("report", parents=[server],
                             help="a job's HTML report (a sweep's comparison, or one "
                                                              "training's curves, grids and evaluations)")
    report.add_argument("id", help="job id")
    report.add_argument("--out", type=Path, help="the page (default ./<id>-report.html)")
    report.set_defaults(func=_guarded(cmd_jobs_report))


def _add_interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")


def _checkpoint_step(text: str) -> int | str | None:
    if text in ("best", "latest"):
        return None if text == "latest" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a step, latest or best (got {text!r})") from None


def _guarded(command: Command) -> Command:
    """Any failure as `sagan jobs submit: error: <one line>` and exit status 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ClientError, ValueError, OSError) as error:
            words = [args.command, getattr(args, f"{args.command}_command", None)]
            name = " ".join(word for word in words if word)
            print(f"sagan {name}: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # Ctrl-C in `wait`: the job goes on; no traceback
            print(file=sys.stderr)
            return 130

    return run


def _connect(args: argparse.Namespace) -> SaganClient:
    server = resolve_server(args.url, args.token)
    return SaganClient(server.url, server.token)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _output(as_json: bool, value: Any, text: str) -> None:
    """The server's JSON with --json, else the text for people."""
    if as_json:
        _print_json(value)
    else:
        print(text)


def cmd_login(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("SAGAN_TOKEN") or _ask_token()
    server = Server(url=args.url.rstrip("/"), token=token or None)
    with SaganClient(server.url, server.token) as client:
        client.get("/jobs", limit=1)  # a 401 here: the token is wrong, and nothing is written
    print(f"logged in to {server.url}; credentials in {save_login(server)}")
    return 0


def _ask_token() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("token (empty for a server without tokens): ").strip()
    return sys.stdin.readline().strip()


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    body = job_body(args)
    with _connect(args) as client:
        job = client.post("/jobs", body)
        if not args.wait:
            _output(args.json, job, job["id"])
            return 0
        if not args.json:
            print(job["id"], flush=True)
        return _finish(wait(client, job["id"], args.interval), args.json)


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        return _finish(wait(client, args.id, args.interval), args.json)


def _finish(job: dict[str, Any], as_json: bool) -> int:
    if as_json:
        _print_json(job)
    return 0 if job["status"] == "succeeded" else 1


def cmd_jobs_shortcut(args: argparse.Namespace) -> int:
    """`sagan jobs sample|eval ID`: submit, wait, then the grid saved or the metrics printed."""
    with _connect(args) as client:
        job = client.post("/jobs", job_body(args))
        print(job["id"], file=sys.stderr, flush=True)
        job = wait(client, job["id"], args.interval)
        if job["status"] != "succeeded":
            raise ClientError(f"{args.kind} job {job['id']} {job['status']}: "
                              f"{job.get('error') or 'no error given'}")
        if args.kind == "sample":
            out = client.download(route("jobs", job["id"], "samples", "latest"),
                                  args.out or Path(f"{job['id']}.png"))
            _output(args.json, {"job": job["id"], "file": str(out)}, str(out))
        else:
            _output(args.json, job, display.eval_text(job["latest_eval"]) or "no metrics")
    return 0


def cmd_jobs_report(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.get(route("jobs", args.id))
        out = write_job_report(client, job, args.out or Path(f"{job['id']}-report.html"))
    _output(args.json, {"job": job["id"], "file": str(out)}, str(out))
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        page = client.get("/jobs", status=args.status, kind=args.kind, limit=args.limit)
    _output(args.json, page, display.job_rows(page["items"]))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.get(route("jobs", args.id))
    _output(args.json, job, display.job_facts(job))
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        print_log(client, args.id, attempt=args.attempt, follow=args.follow)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.request("POST", route("jobs", args.id, "cancel")).json()
    state = "cancelled" if job["status"] == "cancelled" else "stopping (cancel requested)"
    _output(args.json, job, f"{job['id']} {state}")
    return 0


def cmd_jobs_download(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.get(route("jobs", args.id))
        written = download(client, job, args.out or Path(job["id"]), args.checkpoint)
    files = [str(path) for path in written]
    _output(args.json, {"job": job["id"], "files": files}, "\n".join(files))
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        page = client.get("/datasets")
    _output(args.json, page, display.dataset_rows(page["items"]))
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        dataset = client.get(route("datasets", args.id))
    _output(args.json, dataset, display.dataset_facts(dataset))
    return 0


def cmd_datasets_delete(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        client.request("DELETE", route("datasets", args.id))
    if not args.json:
        print(f"{args.id} deleted")
    return 0


def _archive_stem(path: Path) -> str:
    suffix = next((s for s in (".tar.gz", ".tgz", ".zip", ".tar") if path.name.lower().endswith(s)), "")
    return path.name[:len(path.name) - len(suffix)] or path.name


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    with _connect(args) as client, open(args.file, "rb") as archive:
        dataset = client.request("POST", "/datasets", data={"name": args.name or _archive_stem(args.file)},
                                 files={"file": (args.file.name, archive)}).json()
    _output(args.json, dataset, dataset["id"])
    return 0
