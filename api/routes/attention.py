"""Attention maps of a training job's checkpoint (sagan_core.attention_maps), computed by a helper process.

The API never loads torch. The first request for a (checkpoint, seed, index, class) downloads the checkpoint
and runs `sagan attention --npz` in a child process, which stores every query's weights of every layer beside
the job's artifacts; that request and every later one for the same image, at any query point and layer,
renders from the stored file with numpy and PIL in milliseconds. At most HELPERS children run at once, each
within HELPER_TIMEOUT_S and on one thread: the host's cores serve requests, and at 64x64 the forwards take 0.1
s of a child's seconds, most of which go to starting Python and torch. Those children wait on threads of their
own, so a slow first request holds none of the store's threads (api/guards.py) or the shared ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import OwnerDep, SessionDep, StoreDep, in_thread_of
from sagan_core.config import MAX_INT
from sagan_service import jobs
from sagan_service.models import Artifact
from sagan_service.storage import ArtifactNotFound, ArtifactStore

router = APIRouter(prefix="/jobs", tags=["jobs"])
HELPERS = 2  # helper processes at once: each holds a model (GBs for paper128) and a core
HELPER_TIMEOUT_S = 180
_helper_threads: anyio.CapacityLimiter | None = None  # made on first use: it belongs to the running loop


def attention_key(job_id: str, step: int, seed: int, index: int, label: int | None) -> str:
    """The stored capture of one generated image (jobs/<id>/... goes wherever the job's folder goes)."""
    chosen = "" if label is None else f"-class-{label}"
    return f"jobs/{job_id}/attention/step-{step}/seed-{seed}-index-{index}{chosen}.npz"


@router.get("/{job_id}/attention", response_class=Response,
            responses={200: {"content": {"image/png": {}, "application/json": {}}},
                       404: {"description": "no such job, or no committed checkpoint at that step"},
                       422: {"description": "a query outside the image, an unknown layer or class"},
                       504: {"description": "the helper process ran out of time"}})
async def get_attention(job_id: str, request: Request, session: SessionDep, store: StoreDep, owner: OwnerDep,
                        y: Annotated[int, Query(ge=0, le=4096, description="query row, in image pixels")],
                        x: Annotated[int, Query(ge=0, le=4096, description="query column, in image pixels")],
                        step: Annotated[int | None,
                                        Query(ge=0, le=MAX_INT,
                                              description="checkpoint; default the latest")] = None,
                        seed: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
                        index: Annotated[int, Query(ge=0, le=MAX_INT,
                                                    description="image i of the seed, as "
                                                                "`sagan sample --out-dir`")] = 0,
                        label: Annotated[int | None,
                                         Query(alias="class", ge=0, le=MAX_INT,
                                               description="conditional models: the class")] = None,
                        layer: Annotated[str | None,
                                         Query(max_length=64, description="e.g. g.attn32; default "
                                                                                      "every layer")] = None,
                        format: Literal["png", "json"] = "png") -> Response:
    """Where each attention layer looks from the query (y, x) of generated image `index` of `seed`: a PNG of
    the image and each layer's map over it (as `sagan attention`), or with `format=json` the raw maps."""
    checkpoint = await run_in_threadpool(_checkpoint, session, job_id, owner, step)
    key = attention_key(checkpoint.job_id, checkpoint.step, seed, index, label)
    data = await _read_stored(request=request, store=store, key=key)
    if data is None:
        global _helper_threads
        _helper_threads = _helper_threads or anyio.CapacityLimiter(HELPERS)
        data = await anyio.to_thread.run_sync(partial(_compute, store, checkpoint.key, seed, index, label),
                                              limiter=_helper_threads)
        await _store(request=request, store=store, key=key, data=data)
    return await run_in_threadpool(_answer, data, checkpoint.step, seed, index, y, x, layer, format)


def _checkpoint(session: Session, job_id: str, owner: str | None, step: int | None) -> Artifact:
    """The job's committed checkpoint at `step`, or its latest; a 404 without one."""
    job = jobs.get_job(session, job_id, owner=owner)
    found = [item for item in jobs.list_artifacts(session, job_id=job.id, kind="checkpoint")
             if step is None or item.step == step]
    if not found:
        raise HTTPException(404,
                            f"job {job_id} has no checkpoint" + ("" if step is None else f" at step {step}"))
    return found[-1]


@in_thread_of("store")
def _read_stored(request: Request, store: ArtifactStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ArtifactNotFound:
        return None


@in_thread_of("store")
def _store(request: Request, store: ArtifactStore, key: str, data: bytes) -> None:
    store.put_bytes(key, data)


def _answer(data: bytes, step: int, seed: int, index: int, y: int, x: int, layer: str | None,
            format: str) -> Response:
    from sagan_core.attention_maps import from_npz, maps_json, render_png  # numpy and PIL, on first use

    captured = from_npz(data)
    try:
        if format == "json":
            return JSONResponse({"step": step, "seed": seed, "index": index,
                                 **maps_json(captured, [(y, x)], layer)})
        return Response(render_png(captured, [(y, x)], layer), media_type="image/png")
    except ValueError as error:
        raise HTTPException(422, str(error)) from None


def _compute(store: ArtifactStore, checkpoint_key: str, seed: int, index: int, label: int | None) -> bytes:
    """`sagan attention --npz` on the checkpoint, in a child process on one CPU thread."""
    with tempfile.TemporaryDirectory(prefix="sagan-attention-") as folder:
        checkpoint, out = Path(folder) / "model.pt", Path(folder) / "attention.npz"
        store.download(checkpoint_key, checkpoint)
        command = [sys.executable, "-m", "sagan_core.cli", "attention", "--checkpoint", str(checkpoint),
                   "--seed", str(seed), "--index", str(index), "--npz", str(out), "--device", "cpu"]
        if label is not None:
            command += ["--class", str(label)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=HELPER_TIMEOUT_S,
                                    check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            raise HTTPException(504, f"computing the attention maps took over {HELPER_TIMEOUT_S} s") from None
        if result.returncode == 2:  # the command's one-line refusal (a class out of range)
            raise HTTPException(422, result.stderr.strip().splitlines()[-1].split("error: ", 1)[-1])
        if result.returncode != 0:
            raise RuntimeError(f"sagan attention failed ({result.returncode}): {result.stderr[-2000:]}")
        return out.read_bytes()
