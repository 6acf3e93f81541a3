"""Whether the LiteRT target can run here: its two packages, and their versions.

What lives here: :func:`litert_unavailable` (None, or why not in plain words) and :func:`versions`.
Not here: converting (:mod:`ptq_core.tflite.export`) or running (:mod:`ptq_core.tflite.runtime`).

``litert-torch`` is only looked up, not imported: importing it loads JAX and takes ~8 s on a 2-core
machine, too much for a check the dashboard makes on every rerun. A copy that is present but does
not import is caught when the export imports it (an :class:`~ptq_core.errors.ExportError` naming the
import error). ``ai-edge-litert``'s interpreter imports in ~0.2 s and is imported for real.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

CONVERTER, RUNTIME = "litert-torch", "ai-edge-litert"  # the PyPI names, as a user installs them
_MODULES = {CONVERTER: "litert_torch", RUNTIME: "ai_edge_litert"}


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it (blocked)
        return False


def litert_unavailable() -> str | None:
    """None when the converter (litert-torch) and the LiteRT interpreter (ai-edge-litert) are usable, else why not."""
    missing = [pip for pip, module in _MODULES.items() if not _found(module)]
    if missing:
        return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
                f"(pip install {' '.join(missing)}); the LiteRT target needs the converter and the interpreter")
    try:
        importlib.import_module("ai_edge_litert.interpreter")
    except Exception as exc:  # a broken wheel raises anything from ImportError to OSError
        return f"{RUNTIME} is installed but its interpreter does not import: {type(exc).__name__}: {exc}"
    return None


def versions() -> dict[str, str]:
    """``{"litert-torch": "0.10.0", "ai-edge-litert": "2.3.0"}`` (``"unknown"`` when not installed)."""
    out: dict[str, str] = {}
    for pip in _MODULES:
        try:
            out[pip] = importlib.metadata.version(pip)
        except importlib.metadata.PackageNotFoundError:
            out[pip] = "unknown"
    return out
