"""A comparison report of training runs: one self-contained HTML page and one summary PNG figure.

The runs are grouped into arms (a sweep's run `<arm>-s<seed>` belongs to `<arm>`). The page holds a table
of each arm's final and best quality metrics (from evals.jsonl) and final losses as mean ± std over its
seeds, curves of every metric, of D's and G's losses, of D's outputs on real and fake images and of every
attention layer's gamma against the step, the metrics (or losses) again against the real images seen (arms
with other batch sizes or n_critic spend other compute per step), the last sample grid of every run, and the
config fields the arms differ in. Images are inline base64 PNGs: the page needs no network and no other file.

Plots are matplotlib figures drawn on its Agg canvas (no pyplot, no display). The runs come from local run
directories (`load_run`) or from anything else that fills `RunRecord`s (the job service's stored files).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .config import FIELDS
from .layout import EVALS, METRICS, arm_of, real_grid_path, samples, step_of
from .metrics.runs import best_eval, rank, read_jsonl
from .studies import compute_spent

# Quality metrics a table shows, in this order, and whether higher is better (HEADLINE's numbers).
QUALITY = {"fid": False, "kid": False, "is": True, "precision": True, "recall": True, "f_score": True,
           "swd": False}
# Final losses and D outputs: the mean of the last tenth of the logged steps (one step is noise).
FINAL_SHARE = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """What the report reads of one run: its config, metrics.jsonl and evals.jsonl lines, its last sample
    grid (PNG bytes and step) and its real-image grid."""

    name: str
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    final_grid: bytes | None = None
    final_grid_step: int | None = None
    real_grid: bytes | None = None

    @property
    def arm(self) -> str:
        return arm_of(self.name)[0]

    @property
    def seed(self) -> Any:
        return self.config.get("seed", arm_of(self.name)[1])


def load_run(run_dir: Path) -> RunRecord:
    """A run directory as the report reads it."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    grids = samples(run_dir)
    real = real_grid_path(run_dir)
    return RunRecord(name=run_dir.name, config=json.loads(config_path.read_text()),
                     metrics=read_jsonl(run_dir / METRICS), evals=read_jsonl(run_dir / EVALS),
                     final_grid=grids[-1].read_bytes() if grids else None,
                     final_grid_step=step_of(grids[-1]) if grids else None,
                     real_grid=real.read_bytes() if real.is_file() else None)


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Each path that is a run directory, and the run directories directly inside each that is not (a sweep's
    output folder), in name order."""
    found = []
    for path in map(Path, paths):
        if (path / "config.json").is_file():
            found.append(path)
            continue
        inside = sorted(child for child in path.iterdir() if (child / "config.json").is_file()) \
            if path.is_dir() else []
        if not inside:
            raise FileNotFoundError(f"{path} is neither a run directory nor a folder of run directories")
        found.extend(inside)
    return found


def write_report(runs: Sequence[RunRecord], output: Path, *, title: str, question: str | None = None) -> Path:
    """Write the HTML page to `output` and the summary figure beside it (`report.html` -> `report.png`)."""
    output = Path(output)
    page, figure = build_report(runs, title=title, question=question)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    output.with_suffix(".png").write_bytes(figure)
    return output


# ---- numbers ----------------------------------------------------------------------------------------------

def group_arms(runs: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs by arm, arms in the order they first appear, each arm's runs by seed."""
    arms: dict[str, list[RunRecord]] = {}
    for run in runs:
        arms.setdefault(run.arm, []).append(run)
    return {arm: sorted(group, key=lambda run: str(run.seed)) for arm, group in arms.items()}


