"""The `sagan` command: train, sample, attention, eval, stats, sweep, study, report, data pack,
import-checkpoint.

Other packages add subcommands (the service adds api, worker, up, db) through the entry-point
group `sagan.commands`: each entry point is a `register(subparsers)` callable. This keeps the
library free of any import of the service.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, get_args

from .config import (
    FIELDS,
    ConfigError,
    ResizeMode,
    TrainConfig,
    build_config,
    continued_config,
    parse_flag,
    read_config_file,
)
from .launch import training_launch
from .layout import latest_checkpoint

ENTRY_POINT_GROUP = "sagan.commands"

# Modules that only an extra of pyproject.toml installs (`worker`: torch; `api`: the service's stack): a
# command that imports one where it is missing (the client's `pip install .`, the API image's `.[api]`)
# says which extra it needs, in one line (main), instead of a traceback.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "torch_fidelity", "tensorboard", "lmdb", "tqdm"), "worker"),
    **dict.fromkeys(("fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "celery", "kombu",
                     "redis", "boto3", "botocore", "jinja2", "prometheus_client", "numpy", "PIL",
                     "matplotlib"), "api"),
}


def extra_for(error: ModuleNotFoundError) -> str | None:
    """The extra that installs the missing module, or None for a module no extra provides (a real bug)."""
    return EXTRA_OF_MODULE.get((error.name or "").split(".")[0])


def require_worker_extra() -> None:
    """For commands that train in child processes (`sagan worker`, `sagan up`): refuse at once, in main()'s
    words, instead of failing each job later. Looks torch up without importing it (no CUDA in a Celery
    parent)."""
    if importlib.util.find_spec("torch") is None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")


def add_config_flags(parser: argparse.ArgumentParser, fields: Iterable[str] | None = None,
                     title: str = "config fields (override --preset and --config; defaults are "
                                  "seed64's)") -> None:
    """One kebab-case flag per TrainConfig field (or per one of `fields`), its help from the field; unset
    flags stay out of the namespace. Values are read by config.parse_flag and validated by build_config, like
    a file's."""
    group = parser.add_argument_group(title)
    for name in fields or FIELDS:
        field = FIELDS[name]
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=f"{field.description} (default: {str(field.default).lower()})")
        else:
            group.add_argument(flag, type=functools.partial(parse_flag, name), default=argparse.SUPPRESS,
                               metavar=_metavar(name), help=_field_help(name))


def _metavar(name: str) -> str:
    schema = _field_schema(name)
    if "enum" in schema:
        return "{" + ",".join(str(choice) for choice in schema["enum"]) + "}"
    return {"integer": "INT", "number": "FLOAT", "string": "TEXT", "array": "N[,N...]"}.get(
        schema.get("type", ""), "VALUE")


def _field_help(name: str) -> str:
    """The field's description, default and allowed range, e.g. '... (default: 100000; 1 <= x <=
    2147483647)'."""
    field, schema = FIELDS[name], _field_schema(name)
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    bounds = ""
    if low is not None or high is not None:
        lower = "" if low is None else f"{low} {'<' if 'exclusiveMinimum' in schema else '<='} "
        upper = "" if high is None else f" {'<' if 'exclusiveMaximum' in schema else '<='} {high}"
        bounds = f"; {lower}x{upper}"
    default = "null" if field.default is None else field.default
    return f"{field.description} (default: {default}{bounds})".replace("%", "%%")


def _field_schema(name: str) -> dict[str, Any]:
    """The field's JSON schema without the null branch of an optional value."""
    schema = _config_schema()["properties"][name]
    for branch in schema.get("anyOf", []):
        if branch.get("type") != "null":
            return branch
    return schema


@functools.cache
def _config_schema() -> dict[str, Any]:
    return TrainConfig.model_json_schema()


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The --config file's fields, then the flags over them: one mapping."""
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    values.update({name: getattr(args, name) for name in FIELDS if hasattr(args, name)})
    return values


