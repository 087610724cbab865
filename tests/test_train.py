"""The trainer: files it writes, resume, n_critic, detached fakes, EMA, DDP equivalence."""

from __future__ import annotations

import copy
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sagan_core import load_checkpoint
from sagan_core.checkpoint import read_checkpoint, save_checkpoint
from sagan_core.config import TrainConfig, build_config, make_config
from sagan_core.data import build_dataset
from sagan_core.layout import (
    checkpoints,
    latest_checkpoint,
    mark_taken,
    sample_path,
    samples,
    step_of,
    taken_marker,
)
from sagan_core.models import build_discriminator, build_generator
from sagan_core.parallel import init_distributed
from sagan_core.sampling import sample_to_png
from sagan_core.train import (
    EXIT_DIVERGED,
    EXIT_STOPPED,
    Diverged,
    DivergenceWatch,
    build_state,
    fake_classes,
    noise,
    real_batches,
    train,
    train_step,
    with_classes,
)

from .conftest import subprocess_env, tiny_config
from .gloo_runs import train_two_ranks


def test_run_directory_has_metrics_samples_and_checkpoints(tmp_path: Path) -> None:
    train(tiny_config(steps=4, keep_checkpoints=1), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"d_loss", "g_loss", "d_out_real", "d_out_fake", "img_per_s", "total_steps"} <= set(records[0])
    assert set(records[-1]["gamma"]) == {"g.attn16", "d.attn8"}
    assert records[-1]["gamma"]["g.attn16"] != 0.0  # attention is learning
    grid = Image.open(tmp_path / "samples" / "step-4.png")
    assert grid.size == (8 * 34 + 2, 8 * 34 + 2)  # 8x8 tiles of 32 px with 2 px padding
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["step-4.pt"]
    assert latest_checkpoint(tmp_path).name == "step-4.pt"
    model = load_checkpoint(tmp_path)
    assert model.step == 4 and not model.generator.training
    assert model.config.steps == 4


def test_metrics_record_the_compute_spent(tmp_path: Path) -> None:
    # 2 D updates per G step, each drawing a global batch of 8 real images.
    train(tiny_config(steps=3, n_critic=2, batch_size=8), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["g_updates"], r["d_updates"], r["images_seen"]) for r in records] == [(1, 2, 16), (2, 4, 32),
                                                                                    (3, 6, 48)]


def test_real_grid_shows_the_images_the_run_draws_first(tmp_path: Path) -> None:
    config = tiny_config(steps=1)
    train(config, tmp_path)
    grid = torch.from_numpy(np.array(Image.open(tmp_path / "samples" / "real.png"))).permute(2, 0, 1)
    assert grid.shape == (3, 8 * 34 + 2, 8 * 34 + 2)  # 64 images, in the grid the samples use
    dataset = build_dataset(config.dataset, config.imsize)
    state = build_state(config, init_distributed("cpu"), len(dataset))
    first_batch, _ = next(real_batches(dataset, state))
    for tile, image in enumerate(first_batch):  # the grid opens with the first batch, in order
        row, col = divmod(tile, 8)
        pixels = grid[:, 2 + 34 * row:34 + 34 * row, 2 + 34 * col:34 + 34 * col].float()
        assert (pixels - image.add(1).mul(127.5)).abs().max() <= 1.0


def _weights(path: Path) -> dict[str, torch.Tensor]:
    payload = read_checkpoint(path)
    return {f"{part}.{name}": value for part in ("generator", "discriminator", "g_optimizer", "d_optimizer")
            for name, value in _flatten(payload[part])}