def quality_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The quality metrics some run's training evaluations hold, in QUALITY's order."""
    present = {name for run in runs for record in _train_evals(run) for name in record.get("metrics", {})}
    return [name for name in QUALITY if name in present]


def _train_evals(run: RunRecord) -> list[dict[str, Any]]:
    return [record for record in run.evals if record.get("source", "train") == "train"]


def held_out_of_best(run: RunRecord) -> dict[str, Any] | None:
    """The newest held-out evaluation (`sagan eval`, source "eval") of the run's best checkpoint (by its first
    eval metric, on the selection sample), or None."""
    best = best_eval(run.evals, run.config.get("eval_metrics") or ["swd"])
    held_out = [record for record in run.evals if best is not None and record.get("source") == "eval"
                and record.get("stream") == "held-out" and record.get("step") == best["step"]]
    return held_out[-1] if held_out else None


def run_summary(run: RunRecord, metrics: Sequence[str]) -> dict[str, float | None]:
    """One run's numbers for the table: `final <m>`, `best <m>` and `held-out <m>` per quality metric (the
    last evaluation, the best one, and the best checkpoint's held-out evaluation), the final losses and D
    outputs, and the last step."""
    row: dict[str, float | None] = {}
    evals = _train_evals(run)
    held_out = (held_out_of_best(run) or {}).get("metrics", {})
    for name in metrics:
        values = [record["metrics"][name] for record in evals if name in record.get("metrics", {})]
        row[f"final {name}"] = values[-1] if values else None
        row[f"best {name}"] = min(values, key=lambda value: rank(value, QUALITY[name])) if values else None
        row[f"held-out {name}"] = held_out.get(name)
    logged = [record for record in run.metrics if "d_loss" in record]
    tail = logged[-max(1, math.ceil(len(logged) * FINAL_SHARE)):] if logged else []
    for key in ("d_loss", "g_loss", "d_out_real", "d_out_fake"):
        values = [record[key] for record in tail if key in record]
        row[key] = statistics.fmean(values) if values else None
    row["step"] = max((record["step"] for record in run.metrics), default=None)
    spent = {} if row["step"] is None else _spent(run, int(row["step"]))
    row["d_updates"], row["images_seen"] = spent.get("d_updates"), spent.get("images_seen")
    return row


def _spent(run: RunRecord, step: int) -> dict[str, int]:
    """compute_spent for a step of this run (its config is the same at every step)."""
    return compute_spent(step, **{name: run.config.get(name, FIELDS[name].default)
                                  for name in ("n_critic", "batch_size")})


def mean_std(values: Sequence[float | None]) -> tuple[float, float | None, int] | None:
    """(mean, sample std or None for one value, count) of the values that are there; None if none is. A NaN
    or infinite value (a diverged seed) makes the mean NaN or infinite, with no std: hiding it would
    show the other seeds' mean as the arm's."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    if not all(math.isfinite(value) for value in present):
        return statistics.fmean(present), None, len(present)
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present)


def config_differences(arms: dict[str, list[RunRecord]]) -> dict[str, dict[str, str]]:
    """Field -> arm -> value, for the config fields (other than the seed) whose value differs between arms."""
    values: dict[str, dict[str, str]] = {}
    fields = sorted({field for group in arms.values() for run in group for field in run.config} - {"seed"})
    for field in fields:
        per_arm = {arm: " / ".join(sorted({_show(run.config.get(field)) for run in group}))
                   for arm, group in arms.items()}
        if len(set(per_arm.values())) > 1:
            values[field] = per_arm
    return values


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]" if value else "[] (none)"
    return str(value)


# ---- curves -----------------------------------------------------------------------------------------------

def _series(run: RunRecord, key: str, *, smooth: bool) -> tuple[list[int], list[float]]:
    """(steps, values) of a metrics.jsonl key; `gamma.<layer>` reads a gamma, `eval.<m>` an evaluation."""
    steps, values = [], []
    if key.startswith("eval."):
        name = key.split(".", 1)[1]
        for record in _train_evals(run):
            if name in record.get("metrics", {}):
                steps.append(record["step"])
                values.append(record["metrics"][name])
        return steps, values
    for record in run.metrics:
        value = record.get("gamma", {}).get(key[6:]) if key.startswith("gamma.") else record.get(key)
        if value is not None:
            steps.append(record["step"])
            values.append(value)
    if smooth and len(values) > 20:
        # A trailing moving average over a fiftieth of the run: GAN losses jump from step to step.
        window = max(2, len(values) // 50)
        sums = [0.0]
        for value in values:
            sums.append(sums[-1] + value)
        values = [(sums[i + 1] - sums[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window))
                  for i in range(len(values))]
    return steps, values


def _arm_curve(group: Sequence[RunRecord], key: str, *, smooth: bool) -> tuple[list[int], list[float],
                                                                               list[float],
                                                                                 list[float]] | None:
    """(steps, mean, low, high) over an arm's seeds at the steps all of them logged."""
    per_run = [dict(zip(*_series(run, key, smooth=smooth), strict=True)) for run in group]
    per_run = [series for series in per_run if series]
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(series) for series in per_run)))
    stacked = [[series[step] for series in per_run] for step in steps]
    return (steps, [statistics.fmean(values) for values in stacked], [min(values) for values in stacked],
            [max(values) for values in stacked])


