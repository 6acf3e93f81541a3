"""The HTML report (``ptq_core.report``) and ``python -m ptq_core report``, from Results the CLI wrote.

* The page holds every Result's numbers, the two charts with exactly those numbers, each config as
  JSON, the warnings, the machine and versions; plotly.js is inline exactly once and nothing is
  loaded from the network.
* A sweep's ``.json`` list is read entry by entry.
* Every bad ``--results`` file (missing, a folder, not JSON, not UTF-8, a config instead of a
  Result, an empty list, a Result without metrics) exits 2 with one line naming the file, and
  writes nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import plotly.offline
import pytest

from ptq_core.cli import EXIT_USER_ERROR, main
from ptq_core.errors import ResultFileError
from ptq_core.report import ReportEntry, build_report, config_label, load_results

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "assets" / "configs"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict[str, Path]:
    """Two Results written by ``python -m ptq_core run`` (W8A8 and W4 per-group), simulation only."""
    folder = tmp_path_factory.mktemp("results")
    out = {}
    for name in ("w8a8_digits_cnn", "w4g32a8_digits_cnn"):
        config = json.loads((CONFIGS / f"{name}.json").read_text())
        config["evaluation"] = {**config.get("evaluation", {}), "runtime": None}
        (folder / f"{name}.config.json").write_text(json.dumps(config))
        out[name] = folder / f"{name}.json"
        assert main(["run", "--config", str(folder / f"{name}.config.json"), "--output", str(out[name]), "--quiet"]) == 0
    return out


def _figures(page: str) -> dict[str, list[dict[str, Any]]]:
    """The traces of each figure on the page, by div id (plotly.io writes them as JSON in a newPlot call)."""
    found = {}
    for div_id, data in re.findall(r'Plotly\.newPlot\(\s*"([\w-]+)",\s*(\[.*?\]),\s*\{', page, flags=re.S):
        found[div_id] = json.loads(data)
    return found


def test_the_report_holds_every_number_both_charts_and_plotly_once(results: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    assert main(["report", "--results", *map(str, results.values()), "--output", str(output), "--quiet"]) == 0
    page = output.read_text(encoding="utf-8")
    data = [json.loads(p.read_text()) for p in results.values()]

    assert page.count(plotly.offline.get_plotlyjs()[:40]) == 1  # the library's banner: embedded once, inline
    assert "<script src=" not in page  # nothing fetched: the file works offline
    for r in data:
        m = r["metrics"]
        assert f"{100 * m['quant_top1']:.2f}" in page and f"{100 * m['agreement']:.2f}" in page
        assert f"{r['size']['quant_bytes']:,}" in page
        assert config_label(r["config"]) in page
        assert json.dumps(r["config"], indent=2).replace('"', "&quot;") in page  # each config, as JSON
    assert "weights.group_size=32" in page  # a warning the W4 per-group run gave
    assert "Report written on:" in page and "torch " in page and "onnxruntime " in page

    figures = _figures(page)
    scatter = [t for t in figures["accuracy-size"] if t.get("mode") == "markers+text"]
    assert [t["y"][0] for t in scatter] == pytest.approx([100 * r["metrics"]["quant_top1"] for r in data])
    assert [t["x"][0] for t in scatter] == pytest.approx([r["size"]["quant_bytes"] / 1024 for r in data])
    layers = figures["layer-error"]
    assert len(layers) == 2 * len(data)  # weights and outputs (the CLI always measures the outputs), one trace per config
    assert layers[0]["x"] == [layer["name"] for layer in data[0]["layers"]]
    assert layers[-1]["y"] == [layer["output_sqnr_db"] for layer in data[-1]["layers"]]


def test_a_sweep_list_is_read_entry_by_entry(results: dict[str, Path], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([json.loads(p.read_text()) for p in results.values()]))
    entries = load_results([sweep, results["w8a8_digits_cnn"]])
    assert [e.name for e in entries] == ["sweep[0]", "sweep[1]", "w8a8_digits_cnn"]


def test_without_output_errors_the_layer_chart_shows_weights_and_says_so(results: dict[str, Path]) -> None:
    result = json.loads(results["w8a8_digits_cnn"].read_text())
    for layer in result["layers"]:
        layer["output_sqnr_db"] = None  # as the dashboard keeps it until the Layer error page is opened
    page = build_report([ReportEntry("w8", result)], host={"cpu": "test", "cores": 1, "platform": "p", "python": "3",
                                                           "versions": {}})
    assert len(_figures(page)["layer-error"]) == 1
    assert "the chart shows the weights' SQNR only" in page


def _bad_files(folder: Path, good: Path) -> list[tuple[Path, str]]:
    result = json.loads(good.read_text())
    cases: list[tuple[str, str | bytes, str]] = [
        ("not_json.json", "{oops", "is not valid JSON"),
        ("latin1.json", b"\xe9t\xe9", "is not UTF-8 text"),
        ("config.json", (CONFIGS / "w8a8_digits_cnn.json").read_text(), "not a Result (missing keys: config"),
        ("empty_list.json", "[]", "is an empty list"),
        ("number.json", "3", "got a JSON int, not a Result"),
        ("no_agreement.json", json.dumps({**result, "metrics": {}}), "metrics.agreement is missing"),
        ("bad_size.json", json.dumps({**result, "size": {"fp32_bytes": "big"}}), "size.fp32_bytes / size.quant_bytes"),
        ("list_with_config.json", json.dumps([result, {"weights": {}}]), "entry 1: not a Result"),
    ]
    out = []
    for name, content, says in cases:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out.append((path, says))
    (folder / "a_folder.json").mkdir()
    out += [(folder / "a_folder.json", "is a folder"), (folder / "missing.json", "does not exist")]
    return out


def test_every_bad_results_file_exits_2_naming_the_file_and_writes_nothing(
        results: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "report.html"
    for path, says in _bad_files(tmp_path, results["w8a8_digits_cnn"]):
        code = main(["report", "--results", str(results["w8a8_digits_cnn"]), str(path), "--output", str(output)])
        err = capsys.readouterr().err.strip()
        assert code == EXIT_USER_ERROR, path.name
        assert err.startswith(f"error: result file {str(path)!r}"), err
        assert says in err and "allowed: a Result JSON written by `python -m ptq_core run --output`" in err, err
        assert "Traceback" not in err
        assert not output.exists()


def test_no_results_and_an_unwritable_output_are_user_errors(results: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ResultFileError, match="--results: got no files"):
        load_results([])
    code = main(["report", "--results", str(results["w8a8_digits_cnn"]), "--output", str(tmp_path)])
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "--output: " in err and "is a folder" in err
