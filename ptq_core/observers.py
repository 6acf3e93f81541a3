"""Running statistics of one activation tensor, collected once per calibration run.

:class:`TensorStats` keeps the element count, the exact min and max, and a fine symmetric
histogram from which every activation range (min-max, percentile, MSE, KL) and its expected
error are derived later by :mod:`ptq_core.ranges`, without running the model again. Choosing
ranges is not done here; hooking statistics into a model is :mod:`ptq_core.calibration`.

The histogram has ``2 * NUM_BINS`` bins over ``[-R, R)`` with ``R = 2**range_exp`` the power
of two just above the largest ``|x|`` seen, so bin ``i`` covers
``[(i - NUM_BINS) * w, (i - NUM_BINS + 1) * w)`` with ``w = R / NUM_BINS``. Example: data in
``[-0.7, 3.2]`` gives ``R = 4``, ``w = 4 / 4096 = 0.0009765625``, and ``x = 1.0`` falls in
bin ``4096 + 1024 = 5120``.

Because R and w are powers of two, ``x * (NUM_BINS / R)`` is exact and so is its floor: every
value lands in the bin it mathematically belongs to. When a batch exceeds R, R doubles and
pairs of adjacent bins are summed toward the centre, which gives exactly the histogram a
direct binning at 2R would have given. Batch statistics therefore merge exactly, in any order
(``merge``, ``merge_all``). Bin counts are int64.

Speed (see ``benchmarks/bench_observers.py``): on CPU float32 tensors of a million elements or more, one
compiled pass finds the min, max and counts (:func:`ptq_core.binning.histogram`); elsewhere one ``aminmax``
pass, then the counts from PyTorch ops.
Each TensorStats owns all its state, so different instances may be updated from different
threads; one instance must not be updated from two threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .binning import bincount_torch, histogram
from .errors import CalibrationError

NUM_BINS = 4096  # bins per side: 8-bit steps span >= 16 bins, so in-bin detail barely matters
# R never goes below 2**-100: keeps NUM_BINS / R a normal float32 (no overflow in x * (N / R)).
_MIN_RANGE_EXP = -100


def _rebin(hist: Tensor, shift: int) -> Tensor:
    """``hist`` at range 2**e re-binned exactly to range 2**(e + shift) (``shift >= 0``).

    Bin with offset ``o = i - NUM_BINS`` covers ``[o*w, (o+1)*w)``; at width ``w * 2**shift`` it
    lies inside the bin with offset ``floor(o / 2**shift) = o >> shift``. Example (shift 1):
    bins 4096, 4097 -> 4096; 4094, 4095 -> 4095; 8190, 8191 -> 6143.
    """
    if shift == 0:
        return hist.clone()
    offsets = torch.arange(-NUM_BINS, NUM_BINS, dtype=torch.int64) >> min(shift, 62)
    out = torch.zeros_like(hist)
    out.index_add_(0, offsets + NUM_BINS, hist)
    return out


class TensorStats:
    """count, min, max, num_batches and a ``[2 * NUM_BINS]`` int64 histogram of one tensor.

    ``update(x, name)`` adds a tensor of any shape; ``merge`` combines two statistics exactly.
    An empty object has ``count == 0``, ``min == inf``, ``max == -inf`` and ``range_exp None``.
    """

    def __init__(self) -> None:
        self.count: int = 0
        self.min: float = math.inf
        self.max: float = -math.inf
        self.num_batches: int = 0
        self.range_exp: int | None = None  # histogram spans [-2**range_exp, 2**range_exp)
        self.hist: Tensor = torch.zeros(2 * NUM_BINS, dtype=torch.int64)
        self.name: str | None = None  # the activation point, for error messages

    # -- geometry -------------------------------------------------------------------------
    @property
    def range(self) -> float:
        """R: the histogram covers ``[-R, R)``; 0.0 before any data."""
        return 0.0 if self.range_exp is None else math.ldexp(1.0, self.range_exp)

    @property
    def bin_width(self) -> float:
        """``R / NUM_BINS``; 0.0 before any data."""
        return 0.0 if self.range_exp is None else math.ldexp(1.0, self.range_exp) / NUM_BINS

    def bin_edges(self) -> Tensor:
        """float64 ``[2 * NUM_BINS + 1]`` edges ``-R, -R + w, ..., R`` (exact: powers of two)."""
        return torch.arange(-NUM_BINS, NUM_BINS + 1, dtype=torch.float64) * self.bin_width

    def __repr__(self) -> str:
        return (
            f"TensorStats(name={self.name!r}, count={self.count}, min={self.min:.6g}, max={self.max:.6g}, "
            f"num_batches={self.num_batches}, range=±{self.range:g})"
        )

    # -- collection -------------------------------------------------------------------------
    def update(self, x: Tensor, name: str = "activation") -> None:
        """Add every element of ``x`` (any shape, any device, float dtype) as one batch.

        Raises CalibrationError naming ``name`` if ``x`` has NaN or Inf (found by the min/max that
        the range needs anyway: the compiled pass's, or ``aminmax``, through which NaN propagates).
        """
        if self.name is None:
            self.name = name
        self.num_batches += 1
        flat = x.detach()
        if flat.dim() == 4 and not flat.is_contiguous() and flat.is_contiguous(memory_format=torch.channels_last):
            flat = flat.permute(0, 2, 3, 1)  # channels-last: the elements in memory order, no copy (order is not counted)
        flat = flat.reshape(-1)
        if flat.numel() == 0:
            return
        if not flat.is_floating_point():
            flat = flat.to(torch.float32)
        binned = histogram(flat, self.range_exp, NUM_BINS, _MIN_RANGE_EXP)  # one compiled pass, when it applies
        if binned is None:
            lo_t, hi_t = torch.aminmax(flat)
            lo, hi = float(lo_t), float(hi_t)
        elif binned.finite:
            lo, hi = binned.min, binned.max
        else:  # the batch's min and max for the message: NaN propagates through aminmax
            lo, hi = (float(v) for v in torch.aminmax(flat))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise CalibrationError(
                f"{name}: activation contains NaN or Inf (batch min={lo}, max={hi}); "
                "allowed: finite values only - check the model's weights and the input data"
            )
        if binned is not None:  # counted at max(self.range_exp, what the batch needs) already
            need = binned.range_exp
        else:
            # frexp: max_abs = m * 2**e with 0.5 <= m < 1, so 2**e > max_abs strictly and every
            # index below lands in [0, 2 * NUM_BINS) without a clamp.
            max_abs = max(-lo, hi)
            need = max(math.frexp(max_abs)[1], _MIN_RANGE_EXP) if max_abs > 0 else _MIN_RANGE_EXP
        if self.range_exp is None:
            self.range_exp = need
        elif need > self.range_exp:
            self.hist = _rebin(self.hist, need - self.range_exp)
            self.range_exp = need
        if binned is not None:
            self.hist += binned.counts
        else:
            self.hist += bincount_torch(flat, NUM_BINS * math.ldexp(1.0, -self.range_exp), NUM_BINS)
        self.count += flat.numel()
        self.min, self.max = min(self.min, lo), max(self.max, hi)

    # -- merging ------------------------------------------------------------------------------
    def copy(self) -> TensorStats:
        out = TensorStats()
        out.count, out.min, out.max = self.count, self.min, self.max
        out.num_batches, out.range_exp, out.name = self.num_batches, self.range_exp, self.name
        out.hist = self.hist.clone()
        return out

    def merge(self, other: TensorStats) -> TensorStats:
        """A NEW TensorStats of both inputs' data: equal to collecting all of it in one object."""
        out = self.copy()
        out.count += other.count
        out.min, out.max = min(self.min, other.min), max(self.max, other.max)
        out.num_batches += other.num_batches
        out.name = self.name if self.name is not None else other.name
        if other.range_exp is None:
            return out
        if self.range_exp is None:
            out.range_exp, out.hist = other.range_exp, other.hist.clone()
            return out
        exp = max(self.range_exp, other.range_exp)
        out.range_exp = exp
        out.hist = _rebin(self.hist, exp - self.range_exp) + _rebin(other.hist, exp - other.range_exp)
        return out

    @staticmethod
    def merge_all(stats: Sequence[TensorStats]) -> TensorStats:
        """All of ``stats`` merged into one new object (an empty TensorStats for an empty list)."""
        exps = [s.range_exp for s in stats if s.range_exp is not None]
        out = TensorStats()
        if not stats:
            return out
        out.name = next((s.name for s in stats if s.name is not None), None)
        out.count = sum(s.count for s in stats)
        out.min = min(s.min for s in stats)
        out.max = max(s.max for s in stats)
        out.num_batches = sum(s.num_batches for s in stats)
        if exps:
            out.range_exp = max(exps)
            for s in stats:
                if s.range_exp is not None:
                    out.hist += _rebin(s.hist, out.range_exp - s.range_exp)
        return out

    # -- views ----------------------------------------------------------------------------------
    def to_plot(self, max_bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """At most ``max_bins`` counts (int64) and their edges (float64, one more) over [min, max].

        Adjacent histogram bins are summed in runs of ``ceil(span / max_bins)``, starting at
        the bin holding ``min``; the outer edges are clipped to ``min`` and ``max``. Empty
        statistics give two empty arrays; constant data one bin with edges ``[min, max]``.
        """
        if self.count == 0 or self.range_exp is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        if max_bins < 1:
            raise ValueError(f"max_bins: got {max_bins}; allowed: a positive integer")
        if self.min == self.max:
            return np.array([self.count], dtype=np.int64), np.array([self.min, self.max], dtype=np.float64)
        w = self.bin_width
        first = min(max(math.floor(self.min / w) + NUM_BINS, 0), 2 * NUM_BINS - 1)
        last = min(max(math.floor(self.max / w) + NUM_BINS, 0), 2 * NUM_BINS - 1)
        span = last - first + 1
        factor = -(-span // max_bins)
        groups = -(-span // factor)
        counts = torch.zeros(groups * factor, dtype=torch.int64)
        counts[:span] = self.hist[first : last + 1]
        counts_np = counts.reshape(groups, factor).sum(dim=1).numpy()
        edges_np = (first - NUM_BINS + np.arange(groups + 1, dtype=np.float64) * factor) * w
        edges_np[0], edges_np[-1] = self.min, self.max
        return counts_np, edges_np

    # -- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; the histogram is stored trimmed to its non-empty span."""
        nz = torch.nonzero(self.hist).flatten()
        first = int(nz[0]) if nz.numel() else 0
        last = int(nz[-1]) if nz.numel() else -1
        return {
            "name": self.name,
            "count": self.count,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "num_batches": self.num_batches,
            "range_exp": self.range_exp,
            "num_bins": NUM_BINS,
            "hist_offset": first,
            "hist": self.hist[first : last + 1].tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorStats:
        """Inverse of :meth:`to_dict`; CalibrationError on a malformed or foreign dict."""
        try:
            if data["num_bins"] != NUM_BINS:
                raise CalibrationError(
                    f"num_bins: got {data['num_bins']!r}; allowed: {NUM_BINS} (this version's histogram)"
                )
            out = cls()
            out.name = data["name"]
            out.count = int(data["count"])
            out.min = math.inf if data["min"] is None else float(data["min"])
            out.max = -math.inf if data["max"] is None else float(data["max"])
            out.num_batches = int(data["num_batches"])
            out.range_exp = None if data["range_exp"] is None else int(data["range_exp"])
            offset, hist = int(data["hist_offset"]), list(data["hist"])
            if offset < 0 or offset + len(hist) > 2 * NUM_BINS:
                raise CalibrationError(f"hist: {len(hist)} bins at offset {offset} do not fit in {2 * NUM_BINS}")
            out.hist[offset : offset + len(hist)] = torch.tensor(hist, dtype=torch.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"stored statistics are malformed: {exc!r}") from None
        if int(out.hist.sum()) != out.count:
            raise CalibrationError(
                f"stored statistics are malformed: histogram holds {int(out.hist.sum())} values, count is {out.count}"
            )
        return out