def _plot(ax: Any, arms: dict[str, list[RunRecord]], key: str, *, smooth: bool, colors: dict[str, Any],
          linestyle: str = "-", label_suffix: str = "", band: bool = True, x: str = "step") -> bool:
    """An arm's mean (and the band of its seeds) against `x`: the G step, or `images_seen` or `d_updates`."""
    drew = False
    for arm, group in arms.items():
        curve = _arm_curve(group, key, smooth=smooth)
        if curve is None:
            continue
        steps, mean, low, high = curve
        xs = steps if x == "step" else [_spent(group[0], step)[x] for step in steps]
        ax.plot(xs, mean, linestyle, color=colors[arm], label=f"{arm}{label_suffix}", linewidth=1.5)
        if band and len(group) > 1:
            ax.fill_between(xs, low, high, color=colors[arm], alpha=0.15, linewidth=0)
        drew = True
    return drew


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _new_figure(panels: int, *, columns: int = 3, size: tuple[float, float] = (5.0, 3.4)) -> tuple[Any,
                                                                                                   list[Any]]:
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    rows = math.ceil(panels / columns)
    columns = min(columns, panels)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = [figure.add_subplot(rows, columns, index + 1) for index in range(panels)]
    return figure, axes


def _colors(arms: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(arms) <= 10 else "tab20"]
    return {arm: palette(index % palette.N) for index, arm in enumerate(arms)}


def _gamma_layers(runs: Sequence[RunRecord]) -> list[str]:
    layers = {layer for run in runs for record in run.metrics for layer in record.get("gamma", {})}
    # Generator layers first, each net's by feature-map size.
    return sorted(layers, key=lambda layer: (layer.split(".")[0] != "g", layer))


def _curve_figures(arms: dict[str, list[RunRecord]], metrics: Sequence[str]) -> list[tuple[str, bytes]]:
    """(caption, PNG) per figure: quality metrics, losses, D outputs, attention gammas."""
    runs = [run for group in arms.values() for run in group]
    colors = _colors(list(arms))
    figures = []
    if metrics:
        figure, axes = _new_figure(len(metrics))
        for ax, name in zip(axes, metrics, strict=False):
            _plot(ax, arms, f"eval.{name}", smooth=False, colors=colors)
            ax.set(title=f"{name} ({'higher' if QUALITY[name] else 'lower'} is better)", xlabel="step")
            ax.legend(fontsize=8)
        figures.append(("Quality metrics of the training evaluations: the mean over seeds, the band their "
                        "range.",
                        _figure_png(figure)))
    figure, axes = _new_figure(3)
    for ax, key, title in zip(axes, ("d_loss", "g_loss"), ("D loss", "G loss"), strict=False):
        _plot(ax, arms, key, smooth=True, colors=colors)
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=8)
    _plot(axes[2], arms, "d_out_real", smooth=True, colors=colors, label_suffix=" real")
    _plot(axes[2], arms, "d_out_fake", smooth=True, colors=colors, linestyle="--", label_suffix=" fake")
    axes[2].set(title="D output on real (solid) and fake (dashed)", xlabel="step")
    axes[2].legend(fontsize=7, ncol=2)
    figures.append((("Losses and D's mean raw output (logit) on real and fake images, a moving average over "
                     "a "
                    "fiftieth of the logged steps; the mean over seeds, the band their range."),
                    _figure_png(figure)))
    figures.append(_compute_figure(arms, metrics, colors))
    layers = _gamma_layers(runs)
    if layers:
        figure, axes = _new_figure(len(layers), columns=4, size=(4.0, 3.0))
        for ax, layer in zip(axes, layers, strict=False):
            _plot(ax, arms, f"gamma.{layer}", smooth=False, colors=colors)
            ax.set(title=f"gamma of {layer}", xlabel="step")
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.legend(fontsize=7)
        figures.append((("Each attention layer's gamma (the weight of attention's output in the residual; it "
                         "starts "
                        "at 0) against the step, for the arms that have that layer."), _figure_png(figure)))
    return figures


