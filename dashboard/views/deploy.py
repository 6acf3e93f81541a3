"""Deploy page: the quantized model on every runtime it could ship on, side by side (``Result.runtimes``, issue 13).

One table (FP32, ptq_core's simulation, onnxruntime's integer kernels, and the deployment targets the sidebar
asks for: LiteRT, PyTorch's own PT2E PTQ), one accuracy-vs-latency chart, each runtime's findings in plain
words, and with ``evaluation.arithmetic = "integer"`` which units the simulation computes exactly as
onnxruntime does. The targets run only while this page is open (``resources`` part ``"targets"``): converting
a large model for LiteRT takes a minute or more. A target that cannot run is a row with its reason.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, labels, resources
from dashboard.sidebar import TARGET_LABELS
from ptq_core.config import QuantConfig

KIND = {"integer": "integer kernels", "simulated": "simulated (float ops)", "float": "float"}
INTRO = (
    "The same quantized model, run on every runtime you could ship it with. **FP32** is the reference; the "
    "**simulation** is what every other page shows (ptq_core computing the quantized model in PyTorch or "
    "onnxruntime); **onnxruntime** runs the exported ONNX file on its integer kernels; the **deployment "
    "targets** you choose in the sidebar run it elsewhere: **LiteRT** (this plan as a full-integer .tflite) "
    "and **PyTorch PT2E** (PyTorch quantizing the FP32 model its own way, the framework default). "
    "*Agreement with FP32* asks whether a runtime picks the same class as the float model; *agreement with "
    "the simulation* and *max |diff|* ask whether it computes what the simulation predicted."
)


def batch_sizes(rows: list[dict[str, Any]]) -> list[str]:
    """Every batch size some row has a latency for, ascending: ["1", "32"]."""
    return sorted({bs for r in rows for bs in r.get("latency_ms", {})}, key=int)


def runtime_table(rows: list[dict[str, Any]], embedding: bool) -> pd.DataFrame:
    """One line per runtime, numbers first (the version strings are long); shares in %, blanks where a runtime has
    no number (or did not run)."""
    words = labels.WORDS["embedding" if embedding else "classification"]
    diff = "max |embedding diff| vs simulation" if embedding else "max |logit diff| vs simulation"
    out = []
    for r in rows:
        ran = r.get("available", True)

        def share(key: str, r: dict[str, Any] = r, ran: bool = ran) -> float | None:
            return 100 * r[key] if ran and r.get(key) is not None else None

        line: dict[str, Any] = {
            "runtime": r["name"],
            "kind": KIND.get(r["kind"], r["kind"]) if ran else "not available (reason below)",
            f"{words['accuracy']} (%)": share("top1"),
            f"{words['agreement']} with FP32 (%)": share("agreement"),
            f"{words['agreement']} with simulation (%)": share("sim_agreement"),
            diff: r.get("max_abs_diff") if ran else None,
        }
        for bs in batch_sizes(rows):
            line[f"latency batch {bs} (ms)"] = r.get("latency_ms", {}).get(bs)
        line["threads"] = r.get("threads")
        line["file size"] = labels.size_bytes(r["file_bytes"]) if r.get("file_bytes") else ""
        # Fallbacks are layers an integer runtime could not run as planned: FP32 and the simulation have none to count.
        line["fallbacks"] = len(r.get("fallbacks", [])) if ran and r["kind"] == "integer" else None
        line["version"] = r.get("version") or ""
        out.append(line)
    return pd.DataFrame(out)


def _column_config(table: pd.DataFrame) -> dict[str, Any]:
    """Short headers (the table must fit a laptop screen), the long names as each column's help; names pinned.

    The numbers arrive as text (see :func:`shown`), aligned right.
    """
    short = {"with FP32 (%)": ("= FP32 (%)", "the same answer as the float model"),
             "with simulation (%)": ("= simulation (%)", "the same answer as ptq_core's simulation predicted"),
             "vs simulation": ("max |diff|", "the largest difference over every sample and output; 0 means the "
                                             "simulation's very numbers")}
    config: dict[str, Any] = {"runtime": st.column_config.TextColumn(pinned=True)}
    for name in table.columns:
        label, help_text = next(((lab, f"{name}: {why}.") for end, (lab, why) in short.items() if name.endswith(end)),
                                (None, None))
        if name.startswith("latency batch "):
            label = f"ms, batch {name.split()[2]}"
            help_text = f"{name}: median after warm-up. A simulation's time is float ops simulating integers."
        if label is not None or name.endswith("(%)") or name in ("threads", "fallbacks"):
            config[name] = st.column_config.TextColumn(label, help=help_text, alignment="right")
    return config


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text at a readable precision, blank where a runtime has no number.

    st.dataframe draws a missing number as a grey "None" (a pandas Styler's ``na_rep`` does not reach it), which
    reads like a runtime answering "None"; five rows need no numeric sorting.
    """
    formats: dict[str, str] = {}
    for name in table.columns:
        if name.endswith("(%)"):
            formats[name] = "{:.2f}"
        elif name.startswith("max |"):
            formats[name] = "{:.3g}"
        elif name.startswith("latency"):
            formats[name] = "{:.3f}"
        elif name in ("threads", "fallbacks"):
            formats[name] = "{:.0f}"
    out = table.copy()
    for name, fmt in formats.items():
        out[name] = [fmt.format(v) if v is not None and not pd.isna(v) else "" for v in table[name]]
    return out


