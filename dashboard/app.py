"""PTQ Explorer, the dashboard: ``make run`` (= ``streamlit run dashboard/app.py``), from any directory.

This entry script sets the page config, initialises this session's state once, draws the
sidebar (every QuantConfig field) and hands over to ``st.navigation``; each page is one
script in ``dashboard/views/``. All numbers come from ptq_core through ``dashboard.resources``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `streamlit run dashboard/app.py` puts dashboard/, not the repo, on sys.path
    sys.path.insert(0, str(HERE.parent))

import streamlit as st  # noqa: E402

from dashboard import resources, sharing, sidebar, state  # noqa: E402

PAGES = HERE / "views"  # not "pages/": Streamlit treats that name as its legacy multipage folder


def main() -> None:
    st.set_page_config(page_title="PTQ Explorer", page_icon=":material/tune:", layout="wide")
    resources.configure_torch()
    resources.clear_pending()
    state.init_state()
    sharing.restore_from_url()  # a shared link sets the controls before they are drawn (once per session)
    sidebar.render()
    sharing.sync_url()  # the address bar carries the controls' config, so it can be copied at any time
    navigation = st.navigation({
        "Explore": [
            st.Page(PAGES / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
            st.Page(PAGES / "weights.py", title="Weights", icon=":material/grid_on:"),
            st.Page(PAGES / "activations.py", title="Activations", icon=":material/bar_chart:"),
            st.Page(PAGES / "layer_error.py", title="Layer error", icon=":material/stacked_bar_chart:"),
        ],
        "Decide": [
            st.Page(PAGES / "compare.py", title="Compare and sweep", icon=":material/compare:"),
            st.Page(PAGES / "sensitivity.py", title="Sensitivity", icon=":material/troubleshoot:"),
            st.Page(PAGES / "calibration_check.py", title="Calibration check", icon=":material/target:"),
            st.Page(PAGES / "deploy.py", title="Deploy", icon=":material/rocket_launch:"),
            st.Page(PAGES / "export.py", title="Export / import", icon=":material/save:"),
        ],
        "Workshop": [
            st.Page(PAGES / "learn.py", title="Learn: how quantization works", icon=":material/school:"),
        ],
    })
    flash = state.pop_flash()
    if flash is not None:
        kind, message = flash
        if kind in ("success", "info"):
            st.toast(message, icon=":material/check_circle:")
        else:
            {"warning": st.warning, "error": st.error}[kind](message)
    sharing.show_error()
    navigation.run()
    resources.warm_up_in_background()  # once the page is drawn: its imports would slow the first page down
    resources.finish_pending()  # the rest of what the page shows (complete evaluation, runtime check, targets), then redraw


main()
