"""ptq_core.paths: data roots, user paths, upload sizes and zip extraction, attacked on purpose."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from ptq_core.errors import DataError
from ptq_core.paths import (
    DATA_ROOTS_ENV,
    check_upload_size,
    check_user_path,
    configured_data_roots,
    max_model_bytes,
    max_upload_bytes,
    safe_extract_zip,
)

MIB = 1024 * 1024


def _zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("outside")
    return folder


def test_path_inside_a_root_is_returned_resolved(root: Path) -> None:
    assert check_user_path(root / "images" / "a.png", roots=[root]) == (root / "images" / "a.png").resolve()
    assert check_user_path(str(root / "images" / ".." / "images"), roots=[root]) == (root / "images").resolve()
    assert check_user_path(root, roots=[root]) == root.resolve()


@pytest.mark.parametrize("relative", ["../secret.txt", "images/../../secret.txt"])
def test_dotdot_out_of_a_root_is_refused(root: Path, relative: str) -> None:
    with pytest.raises(DataError, match="outside the data roots"):
        check_user_path(root / relative, roots=[root])


def test_absolute_path_elsewhere_is_refused(root: Path) -> None:
    with pytest.raises(DataError, match=r"'/etc/passwd'.*outside the data roots.*PTQ_DATA_ROOTS"):
        check_user_path("/etc/passwd", roots=[root])


def test_symlink_inside_a_root_pointing_outside_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "escape_dir").symlink_to(tmp_path)
    with pytest.raises(DataError, match="outside the data roots"):
        check_user_path(root / "escape", roots=[root])
    with pytest.raises(DataError, match="outside the data roots"):
        check_user_path(root / "escape_dir" / "secret.txt", roots=[root])


def test_symlink_staying_inside_is_accepted(root: Path) -> None:
    (root / "alias").symlink_to(root / "images")
    assert check_user_path(root / "alias", roots=[root]) == (root / "images").resolve()


@pytest.mark.parametrize(("path", "message"), [("", "empty path"), ("a\0b", "NUL byte"), ("nope", "does not exist")])
def test_bad_path_strings(root: Path, path: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_user_path(root / path if path == "nope" else path, roots=[root])


def test_roots_come_from_the_environment(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(DATA_ROOTS_ENV, os.pathsep.join([str(root), str(other), str(tmp_path / "missing")]))
    assert configured_data_roots() == [root.resolve(), other.resolve()]
    assert check_user_path(root / "images") == (root / "images").resolve()
    with pytest.raises(DataError, match="outside the data roots"):
        check_user_path(tmp_path / "secret.txt")


def test_default_roots_are_assets_and_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ROOTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    roots = configured_data_roots()
    assert tmp_path.resolve() in roots
    assert any(r.name == "assets" for r in roots)


def test_upload_and_model_size_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTQ_MAX_MODEL_MB", raising=False)
    monkeypatch.setenv("PTQ_MAX_UPLOAD_MB", "2")
    assert max_model_bytes() == 500 * MIB and max_upload_bytes() == 2 * MIB
    check_upload_size(2 * MIB)
    with pytest.raises(DataError, match=r"upload: 2\.0 MiB is larger than the limit of 2\.0 MiB"):
        check_upload_size(2 * MIB + 1)
    with pytest.raises(DataError, match="model file"):
        check_upload_size(11, 10, what="model file")
    monkeypatch.setenv("PTQ_MAX_MODEL_MB", "lots")
    with pytest.raises(DataError, match="PTQ_MAX_MODEL_MB='lots'"):
        max_model_bytes()


def test_zip_extracts_nested_files(tmp_path: Path) -> None:
    data = _zip({"cats/a.png": b"1", "dogs/b.png": b"22", "__MACOSX/._a.png": b"junk", "empty/": b""})
    out = safe_extract_zip(data, tmp_path / "up", max_bytes=100, max_files=10)
    assert out == (tmp_path / "up").resolve()
    assert (out / "cats" / "a.png").read_bytes() == b"1" and (out / "dogs" / "b.png").read_bytes() == b"22"
    assert not (out / "__MACOSX").exists() and (out / "empty").is_dir()


def test_zip_from_a_file_object(tmp_path: Path) -> None:
    out = safe_extract_zip(io.BytesIO(_zip({"a.png": b"1"})), tmp_path / "up", max_bytes=10, max_files=10)
    assert (out / "a.png").is_file()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"../evil.txt": b"x"}, r"'\.\.' is not allowed"),
        ({"ok/../../evil.txt": b"x"}, r"'\.\.' is not allowed"),
        ({"/etc/evil.txt": b"x"}, "absolute paths are not allowed"),
        ({"C:/evil.txt": b"x"}, "absolute paths are not allowed"),
        ({"a\\..\\evil.txt": b"x"}, "backslashes"),
    ],
)
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path: Path, entries: dict[str, bytes], message: str) -> None:
    dest = tmp_path / "box" / "up"
    with pytest.raises(DataError, match=message):
        safe_extract_zip(_zip({"first.png": b"1", **entries}), dest, max_bytes=100, max_files=10)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "box" / "evil.txt").exists()


def test_zip_symlink_entry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract_zip(
            _zip({"a.png": b"1"}, symlinks={"link": "/etc/passwd"}), tmp_path / "up", max_bytes=100, max_files=10
        )
    assert not (tmp_path / "up").exists()


def test_zip_with_too_many_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="6 entries; allowed: at most 5"):
        safe_extract_zip(_zip({f"{i}.png": b"1" for i in range(6)}), tmp_path / "up", max_bytes=100, max_files=5)


def test_zip_too_large_once_expanded_is_refused(tmp_path: Path) -> None:
    bomb = _zip({"zeros.bin": bytes(10_000)})  # compresses to a few dozen bytes
    assert len(bomb) < 1000
    with pytest.raises(DataError, match="expands to"):
        safe_extract_zip(bomb, tmp_path / "up", max_bytes=5_000, max_files=10)
    assert not (tmp_path / "up").exists()


def test_zip_with_a_forged_size_header_is_stopped_while_writing(tmp_path: Path) -> None:
    data = bytearray(_zip({"big.bin": bytes(4_000)}))
    # Shrink the declared uncompressed size in the central directory (offset 24 of the entry).
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(DataError):
        safe_extract_zip(bytes(data), tmp_path / "up", max_bytes=1_000, max_files=10)
    assert not (tmp_path / "up").exists()


def test_not_a_zip_and_non_empty_destination(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a readable zip"):
        safe_extract_zip(b"not a zip", tmp_path / "up", max_bytes=100, max_files=10)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an empty folder"):
        safe_extract_zip(_zip({"a.png": b"1"}), busy, max_bytes=100, max_files=10)
    assert (busy / "keep.txt").read_text() == "mine"