def integer_report(report: dict[str, Any]) -> str:
    """What the integer-exact simulation computes exactly and what it runs in float, in plain words (markdown)."""
    exact, floats = report.get("integer", []), report.get("float_ops", [])
    total = len(exact) + len(floats)
    lines = [f"**Integer-exact simulation**: {len(exact)} of {total} quantized unit{'s' if total != 1 else ''} "
             "compute exactly what onnxruntime's integer kernels compute (integer sums, int32 bias, the same "
             "requantization and rounding)" + ("." if not floats else
                                                f"; {len(floats)} run{'s' if len(floats) == 1 else ''} a float op:")]
    by_reason: dict[str, list[str]] = {}
    for row in floats:
        by_reason.setdefault(row["reason"], []).append(row["layer"])
    lines += [f"- {', '.join(f'`{x}`' for x in layers)}: {reason}" for reason, layers in by_reason.items()]
    by_kernel: dict[str, list[str]] = {}
    for row in exact:
        by_kernel.setdefault(row["kernel"], []).append(row["layer"])
    if by_kernel:
        lines.append("")
        lines.append("Exact units, by the onnxruntime kernel they reproduce: "
                     + "; ".join(f"{kernel}: {', '.join(f'`{x}`' for x in layers)}" for kernel, layers in by_kernel.items())
                     + ".")
    return "\n".join(lines)


def _status(config: QuantConfig, result: dict[str, Any]) -> None:
    """What is missing from the table and why: targets pending or not chosen, the runtime check off or pending."""
    pending = result.get("pending", [])
    ev = config.evaluation
    if "samples" in pending:
        data = result["dataset"]
        st.info(f"These numbers are a first answer on {data['num_eval_samples']} of "
                f"{data.get('num_eval_samples_config', '?')} samples; the complete evaluation runs first, then the "
                "runtimes.", icon=":material/hourglass_top:")
    if "targets" in pending:
        names = " and ".join(TARGET_LABELS.get(t, t) for t in ev.targets)
        st.info(f"**{names}**: not run yet. They run next, on this page (progress above); converting a large model "
                "can take a minute or more. The rows below are what is measured so far.", icon=":material/schedule:")
    elif "runtime" in pending:
        st.info("The integer runtime check (onnxruntime) is pending: it runs next and adds its row.",
                icon=":material/schedule:")
    if not ev.targets:
        st.info("No deployment targets chosen. Add **LiteRT (TFLite)** or **PT2E (PyTorch's own PTQ)** in the "
                "sidebar (*Evaluation → Deployment targets*) to run this model there too; they run while this page "
                "is open.", icon=":material/add_circle:")
    if ev.runtime is None:
        st.info("The integer runtime check is off, so there is no onnxruntime row. Turn it on in the sidebar "
                "(*Evaluation → Integer runtime check → onnxruntime*).")


