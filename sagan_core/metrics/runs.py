"""Evaluations in a run directory, torch-free (the service reads them too).

evals.jsonl holds one JSON object per evaluation: `step`, `source` ("train" for the trainer's, "eval" for
`sagan eval`'s), `metrics` and what they were computed with. The run's best checkpoint is the one of the best
training evaluation by the first of `eval_metrics`: lower FID, KID and SWD are better, higher IS and
precision/recall F-score; a NaN or infinite score (a collapsed or diverged generator's) ranks below every
finite one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write

# The number each metric ranks evaluations by, and whether higher is better.
HEADLINE = {"fid": ("fid", False), "kid": ("kid", False), "is": ("is", True), "pr": ("f_score", True),
            "swd": ("swd", False)}


def headline(metrics: Sequence[str], record: dict[str, Any]) -> float | None:
    """The first metric's number in an evaluation record, or None if it was not computed there."""
    return record.get("metrics", {}).get(HEADLINE[metrics[0]][0])


def rank(value: float, higher_is_better: bool) -> tuple[int, float]:
    """A sort key of a score, smaller is better: finite scores in the metric's direction, then NaN and the
    infinities, all equal (a NaN compares false with everything, so plain < or min() would let it win)."""
    if not math.isfinite(value):
        return 1, 0.0
    return 0, -value if higher_is_better else value


def improves(metrics: Sequence[str], new: float, old: float | None) -> bool:
    higher_is_better = HEADLINE[metrics[0]][1]
    return old is None or rank(new, higher_is_better) < rank(old, higher_is_better)


def best_eval(records: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any] | None:
    """The best training evaluation by the first metric (the earliest of equals), or None."""
    best, best_value = None, None
    for record in records:
        value = headline(metrics, record)
        if record.get("source") == "train" and value is not None and improves(metrics, value, best_value):
            best, best_value = record, value
    return best


def json_safe(value: Any) -> Any:
    """value with every NaN or infinite float as None, for strict JSON: PostgreSQL's json type and HTTP
    responses refuse NaN, so a collapsed run's score would otherwise fail the write or the response."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file (a writer may be mid-line); [] if there is none."""
    try:
        data = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data[: data.rfind("\n") + 1].splitlines() if line.strip()]


def keep_steps_up_to(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Rewrite a JSONL file of step records keeping those with step <= last_step; return them. A resumed run
    calls it so that the steps it trains again are neither logged nor evaluated twice."""
    kept = [record for record in read_jsonl(path) if record["step"] <= last_step]
    if Path(path).exists():
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write(Path(path), lambda f: f.write(text.encode()))
    return kept


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One line, appended in one write (readers never see half of it unless the writer dies mid-write)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
