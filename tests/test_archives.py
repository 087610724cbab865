"""worker/archives.py: unpacking uploads without trusting them (no services)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from worker.archives import ArchiveError, Limits, extract, safe_relative

LIMITS = Limits(max_bytes=10 << 20, max_files=100, max_ratio=100)


def make_zip(path: Path, entries: dict[str, bytes], *, compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return path


def test_a_zip_with_class_folders_unpacks(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"cats/1.png": b"x" * 100, "dogs/2.png": b"y" * 50, "dogs/": b""})
    written = extract(archive, tmp_path / "out", LIMITS)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["cats/1.png", "dogs/2.png"]
    assert (tmp_path / "out/dogs/2.png").read_bytes() == b"y" * 50


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "/etc/x.png", "C:/x.png", "..\\x.png"])
def test_names_that_leave_the_folder_are_refused_by_name(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "a.zip", {"ok.png": b"1", name: b"2"})
    with pytest.raises(ArchiveError, match="x.png"):
        extract(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "x.png").exists()


def test_a_zip_symlink_entry_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="'link.png' is a symbolic link"):
        extract(archive, tmp_path / "out", LIMITS)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_tar_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("bad.png")
        info.type, info.linkname = kind, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="'bad.png' is a"):
        extract(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out" / "bad.png").exists()


def test_a_tar_unpacks(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("cls/a.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (written,) = extract(archive, tmp_path / "out", LIMITS)
    assert written.read_bytes() == b"abc"


def test_a_zip_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.png": bytes(5 << 20)}, compress=True)
    with pytest.raises(ArchiveError, match="zeros.png.*SAGAN_MAX_COMPRESSION_RATIO"):
        extract(archive, tmp_path / "out", LIMITS)


def test_total_size_and_file_count_limits(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {f"{i}.png": bytes(1000) for i in range(5)})
    with pytest.raises(ArchiveError, match="SAGAN_MAX_DATASET_GB"):
        extract(archive, tmp_path / "o1", Limits(max_bytes=2500, max_files=100, max_ratio=100))
    with pytest.raises(ArchiveError, match="SAGAN_MAX_DATASET_FILES"):
        extract(archive, tmp_path / "o2", Limits(max_bytes=10**9, max_files=3, max_ratio=100))


def test_corrupt_archives_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(ArchiveError, match="not a readable zip or tar"):
        extract(junk, tmp_path / "o1", LIMITS)
    good = make_zip(tmp_path / "a.zip", {"a.png": bytes(range(256)) * 400}, compress=True)
    data = bytearray(good.read_bytes())
    data[100:200] = bytes(100)  # inside the compressed data
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="a.png"):
        extract(damaged, tmp_path / "o2", LIMITS)


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("a.png", b"1")
        with pytest.warns(UserWarning):
            zipped.writestr("a.png", b"2")
    with pytest.raises(ArchiveError, match="appears twice"):
        extract(archive, tmp_path / "out", LIMITS)


def test_safe_relative_normalises() -> None:
    assert safe_relative("./a//b.png").as_posix() == "a/b.png"
