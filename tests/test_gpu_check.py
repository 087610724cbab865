"""bench/gpu_check.sh runs here in its --cpu-smoke mode: the same steps as on a GPU, tiny and on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, subprocess_env

# Its one test takes about a minute beside the rest of the suite: handed out last, it ran alone at the end.
pytestmark = pytest.mark.long_module


@pytest.mark.slow
def test_gpu_check_cpu_smoke_prints_one_json_line_per_figure(tmp_path: Path) -> None:
    result = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
                            env={**subprocess_env(), "PYTHON": sys.executable}, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but JSON on stdout
    tests = lines[0]
    assert tests["check"] == "cuda_tests" and tests["failed"] == 0 and tests["passed"] + tests["skipped"] == 8
    figures = {(line["preset"], line["batch_size"], line["variant"]): line for line in lines
               if "bench" in line}
    assert set(figures) == {(preset, batch, variant) for preset in ("seed64", "paper128") for batch in (2, 4)
                            for variant in ("fp32", "bf16", "bf16-cl")}
    assert all(line["img_per_s"] > 0 for line in figures.values())
    paper = figures["paper128", 4, "fp32"]
    assert paper["num_classes"] == 1000 and paper["gflop_per_step"] == pytest.approx(
        2 * figures["paper128", 2, "fp32"]["gflop_per_step"], rel=0.01)  # FLOPs grow with the batch
    assert "mfu" in paper
    assert lines[-1]["check"] == "gpu_check" and lines[-1]["failures"] == 0
