"""Dataset spec strings, parsed without torch: the API checks submitted specs with this alone.

Specs: `synthetic` | `synthetic:N` | `folder:PATH` | `lsun:PATH:CLASS` | `cifar10:PATH` (see data.py).
"""

from __future__ import annotations

import os

KINDS = ("synthetic", "folder", "lsun", "cifar10")
SPEC_FORMS = "synthetic, synthetic:N, folder:PATH, lsun:PATH:CLASS, cifar10:PATH"
DEFAULT_SYNTHETIC_SIZE = 10_000


class DatasetError(ValueError):
    """A dataset spec, path or file is unusable; the message names the offending spec, path or file."""


def dataset_paths(spec: str) -> list[str]:
    """The filesystem paths a spec reads from, as written in the spec (the API checks them against its
    allowed data roots). LSUN classes may not contain a path separator, so PATH covers PATH/CLASS_lmdb."""
    kind, arg = parse_spec(spec)
    if kind == "synthetic":
        synthetic_size(spec, arg)
        return []
    if kind == "lsun":
        return [split_lsun(spec, arg)[0]]
    return [arg]


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, argument); the argument is '' only for plain `synthetic`."""
    kind, sep, arg = spec.partition(":")
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r} in spec {spec!r}; valid kinds: {', '.join(KINDS)} "
                           f"(forms: {SPEC_FORMS})")
    if (sep or kind != "synthetic") and not arg:
        raise _malformed(spec)
    return kind, arg


def _malformed(spec: str) -> DatasetError:
    return DatasetError(f"malformed dataset spec {spec!r}; expected one of: {SPEC_FORMS}")


def synthetic_size(spec: str, arg: str) -> int:
    if not arg:
        return DEFAULT_SYNTHETIC_SIZE
    if not arg.isdigit() or int(arg) < 1:
        raise DatasetError(f"malformed dataset spec {spec!r}: synthetic:N needs an integer N >= 1")
    return int(arg)


def split_lsun(spec: str, arg: str) -> tuple[str, str]:
    # Split on the last colon so PATH may contain colons; CLASS must be a plain name so that
    # PATH/CLASS_lmdb cannot escape PATH (dataset_paths relies on that).
    root, _, category = arg.rpartition(":")
    if not root or not category or "/" in category or os.sep in category:
        raise DatasetError(f"malformed dataset spec {spec!r}: expected lsun:PATH:CLASS, "
                           "e.g. lsun:/data/lsun:church_outdoor_train")
    return root, category