def _compute_figure(arms: dict[str, list[RunRecord]], metrics: Sequence[str], colors: dict[str, Any]
                    ) -> tuple[str, bytes]:
    """The quality metrics (without evaluations: the losses) against the real images D drew."""
    keys = [(f"eval.{name}", f"{name} ({'higher' if QUALITY[name] else 'lower'} is better)", False)
            for name in metrics] or [("d_loss", "D loss", True), ("g_loss", "G loss", True)]
    figure, axes = _new_figure(len(keys))
    for ax, (key, title, smooth) in zip(axes, keys, strict=False):
        _plot(ax, arms, key, smooth=smooth, colors=colors, x="images_seen")
        ax.set(title=title, xlabel="real images seen")
        ax.legend(fontsize=8)
    return (("Against the real images D drew (G steps x n_critic x batch size), where arms with other batch "
             "sizes or n_critic compare at equal compute; the mean over seeds, the band their range."),
            _figure_png(figure))


def summary_figure(arms: dict[str, list[RunRecord]], metrics: Sequence[str], *, title: str) -> bytes:
    """One PNG: the first quality metric (or G's loss), D's loss, D's outputs and the gammas over the steps,
    and every arm's last sample grid of its first seed."""
    from PIL import Image

    runs = [run for group in arms.values() for run in group]
    colors = _colors(list(arms))
    grids = {arm: group[0].final_grid for arm, group in arms.items() if group[0].final_grid}
    from matplotlib.figure import Figure

    figure = Figure(figsize=(18, 8.5 if grids else 4.2), layout="constrained")
    figure.suptitle(title)
    # subfigures(2, 1) is an array of two SubFigures; its annotation also allows a single one
    top, bottom = (cast(Any, figure.subfigures(2, 1, height_ratios=[1, 1.1])) if grids else (figure, None))
    axes = top.subplots(1, 4)
    first = f"eval.{metrics[0]}" if metrics else "g_loss"
    _plot(axes[0], arms, first, smooth=not metrics, colors=colors)
    axes[0].set(title=metrics[0] if metrics else "G loss", xlabel="step")
    _plot(axes[1], arms, "d_loss", smooth=True, colors=colors)
    axes[1].set(title="D loss", xlabel="step")
    _plot(axes[2], arms, "d_out_real", smooth=True, colors=colors)
    _plot(axes[2], arms, "d_out_fake", smooth=True, colors=colors, linestyle="--")
    axes[2].set(title="D output: real (solid), fake (dashed)", xlabel="step")
    styles = ["-", "--", ":", "-."]
    for index, layer in enumerate(_gamma_layers(runs)):
        _plot(axes[3], arms, f"gamma.{layer}", smooth=False, colors=colors, linestyle=styles[index % 4],
              band=False)
    axes[3].set(title="attention gammas (line style = layer)", xlabel="step")
    handles, labels = axes[1].get_legend_handles_labels()
    axes[0].legend(handles, labels, fontsize=8)
    if bottom is not None:
        grid_axes = bottom.subplots(1, len(grids), squeeze=False)[0]
        for ax, (arm, png) in zip(grid_axes, grids.items(), strict=False):
            ax.imshow(Image.open(io.BytesIO(png)).convert("RGB"))
            ax.set_title(f"{arm} (seed {arms[arm][0].seed}, step {arms[arm][0].final_grid_step})",
                         fontsize=10)
            ax.axis("off")
    return _figure_png(figure)


# ---- the page ---------------------------------------------------------------------------------------------