def _flatten(tree: object, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        return [item for key, value in tree.items() for item in _flatten(value, f"{prefix}.{key}")]
    if isinstance(tree, list):
        return [item for i, value in enumerate(tree) for item in _flatten(value, f"{prefix}.{i}")]
    return [(prefix, torch.tensor(float(tree)))] if isinstance(tree, (int, float)) else []


@pytest.mark.parametrize(("loss", "diffaug"), [("hinge", "none"), ("wgan-gp", "none"),
                                               ("hinge", "color,translation,cutout")])
def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path: Path, loss: str, diffaug: str) -> None:
    config = {"steps": 6, "checkpoint_every": 3, "lr_decay": 0.5, "lr_decay_every": 2, "ema_decay": 0.9,
              "loss": loss, "diffaug": diffaug}
    train(tiny_config(**config), tmp_path / "straight")
    train(tiny_config(**{**config, "steps": 3}), tmp_path / "resumed")
    assert read_checkpoint(tmp_path / "resumed")["step"] == 3
    train(tiny_config(**config), tmp_path / "resumed", resume=True)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    ema_a = read_checkpoint(tmp_path / "straight")["ema"]
    ema_b = read_checkpoint(tmp_path / "resumed")["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_sigterm_stops_after_the_step_with_a_checkpoint_there_and_resume_continues_exactly(
        tmp_path: Path) -> None:
    """The graceful stop the job service relies on: SIGTERM -> a checkpoint at that step, exit 75."""
    settings = {"checkpoint_every": 1000, "sample_every": 1000}
    config = tiny_config(steps=400, **settings)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    run = tmp_path / "stopped"
    trainer = subprocess.Popen([sys.executable, "-m", "sagan_core.train", "--config", str(config_file),
                                "--out", str(run)], env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert trainer.poll() is None and time.monotonic() < deadline, trainer.stderr.read()
        time.sleep(0.05)
    trainer.send_signal(signal.SIGTERM)
    assert trainer.wait(60) == EXIT_STOPPED
    stopped_at = read_checkpoint(run)["step"]
    assert 3 <= stopped_at < 400
    assert [p.name for p in checkpoints(run)] == [f"step-{stopped_at}.pt"]  # none was due: the stop wrote it
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == stopped_at
    assert f"stopped by SIGTERM at step {stopped_at}" in trainer.stderr.read()

    # Resumed to a few steps more, it equals a straight run of as many steps.
    more = tiny_config(steps=stopped_at + 2, **settings)
    train(more, run, resume=True)
    train(more, tmp_path / "straight")
    straight, resumed = _weights(tmp_path / "straight"), _weights(run)
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, stopped_at + 3))


# Rates this large blow debug32 up within a few steps: losses of 1e28, then NaN.
DIVERGING = {"g_lr": 1e6, "d_lr": 1e6, "steps": 40, "checkpoint_every": 2, "sample_every": 2,
             "keep_checkpoints": 40}


# The first non-finite stat of a step, or weights that turned non-finite in the step's last update (stats of
# the same step are computed before it): which of the two comes first depends on the draws.
DIVERGED = (r"diverged at step (\d+) \((?:(?:d_loss|g_loss|d_out_real|d_out_fake) (?:nan|inf|-inf)"
            r"|(?:generator|discriminator|ema) weights not finite)\)")


def _diverged_at(stderr: str) -> int:
    found = re.search(DIVERGED, stderr)
    assert found, stderr
    return int(found[1])


def _assert_nothing_written_past(run: Path, diverged_at: int) -> None:
    """Every checkpoint is of a step before the divergence and finite, `latest` the newest of them."""
    saved = [read_checkpoint(path) for path in checkpoints(run)]
    assert saved and all(payload["step"] < diverged_at for payload in saved)
    assert read_checkpoint(run)["step"] == max(payload["step"] for payload in saved)
    for payload in saved:
        for name, value in _flatten({key: payload[key] for key in ("generator", "discriminator")}):
            assert torch.isfinite(value).all(), name
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(logged, default=0) < diverged_at and max(map(step_of, samples(run)), default=0) < diverged_at


