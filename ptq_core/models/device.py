"""Where a model runs: the config's ``device`` string checked against this machine, and the
numerics settings that keep a GPU run equal to the CPU one within float tolerance.

``QuantConfig.device`` is ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``; the config validates
the spelling, :func:`resolve_device` checks that this machine has that device. On CUDA,
:func:`device_context` turns TF32 convolutions off (cuDNN's default is on: 10-bit mantissas
would move activations by ~1e-3 relative, far more than float rounding), so statistics and
logits match the CPU's to ~1e-5 and quantized outputs agree except for values that sit on a
rounding boundary.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch.utils._pytree import tree_flatten

from ptq_core.errors import ConfigError

__all__ = ["CPU", "device_context", "fast_layout", "moved_copy", "resolve_device", "takes_channels_last"]

CPU = torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch.device, if this machine has it.

    Raises:
        ConfigError: not cpu/cuda/cuda:N, CUDA is not available, or the index is out of range.
    """
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"device: got {name!r}; allowed: cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: got {name!r} but CUDA is not available on this machine; allowed: cpu")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(
            f"device: got {name!r} but this machine has {count} CUDA device(s); allowed: cuda:0 to cuda:{count - 1}"
        )
    return torch.device(name)


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` stored channels-last when it is a CPU batch of images (4-D float): the same values in another order
    in memory, which the CPU convolutions (oneDNN) run faster on, and every convolution, elementwise op and pooling
    after it keeps. One thread, batches of 16-32, this machine (benchmarks/RESULTS.md): EfficientNet-Lite0 1.38x,
    MobileNetV2 1.58x, ResNet-18 1.23x, ViT-B/16 1.04x, the digits CNN unchanged. Float summation order changes
    with it (outputs move by ~1e-5 relative). Anything else is returned as it is: text batches, CUDA tensors."""
    if x.dim() == 4 and x.is_floating_point() and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


def takes_channels_last(module: torch.nn.Module, example: torch.Tensor) -> bool:
    """Whether ``module`` gives the same outputs (float summation order aside) from ``fast_layout(example)`` as from
    ``example``. False when the layout would not change (not a 4-D float CPU batch) and when the module fails on it:
    a model that flattens a feature map with ``.view()`` cannot take a channels-last batch."""
    fast = fast_layout(example)
    if fast is example:  # not an image batch, or already laid out so (one channel): nothing would change
        return False
    try:
        with torch.inference_mode():
            plain, other = module(example), module(fast)
    except Exception:  # noqa: BLE001 - any failure means: keep the layout the model was written for
        return False
    plain_leaves, plain_spec = tree_flatten(plain)
    other_leaves, other_spec = tree_flatten(other)
    if plain_spec != other_spec:  # outputs of another structure
        return False
    for a, b in zip(plain_leaves, other_leaves, strict=True):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or a != b:
                return False
        elif a.shape != b.shape or a.dtype != b.dtype:
            return False
        elif a.is_floating_point():
            if not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1.0 + float(a.abs().max()))):
                return False
        elif not torch.equal(a, b):
            return False
    return True


# TF32 switches are process-wide: the first thread in turns them off, the last one out restores them.
_TF32_LOCK = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[Any, Any] = (None, None)


@contextlib.contextmanager
def device_context(device: torch.device) -> Iterator[None]:
    """Full-precision float32 on CUDA (no TF32) while inside; nothing changes on CPU."""
    global _tf32_users, _tf32_saved
    if device.type != "cuda":
        yield
        return
    with _TF32_LOCK:
        if _tf32_users == 0:
            _tf32_saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _tf32_users += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _tf32_users -= 1
            if _tf32_users == 0:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _tf32_saved


M = TypeVar("M", bound=torch.nn.Module)


def moved_copy(module: M, device: torch.device) -> M:
    """``module`` itself on CPU; elsewhere a deep copy moved to ``device`` (the original never moves)."""
    if device.type == "cpu":
        return module
    return copy.deepcopy(module).to(device)
