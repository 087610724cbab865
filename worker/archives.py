"""Unpacking an uploaded archive (zip, tar, tar.gz) without trusting it.

Refused, with an ArchiveError that names the entry: a name that is absolute or climbs out (`..`), a link
(symbolic or hard), a device, FIFO or other special file, more than `max_files` entries, more than
`max_bytes` unpacked in all, or more than `max_ratio` bytes unpacked per byte of the archive (a zip bomb;
counted on the bytes really written, not on what the headers claim). Nothing is ever written outside
`dest`: every path is checked after normalising, and files are created with O_EXCL | O_NOFOLLOW.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The archive is unreadable or breaks a rule; the message names the entry."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int
    max_ratio: float


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str  # "file" | "dir" | what else it is (refused)
    open: AbstractContextManager[IO[bytes]] | None = None


def extract(archive: Path, dest: Path, limits: Limits) -> list[Path]:
    """Unpack `archive` (zip or tar, gzip/bz2/xz compressed or not, told by its content) into `dest` (created,
    must be empty); return the files written. ArchiveError on a refused or unreadable archive."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    budget = min(limits.max_bytes, int(limits.max_ratio * max(archive.stat().st_size, 1)))
    written: list[Path] = []
    total = 0
    for count, entry in enumerate(_entries(archive), start=1):
        if count > limits.max_files:
            raise ArchiveError(f"more than {limits.max_files} entries (SAGAN_MAX_DATASET_FILES) at "
                               f"{entry.name!r}")
        target = root / safe_relative(entry.name)
        # a directory made earlier cannot be a link: none is made
        if not target.resolve().is_relative_to(root):
            raise ArchiveError(f"entry {entry.name!r} would be written outside the data set's folder")
        if entry.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            continue
        if entry.kind != "file":
            raise ArchiveError(f"entry {entry.name!r} is a {entry.kind}: only plain files and folders are "
                               "accepted")
        target.parent.mkdir(parents=True, exist_ok=True)
        assert entry.open is not None
        with entry.open as source, _create(target, entry.name) as out:
            while chunk := _read(source, entry.name):
                total += len(chunk)
                if total > budget:
                    raise ArchiveError(_over_budget(entry.name, limits, total, archive.stat().st_size))
                out.write(chunk)
        written.append(target)
    return written


def safe_relative(name: str) -> PurePosixPath:
    """An entry's path relative to the extraction folder, or ArchiveError for an absolute or climbing one."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or "\0" in posix:
        raise ArchiveError(f"entry {name!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"entry {name!r} climbs out of the archive's folder (..)")
    parts = [part for part in path.parts if part not in ("", ".")]
    if not parts:
        raise ArchiveError(f"entry {name!r} has no name")
    return PurePosixPath(*parts)


def _over_budget(name: str, limits: Limits, total: int, archive_bytes: int) -> str:
    if total > limits.max_bytes:
        return (f"unpacked size passes the limit of {limits.max_bytes} bytes (SAGAN_MAX_DATASET_GB) at entry "
                f"{name!r}")
    return (f"entry {name!r}: the archive unpacks to more than {limits.max_ratio:g} times its "
            f"{archive_bytes} bytes (SAGAN_MAX_COMPRESSION_RATIO): refused as a possible zip bomb")


def _read(source: IO[bytes], name: str) -> bytes:
    try:
        return source.read(CHUNK)
    except (zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"entry {name!r} is corrupt: {error}") from None


def _create(target: Path, name: str) -> IO[bytes]:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise ArchiveError(f"entry {name!r} appears twice in the archive") from None
    return os.fdopen(fd, "wb")


def _entries(archive: Path) -> Iterator[_Entry]:
    if zipfile.is_zipfile(archive):
        yield from _zip_entries(archive)
        return
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError:
        is_tar = False
    if not is_tar:
        raise ArchiveError("the upload is not a readable zip or tar archive")
    yield from _tar_entries(archive)


def _zip_entries(archive: Path) -> Iterator[_Entry]:
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                mode = info.external_attr >> 16
                if info.is_dir():
                    kind = "dir"
                elif stat.S_ISLNK(mode):
                    kind = "symbolic link"
                elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    kind = "special file"
                else:
                    kind = "file"
                yield _Entry(info.filename, kind, zipped.open(info) if kind == "file" else None)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as error:
        raise ArchiveError(f"the zip archive is corrupt or unreadable: {error}") from None


def _tar_entries(archive: Path) -> Iterator[_Entry]:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                if member.isdir():
                    kind = "dir"
                elif member.issym():
                    kind = "symbolic link"
                elif member.islnk():
                    kind = "hard link"
                elif member.isreg():
                    kind = "file"
                else:
                    kind = "device or special file"
                opened = tar.extractfile(member) if kind == "file" else None
                yield _Entry(member.name, kind, opened)
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise ArchiveError(f"the tar archive is corrupt or unreadable: {error}") from None