def test_a_diverging_run_stops_at_once_keeping_the_last_finite_checkpoint(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    # A checkpoint and a grid every step: with one thread (the tests' OMP_NUM_THREADS) the weights turn at
    # step 2, with more at step 3 or later; either way a finite checkpoint comes before.
    config = tiny_config(**{**DIVERGING, "checkpoint_every": 1, "sample_every": 1})
    config_file.write_text(json.dumps(config.to_dict()))
    result = subprocess.run([sys.executable, "-m", "sagan_core.train", "--config", str(config_file),
                             "--out", str(tmp_path / "run")], env=subprocess_env(), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == EXIT_DIVERGED, result.stderr
    diverged_at = _diverged_at(result.stderr)
    assert 1 < diverged_at < 10 and "Traceback" not in result.stderr
    _assert_nothing_written_past(tmp_path / "run", diverged_at)


def test_two_ranks_stop_together_when_the_run_diverges(tmp_path: Path) -> None:
    # Under DDP the stats are read on log, sample and checkpoint steps only; both ranks exit, none hangs.
    config_file = tmp_path / "config.json"
    # A checkpoint and a grid every step: under torchrun's one thread per rank the weights may turn at step 2.
    overrides = {**DIVERGING, "checkpoint_every": 1, "sample_every": 1, "log_every": 2}
    config_file.write_text(json.dumps(tiny_config(**overrides).to_dict()))
    result = subprocess.run([sys.executable, "-m", "sagan_core.cli", "train", "--config", str(config_file),
                             "--nproc", "2", "--out", str(tmp_path / "run")], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    diverged_at = _diverged_at(result.stderr)
    assert result.stderr.count(f"error: diverged at step {diverged_at} ") == 2, result.stderr  # both ranks
    _assert_nothing_written_past(tmp_path / "run", diverged_at)


def test_non_finite_weights_with_finite_stats_are_caught_before_a_checkpoint() -> None:
    state, batches = _state()
    watch = DivergenceWatch(state, None)
    watch.note(train_step(state, batches))
    watch.check(weights=True)  # a healthy step passes
    with torch.no_grad():
        next(state.discriminator.parameters())[0].fill_(float("inf"))
    watch.check()  # the stats alone cannot show it
    with pytest.raises(Diverged, match=r"^diverged at step 1 \(discriminator weights not finite\)$"):
        watch.check(weights=True)


def test_held_checkpoints_wait_for_their_taken_marker_before_rotation(tmp_path: Path) -> None:
    train(tiny_config(steps=4, checkpoint_every=1, keep_checkpoints=1), tmp_path, hold_checkpoints=True)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-1.pt", "step-2.pt", "step-3.pt", "step-4.pt"]
    for taken in checkpoints(tmp_path)[:2]:
        mark_taken(taken)
    payload = read_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {**payload, "step": 5}, keep=1, hold_untaken=True)
    # Taken ones rotate away with their markers; untaken ones stay whatever their age.
    assert [p.name for p in checkpoints(tmp_path)] == ["step-3.pt", "step-4.pt", "step-5.pt"]
    assert not taken_marker(tmp_path / "checkpoints" / "step-1.pt").exists()
    save_checkpoint(tmp_path, {**payload, "step": 6}, keep=1)  # without the hold: plain rotation
    assert [p.name for p in checkpoints(tmp_path)] == ["step-6.pt"]


# The paper's residual family, class-conditional on the built-in shapes (3 kinds), small enough for the CPU.
CONDITIONAL = {"arch": "resnet", "attention": "pooled", "num_classes": None, "dataset": "shapes:64"}


def _state(**overrides):
    config = tiny_config(**overrides)
    dataset = build_dataset(config.dataset, config.imsize)
    config = with_classes(config, dataset)
    state = build_state(config, init_distributed("cpu"), len(dataset))
    return state, real_batches(dataset, state)


def test_n_critic_discriminator_steps_per_generator_step() -> None:
    state, batches = _state(n_critic=3)
    train_step(state, batches)
    train_step(state, batches)
    d_steps = next(iter(state.d_optimizer.state.values()))["step"]
    g_steps = next(iter(state.g_optimizer.state.values()))["step"]
    assert (int(d_steps), int(g_steps), state.step) == (6, 2, 2)


def test_discriminator_step_never_backpropagates_into_the_generator() -> None:
    state, batches = _state(n_critic=2)
    backward_calls = []
    state.generator.main.to_rgb.register_full_backward_hook(lambda *_: backward_calls.append(1))
    train_step(state, batches)
    assert len(backward_calls) == 1  # only the generator step, not the two D steps


def test_batchnorm_discriminator_normalises_real_and_fake_apart() -> None:
    """d_norm=batch: D's BatchNorm takes real-only and fake-only batch statistics, as the reference."""
    state, batches = _state(d_norm="batch")
    discriminator, generator = copy.deepcopy(state.discriminator), copy.deepcopy(state.generator)
    real, _ = next(real_batches(build_dataset(state.config.dataset, state.config.imsize), state))
    with torch.no_grad():
        fake = generator(noise(state.config, state.ctx, 0, 0))
        expected = discriminator(real).mean(), discriminator(fake).mean()
        mixed = discriminator(torch.cat([real, fake])).split(len(real))
    batch_sizes = []
    state.discriminator.main.block2[1].register_forward_pre_hook(lambda _, x: batch_sizes.append(len(x[0])))
    stats = train_step(state, batches)
    assert batch_sizes == [8, 8, 8]  # real, fake, then the G step's fake
    assert torch.allclose(stats["d_out_real"], expected[0]) and torch.allclose(stats["d_out_fake"],
                                                                               expected[1])
    assert not torch.allclose(mixed[0].mean(), expected[0], atol=1e-3)  # a mixed batch would differ


def test_lr_decay_is_applied_when_set() -> None:
    state, batches = _state(lr_decay=0.5, lr_decay_every=2)
    for _ in range(4):
        train_step(state, batches)
    assert state.g_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.5)
    assert state.d_optimizer.param_groups[0]["lr"] == pytest.approx(4e-4 * 0.5)


@pytest.mark.parametrize("loss", ["wgan-gp", "bce"])
def test_other_losses_train(loss: str) -> None:
    state, batches = _state(loss=loss)
    stats = train_step(state, batches)
    assert all(torch.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("attention", ["seed", "pooled"])
def test_wgan_gp_trains_the_seed64_network(attention: str, channels_last: bool) -> None:
    """The penalty differentiates D's gradient again, through seed64's two D attention layers: the
    fused SDPA kernels (chosen by strides, always under channels_last) have no double backward."""
    config = make_config("seed64", dataset="synthetic:8", batch_size=4, num_workers=0, device="cpu",
                         loss="wgan-gp", attention=attention, channels_last=channels_last)
    dataset = build_dataset(config.dataset, config.imsize)
    state = build_state(config, init_distributed("cpu"), len(dataset))
    batches = real_batches(dataset, state)
    for _ in range(2):
        stats = train_step(state, batches)
    assert all(torch.isfinite(v) for v in stats.values())


def test_ema_weights_are_what_load_checkpoint_returns(tmp_path: Path) -> None:
    train(tiny_config(steps=3, ema_decay=0.5), tmp_path)
    payload = read_checkpoint(tmp_path)
    model = load_checkpoint(tmp_path)
    for name, value in model.generator.state_dict().items():
        assert torch.equal(value, payload["ema"][name])
    assert not torch.equal(payload["ema"]["main.block1.1.weight"],
                           payload["generator"]["main.block1.1.weight"])


def test_a_kill_while_writing_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    train(tiny_config(steps=2, checkpoint_every=2), tmp_path)
    payload = read_checkpoint(tmp_path)

    def crash_midway(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # stands in for a kill during the write

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {**payload, "step": 4}, keep=3)
    assert latest_checkpoint(tmp_path).name == "step-2.pt"
    assert load_checkpoint(tmp_path).step == 2
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []


def test_bad_dataset_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(dataset=f"folder:{tmp_path}/missing").to_dict()))
    result = subprocess.run([sys.executable, "-m", "sagan_core.train", "--config", str(config),
                             "--out", str(tmp_path / "run")], check=False, capture_output=True, text=True,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 2
    assert f"{tmp_path}/missing" in result.stderr and "Traceback" not in result.stderr


def broken_folder(root: Path) -> tuple[Path, list[str]]:
    """14 readable images, a truncated JPEG and a .png of garbage: (root, the two bad paths)."""
    root.mkdir()
    for i in range(14):
        Image.new("RGB", (40, 40), (18 * i, 255 - 18 * i, 90)).save(root / f"{i:02d}.png")
    truncated, garbage = root / "07b.jpg", root / "07c.png"
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buffer, "JPEG")
    truncated.write_bytes(buffer.getvalue()[:300])
    garbage.write_bytes(b"\x89PNG but not really" * 10)
    return root, [str(truncated), str(garbage)]


