"""PTQ Explorer dashboard: a thin Streamlit shell over :mod:`ptq_core` (run: ``make run``).

``app.py`` is the entry point (page config, state defaults, sidebar, navigation); ``state``
maps the sidebar onto a QuantConfig; ``resources`` holds the cached wrappers around the
engine; ``charts`` builds every Plotly figure; ``views/`` holds one script per page (not ``pages/``, a
name Streamlit reserves for its legacy multipage folder). No
quantization logic lives here: every number comes from ptq_core.
"""