def cmd_train(args: argparse.Namespace) -> int:
    init_from = None
    if args.init_from is None:
        config = build_config(given_values(args))  # preset defaults, then the file, then flags
    else:  # the source checkpoint's config, then the file and flags (only what a continued run may change)
        from .checkpoint import read_checkpoint
        from .layout import resolve_checkpoint

        init_from = resolve_checkpoint(args.init_from)
        source = read_checkpoint(init_from)
        config = continued_config(source["config"], given_values(args), from_step=int(source["step"]))
    if config.nodes > 1:
        why = (f"{config.nodes}: a run over several machines goes through the job service, on Ray "
               "(SAGAN_RAY_ADDRESS); `sagan train` runs on this machine (nodes: 1)")
        raise ConfigError([("nodes", why)])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    # a rerun resumes its own checkpoints instead
    if init_from is not None and latest_checkpoint(out) is None:
        from .checkpoint import adopt_checkpoint

        adopt_checkpoint(init_from, int(source["step"]), out)
    resume = args.resume or init_from is not None
    launch = training_launch(config_path, out, config, resume=resume)
    if launch.nproc == 1:  # in this process: no second start of Python and torch
        from .train import main as train_main

        return train_main(list(launch.trainer_args))
    return subprocess.call(launch.command)


def _class_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class numbers, got {text!r}") from None


def _seed_pair(text: str) -> tuple[int, int]:
    seeds = _seed_list(text)
    if len(seeds) != 2:
        raise argparse.ArgumentTypeError(f"expected two seeds A,B (got {text!r})")
    return seeds[0], seeds[1]


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import sample_to_dir, sample_to_png

    if args.interpolate is not None:
        from .latent_walk import sample_walk

        if args.out_dir is not None or args.npz is not None or args.per_class is not None:
            raise ValueError("--interpolate writes one walk to -o: use it without --out-dir, --npz and "
                             "--per-class")
        print(sample_walk(args.checkpoint, args.output or Path("walk.gif"), seeds=args.interpolate,
                          frames=args.frames, truncation=args.truncation, classes=args.classes,
                          device=args.device, standing_stats=args.standing_stats))
        return 0
    if args.out_dir is not None:
        if args.npz is not None:
            raise ValueError("--npz holds every image in memory: use it without --out-dir")
        if args.truncation is not None:
            raise ValueError("--truncation applies to a grid (-o) or a walk (--interpolate), not to "
                             "--out-dir")
        print(sample_to_dir(args.checkpoint, args.out_dir, n=args.n, seed=args.seed, device=args.device,
                            classes=args.classes, per_class=args.per_class,
                            standing_stats=args.standing_stats))
    if args.out_dir is None or args.output is not None:
        print(sample_to_png(args.checkpoint, args.output or Path("samples.png"), n=args.n, seed=args.seed,
                            npz=args.npz, device=args.device, classes=args.classes, per_class=args.per_class,
                            standing_stats=args.standing_stats, truncation=args.truncation))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .layout import EVALS, resolve_checkpoint, run_dir_of
    from .metrics.cache import StatsCache
    from .metrics.evaluate import evaluate_checkpoint
    from .metrics.runs import append_jsonl

    record = evaluate_checkpoint(args.checkpoint, metrics=args.metrics, n=args.n, dataset=args.dataset,
                                 seed=args.seed, batch_size=args.batch_size, num_workers=args.num_workers,
                                 device=args.device, inception_weights=args.inception_weights,
                                 cache=StatsCache(args.stats_cache), stream=args.stream,
                                 standing_stats=args.standing_stats)
    if args.checkpoint_name:
        record["checkpoint"] = args.checkpoint_name
    run_dir = run_dir_of(resolve_checkpoint(args.checkpoint))
    evals = args.evals or (run_dir / EVALS if run_dir is not None else None)
    if evals is not None:
        append_jsonl(evals, record)
    print(json.dumps(record), flush=True)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import time

    from .metrics.cache import StatsCache
    from .metrics.evaluate import EvalPlan, Evaluator
    from .parallel import DistContext, pick_device

    started = time.perf_counter()
    plan = EvalPlan(tuple(args.metrics), n=args.n, dataset=args.dataset, imsize=args.imsize,
                    center_crop=args.center_crop, resize_mode=args.resize_mode, batch_size=args.batch_size,
                    num_workers=args.num_workers, stream=args.stream)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=pick_device(args.device))
    evaluator = Evaluator(plan, ctx, cache=StatsCache(args.stats_cache),
                          inception_weights=args.inception_weights)
    real, status = evaluator.real_statistics()
    print(json.dumps({"dataset": args.dataset, "imsize": args.imsize, "resize_mode": args.resize_mode,
                      "n": real.count, "cache": status,
                      "files": [str(evaluator.cache.path(key)) for key in evaluator.stats_keys().values()],
                      "seconds": round(time.perf_counter() - started, 2)}), flush=True)
    return 0


