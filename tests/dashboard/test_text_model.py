"""The text model (all-MiniLM-L6-v2) in the dashboard: its data pickers, its embedding cards, its refusals.

Driven by widget key as a user would: pick the model, see the data choices follow, press Load.
Numbers on the cards are checked against a fresh engine run of the config the app exports. Every
refusal (an image folder or digits for the text model, a text data set for an image model, a bad
text upload) must show the engine's message and leave the session as it was: the ``sb_*``/``cfg_*``
state and the cards on screen are compared before and after.

Kept small: 32 evaluation sentences, dynamic activations (no calibration run), simulation in
PyTorch and no integer runtime check. Files are written by the tests under a data root
(``PTQ_DATA_ROOTS``) with the upload folder beside it, as in test_sources.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard import charts, labels, state, uploads
from ptq_core.config import QuantConfig
from ptq_core.errors import DataError
from ptq_core.models import MINILM
from ptq_core.pipeline import Explorer
from tests.dashboard.helpers import chart_specs, metric, new_app, open_page, problems, values

EVAL_SAMPLES = 32  # sentences evaluated: a few seconds for the 22.7M-parameter model on one thread
TEXT_SOURCES = ["registered data set", "text file on the server", "upload a text file (.txt or .csv)"]
# Twelve sentences on three topics: a .csv with labels gives 3 calibration / 9 evaluation (a quarter, see ptq_core.data.text).
TOPICS = {
    "weather": ["Heavy rain is expected over the hills tonight.", "The forecast promises a sunny and warm weekend.",
                "A cold front will bring snow to the north.", "Strong winds knocked down trees along the coast."],
    "cooking": ["Fry the onions slowly until they turn golden.", "Knead the dough for ten minutes before it rests.",
                "Season the soup with salt, pepper and fresh thyme.", "Bake the cake at 180 degrees for forty minutes."],
    "chess": ["White castled early to protect the king.", "The knight fork won the black queen.",
              "She resigned after losing a rook in the endgame.", "The opening was a quiet Queen's Gambit Declined."],
}


def _csv() -> str:
    return "text,label\n" + "".join(f"{s},{topic}\n" for topic, lines in TOPICS.items() for s in lines)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (20, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A data root holding a labeled .csv and an image folder; a fresh upload folder beside it."""
    root = tmp_path / "root"
    (root / "images" / "c0").mkdir(parents=True)
    (root / "images" / "c0" / "a.png").write_bytes(_png())
    (root / "topics.csv").write_text(_csv(), encoding="utf-8")
    monkeypatch.setenv("PTQ_DATA_ROOTS", str(root))
    monkeypatch.setenv("PTQ_UPLOAD_DIR", str(tmp_path / "uploads"))
    return {"root": root, "uploads": tmp_path / "uploads"}


def _small(at: AppTest) -> AppTest:
    """What keeps the text model's evaluation to seconds (set while the cheap digits model is loaded)."""
    at.number_input(key="sb_eval_num_samples").set_value(EVAL_SAMPLES)
    at.radio(key="sb_a_mode").set_value("dynamic")
    at.selectbox(key="sb_eval_runtime").set_value(None)
    # the onnxruntime simulation is the app's default; PyTorch is the reference, and one fewer thing to export here
    return at.selectbox(key="sb_eval_backend").set_value("torch").run()


def _load(at: AppTest) -> AppTest:
    return at.button(key="src_load").click().run()


def _text_session() -> AppTest:
    """A session with the text model loaded on the default sentences, small settings."""
    at = _small(new_app().run())
    at.selectbox(key="src_m_name").set_value(MINILM).run()
    _load(at)
    assert not problems(at)
    return at


def _config_state(at: AppTest) -> dict[str, Any]:
    return {k: v for k, v in at.session_state.items() if k.startswith(("sb_", "cfg_"))}


def _cards(at: AppTest) -> list[tuple[str, str]]:
    return [(m.label, m.value) for m in at.metric]


