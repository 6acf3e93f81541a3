"""Where the dashboard may read user files from, and where it keeps what users upload.

The dashboard serves a whole workshop room, so a path typed into it must lie under the data
roots (:func:`ptq_core.paths.check_user_path`); the CLI takes any path, the dashboard does not.
Uploads are written to the server's own upload folder, which the dashboard's path check also
accepts (the server chose that path, the user did not type it):

    PTQ_UPLOAD_DIR   where uploads go (default: ``ptq_explorer_uploads`` in the system temp folder)

Files are named by the SHA-256 of their content: two sessions uploading the same file share
one copy, two different files never collide, and a config naming an upload keeps meaning the
same bytes. An uploaded zip of images is extracted once into ``images/<sha256>/``; uploading
it again reuses that folder. An uploaded text file (.txt/.csv, the text model's data) is kept as
``texts/<sha256><suffix>``: the suffix says how the engine reads it. Sizes are checked BEFORE
anything is written.

The folder is bounded (:func:`tidy`, after every upload): uploads not uploaded again for
``PTQ_UPLOAD_MAX_AGE_H`` hours are removed, and when the folder holds more than
``PTQ_UPLOAD_QUOTA_MB``, the least recently uploaded go first (an upload larger than the whole
quota is refused). A removed upload only stops configs that name its path from loading again;
a model or data set already loaded stays in memory.

Nothing here imports Streamlit: :mod:`dashboard.sources` draws the controls.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ptq_core.data.image_folder import IMAGE_EXTENSIONS, LABELS_FILE
from ptq_core.data.text import KIND as TEXT_KIND
from ptq_core.data.text import SUFFIXES as TEXT_SUFFIXES
from ptq_core.errors import DataError
from ptq_core.paths import (
    check_upload_size,
    check_user_path,
    configured_data_roots,
    max_model_bytes,
    max_upload_bytes,
    max_zip_bytes,
    max_zip_files,
    safe_extract_zip,
    upload_max_age_s,
    upload_quota_bytes,
)

log = logging.getLogger(__name__)

UPLOAD_DIR_ENV = "PTQ_UPLOAD_DIR"
DEFAULT_UPLOAD_DIR_NAME = "ptq_explorer_uploads"
MODEL_SUFFIXES = (".pt", ".pth", ".pt2")  # kept from the uploaded name (format is read from the content anyway)
KINDS = ("models", "images", "texts")  # the upload folder's sub-folders; each entry in them is one upload
_TIDY = threading.Lock()  # one session tidies at a time (uploads are rare; tidying is a directory walk)
_MIB = 1024 * 1024


def upload_dir() -> Path:
    """The server's upload folder (``PTQ_UPLOAD_DIR``), created (owner-only) on first use, resolved."""
    raw = os.environ.get(UPLOAD_DIR_ENV, "").strip()
    folder = Path(raw).expanduser() if raw else Path(tempfile.gettempdir()) / DEFAULT_UPLOAD_DIR_NAME
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder.resolve()


def allowed_roots() -> list[Path]:
    """What a path in the dashboard may lie under: the configured data roots and the upload folder."""
    roots = configured_data_roots()
    uploads = upload_dir()
    return roots if uploads in roots else [*roots, uploads]


def check_dashboard_path(path: str, *, what: str) -> Path:
    """``path`` resolved, if it lies under :func:`allowed_roots`; DataError naming ``what`` otherwise."""
    try:
        return check_user_path(path.strip(), roots=allowed_roots())
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None


