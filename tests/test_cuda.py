"""Checks that need a CUDA GPU (marked `cuda`; `pytest -m cuda`, or bench/gpu_check.sh, runs them).

Without a GPU every test here is skipped, and pytest's summary (-ra) says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sagan_core.data import build_dataset
from sagan_core.parallel import init_distributed
from sagan_core.train import build_state, real_batches, train, train_step, with_classes

from .conftest import subprocess_env, tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")]

# The seed's DCGAN design and the paper's conditional residual one, small.
MODELS = {"dcgan": {}, "resnet": {"arch": "resnet", "attention": "pooled", "num_classes": None,
                                  "dataset": "shapes:64"}}

# One rank under torchrun, forced through the multi-process path: SyncBatchNorm, NCCL all-reduces and DDP.
ONE_RANK = """
import dataclasses, json, sys, torch
from sagan_core.config import build_config
from sagan_core.data import build_dataset
from sagan_core.parallel import DistContext, init_distributed
from sagan_core.train import build_state, real_batches, train_step, with_classes
import torch.distributed as dist

@dataclasses.dataclass(frozen=True, slots=True)
class ForcedDistributed(DistContext):
    @property
    def distributed(self) -> bool:  # one rank, but the code path of many
        return True

torch.backends.cudnn.allow_tf32 = False  # as the plain step beside it (the test says why)
dist.init_process_group("nccl")
base = init_distributed("cuda")
ctx = ForcedDistributed(base.rank, base.world_size, base.local_rank, base.device)
config = build_config(json.loads(sys.argv[1]))
dataset = build_dataset(config.dataset, config.imsize)
state = build_state(with_classes(config, dataset), ctx, len(dataset))
assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in state.generator.modules())
assert isinstance(state.discriminator_ddp, torch.nn.parallel.DistributedDataParallel)
batches = real_batches(dataset, state)
print(json.dumps([{k: v.item() for k, v in train_step(state, batches).items()} for _ in range(3)]))
dist.destroy_process_group()
"""


def _state(**overrides):
    config = tiny_config(device="cuda", **overrides)
    dataset = build_dataset(config.dataset, config.imsize)
    state = build_state(with_classes(config, dataset), init_distributed("cuda"), len(dataset))
    return state, real_batches(dataset, state)


@pytest.mark.parametrize("model", list(MODELS))
def test_syncbatchnorm_and_nccl_ddp_at_one_rank_equal_the_plain_step(model: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(device="cuda", **MODELS[model])
    script = tmp_path / "one_rank.py"
    script.write_text(ONE_RANK)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", "1", str(script), json.dumps(config.to_dict())],
                            check=False, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    distributed = json.loads(result.stdout.strip().splitlines()[-1])
    # Both sides without TF32 convolutions (torch's default allows them): cuDNN may pick other algorithms
    # for the two paths, and TF32's round-off alone moved dcgan's g_loss by 1.4e-4 on an H100 (2026-12-05;
    # with NVIDIA_TF32_OVERRIDE=0 both models agreed within the tolerance).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the same switch as the rank's script
    state, batches = _state(**MODELS[model])
    plain = [{k: v.item() for k, v in train_step(state, batches).items()} for _ in range(3)]
    for one, other in zip(plain, distributed, strict=True):
        for key in one:
            assert one[key] == pytest.approx(other[key], rel=1e-3, abs=1e-4), key


@pytest.mark.parametrize("model", list(MODELS))
def test_bf16_autocast_follows_fp32_over_50_steps(model: str) -> None:
    losses = {}
    for amp in ("none", "bf16"):
        torch.manual_seed(0)
        state, batches = _state(amp=amp, **MODELS[model])
        losses[amp] = torch.tensor([[s.item() for s in list(train_step(state, batches).values())[:2]]
                                    for _ in range(50)])
    assert torch.isfinite(losses["bf16"]).all()
    # bf16 round-off compounds over 50 adversarial steps, so compare the trajectories' means, not each step.
    assert torch.allclose(losses["bf16"][-10:].mean(0), losses["none"][-10:].mean(0), rtol=0.15, atol=0.25)
    assert torch.allclose(losses["bf16"][:3], losses["none"][:3], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("model", list(MODELS))
def test_channels_last_gives_the_contiguous_step(model: str) -> None:
    stats = {}
    for channels_last in (False, True):
        state, batches = _state(channels_last=channels_last, **MODELS[model])
        stats[channels_last] = [{k: v.item() for k, v in train_step(state, batches).items()}
                                for _ in range(3)]
        weight = next(p for p in state.generator.parameters() if p.dim() == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    for one, other in zip(stats[False], stats[True], strict=True):
        for key in one:
            # cuDNN picks other (TF32) conv algorithms per layout: agreement to round-off, not bits.
            assert one[key] == pytest.approx(other[key], rel=1e-2, abs=1e-2), key


@pytest.mark.parametrize("model", list(MODELS))
def test_compiled_training_runs_and_checkpoints_clean_weights(model: str, tmp_path: Path) -> None:
    state = train(tiny_config(device="cuda", compile=True, steps=4, **MODELS[model]), tmp_path)
    assert state.step == 4
    from sagan_core import load_checkpoint

    loaded = load_checkpoint(tmp_path)  # the bare modules' names, no "_orig_mod." prefix
    assert loaded.step == 4 and loaded.config.compile