def _refused(at: AppTest, before: dict[str, Any], *needles: str) -> None:
    """A refusal: an st.error with the engine's words, no traceback, and the config as it was."""
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(all(n in e for n in needles) for e in errors), errors
    assert _config_state(at) == before


def _main_text(at: AppTest) -> str:
    """Every sentence the page itself shows (not the sidebar): markdown, captions, card labels, info boxes."""
    main = at.main
    parts = [e.value for kind in ("markdown", "caption", "info", "warning") for e in main.get(kind)]
    return "\n".join(parts + [m.label for m in at.metric])


def test_picking_the_text_model_offers_text_data_and_the_cards_say_embedding_things() -> None:
    at = _small(new_app().run())
    assert "sentences" not in at.selectbox(key="src_d_name").options  # image models are offered image data only
    at.selectbox(key="src_m_name").set_value(MINILM).run()
    assert at.session_state["src_d_name"] == "sentences"  # the model's default data set, chosen with it
    assert at.selectbox(key="src_d_name").options == ["sentences"]
    assert at.radio(key="src_d_from").options == TEXT_SOURCES
    assert [u.key for u in at.file_uploader] == ["src_m_upload", "src_d_text"]  # a text file, not a zip of images
    _load(at)
    assert not problems(at)
    assert state.spec_value(at.session_state["sb_model"]) == MINILM and at.session_state["sb_dataset"] == "sentences"

    config = QuantConfig.from_dict(json.loads(open_page(at, "export").code[0].value))
    assert config.evaluation.num_samples == EVAL_SAMPLES and config.evaluation.runtime is None
    m = Explorer(MINILM, "sentences").evaluate(config, layer_errors=False).metrics  # a fresh engine run, not the app's
    assert m["task"] == "embedding"
    open_page(at, "overview")
    assert not at.exception
    assert metric(at, "Cosine to FP32 (mean)") == labels.cosine(m["cosine_mean"])
    cosine_card = next(c for c in at.metric if c.label == "Cosine to FP32 (mean)")
    assert cosine_card.delta == f"min {labels.cosine(m['cosine_min'])}"
    assert metric(at, "Nearest-neighbour agreement") == labels.pct(m["neighbour_agreement"])
    neighbour_card = next(c for c in at.metric if c.label == "Nearest-neighbour agreement")
    moved = round((1 - m["neighbour_agreement"]) * EVAL_SAMPLES)
    assert neighbour_card.delta == labels.neighbours_moved(m) and (
        neighbour_card.delta.startswith(f"{moved} moved (") if moved else neighbour_card.delta == "none moved")
    assert metric(at, "Recall@10") == labels.pct(m["recall_at_10"])
    assert metric(at, "k-NN topic accuracy, FP32") == labels.pct(m["fp32_top1"])
    assert metric(at, "k-NN topic accuracy, quantized") == labels.pct(m["quant_top1"])
    shown = _main_text(at)
    assert f"leave-one-out k-NN (k=5) on the {EVAL_SAMPLES} evaluation sentences" in shown
    assert "Why a cosine of 0.99 can still move neighbours" in shown  # the plain-words box
    assert "top-1" not in shown.lower() and "logit" not in shown.lower()

    # the scatter measures embeddings by cosine (as a cosine, not a percent) or by nearest-neighbour agreement
    radio = at.radio(key="ov_metric_embedding")
    assert radio.options == ["cosine to FP32 (mean)", "nearest-neighbour agreement"]
    spec = chart_specs(at)[0]
    assert spec["layout"]["yaxis"]["title"]["text"] == "Cosine to FP32 (mean)"
    points = next(t for t in spec["data"] if t["name"] == "quantized configs")
    assert values(points["y"]) == pytest.approx([m["cosine_mean"]])
    radio.set_value("neighbour_agreement").run()
    assert chart_specs(at)[0]["layout"]["yaxis"]["title"]["text"] == "Nearest-neighbour agreement with FP32 (%)"


