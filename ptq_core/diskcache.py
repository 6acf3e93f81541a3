"""A content-addressed cache on disk: what is slow to compute and fixed by its inputs survives a restart.

What lives here: :class:`DiskCache` (tensors in, tensors out, under a key), :func:`default_cache`
(the process's cache, configured from the environment) and :func:`digest` (the key of a list of
parts). What is cached, and under which key, is decided by the callers:

* decoded, preprocessed images (:mod:`ptq_core.data.image_folder`): per file content and transform;
* FP32 reference logits and calibration statistics (:mod:`ptq_core.pipeline`): per model weights,
  data content, indices, batch size, device, threads and library versions.

A key is the SHA-256 of every input the value depends on, so an entry is never stale: a changed
image, weight or setting gives another key. Values are written to a temporary file and renamed
into place, so another thread or process never reads half a file; an entry that cannot be read
is a miss (and is removed). Loading uses ``torch.load(weights_only=True)``: tensors, numbers,
strings and containers of them, never code.

Settings, read when the cache is first used:

    PTQ_CACHE_DIR   the folder (default ``$XDG_CACHE_HOME/ptq_explorer`` or ``~/.cache/ptq_explorer``);
                    ``off`` disables the cache (everything is recomputed, nothing written)
    PTQ_CACHE_MB    the most the folder may hold, in MiB (default 4096): least recently used
                    entries are removed first. EfficientNet-Lite0's 500 shared images take 300 MB.

A folder that cannot be created or written disables the cache with one warning in the log;
nothing the user asked for fails because of it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "PTQ_CACHE_DIR"
CACHE_MB_ENV = "PTQ_CACHE_MB"
DEFAULT_CACHE_MB = 4096
_SUFFIX = ".pt"


def digest(*parts: Any) -> str:
    """SHA-256 (hex) of ``parts``: bytes as they are, tensors by dtype, shape and contents, the rest by ``repr``.

    Example: ``digest("fp32", 128, torch.zeros(2))`` is the same string in every process.
    """
    h = hashlib.sha256()
    for part in _flatten(parts):
        if isinstance(part, (bytes, bytearray, memoryview)):
            h.update(b"b%d:" % len(part))
            h.update(part)
        elif isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"t{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            text = repr(part).encode()
            h.update(b"r%d:" % len(text))
            h.update(text)
    return h.hexdigest()


def _flatten(parts: Iterable[Any]) -> Iterable[Any]:
    for part in parts:
        if isinstance(part, (list, tuple)):
            yield f"[{len(part)}"
            yield from _flatten(part)
        else:
            yield part


def module_fingerprint(module: torch.nn.Module) -> str:
    """The key of a model: its class, its printed structure and every parameter and buffer (name, dtype, values)."""
    parts: list[Any] = [type(module).__module__, type(module).__qualname__, repr(module)]
    for name, tensor in module.state_dict().items():
        parts += [name, tensor]
    return digest(*parts)


class DiskCache:
    """Tensors and plain data under string keys in one folder, bounded in size (least recently used go first)."""

    def __init__(self, root: str | os.PathLike[str] | None, max_bytes: int = DEFAULT_CACHE_MB << 20) -> None:
        self.root = Path(root) if root is not None else None
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._size: int | None = None  # bytes on disk, counted on first write

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}{_SUFFIX}"

    def load(self, kind: str, key: str) -> Any | None:
        """The value stored under (``kind``, ``key``), or None (absent, disabled, unreadable)."""
        if self.root is None:
            return None
        path = self._path(kind, key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: recompute, and drop it
            log.warning("disk cache: dropping unreadable entry %s (%s)", path, type(exc).__name__)
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return value

    def save(self, kind: str, key: str, value: Any) -> None:
        """Store ``value`` (tensors, numbers, strings, lists, dicts) atomically; errors only disable the cache."""
        if self.root is None:
            return
        path = self._path(kind, key)
        buf = io.BytesIO()
        torch.save(value, buf)
        data = buf.getbuffer()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("disk cache: cannot write in %s (%s); caching off for this process", self.root, exc.strerror)
            self.root = None
            return
        self._account(len(data))

    def _account(self, added: int) -> None:
        with self._lock:
            if self._size is None:
                self._size = sum(f.stat().st_size for f in self._files())
            else:
                self._size += added
            if self._size <= self.max_bytes:
                return
            files = sorted(self._files(), key=lambda f: f.stat().st_mtime)
            target = int(0.8 * self.max_bytes)  # evict down to 80%: not again on the very next write
            for f in files:
                if self._size <= target:
                    break
                try:
                    size = f.stat().st_size
                    f.unlink()
                    self._size -= size
                except OSError:
                    continue

    def _files(self) -> list[Path]:
        if self.root is None or not self.root.is_dir():
            return []
        return [p for p in self.root.rglob(f"*{_SUFFIX}") if p.is_file()]


_DEFAULT: DiskCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> DiskCache:
    """The process's cache, configured from ``PTQ_CACHE_DIR`` and ``PTQ_CACHE_MB`` on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = cache_from_environment()
        return _DEFAULT


def cache_from_environment() -> DiskCache:
    raw = os.environ.get(CACHE_DIR_ENV, "").strip()
    if raw.lower() == "off":
        return DiskCache(None)
    if raw:
        root = Path(raw).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
        root = Path(base) / "ptq_explorer"
    mb_raw = os.environ.get(CACHE_MB_ENV, "").strip()
    try:
        mb = int(mb_raw) if mb_raw else DEFAULT_CACHE_MB
    except ValueError:
        log.warning("%s=%r is not an integer number of MiB; using %d", CACHE_MB_ENV, mb_raw, DEFAULT_CACHE_MB)
        mb = DEFAULT_CACHE_MB
    return DiskCache(root, max(mb, 0) << 20)


def reset_default_cache() -> None:
    """Forget the process's cache object, so the next :func:`default_cache` reads the environment again (tests)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        _DEFAULT = None
