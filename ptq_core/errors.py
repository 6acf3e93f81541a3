"""The errors a user can cause, as one small hierarchy.

Everything a person can get wrong (a config field, a model file, a data folder, a layer
with NaN weights) raises a subclass of :class:`PTQError` whose message names the field or
layer, the offending value and what is allowed. The CLI prints the message and exits 2;
the dashboard shows it with ``st.error``. Anything that is not a ``PTQError`` is a bug and
stays loud.
"""

from __future__ import annotations


class PTQError(Exception):
    """Base class of every user-causable failure in ptq_core."""


class ConfigError(PTQError, ValueError):
    """A QuantConfig field has a bad value, an unknown key or a wrong type."""


class ModelError(PTQError):
    """A model cannot be found, loaded, traced or quantized as asked."""


class DataError(PTQError):
    """A data set cannot be found or loaded, or has the wrong shape."""


class CalibrationError(PTQError):
    """Calibration statistics are unusable, e.g. NaN or Inf in an activation."""


class ExportError(PTQError):
    """The quantized model cannot be exported or run by the target runtime."""


class OutputError(PTQError):
    """An output file cannot be written where it was asked for (a missing, read-only or occupied path)."""


class ResultFileError(PTQError):
    """A file given as a Result (``python -m ptq_core run --output``) is missing, unreadable or not a Result."""
