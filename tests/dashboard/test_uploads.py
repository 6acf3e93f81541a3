"""The upload folder stays bounded (``dashboard.uploads.tidy``), and Streamlit's upload limit agrees with ours.

* Uploads not uploaded again for ``PTQ_UPLOAD_MAX_AGE_H`` hours are removed at the next upload;
  past ``PTQ_UPLOAD_QUOTA_MB`` the least recently uploaded go first; uploading again refreshes.
* An upload larger than the whole quota is refused before anything is written; a zip whose
  images expand past it is removed again. Crashed uploads' leftovers go by age only.
* ``.streamlit/config.toml`` sets ``server.maxUploadSize`` to the default ``PTQ_MAX_MODEL_MB`` and
  ``streamlit`` reads it when started from the repository root (as ``make run`` does); the
  uploaders carry the effective limit, so a browser refuses a too-large file before sending it.

Ages are set with ``os.utime`` (the file's last upload), never waited for.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from dashboard import uploads
from ptq_core.errors import DataError
from ptq_core.paths import DEFAULT_MAX_MODEL_MB, upload_max_age_s, upload_quota_bytes
from tests.dashboard.helpers import ROOT, new_app, problems

KIB = 1024
HOUR = 3600


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PTQ_UPLOAD_DIR", str(tmp_path / "uploads"))
    monkeypatch.setenv("PTQ_UPLOAD_QUOTA_MB", "1")
    monkeypatch.setenv("PTQ_UPLOAD_MAX_AGE_H", "24")
    return tmp_path / "uploads"


def _aged(path: Path, hours: float) -> None:
    """Pretend ``path`` was last uploaded ``hours`` ago."""
    then = time.time() - hours * HOUR
    os.utime(path, (then, then))


def _model(n_kib: int, tag: bytes) -> bytes:
    return tag * (n_kib * KIB // len(tag))


def test_uploads_past_the_age_are_removed_at_the_next_upload(folder: Path) -> None:
    old, _ = uploads.store_model_upload(_model(10, b"old"), "old.pt")
    recent, _ = uploads.store_model_upload(_model(10, b"recent"), "recent.pt")
    _aged(old, 25)
    _aged(recent, 23)
    new, _ = uploads.store_model_upload(_model(10, b"new"), "new.pt")
    assert not old.exists()
    assert recent.exists() and new.exists()


def test_past_the_quota_the_least_recently_uploaded_go_first_and_uploading_again_refreshes(folder: Path) -> None:
    a, _ = uploads.store_model_upload(_model(300, b"a"), "a.pt")
    b, _ = uploads.store_model_upload(_model(300, b"b"), "b.pt")
    c, _ = uploads.store_model_upload(_model(300, b"c"), "c.pt")
    for path, hours in ((a, 3), (b, 2), (c, 1)):
        _aged(path, hours)
    again, created = uploads.store_model_upload(_model(300, b"a"), "a_again.pt")  # a is uploaded again: now the newest
    assert (again, created) == (a, False)
    d, _ = uploads.store_model_upload(_model(300, b"d"), "d.pt")  # 1200 KiB > 1 MiB: one has to go, the oldest (b)
    assert [p.exists() for p in (a, b, c, d)] == [True, False, True, True]
    assert sum(size for _, size, _ in uploads.usage()) <= upload_quota_bytes()


def test_an_upload_larger_than_the_quota_is_refused_before_anything_is_written(folder: Path) -> None:
    with pytest.raises(DataError, match=r"model upload 'big.pt': 1\.1 MiB is more than the upload folder's quota of "
                                        r"1\.0 MiB; allowed: uploads up to the quota .*PTQ_UPLOAD_QUOTA_MB"):
        uploads.store_model_upload(_model(1100, b"x"), "big.pt")
    assert not (folder / "models").exists()  # refused before the folder was even made


def test_a_zip_whose_images_expand_past_the_quota_is_removed_again(folder: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(3):
            archive.writestr(f"img{i}.png", b"\0" * (500 * KIB))  # 1.5 MiB of images, a few KiB zipped
    with pytest.raises(DataError, match=r"zip upload 'zeros.zip': 1\.5 MiB is more than the upload folder's quota"):
        uploads.store_zip_upload(buffer.getvalue(), "zeros.zip")
    assert not any((folder / "images").iterdir())


def test_leftovers_of_a_crashed_upload_go_by_age_only(folder: Path) -> None:
    uploads.store_model_upload(_model(1, b"x"), "x.pt")
    stale, fresh = folder / "models" / ".partial-stale", folder / "images" / ".extract-in-progress"
    stale.write_bytes(b"half")
    fresh.mkdir(parents=True)
    _aged(stale, 30)
    removed = uploads.tidy()
    assert removed == [stale] and fresh.exists()


@pytest.mark.parametrize(("name", "value"), [("PTQ_UPLOAD_QUOTA_MB", "lots"), ("PTQ_UPLOAD_MAX_AGE_H", "0")])
def test_a_bad_setting_names_the_variable(folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(DataError, match=f"environment variable {name}={value!r}; allowed: a positive integer"):
        uploads.store_model_upload(b"x", "x.pt")


def test_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTQ_UPLOAD_QUOTA_MB", raising=False)
    monkeypatch.delenv("PTQ_UPLOAD_MAX_AGE_H", raising=False)
    assert (upload_quota_bytes(), upload_max_age_s()) == (4096 * 1024 * KIB, 24 * HOUR)


# -- Streamlit's limit and ours ------------------------------------------------------------------------
def test_streamlit_reads_the_projects_upload_limit_from_the_repository_root() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] == DEFAULT_MAX_MODEL_MB
    streamlit = Path(sys.executable).with_name("streamlit")
    shown = subprocess.run([str(streamlit), "config", "show"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "STREAMLIT_SERVER_MAX_UPLOAD_SIZE": ""}, check=True).stdout
    assert f"\nmaxUploadSize = {DEFAULT_MAX_MODEL_MB}\n" in shown


def test_the_uploaders_carry_the_effective_limit(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTQ_MAX_MODEL_MB", "20")
    monkeypatch.setenv("PTQ_MAX_UPLOAD_MB", "99999")  # above Streamlit's own limit: capped there, and said so
    at = new_app().run()
    assert not problems(at)
    by_key = {u.proto.id.rsplit("-", 1)[-1]: u.proto for u in at.get("file_uploader")}
    model, zipped = by_key["src_m_upload"], by_key["src_d_zip"]
    assert model.max_upload_size_mb == 20 and "Files up to 20 MiB (PTQ_MAX_MODEL_MB / PTQ_MAX_UPLOAD_MB)" in model.help
    streamlit_mb = zipped.max_upload_size_mb
    assert streamlit_mb < 99999
    assert "lower than this server's 99999 MiB (PTQ_MAX_UPLOAD_MB)" in zipped.help
    assert "Uploads not repeated for 24 h are removed" in model.help
