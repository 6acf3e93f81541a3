"""``python -m ptq_core``: run, sweep, list, and clean failures (exit 2, no traceback)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptq_core.cli import main
from ptq_core.config import QuantConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "assets" / "configs"


def test_example_configs_are_valid() -> None:
    files = sorted(CONFIGS.glob("*.json"))
    assert len(files) >= 3
    for path in files:
        QuantConfig.load(str(path))


def test_run_writes_result_reproducing_the_config(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    cfg_path = CONFIGS / "w4g32a8_digits_cnn.json"
    assert main(["run", "--config", str(cfg_path), "--output", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["config"] == QuantConfig.load(str(cfg_path)).to_dict()
    for key in ("fp32_top1", "quant_top1", "agreement"):
        assert 0.0 <= r["metrics"][key] <= 1.0
    assert r["size"]["fp32_bytes"] > r["size"]["quant_bytes"]
    assert r["layers"][0]["name"] == "conv1" and "weight_sqnr_db" in r["layers"][0]
    assert "output_sqnr_db" in r["layers"][0]
    assert r["timing"]["calibration_s"] > 0 and r["timing"]["evaluation_s"] > 0
    # the exported config reproduces the same numbers
    cfg2 = tmp_path / "again.json"
    cfg2.write_text(json.dumps(r["config"]))
    out2 = tmp_path / "r2.json"
    assert main(["run", "--config", str(cfg2), "--output", str(out2), "--quiet"]) == 0
    r2 = json.loads(out2.read_text())
    assert r2["metrics"] == r["metrics"] and r2["activations"] == r["activations"]


def test_bad_config_exits_2_with_message_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"weights": {"bits": 8, "clipping": "entropy"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "ptq_core", "run", "--config", str(bad)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert "weights.clipping: got 'entropy'; allowed: minmax, percentile, mse" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", ["{not json", json.dumps({"model": "no_such_model"})])
def test_other_user_errors_exit_2(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["run", "--config", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", "/no/such/file.json"]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_sweep_writes_one_row_per_config(tmp_path: Path) -> None:
    out = tmp_path / "table.csv"
    args = ["sweep", "--config", str(CONFIGS / "w8a8_digits_cnn.json"), "--quiet", "--output", str(out),
            "--grid", "weights.bits=8,4", "weights.granularity=per_tensor,per_channel"]
    assert main(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["weight_bits"], r["weight_granularity"]) for r in rows] == [
        ("8", "per_tensor"), ("8", "per_channel"), ("4", "per_tensor"), ("4", "per_channel")]
    full = json.loads(out.with_suffix(".json").read_text())
    assert len(full) == 4 and full[3]["config"]["weights"]["bits"] == 4


def test_sweep_rejects_bad_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", "--config", str(CONFIGS / "w8a8_digits_cnn.json"), "--output", str(tmp_path / "t.csv"),
            "--grid", "weights.bits=8,12"]
    assert main(args) == 2
    assert "weights.bits" in capsys.readouterr().err


def test_help_documents_every_option() -> None:
    proc = subprocess.run([sys.executable, "-m", "ptq_core", "sweep", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0
    for option in ("--config", "--grid", "--output", "--quiet"):
        assert option in proc.stdout


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "digits_cnn" in out and "digits_mlp" in out and "digits" in out


def _w8a8(tmp_path: Path) -> Path:
    path = tmp_path / "base.json"
    path.write_text(json.dumps({"evaluation": {"runtime": None, "backend": "onnxruntime"}}))
    return path


def test_sensitivity_writes_one_ranked_row_per_layer(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert main(["sensitivity", "--config", str(_w8a8(tmp_path)), "--output", str(out), "--runner", "serial",
                 "--weight-bits", "8,4", "--quiet"]) == 0
    report = json.loads(out.read_text())
    names = {r["name"] for r in report["layers"]}
    assert names == {"conv1", "conv2", "conv3", "block.dw", "block.pw", "add", "avgpool", "fc1", "fc2"}
    assert all(r["only"] is not None and r["all_but"] is not None for r in report["layers"])
    fc1 = next(r for r in report["layers"] if r["name"] == "fc1")
    assert fc1["weight_bytes"] == {"8": 2048 + 128, "4": 1024 + 128}  # codes + 32 float32 scales
    assert report["runner"] == "serial"


def test_search_writes_a_config_that_reproduces_and_the_frontier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best, frontier = tmp_path / "best.json", tmp_path / "f.csv"
    assert main(["search", "--config", str(_w8a8(tmp_path)), "--min-agreement", "99.5", "--weight-bits", "8,4",
                 "--runner", "serial", "--output", str(best), "--frontier", str(frontier), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "search: met (agreement >= 99.5%)" in err
    result = tmp_path / "r.json"
    assert main(["run", "--config", str(best), "--output", str(result), "--quiet"]) == 0
    assert json.loads(result.read_text())["metrics"]["agreement"] >= 0.995
    rows = list(csv.DictReader(frontier.open()))
    assert rows[0]["label"] == "every layer at 8 bits" and any(r["frontier"] == "True" for r in rows)


def test_search_with_float_activations_writes_them_into_a_config_run_reproduces(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best, result = tmp_path / "best.json", tmp_path / "r.json"
    assert main(["search", "--config", str(_w8a8(tmp_path)), "--max-kl", "0.002", "--weight-bits", "8,4",
                 "--activation-bits", "4,16", "--runner", "serial", "--output", str(best), "--quiet"]) == 0
    assert "search: met (KL <= 0.002)" in capsys.readouterr().err
    answer = json.loads(best.read_text())
    assert answer["activations"]["bits"] == 4 and answer["keep_float_activations"]  # 4-bit points, the worst in float
    assert main(["run", "--config", str(best), "--output", str(result), "--quiet"]) == 0
    assert json.loads(result.read_text())["metrics"]["kl_divergence"] <= 0.002


def test_search_that_cannot_meet_the_target_still_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = tmp_path / "best.json"
    assert main(["search", "--config", str(_w8a8(tmp_path)), "--max-kl", "1e-9", "--runner", "serial",
                 "--output", str(best), "--quiet"]) == 0
    assert "search: NOT met (KL <= 1e-09)" in capsys.readouterr().err
    QuantConfig.from_json(best.read_text())  # the closest configuration, as an ordinary config


@pytest.mark.parametrize(("extra", "message"), [
    ([], "target: none given; allowed: --max-drop"),
    (["--max-drop", "-2"], "max-drop: got -2.0; allowed: a number from 0 to 100"),
    (["--max-drop", "1", "--weight-bits", "8,x"], "weight-bits: got '8,x'; allowed: comma-separated widths"),
    (["--max-drop", "1", "--weight-bits", "8,9"], "weight-bits: got 9; allowed: widths from 2 to 8"),
    (["--max-drop", "1", "--weight-bits", ""], "weight-bits: got an empty set"),
    (["--max-drop", "1", "--activation-bits", "8,f"], "activation-bits: got '8,f'; allowed: one width from 2 to 8"),
    (["--max-drop", "1", "--activation-bits", "8,32"], "activation-bits: got 32; allowed: one width from 2 to 8, "
                                                       "optionally with 16"),
    (["--max-drop", "1", "--narrow-scheme", "unsigned"], "narrow-scheme: got 'unsigned'; allowed: symmetric, asymmetric or keep"),
    (["--max-drop", "1", "--runner", "ray", "--ray-address", "127.0.0.1:9"], "ray address: cannot reach a Ray cluster at "
                                                                              "'127.0.0.1:9'"),
])
def test_search_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                    message: str) -> None:
    code = main(["search", "--config", str(_w8a8(tmp_path)), "--output", str(tmp_path / "b.json"), "--quiet", *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()  # nothing written when nothing was searched


def test_sensitivity_names_an_unknown_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sensitivity", "--config", str(_w8a8(tmp_path)), "--layers", "conv9", "--runner", "serial", "--quiet"]) == 2
    assert "layers: no layer named 'conv9'; allowed: conv1," in capsys.readouterr().err


def test_run_on_the_text_model_reports_embedding_measures_and_reproduces(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lines = tmp_path / "lines.csv"
    lines.write_text("text,label\n" + "".join(f"{t},{lb}\n" for t, lb in [
        ("The striker scored twice", "sport"), ("A late penalty decided the match", "sport"),
        ("The keeper saved a header", "sport"), ("Bond yields rose sharply", "money"),
        ("The central bank cut rates", "money"), ("Shares fell after the report", "money"),
        ("Midfielders pressed high all game", "sport"), ("Inflation slowed in spring", "money")]), encoding="utf-8")
    config = json.loads((CONFIGS / "w8a8_dynamic_minilm_smoothquant.json").read_text())
    config["dataset"] = {"kind": "text_file", "path": str(lines), "num_calibration": 2}
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(config))
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["run", "--config", str(cfg_path), "--output", str(first)]) == 0
    err = capsys.readouterr().err
    assert "cosine to FP32 mean 0.99" in err
    assert re.search(r"nearest-neighbour agreement \d+\.\d\d% \(\d+ moved, \d+ of them FP32 near ties\)", err)
    assert main(["run", "--config", str(cfg_path), "--output", str(second), "--quiet"]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["metrics"]["task"] == "embedding" and a["algorithms"]["smoothquant"]["alpha"] == 0.5
    assert a["metrics"] == b["metrics"]  # same JSON, same numbers


def test_export_tflite_writes_a_full_integer_model_with_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "m.tflite", tmp_path / "m.json"
    assert main(["export", "--config", str(CONFIGS / "w8a8_digits_cnn.json"), "--format", "tflite",
                 "--output", str(out), "--report", str(report), "--quiet"]) == 0
    written = json.loads(report.read_text())
    assert out.stat().st_size == written["file_bytes"] > 0
    assert written["input_dtype"] == "int8" and written["fallbacks"] == []
    assert f"wrote {out}" in capsys.readouterr().out


def test_export_tflite_refuses_what_litert_cannot_carry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "dyn.json"
    cfg.write_text(json.dumps({"model": "digits_mlp", "activations": {"mode": "dynamic"}}))
    assert main(["export", "--config", str(cfg), "--format", "tflite", "--output", str(tmp_path / "m.tflite")]) == 2
    assert "allowed for the LiteRT full-integer export: 'static'" in capsys.readouterr().err
    assert main(["export", "--config", str(CONFIGS / "w8a8_digits_cnn.json"), "--format", "tflite", "--opset", "17",
                 "--output", str(tmp_path / "m.tflite")]) == 2


def test_run_prints_one_line_per_runtime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(CONFIGS / "w8a8_digits_cnn.json"), "--output", str(tmp_path / "r.json")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("runtime ")]
    assert [line.split(" (")[0] for line in lines] == ["runtime FP32", "runtime simulation", "runtime onnxruntime"]
    assert "with the simulation" in lines[2] and "bytes" in lines[2]


def test_run_targets_flag_sets_them_in_the_config_and_names_bad_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ptq_core.pt2e", None)  # a target that cannot run: a line saying so, exit 0
    out = tmp_path / "r.json"
    assert main(["run", "--config", str(CONFIGS / "w8a8_digits_cnn.json"), "--targets", "pt2e", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["evaluation"]["targets"] == ["pt2e"]
    assert "runtime PyTorch PT2E: not run: not available on this machine" in capsys.readouterr().err
    assert main(["run", "--config", str(CONFIGS / "w8a8_digits_cnn.json"), "--targets", "tflite"]) == 2
    assert "--targets: evaluation.targets[0]: got 'tflite'; allowed: litert, pt2e" in capsys.readouterr().err