def build_report(runs: Sequence[RunRecord], *, title: str, question: str | None = None) -> tuple[str, bytes]:
    """(the HTML page, the summary PNG) comparing `runs`."""
    if not runs:
        raise ValueError("a report needs at least one run")
    arms = group_arms(runs)
    metrics = quality_metrics(runs)
    summaries = {run.name: run_summary(run, metrics) for run in runs}
    held_out = [f"held-out {name}" for name in metrics
                if any(summary[f"held-out {name}"] is not None for summary in summaries.values())]
    columns = ([f"final {name}" for name in metrics] + [f"best {name}" for name in metrics] + held_out
               + ["d_loss", "g_loss", "d_out_real", "d_out_fake"])
    directions = {f"{kind} {m}": QUALITY[m] for kind in ("final", "best", "held-out") for m in metrics}
    directions = {column: higher for column, higher in directions.items() if column in columns}
    cells = {arm: {column: mean_std([summaries[run.name][column] for run in group]) for column in columns}
             for arm, group in arms.items()}
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if question:
        parts.append(f"<p class=question>{html.escape(question)}</p>")
    parts.append(f"<p>{len(runs)} runs in {len(arms)} arms, made "
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
                 + ("Quality metrics from the training evaluations (evals.jsonl)." if metrics else
                    "No run has evaluations (eval_every = 0): the table compares losses only.")
                 + " Mean ± sample std over seeds; final losses and D outputs are the mean of the last "
                   f"{FINAL_SHARE:.0%} of the logged steps; the best value of each column is in bold."
                 + (" <code>held-out</code>: the best checkpoint's score on the held-out sample (other z and "
                    "real images, <code>sagan eval RUN:best</code>), beside <code>best</code>, the score it "
                    "was picked by." if held_out else "") + "</p>")
    parts.append(_summary_table(arms, summaries, columns, cells, directions))
    parts.append(_differences_table(arms))
    for caption, png in _curve_figures(arms, metrics):
        parts.append(f"<figure>{_img(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append(_grids(arms))
    page = _PAGE.format(title=html.escape(title), body="\n".join(parts))
    return page, summary_figure(arms, metrics, title=title)


def _summary_table(arms: dict[str, list[RunRecord]], summaries: dict[str, dict[str, float | None]],
                   columns: list[str], cells: dict[str, dict[str, Any]], directions: dict[str, bool]) -> str:
    best: dict[str, str] = {}
    for column, higher in directions.items():
        ranked = [(cell[column][0], arm) for arm, cell in cells.items() if cell[column] is not None]
        if len(ranked) > 1:
            value, arm = min(ranked, key=lambda item: rank(item[0], higher))
            if math.isfinite(value):  # a NaN or infinite arm ranks last, never in bold
                best[column] = arm
    spent = ("step", "d_updates", "images_seen")  # G steps, D updates, real images: each arm's compute
    head = "".join(f"<th>{html.escape(column)}</th>"
                   for column in ["arm", "seeds", "steps", "D updates", "images seen", *columns])
    rows = []
    for arm, group in arms.items():
        row = [f"<td>{html.escape(arm)}</td>", f"<td>{len(group)}</td>"]
        for key in spent:
            values = sorted({summaries[run.name][key] for run in group}, key=lambda value: value or 0)
            row.append(f"<td>{' / '.join(str(value) for value in values)}</td>")
        for column in columns:
            text = _format(cells[arm][column])
            row.append(f"<td><b>{text}</b></td>" if best.get(column) == arm else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(row) + "</tr>")
    return f"<h2>Arms</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _format(cell: tuple[float, float | None, int] | None) -> str:
    if cell is None:
        return "–"
    mean, std, _count = cell
    return f"{mean:.4g}" if std is None else f"{mean:.4g} ± {std:.2g}"


def _differences_table(arms: dict[str, list[RunRecord]]) -> str:
    differences = config_differences(arms)
    if not differences:
        return "<h2>Config differences</h2><p>The arms' configs are the same apart from the seed.</p>"
    head = "".join(f"<th>{html.escape(arm)}</th>" for arm in arms)
    rows = "".join(f"<tr><td>{html.escape(field)}</td>"
                   + "".join(f"<td>{html.escape(values[arm])}</td>" for arm in arms) + "</tr>"
                   for field, values in differences.items())
    return (f"<h2>Config differences</h2><p>The fields whose values differ between arms (seeds aside).</p>"
            f"<table><tr><th>field</th>{head}</tr>{rows}</table>")


def _grids(arms: dict[str, list[RunRecord]]) -> str:
    cells = []
    real = next((run.real_grid for group in arms.values() for run in group if run.real_grid), None)
    if real:
        cells.append(f"<figure>{_img(real, 'real images')}<figcaption>real images</figcaption></figure>")
    for arm, group in arms.items():
        for run in group:
            if run.final_grid:
                caption = f"{arm}, seed {run.seed}, step {run.final_grid_step}"
                cells.append(f"<figure>{_img(run.final_grid, caption)}"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if not cells:
        return "<h2>Samples</h2><p>No sample grids.</p>"
    return ("<h2>Samples</h2><p>Each run's last sample grid (a fixed z per seed).</p>"
            f"<div class=grids>{''.join(cells)}</div>")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} figure img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; }}
.grids {{ display: flex; flex-wrap: wrap; gap: 1em; }} .grids figure {{ margin: 0; }}
.grids img {{ image-rendering: pixelated; }}
.question {{ font-size: 1.1em; font-style: italic; }}
</style></head>
<body>
{body}
</body></html>
"""