def _metric_list(text: str) -> list[str]:
    from .metrics.evaluate import METRICS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(METRICS)} (got {text!r})")
    return names


def _add_standing_stats_option(parser: argparse.ArgumentParser, batch: str) -> None:
    parser.add_argument("--standing-stats", type=int, default=0, metavar="K",
                        help="BatchNorm standing statistics (BigGAN): re-estimate G's BatchNorm statistics "
                             f"over K batches of {batch} in train mode, then sample in eval mode; 0 = off "
                             "(the running statistics)")


def _add_eval_options(parser: argparse.ArgumentParser, stream: str) -> None:
    """Options that `sagan eval` and `sagan stats` share; `stream` is the default sample."""
    parser.add_argument("--stream", choices=["held-out", "selection"], default=stream,
                        help="which sample: held-out (other z and real images than training evaluations pick "
                             f"the best checkpoint by) or selection (theirs); default {stream}")
    parser.add_argument("--batch-size", type=int, default=64, help="images per generator/feature batch")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loader workers for the real images")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--inception-weights", metavar="PATH",
                        help="the FID Inception weights (pt_inception-2015-12-05-6726825d.pth), checked by "
                             "sha256; default $SAGAN_INCEPTION_WEIGHTS; 'random' = random weights (timing "
                             "only)")
    parser.add_argument("--stats-cache", type=Path, metavar="DIR",
                        help="folder of cached real statistics (default $SAGAN_STATS_CACHE or "
                             "~/.cache/sagan/stats)")


