"""Random draws as functions of integers (seed, step, slot, index): the same on every rank, after a resume
and for any batch size, because nothing depends on a generator's position in a stream.

Every draw names its Stream, so no two kinds of draw can share one: a generator's seed is a BLAKE2b hash of
(stream, seed, indices) packed as 64-bit words, so different streams, orders or numbers of indices are
different inputs (the tuple hash used before made hash(-1) == hash(-2), and two streams one). It costs about
4 us a draw (numpy's SeedSequence with a spawn key, the other collision-free choice, costs about 18 us).
"""

from __future__ import annotations

import hashlib
import struct
from enum import IntEnum

import torch


class Stream(IntEnum):
    """Every kind of seeded draw; each value is used by one kind only (never reuse or renumber one: that
    changes the draws of every run)."""

    EPOCH_ORDER = 0  # the trainer's data order of epoch e (and the real grid's, epoch 0): (seed, epoch)
    TRAIN_NOISE = 1  # the trainer's z: (seed, step, slot)
    TRAIN_LABELS = 2  # the trainer's generated classes: (seed, step, slot)
    PENALTY = 3  # the gradient penalty's interpolation weights: (seed, step, slot)
    EVAL_NOISE = 4  # evaluation z: (seed, block)
    EVAL_LABELS = 5  # evaluation classes: (seed, block)
    REAL_ORDER = 6  # the evaluation's real images: (seed,)
    SWD_PATCHES = 7  # SWD patch positions: (seed, level size, image index)
    SWD_DIRECTIONS = 8  # SWD projection directions: (seed, level size, repeat)
    HELD_OUT_NOISE = 9  # a held-out evaluation's z (`sagan eval`): (seed, block)
    HELD_OUT_LABELS = 10  # a held-out evaluation's classes: (seed, block)
    STANDING_STATISTICS = 11  # standing statistics' z and classes, one generator for all K batches: (seed,)
    DIFFAUG = 12  # DiffAugment's parameters of D's real or generated batch: (seed, step, slot, side)
    TRAIN_SUBSET = 13  # which images train_images keeps: (0,), the same for every seed


def seeded(stream: Stream, seed: int, *indices: int) -> torch.Generator:
    """A CPU generator for draw `indices` of `stream` under `seed` (each in [0, 2**64))."""
    try:
        key = struct.pack(f"<{len(indices) + 2}Q", stream, seed, *indices)
    except struct.error as error:
        raise ValueError(f"seeded: seed and indices must be in [0, 2**64): {(seed, *indices)}") from error
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)
