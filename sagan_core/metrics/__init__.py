"""Sample quality: FID, KID, IS and precision/recall on the FID Inception, and the backbone-free SWD.

    weights.py    where the Inception weights come from and their sha256 check (no torch)
    cache.py      real-side statistics cached by data, backbone and n (no torch)
    backbones.py  the Inception feature extractor (torch-fidelity's TF-ported InceptionV3)
    swd.py        Laplacian-pyramid patches and the sliced Wasserstein distance (ProGAN)
    scores.py     the metrics from accumulated features (torch-fidelity's functions)
    evaluate.py   the streaming evaluation loop, one or several ranks
    runs.py       evaluations in a run directory: evals.jsonl and the best checkpoint

Names load on first use, so the torch-free modules stay torch-free for the service's processes.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EvalPlan": "evaluate", "Evaluator": "evaluate", "METRICS": "evaluate",
    "StatsCache": "cache", "InceptionWeightsError": "weights", "resolve_inception_weights": "weights",
}
__all__ = ["METRICS", "EvalPlan", "Evaluator", "InceptionWeightsError", "StatsCache",
           "resolve_inception_weights"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sagan_core.metrics' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
