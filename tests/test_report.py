"""`sagan sweep` into run directories, then `sagan report`: one self-contained page with decodable images."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sagan_core.report import RunRecord, _colors, _plot, build_report, group_arms, load_run, run_summary
from sagan_core.sweeps import SweepError, check_run_dirs, expand_sweep

from .conftest import subprocess_env


def _sagan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sagan_core.cli", *map(str, args)], capture_output=True,
                          text=True, env=subprocess_env(), timeout=300, check=False)


def _images(page: str) -> list[Image.Image]:
    sources = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    images = []
    for source in sources:
        image = Image.open(io.BytesIO(base64.b64decode(source, validate=True)))
        image.load()
        images.append(image)
    return images


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny debug32 arms (with and without attention), one seed, evaluated every 2 steps."""
    root = tmp_path_factory.mktemp("sweep")
    (root / "arms.yaml").write_text("arms:\n  - name: plain\n    config: {g_attention: [], d_attention: []}\n"
                                    "  - name: attn\n    config: {}\n")
    result = _sagan("sweep", "--arms", root / "arms.yaml", "--base", "debug32", "--dataset", "synthetic:64",
                    "--steps", "4", "--eval-every", "2", "--eval-n", "16", "--seeds", "0", "--device", "cpu",
                    "--out", root / "runs", "--no-report")
    assert result.returncode == 0, result.stderr + result.stdout
    return root / "runs"


def test_sweep_trains_each_arm_into_its_directory_and_skips_finished_ones(sweep_dir: Path) -> None:
    assert sorted(path.name for path in sweep_dir.iterdir()) == ["attn-s0", "plain-s0"]
    for name, attention in (("plain-s0", []), ("attn-s0", [16])):
        config = json.loads((sweep_dir / name / "config.json").read_text())
        assert (config["g_attention"], config["steps"], config["seed"]) == (attention, 4, 0)
        assert (sweep_dir / name / "checkpoints" / "step-4.pt").is_file()
    stamp = (sweep_dir / "plain-s0" / "checkpoints" / "step-4.pt").stat().st_mtime_ns
    again = _sagan("sweep", "--arms", sweep_dir.parent / "arms.yaml", "--base", "debug32", "--dataset",
                   "synthetic:64", "--steps", "4", "--eval-every", "2", "--eval-n", "16", "--seeds", "0",
                   "--device", "cpu", "--out", sweep_dir, "--no-report")
    assert again.returncode == 0, again.stderr
    assert "plain-s0: finished already" in again.stdout and "attn-s0: finished already" in again.stdout
    assert (sweep_dir / "plain-s0" / "checkpoints" / "step-4.pt").stat().st_mtime_ns == stamp


def test_a_run_directory_of_another_config_is_refused(sweep_dir: Path) -> None:
    runs = expand_sweep(arms=[{"name": "plain", "config": {"g_attention": [], "d_attention": []}}],
                        base={"preset": "debug32", "dataset": "synthetic:64", "steps": 8, "eval_every": 2,
                              "eval_n": 16, "device": "cpu"})
    with pytest.raises(SweepError) as raised:
        check_run_dirs(runs, sweep_dir)
    assert (raised.value.arm, raised.value.field) == ("plain", "steps")


def test_report_compares_both_arms_with_inline_images(sweep_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "report.html"
    result = _sagan("report", sweep_dir / "plain-s0", sweep_dir / "attn-s0", "-o", output, "--title", "tiny")
    assert result.returncode == 0, result.stderr
    page = output.read_text()
    assert "<td>plain</td>" in page and "<td>attn</td>" in page
    assert "<th>final swd</th>" in page and "<th>best swd</th>" in page
    # The config differences: attention placement, nothing else (the seed is the same, the rest too).
    assert re.search(r"<td>g_attention</td><td>\[\] \(none\)</td><td>\[16\]</td>", page)
    assert "<td>d_norm</td>" not in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    # Each arm's compute: 4 G steps = 4 D updates of 8 real images; and the curves against it.
    assert re.search(r"<td>plain</td><td>1</td><td>4</td><td>4</td><td>32</td>", page)
    assert "<th>images seen</th>" in page and "Against the real images D drew" in page
    images = _images(page)
    # metric curves, losses, metric curves against images seen, gammas; the real grid and one grid per run
    assert len(images) == 7
    assert all(image.format == "PNG" and image.width > 100 for image in images)
    summary = Image.open(output.with_suffix(".png"))
    assert summary.format == "PNG" and summary.width > 1000


def test_a_folder_of_runs_groups_seeds_and_works_without_evaluations(sweep_dir: Path, tmp_path: Path) -> None:
    # A second seed of `plain` with no evaluations: the arm's table row has two seeds; losses are still there.
    runs = tmp_path / "runs"
    shutil.copytree(sweep_dir, runs)
    shutil.copytree(runs / "plain-s0", runs / "plain-s1")
    config = json.loads((runs / "plain-s1" / "config.json").read_text())
    (runs / "plain-s1" / "config.json").write_text(json.dumps({**config, "seed": 1}))
    (runs / "plain-s1" / "evals.jsonl").unlink()
    result = _sagan("report", runs, "-o", tmp_path / "r.html")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "r.html").read_text()
    assert re.search(r"<td>plain</td><td>2</td>", page) and re.search(r"<td>attn</td><td>1</td>", page)
    assert len(_images(page)) == 8

    no_evals = [load_run(runs / "plain-s1")]
    page, figure = build_report(no_evals, title="losses only")
    assert "No run has evaluations" in page and "<th>d_loss</th>" in page and "final swd" not in page
    assert Image.open(io.BytesIO(figure)).format == "PNG"