def is_upload(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is in the server's upload folder (such a config reproduces only on this server)."""
    try:
        return Path(path).resolve().is_relative_to(upload_dir())
    except OSError:
        return False


def spec_paths(spec: str | dict[str, Any]) -> list[str]:
    """The file or folder paths a model or data-set spec names (none for registered names)."""
    if isinstance(spec, dict) and isinstance(spec.get("path"), str):
        return [spec["path"]]
    return []


def data_what(dataset: str | dict[str, Any]) -> str:
    """What a data-set spec's path is, in messages: ``"text file"`` or ``"image folder"``."""
    return "text file" if isinstance(dataset, dict) and dataset.get("kind") == TEXT_KIND else "image folder"


def check_spec_paths(model: str | dict[str, Any], dataset: str | dict[str, Any]) -> None:
    """Raise DataError unless every path the two specs name is one the dashboard may read."""
    for what, spec in (("model file", model), (data_what(dataset), dataset)):
        for path in spec_paths(spec):
            check_dashboard_path(path, what=what)


def uploads_in(model: str | dict[str, Any], dataset: str | dict[str, Any]) -> list[str]:
    """Which of the two specs (``"model"``, ``"data set"``) name a path in the upload folder."""
    return [what for what, spec in (("model", model), ("data set", dataset)) if any(map(is_upload, spec_paths(spec)))]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(data: bytes, target: Path) -> None:
    """``target`` holding ``data``, never seen half-written by another session (temp file + rename)."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _store_file(data: bytes, kind: str, suffix: str) -> tuple[Path, bool]:
    """Keep ``data`` as ``<kind>/<sha256><suffix>`` (sizes already checked); the path and whether this call wrote it."""
    folder = upload_dir() / kind
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / (_sha256(data) + suffix)
    if target.is_file() and target.stat().st_size == len(data):
        os.utime(target)  # uploaded again: last used now (the age-out and the quota count from here)
        tidy(keep=target)
        return target, False
    _write_atomically(data, target)
    tidy(keep=target)
    return target, True


def store_model_upload(data: bytes, filename: str) -> tuple[Path, bool]:
    """Size-check an uploaded model file, then keep it as ``models/<sha256><suffix>``.

    Returns the path and whether this call created it (the caller removes a file it created
    when loading it fails). Raises DataError, writing nothing, when it exceeds
    ``PTQ_MAX_MODEL_MB`` (or ``PTQ_MAX_UPLOAD_MB``).
    """
    limit = min(max_model_bytes(), max_upload_bytes())
    check_upload_size(len(data), limit, what=f"model upload {filename!r}")
    _check_quota(len(data), f"model upload {filename!r}")
    suffix = Path(filename).suffix.lower()
    return _store_file(data, "models", suffix if suffix in MODEL_SUFFIXES else ".pt")


def store_text_upload(data: bytes, filename: str) -> tuple[Path, bool]:
    """Size-check an uploaded text file (the text model's data), then keep it as ``texts/<sha256><suffix>``.

    The suffix (.txt: one text a line; .csv: text and label columns) is how the engine reads the
    file, so any other is refused before anything is written, as are files over
    ``PTQ_MAX_UPLOAD_MB`` or the quota. The content (UTF-8, a text column) is the engine's to
    check when the data set loads. Returns the path and whether this call created it.
    """
    what = f"text upload {filename!r}"
    suffix = Path(filename).suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{what}: {suffix or 'no suffix'} is not a text file; allowed: .txt (one text a line) or "
                        ".csv (columns text and, optionally, label)")
    check_upload_size(len(data), max_upload_bytes(), what=what)
    _check_quota(len(data), what)
    return _store_file(data, "texts", suffix)


def store_zip_upload(data: bytes, filename: str) -> tuple[Path, bool]:
    """Size-check an uploaded zip of images, extract it once into ``images/<sha256>/``; its image folder.

    Extraction goes through :func:`ptq_core.paths.safe_extract_zip` (no ``..``, absolute names,
    links, or more than ``PTQ_MAX_ZIP_MB`` / ``PTQ_MAX_ZIP_FILES``) into a private temporary
    folder that is renamed into place, so a concurrent session never reads a half-extracted
    folder. Returns the folder to read images from (see :func:`image_root`) and whether this
    call extracted it.
    """
    check_upload_size(len(data), max_upload_bytes(), what=f"zip upload {filename!r}")
    _check_quota(len(data), f"zip upload {filename!r}")
    folder = upload_dir() / "images"
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / _sha256(data)
    if target.is_dir():
        os.utime(target)
        tidy(keep=target)
        return image_root(target), False
    staging = folder / f".extract-{uuid.uuid4().hex}"
    try:
        safe_extract_zip(data, staging, max_bytes=max_zip_bytes(), max_files=max_zip_files())
    except DataError as exc:
        raise DataError(f"zip upload {filename!r}: {exc}") from None
    try:
        staging.rename(target)
        created = True
    except OSError:  # another session extracted the same zip first: use theirs
        shutil.rmtree(staging, ignore_errors=True)
        created = False
    try:
        tidy(keep=target)
    except DataError as exc:  # the extracted images alone are over the quota
        raise DataError(f"zip upload {filename!r}: {exc}") from None
    return image_root(target), created


def _check_quota(n_bytes: int, what: str) -> None:
    """Refuse, before writing, an upload that could never fit the folder's quota."""
    quota = upload_quota_bytes()
    if n_bytes > quota:
        raise DataError(f"{what}: {n_bytes / _MIB:.1f} MiB is more than the upload folder's quota of "
                        f"{quota / _MIB:.1f} MiB; allowed: uploads up to the quota (the server's operator sets "
                        "PTQ_UPLOAD_QUOTA_MB)")


def _size(path: Path) -> int:
    """Bytes under ``path`` (a file, or every file in a folder; links are not followed)."""
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    except OSError:  # removed meanwhile by another session
        return 0


def _last_used(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def usage() -> list[tuple[Path, int, float]]:
    """Every upload as (path, bytes, last used as a Unix time), least recently used first."""
    base = upload_dir()
    found = []
    for kind in KINDS:
        folder = base / kind
        if folder.is_dir():
            found += [(p, _size(p), _last_used(p)) for p in folder.iterdir() if not p.name.startswith(".")]
    return sorted(found, key=lambda row: row[2])


def tidy(*, keep: Path | None = None, now: float | None = None) -> list[Path]:
    """Bound the upload folder: remove what is past ``PTQ_UPLOAD_MAX_AGE_H``, then the least recently used
    until it fits ``PTQ_UPLOAD_QUOTA_MB``. Returns what was removed.

    ``keep`` (the upload just stored) is never removed to make room for others; if it alone is over
    the quota it is removed and DataError says so. Half-written leftovers (``.partial-*``,
    ``.extract-*`` of a crashed upload) are removed by age only, so an upload in progress is safe.
    """
    now = time.time() if now is None else now
    max_age, quota = upload_max_age_s(), upload_quota_bytes()
    base = upload_dir()
    removed: list[Path] = []
    with _TIDY:
        for kind in KINDS:
            folder = base / kind
            leftovers = [p for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []
            for path in leftovers:
                if now - _last_used(path) > max_age:
                    _remove(path)
                    removed.append(path)
        live = []
        for path, size, used in usage():
            if path != keep and now - used > max_age:
                _remove(path)
                removed.append(path)
            else:
                live.append((path, size))
        total = sum(size for _, size in live)
        for path, size in live:  # least recently used first
            if total <= quota:
                break
            if path != keep:
                _remove(path)
                removed.append(path)
                total -= size
        if total > quota and keep is not None:
            _remove(keep)
            raise DataError(f"{total / _MIB:.1f} MiB is more than the upload folder's quota of {quota / _MIB:.1f} "
                            "MiB; allowed: uploads up to the quota (the server's operator sets PTQ_UPLOAD_QUOTA_MB)")
    if removed:
        log.info("upload folder: removed %d upload(s) past %d h or over the %d MiB quota: %s", len(removed),
                 max_age // 3600, quota // _MIB, ", ".join(p.name for p in removed))
    return removed


def image_root(folder: Path) -> Path:
    """The folder a zip's images are read from: ``folder``, or inside its single top-level folder.

    Zipping a folder (``photos/…`` or ``dataset/cats/…``) wraps everything in one top-level
    folder; reading from inside it gives what the user meant (a flat folder, or class folders).
    """
    current = folder
    while True:
        visible = [p for p in current.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
        has_images = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in visible)
        if has_images or (current / LABELS_FILE).is_file() or len(visible) != 1 or not visible[0].is_dir():
            return current
        current = visible[0]


def remove_upload(path: Path) -> None:
    """Remove a file or extracted folder in the upload folder (one this session just created)."""
    base = upload_dir()
    path = path.resolve()
    if not path.is_relative_to(base) or path == base:
        return
    # an extracted zip: remove the whole images/<sha256>/ folder, not only the part read from
    parts = path.relative_to(base).parts
    top = base.joinpath(*parts[:2])
    if top.is_dir():
        shutil.rmtree(top, ignore_errors=True)
    else:
        top.unlink(missing_ok=True)
