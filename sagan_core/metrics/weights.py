"""Where the Inception weights come from, and the check that they are the right file (standard library only,
so the service's worker can key cached statistics by them without loading torch).

FID, KID, IS and precision/recall use the TensorFlow FID network (`pt_inception-2015-12-05-6726825d.pth`,
converted by pytorch-fid; torch-fidelity ships the identical file as
`weights-inception-2015-12-05-6726825d.pth`). Nothing here downloads it: its path comes from
`--inception-weights` or `SAGAN_INCEPTION_WEIGHTS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..files import file_sha256

ENV_VAR = "SAGAN_INCEPTION_WEIGHTS"
FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
SIZE = 95_628_359
SOURCE_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FILE_NAME
# The same architecture with random weights: for tests and timing only; its numbers mean nothing.
RANDOM = "random"


class InceptionWeightsError(ValueError):
    """The weights file is not configured, missing or not the expected file; the message says what to do."""


@dataclass(frozen=True, slots=True)
class InceptionWeights:
    """A checked weights file (path None: the random-initialised network)."""

    path: Path | None
    sha256: str | None

    @property
    def backbone(self) -> str:
        """The backbone's name as results and cached statistics record it."""
        return "inception-v3-random-init" if self.path is None else "inception-v3-tf-2015-12-05"


def resolve_inception_weights(path: str | os.PathLike[str] | None = None) -> InceptionWeights:
    """The weights at `path`, else at $SAGAN_INCEPTION_WEIGHTS, checked by sha256; `random` for random
    init."""
    chosen = str(path) if path is not None else os.environ.get(ENV_VAR, "")
    if chosen == RANDOM:
        return InceptionWeights(None, None)
    if not chosen:
        raise InceptionWeightsError(_help("no Inception weights file is configured"))
    file = Path(chosen).expanduser()
    if not file.is_file():
        raise InceptionWeightsError(_help(f"Inception weights file not found: {file}"))
    digest = file_sha256(file)
    if digest != SHA256:
        raise InceptionWeightsError(_help(f"{file} is not the FID Inception weights file: its sha256 is "
                                          f"{digest}"))
    return InceptionWeights(file.resolve(), digest)


def _help(problem: str) -> str:
    return (f"{problem}. FID, KID, IS and precision/recall need {FILE_NAME} ({SIZE:,} bytes, sha256 "
            f"{SHA256}; published at {SOURCE_URL}): put it on this machine and pass --inception-weights PATH "
            f"or set {ENV_VAR}=PATH (the SWD metric needs no weights)")
