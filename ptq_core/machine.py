"""The machine numbers were measured on, in one line: what every benchmark table and report names.

Speeds differ between the CPUs this project runs on (AVX2, AVX-512 VNNI, AMX), so a number without its
machine means little. Not here: package versions (:func:`ptq_core.pipeline.environment`).
"""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine_line() -> str:
    """``"<cpu>, <n> cores, Python <version>"``."""
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
