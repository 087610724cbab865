"""Random draws as functions of integers (seed, step, slot, index): the same on every rank, after a resume
and for any batch size, because nothing depends on a generator's position in a stream."""

from __future__ import annotations

import torch


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of ints (tuple hashes of ints are stable across runs)."""
    return torch.Generator().manual_seed(hash(parts) & 0x7FFF_FFFF_FFFF_FFFF)