def cmd_study_list(_args: argparse.Namespace) -> int:
    from .studies import STUDIES

    for study in STUDIES.values():
        print(f"{study.name}  (base {study.base}; {len(study.arms)} arms)\n  {study.question}")
        for arm in study.arms:
            settings = [f"{field}={json.dumps(value)}" for field, value in arm.config.items()]
            settings += [f"{field}={factor:g} x steps" for field, factor in arm.relative_to_steps.items()]
            print(f"    {arm.name:<22} {', '.join(settings)}")
    print("(g_attention/d_attention: null = the seed's placement, after the last two blocks; [] = none;\n"
          " `x steps`: that multiple of the sweep's steps, so the arms compare at equal compute)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .studies import get_study
    from .sweeps import expand_sweep, run_sweep

    base: dict[str, Any] = read_config_file(args.config) if args.config else {}
    base.update({name: getattr(args, name) for name in FIELDS if hasattr(args, name) and name != "seed"})
    if args.base is not None:
        base["preset"] = args.base
    arms = read_config_file(args.arms).get("arms") if args.arms else None
    axes = dict(args.axis) if args.axis else None
    if args.study is None and arms is None and axes is None:
        raise ValueError("give --study, --arms or --axis")
    seeds = args.seeds if args.seeds is not None else [getattr(args, "seed", 0)]
    runs = expand_sweep(base=base, axes=axes, arms=arms, study=args.study, seeds=seeds,
                        max_arms=args.max_arms)
    print(f"{len(runs)} runs into {args.out}: " + ", ".join(run.name for run in runs), flush=True)
    statuses = run_sweep(runs, args.out, parallel=args.parallel, log=lambda line: print(line, flush=True))
    failed = sorted(name for name, code in statuses.items() if code != 0)
    finished = [args.out / run.name for run in runs if statuses.get(run.name) == 0]
    if finished and not args.no_report:
        from .report import load_run, write_report

        question = get_study(args.study).question if args.study else None
        title = f"{args.study} study: {args.out.name}" if args.study else f"sweep {args.out.name}"
        page = write_report([load_run(path) for path in finished], args.out / "report.html", title=title,
                            question=question)
        print(f"report: {page} and {page.with_suffix('.png')}", flush=True)
    if failed:
        print(f"not finished: {', '.join(failed)} (run the same command again to continue)", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import find_run_dirs, load_run, write_report

    runs = [load_run(path) for path in find_run_dirs(args.run_dirs)]
    page = write_report(runs, args.output, title=args.title or f"Comparison of {len(runs)} runs")
    print(f"{page}\n{page.with_suffix('.png')}")
    return 0


def add_sweep_flags(group: Any, *, studies: str) -> None:
    """A sweep's form (--study, --arms or --axis) and --seeds: `sagan sweep`'s and the client's `jobs submit
    --kind sweep`'s, read the same way. `studies`: where the study names are listed."""
    form = group.add_mutually_exclusive_group()
    form.add_argument("--study", help=f"a named study ({studies})")
    form.add_argument("--arms", type=Path, metavar="FILE",
                      help="YAML/JSON file with `arms: [{name: ..., config: {...}}, ...]`")
    form.add_argument("--axis", type=_axis, action="append", metavar="FIELD=V1,V2",
                      help="a grid axis (repeat for more; a list field's values are separated by ';')")
    group.add_argument("--seeds", type=_seed_list, metavar="S1,S2",
                       help="seeds of every arm (default: --seed or 0)")


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (got {text!r})") from None


def _axis(text: str) -> tuple[str, list[Any]]:
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in FIELDS:
        raise argparse.ArgumentTypeError(f"expected FIELD=V1,V2,... with a config field (got {text!r})")
    if "list[" in str(FIELDS[name].annotation):  # a list field: values separated by ';' (8,16;none)
        return name, [parse_flag(name, value) for value in values.split(";")]
    return name, [parse_flag(name, value) for value in values.split(",")]


def _point(text: str) -> tuple[int, int]:
    try:
        y, x = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a point Y,X in image pixels, got {text!r}") from None
    return y, x


def cmd_attention(args: argparse.Namespace) -> int:
    from .attention_maps import capture, maps_json, render_png, to_npz
    from .checkpoint import load_checkpoint
    from .files import atomic_write

    queries = args.queries or ([args.query] if args.query else [])
    if not queries and args.npz is None:
        raise ValueError("give --query Y,X (or --queries, or --npz for every query's weights)")
    captured = capture(load_checkpoint(args.checkpoint, device=args.device), seed=args.seed, index=args.index,
                       label=args.label, image=args.image)
    if not captured.layers:
        raise ValueError("this model has no attention layers (its g_attention and d_attention are empty)")
    captured.select(args.layer)  # an unknown --layer fails before anything is written
    if args.npz is not None:
        data = to_npz(captured)
        print(atomic_write(args.npz, lambda f: f.write(data)))
    if queries:
        maps = maps_json(captured, queries, args.layer)  # checks every query is inside the image
        if args.json is not None:
            text = json.dumps(maps).encode()
            print(atomic_write(args.json, lambda f: f.write(text)))
        png = render_png(captured, queries, args.layer)
        print(atomic_write(args.output, lambda f: f.write(png)))
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from .importers import import_checkpoint

    path = import_checkpoint(args.format, args.generator, args.discriminator, args.output)
    print(path)
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    import tempfile

    from tqdm import tqdm

    from .packed import pack, packed_size, upload

    remote = args.out.startswith("s3://")
    # An S3 target is packed in a local folder first (beside nothing: a temp folder), then uploaded, index
    # last.
    staging = (tempfile.TemporaryDirectory(prefix="sagan-pack-") if remote
               else contextlib.nullcontext(args.out))
    with staging as folder:
        with tqdm(total=None, unit="img", desc=f"packing {args.spec}", disable=args.quiet) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            index = pack(args.spec, Path(folder), imsize=args.imsize, resize_mode=args.resize_mode,
                         center_crop=args.center_crop, shard_mb=args.shard_mb, workers=args.workers,
                         progress=progress)
        if remote:
            upload(Path(folder), args.out)
    print(json.dumps({"out": args.out, "count": index["count"], "imsize": index["imsize"],
                      "classes": index["class_names"], "shards": len(index["shards"]),
                      "bytes": packed_size(index), "bad_images": index["bad_images"]}), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagan", description="Self-Attention GANs: train, sample, serve.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train a SAGAN",
                                description="Train a SAGAN into --out (metrics.jsonl, samples/, "
                                            "checkpoints/).")
    train.add_argument("--config", type=Path, help="YAML/JSON file of config fields")
    train.add_argument("--out", type=Path, default=Path("runs/sagan"), help="run directory")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    train.add_argument("--init-from", metavar="RUN[:STEP|:best]",
                       help="continue another run: start from its checkpoint (latest unless named) and its "
                            "config, with --steps (the new total) and what else a continued run may change "
                            "(learning rates, EMA, evaluation, cadence, devices); the run's own checkpoints, "
                            "once it has some, come first")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="write a grid of samples from a checkpoint")
    sample.add_argument("--checkpoint", required=True, type=Path, help="a .pt file or a run directory")
    sample.add_argument("-n", type=int, default=64, help="number of images")
    sample.add_argument("-o", "--output", type=Path,
                        help="grid PNG path (default samples.png, or none with --out-dir)")
    sample.add_argument("--out-dir", type=Path,
                        help="write each image as DIR/<i>.png instead, batch by batch "
                                                     "(bounded memory for any -n; image i uses the z an "
                                                     "evaluation with this --seed gives sample i)")
    sample.add_argument("--seed", type=int, default=0, help="noise seed")
    sample.add_argument("--npz", type=Path, help="also save raw uint8 images and z (and labels) here")
    sample.add_argument("--classes", type=_class_list, metavar="C1,C2,...",
                        help="conditional models: one grid row per listed class (instead of -n)")
    sample.add_argument("--per-class", type=int, metavar="K",
                        help="conditional models: K images of each class, all classes unless --classes "
                             "(default 8)")
    sample.add_argument("--truncation", type=float, metavar="PSI",
                        help="BigGAN's truncation trick: every z entry above PSI in magnitude is drawn again "
                             "(a smaller PSI gives more typical, less varied images)")
    sample.add_argument("--interpolate", type=_seed_pair, metavar="A,B",
                        help="a latent walk from the z of seed A to seed B's (conditional models: from the "
                             "first of --classes to the last, default class 0), as an animated GIF if -o "
                             "ends in .gif (default walk.gif), else a PNG strip")
    sample.add_argument("--frames", type=int, default=16, metavar="K",
                        help="frames of --interpolate (default 16)")
    sample.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_standing_stats_option(sample, "the checkpoint's batch_size")
    sample.set_defaults(func=cmd_sample)

    evaluate = commands.add_parser(
        "eval", help="measure sample quality (FID, KID, IS, precision/recall, SWD) of a checkpoint",
        description="Evaluate a checkpoint: print one JSON line and append it to the run's evals.jsonl. "
                    "Unset options come from the checkpoint's config (its eval_* fields and seed).")
    evaluate.add_argument("--checkpoint", required=True, help="FILE.pt, RUN, RUN:STEP or RUN:best")
    evaluate.add_argument("--dataset", help="real data to compare with (default: eval_dataset or dataset)")
    evaluate.add_argument("--metrics", type=_metric_list, help="comma-separated: fid,kid,is,pr,swd")
    evaluate.add_argument("-n", "--n", type=int, help="number of samples (and real images)")
    evaluate.add_argument("--seed", type=int, help="noise seed (default: the run's seed, as its evaluations)")
    evaluate.add_argument("--evals", type=Path,
                          help="JSONL file to append to (default: the run's evals.jsonl)")
    evaluate.add_argument("--checkpoint-name",
                          help="what the record calls the checkpoint (default: its path); "
                                                    "the job service names the source job and step")
    _add_standing_stats_option(evaluate, "--batch-size")
    _add_eval_options(evaluate, "held-out")
    evaluate.set_defaults(func=cmd_eval)

    stats = commands.add_parser("stats", help="precompute the real-data statistics evaluations use",
                                description="Compute and cache the real side of the metrics for a data set.")
    stats.add_argument("--dataset", required=True, help="dataset spec")
    stats.add_argument("--imsize", type=int, required=True, choices=[32, 64, 128])
    stats.add_argument("--center-crop", type=int, help="centre crop in source pixels before resizing")
    stats.add_argument("--resize-mode", choices=get_args(ResizeMode), default="squash",
                       help="as the runs' resize_mode: crop (the paper128 and resnet presets) or squash "
                            "(default)")
    stats.add_argument("-n", "--n", type=int, default=50_000, help="real images (default 50000, or all)")
    stats.add_argument("--metrics", type=_metric_list, default=["fid", "swd"],
                       help="whose statistics: any Inception metric (fid,kid,is,pr share one entry) and/or "
                            "swd")
    _add_eval_options(stats, "selection")
    stats.set_defaults(func=cmd_stats)

    sweep = commands.add_parser(
        "sweep", help="train the arms of a study, a grid or a list, each with several seeds",
        description="Train every arm x seed into OUT/<arm>-s<seed>/ (one `sagan train` each, its output in "
                    "train.log there), then write OUT/report.html and OUT/report.png. Finished runs are "
                    "skipped and stopped ones resume, so the same command continues a stopped sweep. "
                    "Precedence: the base preset < --config < flags < the arm's fields < the seed.")
    add_sweep_flags(sweep, studies="sagan study list")
    sweep.add_argument("--base", help="base preset (default: the study's, else seed64)")
    sweep.add_argument("--out", type=Path, required=True, help="folder of the runs")
    sweep.add_argument("--parallel", type=int, default=1, metavar="N", help="trainings at a time (default 1)")
    sweep.add_argument("--max-arms", type=int, default=64, metavar="N",
                       help="most runs (arms x seeds), default 64")
    sweep.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    sweep.add_argument("--config", type=Path, help="YAML/JSON file of base config fields")
    add_config_flags(sweep)
    sweep.set_defaults(func=cmd_sweep)

    study = commands.add_parser("study", help="the named studies").add_subparsers(dest="study_command",
                                                                                  metavar="COMMAND",
                                                                                  required=True)
    study.add_parser("list",
                     help="each study's question, base preset and arms").set_defaults(func=cmd_study_list)

    report = commands.add_parser("report", help="compare runs in one HTML page",
                                 description="Write one self-contained HTML page comparing run directories "
                                             "(a sweep's <arm>-s<seed> runs are grouped by arm) and a "
                                             "summary PNG beside it.")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories, or folders of them (a sweep's --out)")
    report.add_argument("-o", "--output", type=Path, default=Path("report.html"),
                        help="HTML file (default report.html)")
    report.add_argument("--title", help="the page's title")
    report.set_defaults(func=cmd_report)

    data = commands.add_parser("data", help="prepare data sets").add_subparsers(dest="data_command",
                                                                                required=True)
    packer = data.add_parser(
        "pack", help="pack a data set into shards of pre-resized images (fast to read, random access)",
        description="Turn a data set spec into a packed set: uint8 shards at one image size, labels and an "
                    "index (sagan_core/packed.py). Train on it with --dataset packed:OUT. Resumable: a rerun "
                    "into the same folder keeps the shards already written. Unreadable images are skipped "
                    "and listed.")
    packer.add_argument("spec", help="the source data set spec (folder:, lsun:, cifar10:, shapes, ...)")
    packer.add_argument("--imsize", type=int, required=True, help="image size of the packed set")
    packer.add_argument("--resize-mode", choices=get_args(ResizeMode), default="squash",
                        help="as the runs' resize_mode (default squash)")
    packer.add_argument("--center-crop", type=int, help="centre crop in source pixels before resizing")
    packer.add_argument("--out", required=True,
                        help="a folder, or s3://bucket/prefix (AWS_ENDPOINT_URL and the "
                                                     "usual AWS credentials variables apply)")
    packer.add_argument("--shard-mb", type=float, default=64, help="images per shard, in MB (default 64)")
    packer.add_argument("--workers", type=int, default=0, help="decoding processes (default 0: this one)")
    packer.add_argument("--quiet", action="store_true", help="no progress bar")
    packer.set_defaults(func=cmd_data_pack)

    attention = commands.add_parser(
        "attention", help="where each attention layer looks from a query point (the paper's Figures 1 and 5)",
        description="Generate image --index of --seed (the z and class `sagan sample --out-dir` gives image "
                    "i), or take a real --image, and draw for each query point one row: the image with the "
                    "point, then each attention layer's weights over the key positions as a heat map on the "
                    "image (g.attn<size>: G's layer at that feature-map size; d.attn<size>: D's, on the same "
                    "image). Maps are upsampled by nearest neighbour: a key of the pooled form covers a 2x2 "
                    "block of feature cells.")
    attention.add_argument("--checkpoint", required=True, help="FILE.pt, RUN, RUN:STEP or RUN:best")
    attention.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    attention.add_argument("--index", type=int, default=0, help="which image of the seed (default 0)")
    attention.add_argument("--class", dest="label", type=int, metavar="C",
                           help="conditional models: the image's class (default: the one drawn for --index)")
    attention.add_argument("--image", type=Path, help="a real image file: D's attention on it (G is not run)")
    points = attention.add_mutually_exclusive_group()
    points.add_argument("--query", type=_point, metavar="Y,X", help="the query point, in image pixels")
    points.add_argument("--queries", type=_point, nargs="+", metavar="Y,X", help="several points: a row each")
    attention.add_argument("--layer", metavar="NAME",
                           help="only this layer (e.g. g.attn32; default: every one)")
    attention.add_argument("-o", "--output", type=Path, default=Path("attention.png"),
                           help="the figure (default attention.png)")
    attention.add_argument("--json", type=Path, help="also write the queries' raw maps as JSON here")
    attention.add_argument("--npz", type=Path,
                           help="write every query's weights of every layer here (what the "
                                                    "job service caches)")
    attention.add_argument("--device", default="cpu", help="cpu or cuda")
    attention.set_defaults(func=cmd_attention)

    imports = commands.add_parser("import-checkpoint", help="convert another implementation's weights")
    imports.add_argument("--format", required=True, choices=["heykeetae"],
                         help="heykeetae: the Self-Attention-GAN reference's {step}_G.pth/{step}_D.pth")
    imports.add_argument("generator", type=Path, help="generator state dict")
    imports.add_argument("discriminator", type=Path, help="discriminator state dict")
    imports.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write")
    imports.set_defaults(func=cmd_import_checkpoint)

    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register = entry_point.load()
        except ModuleNotFoundError as error:  # e.g. `sagan worker` in a client-only install
            if extra_for(error) is None:
                raise
            _register_missing(commands, entry_point.name, error)
        else:
            register(commands)
    return parser


def _register_missing(commands: argparse._SubParsersAction, name: str, error: ModuleNotFoundError) -> None:
    """A stand-in for a command whose module cannot load: running it reports the missing extra (main)."""
    def refuse(args: argparse.Namespace) -> int:
        raise error

    # No prefix characters: every argument (--flags too) is taken as an operand, so none is refused first.
    stand_in = commands.add_parser(name, help=f"(needs the {extra_for(error)} extra)", add_help=False,
                                   prefix_chars="\0")
    stand_in.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)
    stand_in.set_defaults(func=refuse)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `sagan`: the list of commands
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"sagan {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        extra = extra_for(error)
        if extra is None:
            raise
        print(f"sagan {args.command}: error: this command needs the {extra} extra ({error.name} is not "
              f"installed): pip install 'sagan-service[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
