"""Command line: ``python -m ptq_core run | sweep | export | sensitivity | search | report | list``.

    python -m ptq_core run --config assets/configs/w8a8.json --output result.json
    python -m ptq_core sweep --config assets/configs/w8a8.json \\
        --grid weights.bits=8,4 weights.granularity=per_tensor,per_channel --output table.csv
    python -m ptq_core export --config assets/configs/w8a8.json --output model.onnx
    python -m ptq_core export --config assets/configs/w8a8.json --format tflite --output model.tflite
    python -m ptq_core sensitivity --config C.json --output S.json
    python -m ptq_core search --config C.json --max-drop 1.0 --weight-bits 8,4 --activation-bits 8,16 --output best.json --frontier f.csv
    python -m ptq_core report --results w8.json w4.json --output report.html
    python -m ptq_core list

``sensitivity`` and ``search`` fan their evaluations out on Ray by default (:mod:`ptq_core.fanout`);
``--runner serial`` keeps them in this process.

A bad config, model or data set prints one line naming the field and what is allowed, and
exits with status 2 (no traceback). Progress goes to stderr, results to files (or stdout).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import QuantConfig
from .errors import ConfigError, OutputError, PTQError
from .sweep import expand_grid, parse_grid, source_key

if TYPE_CHECKING:
    from .fanout import Runner

EXIT_USER_ERROR = 2


class _Progress:
    """A one-line text progress bar on stderr (silent when ``quiet``)."""

    def __init__(self, quiet: bool, prefix: str = "") -> None:
        self.quiet, self.prefix = quiet, prefix

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.quiet:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{self.prefix}{message:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _write(text: str, output: str | None) -> None:
    if output is None or output == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(output).write_text(text + "\n", encoding="utf-8")


def _check_output(output: str | None, flag: str) -> None:
    """Fail now, before anything is computed, when ``output`` cannot be written; missing folders are created.

    A run's results are only worth computing if they can be kept: a folder, a read-only place or an
    uncreatable parent is an OutputError naming the flag and the path. Missing parent folders are
    created, as ``export`` does; the probe file is removed again if it did not exist.
    """
    if output is None or output == "-":
        return
    out = Path(output)
    if out.is_dir():
        raise OutputError(f"{flag}: {output!r} is a folder; allowed: a file path (created, or replaced if it exists)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{flag}: cannot create the folder {str(out.parent)!r} for {output!r} ({exc.strerror}); allowed: a path "
            "whose folders exist or can be created"
        ) from None
    existed = out.exists()
    try:
        with out.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise OutputError(f"{flag}: cannot write {output!r} ({exc.strerror}); allowed: a file in a writable folder") from None
    if not existed:
        out.unlink(missing_ok=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run

    config = QuantConfig.load(args.config)
    if args.targets is not None:  # the Result's config records them: its JSON reproduces the run
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
        spec = config.to_dict()
        spec["evaluation"]["targets"] = names
        try:
            config = QuantConfig.from_dict(spec)
        except ConfigError as exc:
            raise ConfigError(f"--targets: {exc}") from None
    _check_output(args.output, "--output")
    result = run(config, on_progress=_Progress(args.quiet))
    _write(result.to_json(), args.output)
    if not args.quiet:
        m = result.metrics
        if m.get("task") == "embedding":  # k-NN topic accuracy, neighbours and cosine: ptq_core.metrics.embedding_metrics
            knn = f"5-NN topic accuracy FP32 {m['fp32_top1']:.2%} -> quantized {m['quant_top1']:.2%}, " if "quant_top1" in m else ""
            quality = (f"{knn}cosine to FP32 mean {m['cosine_mean']:.4f} (lowest {m['cosine_min']:.4f}), "
                       f"nearest-neighbour agreement {m['neighbour_agreement']:.2%}"
                       f" ({m['neighbours_moved']:.0f} moved, {m['neighbours_moved_near_ties']:.0f} of them FP32 near ties)")
        else:
            top1 = f"top-1 FP32 {m['fp32_top1']:.2%} -> quantized {m['quant_top1']:.2%}, " if "quant_top1" in m else ""
            quality = f"{top1}agreement {m['agreement']:.2%}"
        sys.stderr.write(
            f"{result.mode}: {quality}, "
            f"size {result.size['fp32_bytes']} -> {result.size['quant_bytes']} bytes "
            f"({result.size['compression_ratio']:.2f}x)\n"
        )
        for row in result.runtimes:
            sys.stderr.write(runtime_line(row) + "\n")
        for w in result.warnings:
            sys.stderr.write(f"warning: {w}\n")
    return 0


def runtime_line(row: dict[str, Any]) -> str:
    """One row of ``Result.runtimes`` as a line: ``runtime onnxruntime (onnxruntime 1.31.1 CPU, integer): top-1 ...``."""
    head = f"runtime {row['name']} ({row['version']}, {row['kind']})" if row["version"] else f"runtime {row['name']}"
    if not row["available"]:
        return f"{head}: not run: {row['reason']}"
    parts = []
    if row["top1"] is not None:
        parts.append(f"top-1 {row['top1']:.2%}")
    parts.append(f"agreement with FP32 {row['agreement']:.2%}")
    if row["sim_agreement"] is not None:
        parts.append(f"with the simulation {row['sim_agreement']:.2%} (max |diff| {row['max_abs_diff']:.3g})")
    if row["latency_ms"]:
        batches = ", ".join(f"batch {b} {ms:.2f} ms" for b, ms in row["latency_ms"].items())
        parts.append(f"{batches} on {row['threads']} thread(s)" + (" (simulated)" if row["kind"] == "simulated" else ""))
    if row["file_bytes"]:
        parts.append(f"{row['file_bytes']} bytes")
    if row["fallbacks"]:
        parts.append(f"{len(row['fallbacks'])} fallback(s)")
    return f"{head}: " + ", ".join(parts)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .pipeline import Explorer
    from .quantize import check_names

    base = QuantConfig.load(args.config)
    out = Path(args.output)
    json_path = out.with_suffix(".json")
    if json_path == out:
        raise OutputError(f"--output: got {args.output!r}; allowed: a .csv path (the full Results go next to it as .json)")
    _check_output(str(out), "--output")
    _check_output(str(json_path), "--output (its .json)")
    # Every value of the grid is checked before the first config runs: fields and model/data names by
    # expand_grid, layer names and group sizes against each model by check_names.
    configs = expand_grid(base, parse_grid(args.grid))
    explorers: dict[tuple[str, str], Explorer] = {}
    for cfg in configs:
        key = source_key(cfg)
        if key not in explorers:
            explorers[key] = Explorer.for_config(cfg)
        check_names(explorers[key].prepared(cfg.fold_batchnorm), cfg)
    rows, results = [], []
    for i, cfg in enumerate(configs):
        result = explorers[source_key(cfg)].evaluate(cfg, on_progress=_Progress(args.quiet, f"[{i + 1}/{len(configs)}] "))
        rows.append(result.summary_row())
        results.append(result.to_dict())
        # Written after every config, so a failure later keeps what is done.
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        json_path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    if not args.quiet:
        sys.stderr.write(f"{len(rows)} configurations -> {out} and {json_path}\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Quantize as the config says and write the ONNX QDQ model (Explorer.export_onnx); one summary line."""
    from .pipeline import Explorer

    config = QuantConfig.load(args.config)
    _check_output(args.output, "--output")
    _check_output(args.report, "--report")
    explorer = Explorer.for_config(config)
    if args.format == "tflite":
        if args.opset is not None:
            raise OutputError("--opset: applies to --format onnx only; a .tflite has no opset")
        tfl = explorer.export_tflite(config, args.output, on_progress=_Progress(args.quiet))
        if args.report:
            _write(json.dumps(tfl.to_dict(), indent=2), args.report)
        sys.stdout.write(f"wrote {args.output}: {tfl.file_bytes} bytes, full-integer LiteRT "
                         f"({len(tfl.weights_carried)} weight tensors and {len(tfl.activations_carried)} activation grids "
                         f"carried from the plan, {len(tfl.fallbacks)} fallbacks)\n")
        if not args.quiet:
            for row in tfl.fallbacks:
                sys.stderr.write(f"fallback: {row['layer']}: {row['reason']}\n")
        return 0
    report = explorer.export_onnx(config, args.output, opset=args.opset, on_progress=_Progress(args.quiet))
    if args.report:
        _write(json.dumps(report.to_dict(), indent=2), args.report)
    sys.stdout.write(report.summary() + "\n")
    if not args.quiet:
        for row in report.float_fallback:
            sys.stderr.write(f"float fallback: {row['layer']}: {row['reason']}\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One self-contained HTML file comparing the given Results (ptq_core.report)."""
    from .report import build_report, load_results

    entries = load_results(args.results)  # every file checked before anything is written
    _check_output(args.output, "--output")
    _write(build_report(entries, title=args.title), args.output)
    if not args.quiet:
        sys.stderr.write(f"report of {len(entries)} configuration{'s' if len(entries) != 1 else ''} -> {args.output}\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .data import available_datasets
    from .models import available_models, get_model_entry

    lines = ["models:"]
    for name in available_models():
        e = get_model_entry(name)
        label = "" if e.pretrained else " [random weights]"
        lines.append(f"  {name:<24} {e.description}{label}")
    lines.append("datasets:")
    lines.extend(f"  {name}" for name in available_datasets())
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _runner(explorer: Any, args: argparse.Namespace) -> Runner:
    from .fanout import make_runner

    return make_runner(explorer, args.runner, address=args.ray_address)


def _widths(text: str, option: str = "weight-bits", allowed: str = "comma-separated widths from 2 to 8, e.g. 8,6,4") -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option}: got {text!r}; allowed: {allowed}") from None


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .pipeline import Explorer
    from .sensitivity import sensitivity

    config = QuantConfig.load(args.config)
    _check_output(args.output, "--output")
    explorer = Explorer.for_config(config)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    report = sensitivity(explorer, config, runner=_runner(explorer, args), layers=layers,
                         candidate_bits=_widths(args.weight_bits), on_progress=_Progress(args.quiet))
    _write(json.dumps(report.to_dict(), indent=2), args.output)
    if not args.quiet:
        top = ", ".join(r.name for r in report.layers[:5])
        sys.stderr.write(f"{len(report.layers)} layers in {report.seconds:.0f} s ({report.runner}); most sensitive: {top}\n")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .pipeline import Explorer
    from .search import Candidates, Target, search

    config = QuantConfig.load(args.config)
    target = Target(max_drop=args.max_drop, min_agreement=args.min_agreement, max_kl=args.max_kl)
    candidates = Candidates(_widths(args.weight_bits), allow_float=args.allow_float, narrow_clipping=args.narrow_clipping,
                            narrow_scheme=args.narrow_scheme,
                            activation_bits=None if args.activation_bits is None else _widths(
                                args.activation_bits, "activation-bits",
                                "one width from 2 to 8, optionally with 16 (float), e.g. 8,16"))
    candidates.validate()
    target.validate()
    _check_output(args.output, "--output")
    _check_output(args.frontier, "--frontier")
    explorer = Explorer.for_config(config)
    result = search(explorer, config, target, candidates, runner=_runner(explorer, args), on_progress=_Progress(args.quiet))
    _write(json.dumps(result.best.config, indent=2), args.output)
    if args.frontier:
        with open(args.frontier, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["label", "weight_bytes", "share_of_int8", "agreement", "kl_divergence", "quant_top1", "meets",
                             "frontier"])
            for p in result.points:
                writer.writerow([p.label, p.weight_bytes, f"{p.weight_bytes / result.int8_weight_bytes:.4f}", p.agreement,
                                 p.kl_divergence, p.quant_top1, p.meets, p.frontier])
    sys.stderr.write(f"search: {result.message} ({len(result.points)} evaluations, {result.seconds:.0f} s, {result.runner})\n")
    return 0


def _fanout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-bits", default="8,6,4", help="candidate weight widths per layer, e.g. 8,6,4 (2 to 8)")
    p.add_argument("--runner", default="ray", choices=["ray", "serial"],
                   help="ray: evaluations fanned out on Ray (started inside this process unless RAY_ADDRESS or "
                        "--ray-address names a cluster); serial: one after the other in this process")
    p.add_argument("--ray-address", default=None, help="a Ray cluster's HOST:PORT (default: the RAY_ADDRESS variable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ptq_core",
        description="PTQ Explorer engine: post-training quantization runs, sweeps and listings.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="quantize and evaluate one config, write its Result as JSON")
    p_run.add_argument("--config", required=True, help="QuantConfig JSON file (see assets/configs/)")
    p_run.add_argument("--output", default=None, help="where to write the Result JSON (default: stdout)")
    p_run.add_argument("--targets", default=None, metavar="litert,pt2e",
                       help="also run the model on these deployment targets (sets evaluation.targets): litert (the "
                            "full-integer .tflite in LiteRT), pt2e (PyTorch's own PTQ); '' for none")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")
    p_run.set_defaults(func=cmd_run)

    p_sweep = sub.add_parser("sweep", help="run every combination of a grid of config fields")
    p_sweep.add_argument("--config", required=True, help="base QuantConfig JSON file")
    p_sweep.add_argument(
        "--grid", nargs="+", required=True, metavar="FIELD=V1,V2",
        help="dotted config field and comma-separated values, e.g. weights.bits=8,4 "
             "weights.granularity=per_tensor,per_channel activations.clipping=minmax,mse",
    )
    p_sweep.add_argument("--output", required=True, help="CSV table, one row per config; the full Results go next to it as .json")
    p_sweep.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p_sweep.set_defaults(func=cmd_sweep)

    p_export = sub.add_parser("export", help="quantize one config and write it as an ONNX QDQ model (onnxruntime) "
                                             "or a full-integer LiteRT .tflite")
    p_export.add_argument("--config", required=True, help="QuantConfig JSON file (see assets/configs/)")
    p_export.add_argument("--output", required=True, help="where to write the .onnx (or .tflite) file")
    p_export.add_argument("--format", choices=("onnx", "tflite"), default="onnx",
                          help="onnx: QDQ for onnxruntime (default); tflite: full-integer LiteRT with the plan's scales")
    p_export.add_argument("--opset", type=int, default=None,
                          help="ONNX opset, 13 to 21 (default: 17, or 21 when INT4 or per-group weights need it)")
    p_export.add_argument("--report", default=None, help="also write the export report (kernels, fallbacks, qparams) as JSON")
    p_export.add_argument("--quiet", action="store_true", help="no progress bar or fallback details on stderr")
    p_export.set_defaults(func=cmd_export)

    p_sens = sub.add_parser("sensitivity", help="each layer quantized alone and spared: which layers hurt, ranked")
    p_sens.add_argument("--config", required=True, help="QuantConfig JSON file: the settings every layer is measured at")
    p_sens.add_argument("--output", default=None, help="where to write the report JSON, one row per layer (default: stdout)")
    p_sens.add_argument("--layers", default=None, help="comma-separated layer names (default: every layer)")
    _fanout_options(p_sens)
    p_sens.set_defaults(func=cmd_sensitivity)

    p_search = sub.add_parser("search", help="the smallest per-layer weight widths that meet an accuracy target")
    p_search.add_argument("--config", required=True, help="QuantConfig JSON file: the settings the search starts from")
    p_search.add_argument("--output", required=True, help="where to write the answer, an ordinary QuantConfig JSON")
    p_search.add_argument("--max-drop", type=float, default=None, help="top-1 at most this many points below FP32")
    p_search.add_argument("--min-agreement", type=float, default=None, help="agreement with FP32 at least this percent")
    p_search.add_argument("--max-kl", type=float, default=None, help="mean output KL from FP32 at most this (nats)")
    p_search.add_argument("--allow-float", action="store_true",
                          help="layers may stay in float when even the widest width misses the target")
    p_search.add_argument("--narrow-clipping", default="mse", metavar="mse|percentile|minmax|keep",
                          help="weight clipping of a width narrower than the config's (default mse: a range chosen "
                               "for the width; keep: the config's own)")
    p_search.add_argument("--narrow-scheme", default="keep", metavar="asymmetric|symmetric|keep",
                          help="weight scheme of a width narrower than the config's (default keep: the config's own; "
                               "asymmetric loses less at 4-5 bits, but LiteRT/TFLite takes symmetric weights only)")
    p_search.add_argument("--activation-bits", default=None, metavar="8[,16]",
                          help="activation width of every point (default: the config's), and 16 to let the search leave "
                               "the points that hurt most in float (keep_float_activations: no weight byte, but their "
                               "readers run in float)")
    p_search.add_argument("--frontier", default=None, help="also write every evaluated point as CSV (frontier marked)")
    _fanout_options(p_search)
    p_search.set_defaults(func=cmd_search)

    p_report = sub.add_parser("report", help="one HTML file comparing Results: metrics, charts, configs, versions")
    p_report.add_argument("--results", nargs="+", required=True, metavar="RESULT.json",
                          help="Result JSON files (run --output), or the .json list a sweep writes")
    p_report.add_argument("--output", required=True, help="where to write the .html report (opens offline)")
    p_report.add_argument("--title", default="PTQ Explorer comparison", help="the report's heading")
    p_report.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    p_report.set_defaults(func=cmd_report)

    p_list = sub.add_parser("list", help="list the registered models and data sets")
    p_list.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except PTQError as exc:
        sys.stderr.write(f"\nerror: {exc}\n")
        return EXIT_USER_ERROR