def _details(rows: list[dict[str, Any]]) -> None:
    """Each runtime's notes and fallbacks in plain words, one expander per runtime; unavailable ones say why."""
    for r in rows:
        if not r.get("available", True):
            st.warning(f"**{r['name']}** could not run: {r.get('reason') or 'no reason given'}",
                       icon=":material/block:")
    st.subheader("What each runtime found")
    for r in rows:
        notes, fallbacks = r.get("notes", []), r.get("fallbacks", [])
        ran = r.get("available", True)
        count = [f"{len(notes)} note{'s' if len(notes) != 1 else ''}" if notes else "no notes"]
        if fallbacks:
            count.append(f"{len(fallbacks)} fallback{'s' if len(fallbacks) != 1 else ''}")
        title = f"{r['name']}: " + ("not available" if not ran else ", ".join(count))
        # The targets are what the user came to this page for: their findings open; the rest one click away.
        target = not any(r["name"].startswith(p) for p in ("FP32", "simulation", "onnxruntime"))
        with st.expander(title, expanded=not ran or target):
            if not ran:
                st.markdown(f"Not available: {r.get('reason') or 'no reason given'}")
            if r.get("version"):
                st.caption(f"{r['version']}" + (f", {r['threads']} thread(s)" if r.get("threads") else ""))
            for note in notes:
                st.markdown(f"- {note}")
            if fallbacks:
                st.markdown("**Not run as ptq_core planned it:**\n" + "\n".join(
                    f"- `{f.get('layer', '?')}`: {f.get('reason', '')}" for f in fallbacks))
            elif ran and r["kind"] == "integer":
                st.markdown("No fallbacks: every quantized layer ran as planned.")
            if ran and not notes and not fallbacks and r["kind"] != "integer":
                st.caption("Nothing to add.")


def _exactness(config: QuantConfig, rows: list[dict[str, Any]]) -> str | None:
    """With integer arithmetic, one line on how onnxruntime's outputs compare with the simulation's."""
    if config.evaluation.arithmetic != "integer":
        return None
    ort = next((r for r in rows if r["name"] == "onnxruntime" and r.get("available", True)), None)
    if ort is None or ort.get("max_abs_diff") is None:
        return None
    if ort["max_abs_diff"] == 0:
        return ("onnxruntime's outputs **equal the integer-exact simulation's on every sample** (max |diff| 0): every "
                "number on the other pages is what onnxruntime computes.")
    return (f"onnxruntime's outputs differ from the integer-exact simulation's by up to {ort['max_abs_diff']:.3g}: "
            "see the float ops below, and the onnxruntime row's notes.")


def render() -> None:
    st.title("Deploy")
    st.markdown(INTRO)
    config, result = resources.current_result(runtime=True, targets=True)
    _status(config, result)
    rows: list[dict[str, Any]] = result.get("runtimes") or []
    if not rows:
        st.info("This result has no runtimes table (it was computed by an older engine).")
        return
    embedding = labels.is_embedding(result["metrics"])
    words = labels.words(result["metrics"])
    table = runtime_table(rows, embedding)
    st.dataframe(shown(table), hide_index=True, column_config=_column_config(table), key="dp_table")
    st.caption(f"Measured on {result['dataset']['num_eval_samples']} evaluation samples. Latency: median per batch "
               "after warm-up, on this server's CPU with the threads shown; a simulation's time is float ops "
               "simulating integers, not what an integer kernel takes.")
    exact = _exactness(config, rows)
    if exact is not None:
        st.success(exact)

    measure = "top1" if rows[0].get("top1") is not None else "agreement"
    title = words["accuracy"] if measure == "top1" else f"{words['agreement']} with FP32"
    st.plotly_chart(charts.runtime_scatter(rows, measure, title), key="dp_scatter")
    if measure == "agreement":
        st.caption(f"No {words['accuracy']} here (unlabelled data or random weights): agreement with FP32 instead.")

    if config.evaluation.arithmetic == "integer":
        report = result.get("environment", {}).get("integer_arithmetic")
        if report:
            st.subheader("Integer arithmetic")
            st.markdown(integer_report(report))
    _details(rows)


if __name__ == "__main__":  # Streamlit runs a page as __main__; tests import it for its table and report builders
    render()
