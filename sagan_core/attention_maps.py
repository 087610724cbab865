"""Attention maps, as in the SAGAN paper's Figures 1 and 5: for a query point of an image, the weight each
attention layer gives every key position.

capture() runs G on z_i of (seed, index) (the image `sagan sample --out-dir --seed S` writes as i) and D on
that image, or D alone on a real image, and keeps each attention layer's full softmax(q kᵀ) (every query's
weights over every key) while the layers run unchanged (sagan_core.layers.recording_attention). query_map()
picks one query's row; render_png() draws the figure; to_npz()/from_npz() store a capture, so the job service
computes each (checkpoint, seed, index) once and answers every later query point from the file.

Layers are named `g.attn<size>` / `d.attn<size>`: network and the feature-map size the layer runs at, as the
attention gammas of the DCGAN models are logged. A query (y, x) in image pixels falls in feature position
(y * h // S, x * w // S). The seed's form has a key at every feature position; the paper's pooled form has one
per 2x2 max-pooled block, so its map is (h/2, w/2). Maps are upsampled to the image by nearest neighbour
(each key's weight fills the image pixels its feature cell, or pooled 2x2 block, covers): the figure shows the
map at its true resolution, blocks and all, rather than a smoothed guess between keys.

Only capture() needs torch (imported there): the API renders stored captures with numpy and PIL alone.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .checkpoint import LoadedModel

# Inferno's colours at 0, 1/4, 1/2, 3/4 and 1: the heat map's colour scale, interpolated linearly.
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
PANEL_PX = 128  # each panel's size in the figure (small images scaled up, by nearest neighbour)
CAPTION_PX = 14


@dataclass(frozen=True, slots=True)
class LayerAttention:
    name: str  # g.attn32, d.attn16
    form: str  # "seed" (a key at every position) or "pooled" (keys of 2x2 max-pooled blocks)
    grid: tuple[int, int]  # query positions (h, w)
    key_grid: tuple[int, int]  # key positions (h, w), or (h/2, w/2) pooled
    weights: np.ndarray  # (h * w, kh * kw): row i is query i's softmax over the keys (sums to 1)

    def query_map(self, y: int, x: int, imsize: int) -> np.ndarray:
        """The weights (kh, kw) of the query at image pixel (y, x) over the key positions."""
        if not (0 <= y < imsize and 0 <= x < imsize):
            raise ValueError(f"query ({y}, {x}) is outside the {imsize}x{imsize} image")
        h, w = self.grid
        row = (y * h // imsize) * w + x * w // imsize
        return self.weights[row].reshape(self.key_grid).astype(np.float32)


@dataclass(frozen=True, slots=True)
class AttentionCapture:
    image: np.ndarray  # (S, S, 3) uint8: what the maps are of
    layers: tuple[LayerAttention, ...]
    label: int | None = None  # the class of a conditional model's image

    @property
    def imsize(self) -> int:
        return self.image.shape[0]

    def select(self, layer: str | None) -> tuple[LayerAttention, ...]:
        """Every layer, or the one named; a ValueError naming the choices for an unknown name."""
        if layer is None:
            return self.layers
        chosen = tuple(item for item in self.layers if item.name == layer)
        if not chosen:
            names = ", ".join(item.name for item in self.layers) or "none"
            raise ValueError(f"no attention layer {layer!r} (this model's: {names})")
        return chosen


# ---- capturing (torch)
# ------------------------------------------------------------------------------------------


def capture(model: LoadedModel, *, seed: int = 0, index: int = 0, label: int | None = None,
            image: Path | None = None) -> AttentionCapture:
    """G's and D's attention for generated image `index` of `seed` (class `label`, else the one
    `sagan sample --out-dir` draws for it), or D's alone for the real image file `image` (a conditional D
    needs `label`)."""
    import torch

    from .sampling import indexed_labels, indexed_noise, to_uint8

    num_classes = model.config.num_classes or 0
    if label is not None and not 0 <= label < num_classes:
        raise ValueError(f"class {label}: this model has " + (f"classes 0 to {num_classes - 1}" if num_classes
                                                              else "no classes (it is unconditional)"))
    if num_classes and label is None:
        if image is not None:
            raise ValueError("a conditional D scores an image of a class: give --class")
        label = int(indexed_labels(seed, index, 1, num_classes)[0])
    labels = () if not num_classes else (torch.tensor([label]),)
    layers: list[LayerAttention] = []
    with torch.no_grad():
        if image is None:
            z = indexed_noise(seed, index, 1, model.config.z_dim)
            pixels = _run(model.generator, "g", layers, z, *labels).float().cpu()
        else:
            pixels = _real_image(image, model.config.imsize, model.config.resize_mode)
        _run(model.discriminator, "d", layers, pixels, *labels)
    return AttentionCapture(image=to_uint8(pixels[0]).permute(1, 2, 0).numpy(), layers=tuple(layers),
                            label=label if num_classes else None)


def _run(network: nn.Module, prefix: str, into: list[LayerAttention], *inputs: torch.Tensor) -> torch.Tensor:
    """network(*inputs) on its own device, in eval mode, adding each attention layer's weights to `into`."""
    import torch

    from .layers import PooledSelfAttention, recording_attention
    from .sampling import evaluation_mode

    def record(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, _v: torch.Tensor, grid: tuple[int, int],
               key_grid: tuple[int, int]) -> None:
        # Unscaled softmax over the keys, as _attention computes it (in float32 under any autocast).
        weights = torch.softmax(q[0].float() @ k[0].float().T, dim=-1)  # (N, Nk)
        form = "pooled" if isinstance(layer, PooledSelfAttention) else "seed"
        into.append(LayerAttention(f"{prefix}.attn{grid[0]}", form, grid, key_grid, weights.cpu().numpy()))

    device = next(network.parameters()).device
    with evaluation_mode(network), recording_attention(record):
        return network(*(tensor.to(device) for tensor in inputs))