def _bad_images_metric(run: Path) -> list[int]:
    return [json.loads(line)["bad_images"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_images_are_skipped_counted_and_logged_once(tmp_path: Path, num_workers: int,
                                                               capsys: pytest.CaptureFixture) -> None:
    root, bad = broken_folder(tmp_path / "images")
    # 16 images, global batch 8: 4 steps are 2 epochs, so each bad image comes up twice.
    config = tiny_config(dataset=f"folder:{root}", steps=4, max_bad_images=0.2, num_workers=num_workers)
    train(config, tmp_path / "run")
    assert _bad_images_metric(tmp_path / "run")[-1] == 2
    stderr = capsys.readouterr().err
    assert [stderr.count(name) for name in bad] == [1, 1], stderr
    assert sorted(read_checkpoint(tmp_path / "run")["bad_images"]) == sorted(bad)  # a resumed run knows them


def test_too_many_unreadable_images_fail_the_run_naming_them(tmp_path: Path) -> None:
    root, bad = broken_folder(tmp_path / "images")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(dataset=f"folder:{root}", max_bad_images=0,
                                             num_workers=2).to_dict()))
    result = subprocess.run([sys.executable, "-m", "sagan_core.train", "--config", str(config),
                             "--out", str(tmp_path / "run")], check=False, capture_output=True, text=True,
                            env=subprocess_env(), timeout=120)
    assert result.returncode == 2
    assert "max_bad_images 0 of 16" in result.stderr and "Traceback" not in result.stderr
    assert any(name in result.stderr for name in bad), result.stderr