def test_pages_name_embedding_measures_and_the_calibration_check_says_why_it_does_not_apply() -> None:
    at = _text_session()
    at.button(key="ov_save").click().run()
    open_page(at, "compare")
    assert not problems(at)
    columns = list(at.dataframe[0].value.columns)
    assert {"quantized k-NN topic accuracy (%)", "nearest-neighbour agreement (%)", "cosine to FP32 (mean)",
            "recall@10 (%)"} <= set(columns)
    assert not [c for c in columns if "top-1" in c]

    open_page(at, "sensitivity")
    assert not problems(at)
    assert at.selectbox(key="search_kind").options == [
        "k-NN topic accuracy drop at most (points)", "nearest-neighbour agreement at least (%)",
        "neighbour-similarity KL at most"]

    open_page(at, "calibration_check")  # it scores subsets by class decisions: says so and stops
    assert not at.exception
    assert any("does not apply to the text model" in i.value and "not a choice among classes" in i.value
               for i in at.main.info)
    assert not at.get("plotly_chart") and not at.metric


def test_an_image_folder_or_digits_for_the_text_model_is_refused_and_the_result_stays(env: dict[str, Path]) -> None:
    at = _text_session()
    before, cards = _config_state(at), _cards(at)
    at.text_input(key="src_d_path").input(str(env["root"] / "images")).run()  # the "File on the server" box
    assert at.session_state["src_d_from"] == "path"
    _refused(_load(at), before, "Not loaded, nothing changed", "'images' is not a text file", "allowed: .txt")
    assert _cards(at) == cards

    # digits with the text model can only come from outside the pickers: a pasted config is checked by the engine
    open_page(at, "export")
    at.text_area(key="io_paste").input(json.dumps({"model": MINILM, "dataset": "digits"}))
    at.button(key="io_apply").click().run()
    _refused(at, before, "not imported, nothing changed", "is image data, and the model all_minilm_l6_v2 reads text",
             'allowed: a text data set ("sentences"')
    open_page(at, "overview")
    assert _cards(at) == cards


def test_a_text_data_set_for_an_image_model_is_refused() -> None:
    at = new_app().run()
    before, cards = _config_state(at), _cards(at)
    open_page(at, "export")
    at.text_area(key="io_paste").input(json.dumps({"model": "digits_cnn", "dataset": "sentences"}))
    at.button(key="io_apply").click().run()
    _refused(at, before, "not imported, nothing changed", "a text data set needs a text model (all_minilm_l6_v2)")
    open_page(at, "overview")
    assert _cards(at) == cards


@pytest.mark.parametrize("name, data, needles", [
    ("latin1.txt", "Un café au lait.\nUne autre phrase.\n".encode("latin-1"), ("latin1.txt (uploaded)", "is not UTF-8")),
    ("empty.txt", b"", ("empty.txt (uploaded)", "holds 0 text(s)", "at least 2")),
    ("topics.csv", b"sentence,topic\nHello there.,a\nGoodbye now.,b\n", ("topics.csv (uploaded)", "has no 'text' column")),
])
def test_a_bad_text_upload_is_refused_and_not_kept(env: dict[str, Path], name: str, data: bytes,
                                                   needles: tuple[str, ...]) -> None:
    at = new_app().run()
    before, cards = _config_state(at), _cards(at)
    at.selectbox(key="src_m_name").set_value(MINILM).run()
    at.file_uploader(key="src_d_text").set_value((name, data, "text/plain")).run()
    assert at.session_state["src_d_from"] == "upload"
    _refused(_load(at), before, "Not loaded, nothing changed", *needles)
    assert _cards(at) == cards  # the digits result on screen stays
    texts = env["uploads"] / "texts"
    assert not texts.exists() or not any(texts.iterdir())  # a file that does not load is not kept


def test_only_txt_and_csv_are_stored_as_text(env: dict[str, Path]) -> None:
    """The uploader accepts .txt/.csv only (Streamlit refuses others); the store says so too, writing nothing."""
    with pytest.raises(DataError, match=r"text upload 'notes.pdf': .pdf is not a text file; allowed: .txt"):
        uploads.store_text_upload(b"one line\nanother line\n", "notes.pdf")
    assert not (env["uploads"] / "texts").exists()
    path, created = uploads.store_text_upload(b"one line\nanother line\n", "Notes.TXT")
    assert created and path.parent == (env["uploads"] / "texts").resolve() and path.suffix == ".txt"