def _real_image(path: Path, imsize: int, resize_mode: str) -> torch.Tensor:
    """A real image as D sees it in training: square by resize_mode (crop: the centred square), imsize x
    imsize, in [-1, 1], (1, 3, S, S)."""
    import torch

    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    if resize_mode == "crop":
        side = min(picture.size)
        left, top = (picture.width - side) // 2, (picture.height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
    array = np.asarray(picture.resize((imsize, imsize), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).div(127.5).sub(1)


# ---- storing a capture (numpy only)
# ------------------------------------------------------------------------------


def to_npz(captured: AttentionCapture) -> bytes:
    """The capture as an .npz: the image, each layer's weights (float16: a row sums to 1 within 1e-3, and a
    64x64 seed-form layer takes 32 MB instead of 64) and a JSON description of the layers."""
    meta = {"label": captured.label,
            "layers": [{"name": layer.name, "form": layer.form, "grid": layer.grid,
                        "key_grid": layer.key_grid}
                       for layer in captured.layers]}
    arrays = {f"weights{i}": layer.weights.astype(np.float16) for i, layer in enumerate(captured.layers)}
    buffer = io.BytesIO()
    # numpy's stub lets **arrays fill the bool allow_pickle, hence the ignore
    np.savez_compressed(buffer, image=captured.image, meta=np.array(json.dumps(meta)),
                        **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def from_npz(data: bytes) -> AttentionCapture:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        meta = json.loads(str(arrays["meta"]))
        layers = tuple(LayerAttention(item["name"], item["form"], tuple(item["grid"]),
                                      tuple(item["key_grid"]),
                                      arrays[f"weights{i}"]) for i, item in enumerate(meta["layers"]))
        return AttentionCapture(image=arrays["image"], layers=layers, label=meta["label"])


# ---- the maps as data and as a figure (numpy, PIL)
# -----------------------------------------------------------


def maps_json(captured: AttentionCapture, queries: list[tuple[int, int]],
              layer: str | None = None) -> dict[str, Any]:
    """The raw maps: for each query, each layer's weights over its key grid (rows of the key grid)."""
    chosen = captured.select(layer)
    return {"imsize": captured.imsize, "label": captured.label,
            "upsampling": "nearest: each key's weight covers the image pixels of its feature cell "
                          "(pooled form: of its 2x2 block of cells)",
            "queries": [{"y": y, "x": x, "layers": [
                {"name": item.name, "form": item.form, "grid": list(item.grid),
                 "key_grid": list(item.key_grid),
                 "weights": item.query_map(y, x, captured.imsize).round(6).tolist()} for item in chosen]}
                for y, x in queries]}


def render_png(captured: AttentionCapture, queries: list[tuple[int, int]], layer: str | None = None) -> bytes:
    """The figure: one row per query, the image with the query marked, then each layer's map over the image
    (colour scaled to that map's largest weight, printed under it)."""
    chosen = captured.select(layer)
    scale = max(1, PANEL_PX // captured.imsize)
    side = captured.imsize * scale
    cell_h = side + CAPTION_PX
    figure = Image.new("RGB", (side * (1 + len(chosen)) + 4 * len(chosen), cell_h * len(queries)), "white")
    draw = ImageDraw.Draw(figure)
    base = np.kron(captured.image, np.ones((scale, scale, 1), dtype=np.uint8))
    for row, (y, x) in enumerate(queries):
        top = row * cell_h
        marked = Image.fromarray(base)
        _mark(ImageDraw.Draw(marked), y * scale + scale // 2, x * scale + scale // 2)
        figure.paste(marked, (0, top))
        draw.text((2, top + side + 1), f"query ({y}, {x})", fill="black")
        for column, item in enumerate(chosen, start=1):
            weights = item.query_map(y, x, captured.imsize)
            overlay = Image.fromarray(_overlay(base, _upsample(weights, side)))
            _mark(ImageDraw.Draw(overlay), y * scale + scale // 2, x * scale + scale // 2)
            left = column * (side + 4)
            figure.paste(overlay, (left, top))
            draw.text((left + 2, top + side + 1), f"{item.name} max {weights.max():.3f}", fill="black")
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    return buffer.getvalue()


def _upsample(weights: np.ndarray, side: int) -> np.ndarray:
    """Nearest neighbour to (side, side): each key's weight over the pixels its cell (or pooled block)
    covers."""
    kh, kw = weights.shape
    rows = np.arange(side) * kh // side
    cols = np.arange(side) * kw // side
    return weights[rows][:, cols]


def _overlay(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The heat map of weights (scaled to their maximum) over a dimmed grey copy of the image."""
    level = weights / max(float(weights.max()), 1e-12) * (len(_HEAT) - 1)
    low = np.clip(np.floor(level).astype(int), 0, len(_HEAT) - 2)
    heat = _HEAT[low] + (level - low)[..., None] * (_HEAT[low + 1] - _HEAT[low])
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    return (0.35 * grey + 0.65 * heat).clip(0, 255).astype(np.uint8)


def _mark(draw: ImageDraw.ImageDraw, y: int, x: int) -> None:
    """A cross at the query: black under white, visible on any colour."""
    for colour, width in (("black", 3), ("white", 1)):
        draw.line([(x - 5, y), (x + 5, y)], fill=colour, width=width)
        draw.line([(x, y - 5), (x, y + 5)], fill=colour, width=width)
