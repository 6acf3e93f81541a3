"""Calibration check page: is the calibration subset big enough? Accuracy and ranges vs subset size and seed."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, embeddings, labels, resources
from ptq_core.calibration_check import DEFAULT_SIZES, UNSTABLE_REL_STD

SIZE_CHOICES = [4, 8, 16, 32, 64, 128, 256, 512, 1024]


def render() -> None:
    st.title("Calibration check")
    st.markdown("Is my calibration subset good enough? For the current config, this re-calibrates on subsets of "
                "several sizes, each drawn with a few seeds, and shows how the activation ranges, the accuracy and "
                "the agreement with FP32 move. Statistics are collected once per seed and recombined for the smaller "
                "subsets; each (size, seed) pair is then evaluated.")
    config, result = resources.current_result(complete=False)
    # ptq_core.calibration_check scores every subset by class decisions (argmax against the label and against FP32)
    embeddings.guard(result, "Calibration check", "it scores each calibration subset by class decisions (each "
                     "sample's largest output against its label and against FP32's), and an embedding is a point, "
                     "not a choice among classes, so those numbers would mean nothing.")
    if config.mode != "static":
        st.info(f"This config quantizes activations **{labels.ACT_MODE[config.mode]}**: it has no calibration to "
                "check. Choose *static* activation quantization in the sidebar.")
        st.stop()
    ss = st.session_state
    ss.setdefault("cc_sizes", list(DEFAULT_SIZES))
    ss.setdefault("cc_num_seeds", 3)
    ss.setdefault("cc_run", False)
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    c1.multiselect("Subset sizes", SIZE_CHOICES, key="cc_sizes",
                   help=f"Capped at the calibration pool ({result['dataset']['calibration_pool_size']} samples). "
                        "The config's own size is always added.")
    c2.number_input("Seeds", min_value=1, max_value=8, key="cc_num_seeds")
    c3.toggle("Run the check", key="cc_run", help="Evaluates sizes × seeds configurations: a few seconds on the digits models.")
    sizes = tuple(sorted(ss["cc_sizes"])) or DEFAULT_SIZES
    seeds = tuple(range(int(ss["cc_num_seeds"])))
    if not ss["cc_run"]:
        st.info(f"Switch on **Run the check** to evaluate {len(set(sizes) | {config.calibration.num_samples})} sizes × "
                f"{len(seeds)} seeds.")
        st.stop()
    check = resources.calibration_check(config.to_json(), sizes, seeds)
    for note in check["notes"]:
        st.caption("ℹ️ " + note)

    summary = {r["size"]: r for r in check["summary"]}
    own = summary[check["config_size"]]
    largest = summary[check["sizes"][-1]]
    cols = st.columns(4)
    if own["quant_top1_mean"] is not None:
        cols[0].metric(f"Top-1 at {check['config_size']} samples (mean of {len(seeds)} seeds)",
                       labels.pct(own["quant_top1_mean"]),
                       delta=f"± {100 * own['quant_top1_std']:.2f} pp over seeds", delta_color="off",
                       delta_arrow="off")
        cols[1].metric(f"Top-1 at {check['sizes'][-1]} samples", labels.pct(largest["quant_top1_mean"]),
                       delta=f"{100 * (largest['quant_top1_mean'] - own['quant_top1_mean']):+.2f} pp vs your size")
    cols[2].metric(f"Agreement at {check['config_size']} samples", labels.pct(own["agreement_mean"]),
                   delta=f"± {100 * own['agreement_std']:.2f} pp over seeds", delta_color="off",
                   delta_arrow="off")
    unstable = [r["point"] for r in check["unstable"] if r["unstable"]]
    cols[3].metric("Unstable activation ranges", f"{len(unstable)} of {len(check['points'])}",
                   help=f"Range width varies by more than {100 * UNSTABLE_REL_STD:.0f} % (relative std) across seeds "
                        f"at {check['config_size']} samples.")

    st.plotly_chart(charts.calibration_accuracy(check), key="cc_accuracy")
    st.plotly_chart(charts.calibration_ranges(check, unstable), key="cc_ranges")
    st.caption(f"A curve that is still moving at your size (dotted line) means more samples would change the ranges. "
               f"Error bars: spread over {len(seeds)} seeds. Flagged (red): relative spread above "
               f"{100 * UNSTABLE_REL_STD:.0f} % at {check['config_size']} samples: at that size, which samples were "
               "drawn decides the range more than the clipping method does.")
    table = pd.DataFrame([{
        "activation": r["point"],
        f"range width at {r['size']} samples": r["width_mean"],
        "relative spread over seeds (%)": 100 * r["rel_std"],
        "unstable": "⚠ yes" if r["unstable"] else "",
    } for r in check["unstable"]])
    st.dataframe(table, hide_index=True, key="cc_table",
                 column_config={"relative spread over seeds (%)": st.column_config.NumberColumn(format="%.1f")})
    st.caption(f"Statistics {check['timing']['statistics_s']:.2f} s, evaluations {check['timing']['evaluation_s']:.2f} s.")


render()