def test_an_oversize_text_upload_is_refused_before_it_is_written(env: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTQ_MAX_UPLOAD_MB", "1")
    at = new_app().run()
    before = _config_state(at)
    at.selectbox(key="src_m_name").set_value(MINILM).run()
    at.file_uploader(key="src_d_text").set_value(("big.txt", b"a sentence\n" * 100_000, "text/plain")).run()
    _refused(_load(at), before, "text upload 'big.txt'", "larger than the limit of 1.0 MiB", "PTQ_MAX_UPLOAD_MB")
    assert not (env["uploads"] / "texts").exists()


def test_text_files_load_by_path_and_by_upload(env: dict[str, Path]) -> None:
    at = _small(new_app().run())
    at.selectbox(key="src_m_name").set_value(MINILM).run()
    at.text_input(key="src_d_path").input(str(env["root"] / "topics.csv")).run()
    _load(at)
    assert not problems(at)
    spec = state.spec_value(at.session_state["sb_dataset"])
    assert spec == {"kind": "text_file", "path": str((env["root"] / "topics.csv").resolve()), "num_calibration": None,
                    "seed": 0, "max_lines": None}
    assert metric(at, "k-NN topic accuracy, quantized").endswith("%")
    assert "on the 9 evaluation sentences" in _main_text(at)  # 12 lines: 3 calibrate, 9 evaluate

    lines = "\n".join(s for group in TOPICS.values() for s in group).encode()
    at.file_uploader(key="src_d_text").set_value(("my lines.txt", lines, "text/plain")).run()
    _load(at)
    assert not problems(at)
    stored = state.spec_value(at.session_state["sb_dataset"])["path"]
    assert Path(stored).parent == (env["uploads"] / "texts").resolve() and stored.endswith(".txt")
    assert metric(at, "k-NN topic accuracy, quantized") == "n/a"  # one text a line: no topics
    assert metric(at, "Nearest-neighbour agreement").endswith("%")
    captions = [c.value for c in at.sidebar.caption]
    assert any("**Unlabeled texts**" in c for c in captions)
    assert any("The data set is an upload" in c for c in captions)


def test_charts_and_notes_name_embedding_measures_and_keep_classification_words() -> None:
    row = {"fp32_top1": 0.7, "quant_top1": 0.68, "agreement": 0.9, "fp32_bytes": 4096, "quant_bytes": 1024}
    embedding = {**row, "task": "embedding", "cosine_mean": 0.99, "neighbour_agreement": 0.9}

    def legend(rows: list[dict[str, Any]]) -> list[str]:
        return [t.name for t in charts.compare_bars([str(i) for i in range(len(rows))], rows).data][:3]

    assert legend([row]) == ["FP32 top-1", "quantized top-1", "agreement with FP32"]
    assert legend([embedding]) == ["FP32 k-NN topic accuracy", "quantized k-NN topic accuracy",
                                   "nearest-neighbour agreement"]
    assert legend([row, embedding]) == ["FP32 top-1 or k-NN accuracy", "quantized top-1 or k-NN accuracy",
                                        "top-1 or nearest-neighbour agreement"]
    metrics = {"task": "embedding", "cosine_mean": 0.9912, "cosine_min": 0.97, "neighbour_agreement": 0.9,
               "runtime_agreement": 0.9, "runtime_matching_samples": 9, "num_eval_samples": 10,
               "runtime_cosine_min": 0.9991, "runtime_max_abs_diff": 0.004}
    assert labels.runtime_agreement(metrics) == ("simulation and onnxruntime give the same nearest neighbour on 9/10 "
                                                 "sentences (cosine at least 0.9991, max |Δ| 0.004)")
    reference = {"metrics": {**metrics, "cosine_mean": 0.9913}, "predictions": []}
    said = labels.backend_comparison({"metrics": metrics, "predictions": []}, reference)
    assert "cosine to FP32 0.9912 here, 0.9913 in PyTorch" in said and "top-1" not in said
