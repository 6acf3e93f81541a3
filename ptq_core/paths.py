"""Where a shared server may read user-named files, and how big they may be.

One dashboard serves a whole workshop room, so a path typed into it (a model file, an image
folder) must not reach the rest of the server's disk, and an upload must not fill it. This
module holds those checks as plain functions; the dashboard calls them before it builds a
model or data-set spec. The CLI is run by the machine's own user and takes any path, so the
engine's loaders (``ptq_core.models``, ``ptq_core.data``) do not call them.

Settings, read from the environment on every call (so tests and operators can change them):

    PTQ_DATA_ROOTS      folders user paths must lie under, separated by ``os.pathsep``
                        (default: the repository's ``assets/`` and the current directory)
    PTQ_MAX_MODEL_MB    largest model file accepted, in MiB (default 500)
    PTQ_MAX_UPLOAD_MB   largest upload accepted, in MiB (default 500)
    PTQ_MAX_ZIP_MB      most bytes an uploaded zip may expand to, in MiB (default 1024)
    PTQ_MAX_ZIP_FILES   most entries an uploaded zip may hold (default 10000)
    PTQ_UPLOAD_QUOTA_MB most the dashboard's upload folder may hold, in MiB (default 4096); least
                        recently uploaded first out when a new upload needs the room
    PTQ_UPLOAD_MAX_AGE_H uploads not uploaded again for this many hours are removed (default 24)

The dashboard's Streamlit upload limit (``server.maxUploadSize`` in the repository's
``.streamlit/config.toml``, in MiB) is set to the default ``PTQ_MAX_MODEL_MB``; the uploaders
also carry these limits themselves, so a browser refuses a too-large file before sending it.

Example::

    folder = check_user_path("assets/my_images")          # Path, resolved, inside a root
    check_upload_size(len(data), max_upload_bytes())       # DataError when too large
    images = safe_extract_zip(data, tmp / "upload", max_bytes=max_zip_bytes(), max_files=max_zip_files())
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import DataError

__all__ = [
    "DATA_ROOTS_ENV",
    "check_upload_size",
    "check_user_path",
    "configured_data_roots",
    "max_model_bytes",
    "max_upload_bytes",
    "max_zip_bytes",
    "max_zip_files",
    "safe_extract_zip",
    "upload_max_age_s",
    "upload_quota_bytes",
]

log = logging.getLogger(__name__)

DATA_ROOTS_ENV = "PTQ_DATA_ROOTS"
MAX_MODEL_MB_ENV = "PTQ_MAX_MODEL_MB"
MAX_UPLOAD_MB_ENV = "PTQ_MAX_UPLOAD_MB"
MAX_ZIP_MB_ENV = "PTQ_MAX_ZIP_MB"
MAX_ZIP_FILES_ENV = "PTQ_MAX_ZIP_FILES"
UPLOAD_QUOTA_MB_ENV = "PTQ_UPLOAD_QUOTA_MB"
UPLOAD_MAX_AGE_H_ENV = "PTQ_UPLOAD_MAX_AGE_H"

# EfficientNet-B7 in FP32 is 270 MB and ResNet-152 230 MB: 500 MiB admits every torchvision
# classifier while keeping one upload from filling a small server's memory.
DEFAULT_MAX_MODEL_MB = 500
DEFAULT_MAX_UPLOAD_MB = 500
# 1 GiB expanded holds ~50k ImageNet-sized JPEGs; 10k entries is far more than a calibration set needs.
DEFAULT_MAX_ZIP_MB = 1024
DEFAULT_MAX_ZIP_FILES = 10_000
# A room of thirty uploading a ~20 MB model and a ~100 MB zip each is ~3.6 GB; 4 GiB keeps that and
# no more on a small server's disk. A workshop is a day: uploads not repeated for a day go.
DEFAULT_UPLOAD_QUOTA_MB = 4096
DEFAULT_UPLOAD_MAX_AGE_H = 24
_MIB = 1024 * 1024
_COPY_CHUNK_BYTES = 1 << 20
_REPO_ROOT = Path(__file__).resolve().parents[1]


def _env_number(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DataError(f"environment variable {name}={raw!r}; allowed: a positive integer") from None
    if value < 1:
        raise DataError(f"environment variable {name}={raw!r}; allowed: a positive integer")
    return value


def max_model_bytes() -> int:
    """Largest model file accepted (``PTQ_MAX_MODEL_MB``, default 500 MiB), in bytes."""
    return _env_number(MAX_MODEL_MB_ENV, DEFAULT_MAX_MODEL_MB) * _MIB


def max_upload_bytes() -> int:
    """Largest upload accepted (``PTQ_MAX_UPLOAD_MB``, default 500 MiB), in bytes."""
    return _env_number(MAX_UPLOAD_MB_ENV, DEFAULT_MAX_UPLOAD_MB) * _MIB


def max_zip_bytes() -> int:
    """Most bytes an uploaded zip may expand to (``PTQ_MAX_ZIP_MB``, default 1 GiB)."""
    return _env_number(MAX_ZIP_MB_ENV, DEFAULT_MAX_ZIP_MB) * _MIB


def max_zip_files() -> int:
    """Most entries an uploaded zip may hold (``PTQ_MAX_ZIP_FILES``, default 10000)."""
    return _env_number(MAX_ZIP_FILES_ENV, DEFAULT_MAX_ZIP_FILES)


def upload_quota_bytes() -> int:
    """Most bytes the upload folder may hold (``PTQ_UPLOAD_QUOTA_MB``, default 4 GiB)."""
    return _env_number(UPLOAD_QUOTA_MB_ENV, DEFAULT_UPLOAD_QUOTA_MB) * _MIB


def upload_max_age_s() -> int:
    """Seconds after its last upload an uploaded file is removed (``PTQ_UPLOAD_MAX_AGE_H``, default 24 h)."""
    return _env_number(UPLOAD_MAX_AGE_H_ENV, DEFAULT_UPLOAD_MAX_AGE_H) * 3600


def configured_data_roots() -> list[Path]:
    """The folders user paths must lie under, resolved (symlinks followed), without duplicates.

    ``PTQ_DATA_ROOTS`` (``os.pathsep``-separated) replaces the default of the repository's
    ``assets/`` folder and the current working directory. Roots that do not exist are dropped
    (nothing can lie under them), with a log line.
    """
    raw = os.environ.get(DATA_ROOTS_ENV)
    candidates = (
        [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
        if raw is not None and raw.strip()
        else [_REPO_ROOT / "assets", Path.cwd()]
    )
    roots: list[Path] = []
    for candidate in candidates:
        resolved = candidate.resolve()
        if not resolved.is_dir():
            log.info("data root %s does not exist or is not a folder; ignored", candidate)
            continue
        if resolved not in roots:
            roots.append(resolved)
    return roots


def check_user_path(path: str | os.PathLike[str], *, roots: list[Path] | None = None) -> Path:
    """``path`` resolved (symlinks followed, ``..`` collapsed), if it exists under one of ``roots``.

    ``roots`` defaults to :func:`configured_data_roots`. A relative path is taken relative to the
    current directory. ``roots/../etc/passwd``, an absolute path elsewhere and a symlink inside a
    root pointing outside all raise, because the check is made on the resolved path.

    Raises:
        DataError: the path is empty, holds a NUL byte, does not exist, or lies outside every root.
    """
    text = os.fspath(path)
    if not text.strip():
        raise DataError("path: got an empty path; allowed: a file or folder under the data roots")
    if "\0" in text:
        raise DataError(f"path: got {text!r} with a NUL byte; allowed: a file or folder under the data roots")
    allowed = [r.resolve() for r in roots] if roots is not None else configured_data_roots()
    listing = ", ".join(str(r) for r in allowed) or "none configured"
    candidate = Path(text).expanduser()
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise DataError(f"path: {text!r} does not exist; allowed: a file or folder under {listing}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise DataError(
            f"path: {text!r} cannot be resolved ({exc}); allowed: a file or folder under {listing}"
        ) from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        raise DataError(
            f"path: {text!r} (resolves to {str(resolved)!r}) is outside the data roots; allowed: a file or folder "
            f"under {listing} (the server's operator sets them with {DATA_ROOTS_ENV})"
        )
    return resolved


def check_upload_size(n_bytes: int, limit: int | None = None, *, what: str = "upload") -> None:
    """Raise DataError when ``n_bytes`` exceeds ``limit`` (default :func:`max_upload_bytes`)."""
    cap = max_upload_bytes() if limit is None else limit
    if n_bytes > cap:
        raise DataError(
            f"{what}: {n_bytes / _MIB:.1f} MiB is larger than the limit of {cap / _MIB:.1f} MiB; "
            f"allowed: files up to {cap / _MIB:.1f} MiB (the server's operator sets {MAX_UPLOAD_MB_ENV} / {MAX_MODEL_MB_ENV})"
        )


def _member_target(info: zipfile.ZipInfo, dest: Path) -> Path | None:
    """Where a zip entry goes inside ``dest``; None for entries skipped on purpose (macOS metadata)."""
    name = info.filename
    if "\0" in name or "\\" in name:
        raise DataError(f"zip entry {name!r}: backslashes and NUL bytes are not allowed in entry names")
    pure = PurePosixPath(name)
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        raise DataError(f"zip entry {name!r}: absolute paths are not allowed; allowed: paths relative to the zip root")
    if any(part == ".." for part in pure.parts):
        raise DataError(f"zip entry {name!r}: '..' is not allowed; every entry must stay inside the extracted folder")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DataError(f"zip entry {name!r} is a symbolic link; allowed: plain files and folders")
    if pure.parts and pure.parts[0] == "__MACOSX":
        return None
    target = (dest / Path(*pure.parts)).resolve() if pure.parts else dest
    if not target.is_relative_to(dest):
        raise DataError(f"zip entry {name!r} would be written outside the extracted folder")
    return target


def safe_extract_zip(
    data: bytes | BinaryIO, dest_dir: str | os.PathLike[str], *, max_bytes: int, max_files: int
) -> Path:
    """Extract a zip (bytes or a binary file object) into ``dest_dir`` and return it, resolved.

    Refused, with nothing left behind: a corrupt zip; more than ``max_files`` entries; more than
    ``max_bytes`` once expanded (counted while writing, so a forged size header does not help);
    absolute entry names, ``..`` components, backslashes or symbolic links. ``__MACOSX/`` metadata
    is skipped. ``dest_dir`` must not exist or be an empty folder.

    Raises:
        DataError: for any of the refusals above.
    """
    dest = Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"zip destination {str(dest)!r} exists and is not an empty folder")
    stream: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"upload is not a readable zip file ({exc}); allowed: a .zip of images") from None
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with archive:
            infos = archive.infolist()
            if len(infos) > max_files:
                raise DataError(f"zip: {len(infos)} entries; allowed: at most {max_files}")
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise DataError(
                    f"zip: expands to {declared / _MIB:.1f} MiB; allowed: at most {max_bytes / _MIB:.1f} MiB"
                )
            targets = [(info, _member_target(info, root)) for info in infos]  # check every name before writing
            written = 0
            for info, target in targets:
                if target is None:
                    continue
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_COPY_CHUNK_BYTES):
                        written += len(chunk)
                        if written > max_bytes:
                            raise DataError(
                                f"zip: expands to more than {max_bytes / _MIB:.1f} MiB; allowed: at most that"
                            )
                        out.write(chunk)
    except DataError:
        _remove(root, created)
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        _remove(root, created)
        raise DataError(f"zip: cannot be extracted ({type(exc).__name__}: {exc})") from None
    return root


def _remove(root: Path, created: bool) -> None:
    """Undo a failed extraction: the folder if we created it, else only its contents."""
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