def test_two_processes_pool_their_unreadable_images(tmp_path: Path) -> None:
    root, bad = broken_folder(tmp_path / "images")
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_config(dataset=f"folder:{root}", steps=4,
                                                  max_bad_images=0.2).to_dict()))
    result = subprocess.run([sys.executable, "-m", "sagan_core.cli", "train", "--config", str(config_file),
                             "--nproc", "2", "--out", str(tmp_path / "run")],
                            check=True, env=subprocess_env(), timeout=300, capture_output=True, text=True)
    assert _bad_images_metric(tmp_path / "run")[-1] == 2
    assert [result.stderr.count(name) for name in bad] == [1, 1], result.stderr


# wgan-gp: the penalty's interpolation weights must be the global batch's too. d_norm=batch: two D forwards
# per backward, and the penalty's double backward through the all-reduce BatchNorm. diffaug: each rank
# augments its slice of the global batch with the global batch's draws.
GLOO_CASES = {"hinge": {}, "wgan-gp": {"loss": "wgan-gp", "channels_last": True},
              "wgan-gp-d_norm_batch": {"loss": "wgan-gp", "d_norm": "batch"},
              "conditional-resnet": CONDITIONAL,
              "wgan-gp-diffaug": {"loss": "wgan-gp", "diffaug": "color,translation,cutout"}}


