"""The Compare page's HTML report under AppTest: saved configurations in, the file the download serves out.

The report is built when the button is clicked (a deferred download), so the test runs the
callable the app registered through the media file manager, as the server does on a click, and
reads the bytes the browser would get.
"""

from __future__ import annotations

import json
import re

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import app_test

from dashboard import labels
from ptq_core.report import config_label
from tests.dashboard.helpers import new_app, open_page, problems


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> tuple[list[MediaFileManager], list[MemoryMediaFileStorage]]:
    """Every media file manager and storage AppTest creates, so a deferred download can be run and read."""
    managers: list[MediaFileManager] = []
    stores: list[MemoryMediaFileStorage] = []

    class RecordingManager(MediaFileManager):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            managers.append(self)

    class RecordingStorage(MemoryMediaFileStorage):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            stores.append(self)

    monkeypatch.setattr(app_test, "MediaFileManager", RecordingManager)
    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", RecordingStorage)
    return managers, stores


def test_the_report_of_saved_configurations_holds_their_numbers(
        media: tuple[list[MediaFileManager], list[MemoryMediaFileStorage]]) -> None:
    at = new_app().run()
    at.text_input(key="ov_save_name").input("baseline")
    at.button(key="ov_save").click().run()
    at.selectbox(key="sb_w_bits").set_value(4).run()
    at.text_input(key="ov_save_name").input("four bits")
    at.button(key="ov_save").click().run()
    open_page(at, "compare")
    assert not problems(at)

    button = at.get("download_button")
    (report,) = [b for b in button if b.proto.id.endswith("-cmp_report")]
    assert "2 configurations" in report.proto.label
    managers, stores = media
    url = managers[-1].execute_deferred(report.proto.deferred_file_id)  # what the server does on a click
    file = stores[-1].get_file(url.rsplit("/", 1)[-1].split(".")[0])
    assert file.filename == "ptq_report.html" and file.mimetype == "text/html"
    page = file.content.decode("utf-8")

    saved = at.session_state["saved"]
    assert [e["name"] for e in saved] == ["baseline", "four bits"]
    for entry in saved:
        row = entry["row"]
        assert f"<td>{entry['name']}</td>" in page
        assert f"{100 * row['agreement']:.2f}" in page and f"{row['quant_bytes']:,}" in page
        assert config_label(json.loads(entry["config_json"])) in page
        assert labels.config_label(json.loads(entry["config_json"])) == row["label"]
    assert re.search(r"plotly\.js v\d", page) and page.count("* plotly.js v") == 1
