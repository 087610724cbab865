"""A worker's local copies of packed data sets (sagan_core.packed) fetched from a store, shared by every
job and rank on the machine.

Layout under the cache root (SAGAN_DATA_CACHE_DIR, default SAGAN_HOME/data-cache):
    <key>/index.json, <key>/shard-00000.npy, ...   one packed set, <key> from the store prefix and the set's
                                                    fingerprint; index.json is written last, so a set with an
                                                    index is complete
    <key>/.verified.json                            each file's size and mtime when its sha256 last matched
    .locks/<key>.fetch    held exclusively while one process downloads or repairs the set: two workers
                          asking for it at once download it once
    .locks/<key>.use      held shared by every job using the set (never evicted meanwhile); its mtime is
                          the set's last use, the order of eviction
    .locks/cache          held exclusively while one process evicts
Lock files are never deleted: a lock file removed while another process opens it would give two holders.

Every file arrives as `.NAME.part`, is checked against the index's sha256 and only then renamed to NAME,
so no reader sees a partial or unchecked file. A file that fails the check is fetched again (FETCH_TRIES
in all), then the fetch fails naming it. A file of a cached set whose size or mtime changed since its
check is checked again (and fetched again if it no longer matches); a file rewritten in place with its
old mtime is not seen. A store that cannot be reached is waited out as training's store outages are
(worker/outages.py).

Adding a set evicts the least recently used sets that no job holds until the cache fits
SAGAN_DATA_CACHE_GB with the new one; when the sets in use alone exceed it, the new one is added anyway
(with a warning) rather than failing the job. Two sets added at the same moment may overshoot the limit
by what they download.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from sagan_core.files import atomic_write, file_sha256
from sagan_core.packed import INDEX_FILE, index_files, packed_fingerprint, parse_index
from sagan_service.storage import ArtifactNotFound, ArtifactStore

from .outages import Outage, retry

log = logging.getLogger(__name__)
FETCH_TRIES = 3
VERIFIED = ".verified.json"
LOCKS = ".locks"


class DataCacheError(Exception):
    """A packed set could not be brought into the cache: not in the store, malformed, or a file whose stored
    bytes keep failing their sha256 check. The message names the set and the file."""


class DataCache:
    def __init__(self, root: Path, store: ArtifactStore, limit_bytes: int, outage: Outage,
                 wait: Callable[[float], object] = time.sleep) -> None:
        self.root, self.store, self.limit_bytes = root, store, limit_bytes
        self.outage, self.wait = outage, wait
        self.locks = root / LOCKS
        self.locks.mkdir(parents=True, exist_ok=True)

    def fetch(self, prefix: str) -> Path:
        """The directory of the packed set under `prefix` in the store, complete and checked. Nothing keeps
        it from being evicted afterwards: a job holds it with `use`."""
        with self.use(prefix) as directory:
            return directory

    @contextlib.contextmanager
    def use(self, prefix: str) -> Iterator[Path]:
        """Fetch the set (if the cache lacks it) and hold it in use, never evicted, until the block ends."""
        prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        index, index_bytes = self._index(prefix)
        key = hashlib.sha256(f"{prefix}\0{packed_fingerprint(index)}".encode()).hexdigest()[:32]
        in_use = self.locks / f"{key}.use"
        with _locked(in_use, fcntl.LOCK_SH):  # first: an evictor must not take the set between fetch and use
            os.utime(in_use)
            with _locked(self.locks / f"{key}.fetch", fcntl.LOCK_EX):
                directory = self._complete(key, prefix, index, index_bytes)
            try:
                yield directory
            finally:
                os.utime(in_use)

    def _where(self, prefix: str) -> str:
        return f"the packed data set at {prefix or '/'} in {self.store.describe()}"

    def _from_store(self, call: Callable[[], Any]) -> Any:
        return retry(call, self.outage, self.wait)

    def _index(self, prefix: str) -> tuple[dict, bytes]:
        """The set's index from the store, validated."""
        try:
            data = self._from_store(lambda: self.store.get_bytes(prefix + INDEX_FILE))
        except ArtifactNotFound:
            raise DataCacheError(f"{self._where(prefix)} does not exist (no {INDEX_FILE})") from None
        try:
            index = parse_index(data, prefix + INDEX_FILE)
        except ValueError as error:  # DatasetError
            raise DataCacheError(f"{self._where(prefix)}: {error}") from None
        for name, _, _ in index_files(index):
            # Names come from the store: a path in one must not write outside the set's directory.
            if name != Path(name).name or name.startswith(".") or name == INDEX_FILE:
                raise DataCacheError(f"{self._where(prefix)}: its index names a file {name!r}")
        return index, data

    def _complete(self, key: str, prefix: str, index: dict, index_bytes: bytes) -> Path:
        """Check what the cache holds of the set, fetch what is missing or wrong, then write its index."""
        directory = self.root / key
        directory.mkdir(exist_ok=True)
        verified = _read_json(directory / VERIFIED)
        missing = []
        for name, size, sha256 in index_files(index):
            path = directory / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                missing.append((name, size, sha256))
                continue
            if verified.get(name) == [stat.st_size, stat.st_mtime_ns]:
                continue
            if stat.st_size == size and file_sha256(path) == sha256:
                verified[name] = [stat.st_size, stat.st_mtime_ns]
                continue
            log.warning("%s: the cached %s does not match its sha256; fetching it again", self._where(prefix),
                        name)
            missing.append((name, size, sha256))
        if missing:
            # left by a fetch that died (this one holds the fetch lock)
            for stale in directory.glob(".*.part*"):
                stale.unlink(missing_ok=True)
            self._make_room(sum(size for _, size, _ in missing), keep=key)
            log.info("fetching %d files (%d bytes) of %s", len(missing), sum(s for _, s, _ in missing),
                     self._where(prefix))
        for name, size, sha256 in missing:
            stat = self._download(prefix, directory, name, size, sha256)
            verified[name] = [stat.st_size, stat.st_mtime_ns]
        data = json.dumps(verified).encode()
        atomic_write(directory / VERIFIED, lambda handle: handle.write(data))
        if not (directory / INDEX_FILE).exists():
            atomic_write(directory / INDEX_FILE, lambda handle: handle.write(index_bytes))
        return directory

    def _download(self, prefix: str, directory: Path, name: str, size: int, sha256: str) -> os.stat_result:
        """One file into `directory`, renamed into place once its sha256 matches; its stat."""
        part, path = directory / f".{name}.part", directory / name
        got = ""
        for attempt in range(1, FETCH_TRIES + 1):
            try:
                self._from_store(lambda: self.store.download(prefix + name, part))
            except ArtifactNotFound:
                raise DataCacheError(f"{self._where(prefix)}: its index lists {name}, which the store "
                                     "does not have") from None
            got = file_sha256(part)
            if got == sha256 and part.stat().st_size == size:
                os.replace(part, path)
                return path.stat()
            log.warning("%s: %s failed its sha256 check (try %d of %d)", self._where(prefix), name, attempt,
                        FETCH_TRIES)
        part.unlink(missing_ok=True)
        raise DataCacheError(f"{self._where(prefix)}: {name} failed its sha256 check {FETCH_TRIES} times "
                             f"(expected {sha256}, got {got}); the stored copy is damaged: pack the set "
                             "again")

    def _make_room(self, needed: int, *, keep: str) -> None:
        """Evict the least recently used sets no job holds until the cache fits the limit with `needed`
        more bytes; the set being completed (`keep`) stays."""
        with _locked(self.locks / "cache", fcntl.LOCK_EX):
            entries = sorted((self._last_use(key), key, _size(self.root / key)) for key in self._keys())
            total = sum(size for _, _, size in entries)
            for _, key, size in entries:
                if total + needed <= self.limit_bytes:
                    return
                if key != keep and self._evict(key):
                    total -= size
            if total + needed > self.limit_bytes:
                log.warning("the data cache %s holds %d bytes in use; adding %d more exceeds its limit of %d "
                            "bytes (SAGAN_DATA_CACHE_GB)", self.root, total, needed, self.limit_bytes)

    def _keys(self) -> list[str]:
        return [entry.name for entry in os.scandir(self.root) if entry.is_dir()
                and not entry.name.startswith(".")]

    def _last_use(self, key: str) -> float:
        try:
            return (self.locks / f"{key}.use").stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _evict(self, key: str) -> bool:
        """Remove a set unless a job uses it or a process fetches it; whether it was removed."""
        with (_try_locked(self.locks / f"{key}.use") as unused,
              _try_locked(self.locks / f"{key}.fetch") as idle):
            if not (unused and idle):
                return False
            directory = self.root / key
            # first: a set cut short is incomplete, not broken
            (directory / INDEX_FILE).unlink(missing_ok=True)
            shutil.rmtree(directory, ignore_errors=True)
            log.info("evicted the data set %s from the data cache", directory)
            return True


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[IO[bytes]]:
    with open(path, "ab") as handle:  # "a": created if need be, never truncated
        fcntl.flock(handle, mode)
        yield handle  # closing it releases the lock


@contextlib.contextmanager
def _try_locked(path: Path) -> Iterator[bool]:
    """An exclusive lock if it is free now: True while held, False if another holder has it."""
    with open(path, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True


def _size(directory: Path) -> int:
    try:
        return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())
    except FileNotFoundError:
        return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