def gloo_config(case: str) -> TrainConfig:
    return tiny_config(steps=1, batch_size=8, **GLOO_CASES[case])


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every GLOO_CASES config trained for one step by two gloo ranks, all in one torchrun launch."""
    folder = tmp_path_factory.mktemp("two-ranks")
    train_two_ranks({folder / case: gloo_config(case) for case in GLOO_CASES})
    return {case: folder / case for case in GLOO_CASES}


@pytest.mark.parametrize("case", list(GLOO_CASES))
def test_two_process_gloo_step_equals_one_process_step(tmp_path: Path, two_rank_runs: dict[str, Path],
                                                       case: str) -> None:
    config = gloo_config(case)
    train(config, tmp_path / "one")
    # The same process with another thread count sums in another order: how far float32 round-off alone
    # moves each gradient for this draw (a ReLU input at 0 can make that 1e-4 of a gradient's size).
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        train(config, tmp_path / "reordered")
    finally:
        torch.set_num_threads(threads)
    one, two, reordered = (read_checkpoint(path) for path in (tmp_path / "one", two_rank_runs[case],
                                                              tmp_path / "reordered"))
    checked = total = 0
    config = build_config(one["config"])  # num_classes resolved from the data set
    assert two["config"]["num_classes"] == config.num_classes
    for part, optimizer, model in (("generator", "g_optimizer", build_generator(config)),
                                   ("discriminator", "d_optimizer", build_discriminator(config))):
        parameters = [name for name, _ in model.named_parameters()]
        # Each gradient within 1e-5 of its own largest value, plus twice what reordering the sums moved it in
        # one process. The floor (1e-5 of the net's largest gradient) only where the true gradient is 0, so
        # round-off is all there is (up to about 1e-6 in float32).
        zero = zero_gradient_parameters(model, config, part)
        # With beta1 = 0, Adam's first moment after one step is exactly the gradient.
        grads_one = [one[optimizer]["state"][index]["exp_avg"] for index in range(len(parameters))]
        floor = 1e-5 * max(grad.abs().max().item() for grad in grads_one)
        for index, name in enumerate(parameters):
            grad_one, grad_two = grads_one[index], two[optimizer]["state"][index]["exp_avg"]
            scale = grad_one.abs().max().item()
            noise = (grad_one - reordered[optimizer]["state"][index]["exp_avg"]).abs().max().item()
            atol = 1e-5 * scale + 2 * noise + (floor if name in zero else 0.0)
            assert torch.allclose(grad_one, grad_two, rtol=0, atol=atol), f"grad {name}"
            # Adam's first update is lr * g / (|g| + eps), about lr * sign(g): where |g| is within the
            # gradient's tolerance (conv biases before BatchNorm have a true gradient of exactly 0) its
            # sign may differ, so the weight check covers the rest, which is nearly all. Attention's
            # query/key/value get no gradient at all in step 1: gamma starts at 0.
            settled = grad_one.abs() > max(atol, floor)
            checked += int(settled.sum())
            total += settled.numel()
            assert torch.allclose(one[part][name][settled], two[part][name][settled], rtol=0, atol=1e-5), name
        for name in one[part].keys() - set(parameters):  # BatchNorm statistics, spectral-norm vectors
            # D's running means (d_norm=batch) follow the conv biases in front of them, which the G
            # step's forward sees after their noisy first update of about ±lr (above): 0.1 x 8e-4 apart.
            atol = 1e-4 if name.endswith("running_mean") else 1e-5
            assert torch.allclose(one[part][name].float(), two[part][name].float(), rtol=0, atol=atol), name
    assert checked / total > 0.95
    # Only rank 0 writes: one metrics line per logged step, not two.
    assert len((two_rank_runs[case] / "metrics.jsonl").read_text().splitlines()) == 1


def zero_gradient_parameters(model: torch.nn.Module, config, part: str) -> set[str]:
    """Names of the parameters whose true gradient in a training step is exactly 0: biases feeding a
    BatchNorm (its batch statistics remove any constant shift) and, in step 1, attention's convs behind a
    gamma of 0. Found in float64, where round-off is about 1e-16 of the largest gradient, not float32's
    1e-6."""
    probe = copy.deepcopy(model).double().train()
    generator = torch.Generator().manual_seed(0)
    labels = ((torch.randint(config.num_classes, (8,), generator=generator),) if config.num_classes else ())
    inputs = (torch.randn(8, config.z_dim, generator=generator, dtype=torch.float64) if part == "generator"
              else torch.randn(8, 3, config.imsize, config.imsize, generator=generator, dtype=torch.float64))
    out = probe(inputs, *labels)
    (out * torch.randn(out.shape, generator=generator, dtype=torch.float64)).sum().backward()
    largest = max(p.grad.abs().max().item() for p in probe.parameters() if p.grad is not None)
    return {name for name, p in probe.named_parameters()
            if p.grad is None or p.grad.abs().max() <= 1e-9 * largest}


def test_the_zero_gradient_probe_finds_exactly_the_biases_before_batchnorm_and_the_idle_attention() -> None:
    config = tiny_config()
    found = zero_gradient_parameters(build_generator(config), config, "generator")
    assert found, "the seed's G has conv biases in front of BatchNorm"
    assert all(name.endswith("bias") or ".attn" in name or "attention" in name for name in found), found
    assert not any(name.endswith("weight.original") and "attn" not in name for name in found), found
    d_found = zero_gradient_parameters(build_discriminator(config), config, "discriminator")
    assert all("attn" in name or "attention" in name for name in d_found), d_found  # spectral D: no BatchNorm


def test_the_log_warns_of_a_batchnorm_critic_under_a_gradient_penalty(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    train(tiny_config(steps=1, loss="wgan-gp", d_norm="batch"), tmp_path / "warned")
    assert "warning: loss wgan-gp with d_norm batch" in capsys.readouterr().err
    train(tiny_config(steps=1, loss="wgan-gp"), tmp_path / "quiet")
    assert "warning" not in capsys.readouterr().err


def test_gpu_speed_options_also_run_on_the_cpu() -> None:
    """bf16 autocast and channels_last are meant for GPUs; the same code path must run anywhere."""
    state, batches = _state(amp="bf16", channels_last=True)
    stats = train_step(state, batches)
    assert all(torch.isfinite(v) for v in stats.values())
    assert state.generator.main.block1[0].parametrizations.weight.original.dtype == torch.float32


def test_conditional_step_feeds_real_labels_and_drawn_classes_to_d() -> None:
    state, batches = _state(**CONDITIONAL)
    assert state.config.num_classes == 3  # null: taken from the data set (shapes' three kinds)
    images, labels = next(batches)
    d_calls = []
    state.discriminator.register_forward_pre_hook(lambda _, args: d_calls.append(args))
    train_step(state, iter([(images, labels)]))
    drawn = fake_classes(state.config, state.ctx, 0, 0)
    assert torch.equal(d_calls[0][1], torch.cat([labels, drawn]))  # one D forward over real and fake
    assert torch.equal(d_calls[1][1], fake_classes(state.config, state.ctx, 0, 1))  # the G step's classes
    assert torch.equal(fake_classes(state.config, state.ctx, 0, 0), drawn)  # a function of (seed, step, slot)
    assert set(fake_classes(state.config.model_copy(update={"batch_size": 300}), state.ctx, 0,
                            0).tolist()) == {
        0, 1, 2}


def test_conditional_run_describes_itself_and_samples_by_class(tmp_path: Path) -> None:
    train(tiny_config(steps=2, **CONDITIONAL), tmp_path)
    model = load_checkpoint(tmp_path)
    assert model.config.num_classes == 3 and model.generator.num_classes == 3
    with Image.open(sample_path(tmp_path, 2)) as grid:
        assert grid.size == (8 * 34 + 2, 3 * 34 + 2)  # one row per class
    sample_to_png(tmp_path, tmp_path / "two.png", classes=[2, 0], per_class=4, npz=tmp_path / "two.npz")
    with Image.open(tmp_path / "two.png") as grid:
        assert grid.size == (4 * 34 + 2, 2 * 34 + 2)
    assert np.load(tmp_path / "two.npz")["labels"].tolist() == [2] * 4 + [0] * 4
    with pytest.raises(ValueError, match=r"classes must be in \[0, 3\)"):
        sample_to_png(tmp_path, tmp_path / "bad.png", classes=[3])


def test_conditional_model_needs_labelled_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no class labels"):
        train(tiny_config(**{**CONDITIONAL, "dataset": "synthetic:64", "num_classes": 4}), tmp_path)
    with pytest.raises(ValueError, match="has 3 classes, more than num_classes 2"):
        train(tiny_config(**{**CONDITIONAL, "num_classes": 2}), tmp_path)
    with pytest.raises(ValueError, match="num_classes is 5 but data set shapes:64 has only 3 classes"):
        train(tiny_config(**{**CONDITIONAL, "num_classes": 5}), tmp_path)
    unconditional = _state(**{**CONDITIONAL, "dataset": "synthetic:64"})[0]
    assert unconditional.config.num_classes == 0 and unconditional.discriminator.embedding is None
