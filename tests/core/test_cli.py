"""``python -m ptq_core``: run, sweep, list, and clean failures (exit 2, no traceback)."""

from __future__ import annotations

import csv
import json
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