def test_compute_matched_arms_line_up_against_images_seen() -> None:
    from matplotlib.figure import Figure

    def run(arm: str, batch_size: int, steps: int) -> RunRecord:
        return RunRecord(name=f"{arm}-s0", config={"batch_size": batch_size, "n_critic": 1, "seed": 0},
                         metrics=[{"step": step, "d_loss": 1.0 / step, "g_loss": 1.0, "d_out_real": 0.0,
                                  "d_out_fake": 0.0} for step in range(1, steps + 1)], evals=[])

    # batch32 trains twice the steps of the seed's batch of 64: the same 256 images, which the x axis shows.
    arms = group_arms([run("batch32", 32, 8), run("seed", 64, 4)])
    ax = Figure().add_subplot()
    _plot(ax, arms, "d_loss", smooth=False, colors=_colors(list(arms)), x="images_seen")
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [list(range(32, 257, 32)),
                                                                   list(range(64, 257, 64))]
    page, _ = build_report([run("batch32", 32, 8), run("seed", 64, 4)], title="compute")
    assert "<td>batch32</td><td>1</td><td>8</td><td>8</td><td>256</td>" in page
    assert "<td>seed</td><td>1</td><td>4</td><td>4</td><td>256</td>" in page


def test_report_of_a_folder_that_holds_no_run_fails_clearly(tmp_path: Path) -> None:
    result = _sagan("report", tmp_path, "-o", tmp_path / "r.html")
    assert result.returncode == 2
    assert "is neither a run directory nor a folder of run directories" in result.stderr


def test_a_stopped_sweep_continues_where_it_stopped(tmp_path: Path) -> None:
    import os
    import signal
    import time

    command = [sys.executable, "-m", "sagan_core.cli", "sweep", "--axis", "d_norm=spectral", "--base",
               "debug32",
               "--dataset", "synthetic:64", "--steps", "120", "--checkpoint-every", "20", "--log-every", "20",
               "--sample-every", "1000", "--device", "cpu", "--out", str(tmp_path / "runs"), "--no-report"]
    run_dir = tmp_path / "runs" / "d_norm=spectral-s0"
    sweep = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "latest").exists():
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.1)
    sweep.send_signal(signal.SIGINT)  # Ctrl-C: the training stops at a checkpoint
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 1, out + err
    assert "d_norm=spectral-s0: stopped (resume by running the sweep again)" in out
    stopped_at = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert 0 < stopped_at < 120
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _mentions(pid, str(run_dir))]

    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(20, 121, 20))  # resumed: every logged step once, none trained twice


def _mentions(pid: str, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _evaluated_run(name: str, *fids: float) -> RunRecord:
    return RunRecord(name=name, config={"seed": 0}, metrics=[{"step": 1, "d_loss": 1.0, "g_loss": 1.0}],
                     evals=[{"step": step, "source": "train", "metrics": {"fid": fid}}
                            for step, fid in enumerate(fids)])


def test_a_nan_arm_ranks_last_and_a_nan_step_is_never_the_best() -> None:
    # A collapsed run: NaN at step 0, then finite; its best is the finite one, not the NaN.
    assert run_summary(_evaluated_run("a-s0", float("nan"), 50.0, 45.0), ["fid"])["best fid"] == 45.0
    runs = [_evaluated_run("good-s0", 90.0, 80.0), _evaluated_run("collapsed-s0", 90.0, float("nan")),
            _evaluated_run("diverged-s0", 90.0, float("inf"))]
    page, _png = build_report(runs, title="t")
    # After arm, seeds, steps, D updates and images seen: the first quality column.
    final_cells = {arm: re.search(rf"<tr><td>{arm}</td>(?:<td>[^<]*</td>){{4}}(<td>(?:<b>)?[^<]*)", page)[1]
                   for arm in ("good", "collapsed", "diverged")}
    assert final_cells == {"good": "<td><b>80", "collapsed": "<td>nan", "diverged": "<td>inf"}


def test_the_best_checkpoints_held_out_score_stands_beside_its_selection_score() -> None:
    run = _evaluated_run("a-s0", 90.0, 60.0, 70.0)
    held_out = {"step": 1, "source": "eval", "stream": "held-out", "metrics": {"fid": 66.5}}
    other_step = {"step": 2, "source": "eval", "stream": "held-out", "metrics": {"fid": 1.0}}
    run = RunRecord(name=run.name, config={"seed": 0, "eval_metrics": ["fid"]}, metrics=run.metrics,
                    evals=[*run.evals, held_out, other_step])
    summary = run_summary(run, ["fid"])
    assert (summary["best fid"], summary["held-out fid"]) == (60.0, 66.5)
    page, _png = build_report([run], title="t")
    assert "<th>best fid</th><th>held-out fid</th>" in page
    assert "<td>60</td><td>66.5</td>" in page
