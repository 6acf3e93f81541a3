"""The user's own model file: a TorchScript module, a ``torch.export`` program (.pt2), or a state dict.

Spec (registered in :mod:`ptq_core.models` as the kind ``"file"``)::

    {"kind": "file", "path": "my_model.pt2"}                                    # format detected
    {"kind": "file", "path": "resnet.pt", "format": "state_dict", "architecture": "torchvision:resnet18"}
    {"kind": "file", "path": "cnn_ts.pt", "format": "torchscript", "input_shape": [1, 8, 8],
     "preprocessing": "none"}

``format``: ``auto`` (default; read from the zip's layout), ``torchscript``, ``export`` or
``state_dict`` (needs ``architecture``: a registered model name such as ``digits_cnn``,
``efficientnet_lite0`` or ``torchvision:resnet18``, built with random weights and then given the
file's). ``input_shape`` is one sample's shape: TorchScript is converted with it (default
``[3, 224, 224]``); a ``.pt2`` carries its own (its example input), so one given must agree with
it; for a state dict it is the size preprocessing crops to. ``preprocessing``: ``imagenet``
(resize 256, center-crop 224, ImageNet mean/std), ``none`` (tensor data sets such as digits), a
registered model name whose preprocessing to use, or an object
``{"resize": 274, "crop": 240, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}``
whose keys are all optional (:func:`ptq_core.models.preprocessing.parse_preprocessing`: crop =
the model's input size, resize = round(crop / 0.875), ImageNet mean/std, bilinear).
Left out: the architecture's; else, for a model whose input is known to be an RGB image (3, H, W),
ImageNet mean/std with crop H x W; else ``none`` for a known non-image input; else ``imagenet``.
Every default, and any crop that disagrees with the model's input size, is a warning the entry
carries (``ModelEntry.warnings``) into each Result.

Safety: nothing here unpickles Python objects. State dicts load with ``weights_only=True``;
``.pt2`` archives are refused when they hold pickled custom objects or compiled (AOTInductor)
code, and are read with ``weights_only`` forced for every tensor inside; TorchScript is read
by TorchScript's own loader, which builds only TorchScript types and code. Files over
``PTQ_MAX_MODEL_MB`` (:func:`ptq_core.paths.max_model_bytes`), corrupt, mismatched or
unsupported files raise a ModelError naming the file and what is allowed. TorchScript and
``.pt2`` models are lifted into modules graph.prepare understands (:mod:`ptq_core.lift`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptq_core.errors import ModelError, PTQError
from ptq_core.paths import max_model_bytes

from .entry import ModelEntry
from .preprocessing import ImageTransform, Size, default_resize, imagenet_transform, parse_preprocessing

log = logging.getLogger(__name__)

KIND = "file"
FORMATS = ("auto", "torchscript", "export", "state_dict")
SPEC_KEYS = ("kind", "path", "format", "architecture", "input_shape", "preprocessing")
DEFAULT_INPUT_SHAPE = (3, 224, 224)
# Entries of a .pt2 archive whose loading runs pickle or native code: refused outright.
_UNSAFE_PT2_PARTS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
_UNSAFE_PT2_CONSTANTS = ("custom_obj_", "opaque_obj_")
# Lifted and original outputs must agree to float rounding; the check runs on random inputs.
_LIFT_RTOL, _LIFT_ATOL = 1e-4, 1e-4
_FORCE_WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_LOAD_LOCK = threading.Lock()
_PICKLE_REFUSED = (
    "holds pickled Python objects, which are never loaded here (weights_only=True: only tensors and plain "
    "containers); allowed: files of plain tensors"
)

# What a model file may be, said in every "not a model file" message.
ACCEPTED = (
    "a TorchScript module (torch.jit.save), a torch.export program (.pt2, torch.export.save) or a state dict "
    "(torch.save(model.state_dict(), path))"
)
# torch.save's legacy (non-zip) format starts with the pickled magic number, at the protocol it was saved with.
_LEGACY_HEADERS = tuple(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=p) for p in range(6))

Lookup = Callable[[Any], ModelEntry]


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _refused_pickle(exc: pickle.UnpicklingError) -> bool:
    """Whether torch's weights-only unpickler refused an object (rather than the bytes being garbage)."""
    return "Unsupported global" in str(exc)


def _torch_says(exc: BaseException) -> str:
    """`` (torch: <first line>)`` for a RuntimeError torch raised about the model (a shape, an op), else nothing.

    Other exception types out of torch's loaders (IndexError, EOFError, KeyError ...) are the
    loader's internals meeting bad bytes: they tell a user nothing, so they go to the debug log only.
    """
    log.debug("model loading failed", exc_info=exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f" (torch: {text[:300]})" if type(exc) is RuntimeError and text else ""


def check_finite_state(model: nn.Module, path: Path) -> None:
    """ModelError naming the first parameter or buffer (``bn2.running_var``) holding NaN or Inf.

    Checked on the module as loaded, before BatchNorm is folded into a conv: after folding, a NaN
    running variance would show up as the conv's weight, which is finite in the file.
    """
    tensors = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_floating_point())]
    for name, tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelError(
                f"model.path: {path.name!r}: {name} contains NaN or Inf ({bad} of {tensor.numel()} values); "
                "allowed: finite weights and buffers only"
            )


def check_model_file(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> Path:
    """``path`` as a Path if it is a readable file no larger than ``max_bytes`` (also once unzipped)."""
    p = Path(path)
    limit = max_model_bytes() if max_bytes is None else max_bytes
    if not p.exists():
        raise ModelError(f"model.path: {str(p)!r} does not exist")
    if not p.is_file():
        raise ModelError(f"model.path: {str(p)!r} is not a file; allowed: a .pt/.pth/.pt2 model file")
    if not os.access(p, os.R_OK):
        raise ModelError(f"model.path: {str(p)!r} cannot be read (permission denied); allowed: a readable model file")
    size = p.stat().st_size
    if size == 0:
        raise ModelError(f"model.path: {str(p)!r} is empty (0 bytes); allowed: {ACCEPTED}")
    if size > limit:
        raise ModelError(
            f"model.path: {str(p)!r} is {_mib(size)}; allowed: files up to {_mib(limit)} (set PTQ_MAX_MODEL_MB to change)"
        )
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as archive:
                expanded = sum(i.file_size for i in archive.infolist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelError(f"model.path: {str(p)!r} is a corrupt archive ({exc})") from None
        if expanded > limit:
            raise ModelError(
                f"model.path: {str(p)!r} expands to {_mib(expanded)}; allowed: up to {_mib(limit)} (PTQ_MAX_MODEL_MB)"
            )
    return p


def detect_format(path: Path) -> str:
    """``torchscript``, ``export`` or ``state_dict`` from the file's zip layout; ModelError if none fits."""
    if not zipfile.is_zipfile(path):
        # Only torch.save's legacy (pre-1.6) format is not a zip: a state dict, if it starts as one does.
        try:
            with path.open("rb") as handle:
                head = handle.read(max(map(len, _LEGACY_HEADERS)))
        except OSError as exc:
            raise ModelError(f"model.path: {str(path)!r} cannot be read ({exc.strerror})") from None
        if head.startswith(_LEGACY_HEADERS):
            return "state_dict"
        if head.startswith(b"PK\x03\x04"):  # a zip's first entry, but no directory at the end: cut short
            raise ModelError(
                f"model.path: {str(path)!r} is a truncated or corrupt zip archive (its directory is missing: was the "
                f"copy or upload cut short?); allowed: a complete model file: {ACCEPTED}"
            )
        raise ModelError(
            f"model.path: {str(path)!r} is not a model file (neither a zip archive written by torch nor a torch.save "
            f"pickle); allowed: {ACCEPTED}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"model.path: {str(path)!r} is a corrupt archive ({exc})") from None
    tails = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return "export"
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "state_dict"
    raise ModelError(
        f"model.path: {str(path)!r} is a zip archive but not a model file (not a TorchScript module, torch.export "
        f"program or torch.save state dict); allowed: {ACCEPTED}"
    )


@contextmanager
def _weights_only_forced() -> Iterator[None]:
    """Force ``weights_only=True`` in every torch.load made inside (torch.export.load passes False)."""
    with _LOAD_LOCK:
        previous = os.environ.get(_FORCE_WEIGHTS_ONLY_ENV)
        os.environ[_FORCE_WEIGHTS_ONLY_ENV] = "1"
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(_FORCE_WEIGHTS_ONLY_ENV, None)
            else:
                os.environ[_FORCE_WEIGHTS_ONLY_ENV] = previous


def _check_pt2_is_safe(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    for name in names:
        tail = name.split("/", 1)[1] if "/" in name else name
        base = tail.rsplit("/", 1)[-1]
        if tail.startswith(_UNSAFE_PT2_PARTS) or (
            tail.startswith("data/constants/") and base.startswith(_UNSAFE_PT2_CONSTANTS)
        ):
            raise ModelError(
                f"model.path: {str(path)!r} holds {tail!r}, which loads pickled objects or compiled code; allowed: "
                ".pt2 programs from torch.export.save whose weights and constants are plain tensors"
            )


def load_exported_program(path: Path) -> torch.export.ExportedProgram:
    """A ``.pt2`` file's ExportedProgram, loaded without unpickling Python objects."""
    _check_pt2_is_safe(path)
    try:
        with _weights_only_forced(), open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(handle)
    except pickle.UnpicklingError as exc:
        if _refused_pickle(exc):
            raise ModelError(f"model.path: {str(path)!r} {_PICKLE_REFUSED}") from None
        _torch_says(exc)
        raise ModelError(
            f"model.path: {str(path)!r} cannot be loaded as a torch.export program: it is truncated or corrupt; "
            "allowed: a complete .pt2 file written by torch.export.save"
        ) from None
    except Exception as exc:  # torch raises many types for a bad archive; all mean "cannot load"
        raise ModelError(
            f"model.path: {str(path)!r} cannot be loaded as a torch.export program: it is truncated, corrupt or "
            f"written by an incompatible torch version (this is torch {torch.__version__}){_torch_says(exc)}; "
            "allowed: a complete .pt2 file written by torch.export.save"
        ) from None


def _torchscript_to_program(path: Path, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError:  # pragma: no cover - present in torch 2.5+
        raise ModelError(
            "TorchScript is not supported by this torch build (no TorchScript -> torch.export converter); "
            "allowed formats: export (.pt2), state_dict with an architecture"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(
            f"model.path: {str(path)!r} cannot be loaded as TorchScript: it is truncated, corrupt or holds code this "
            f"torch ({torch.__version__}) cannot compile{_torch_says(exc)}; allowed: a complete file written by "
            "torch.jit.save"
        ) from None
    scripted.eval()
    # Batch 2, not 1: export specialises a dimension of size 1, which would fix the batch size.
    sample = (torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)),)
    # The converter logs a warning per specialised dimension (channels, height): noise for a user.
    export_log = logging.getLogger("torch._export")
    level = export_log.level
    try:
        export_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TS2EPConverter(scripted, sample).convert()
    except Exception as exc:
        raise ModelError(
            f"model.path: the TorchScript module {path.name!r} cannot be converted to a torch.export program with "
            f"an input of shape {[2, *input_shape]}{_torch_says(exc)}; allowed: the input_shape of one sample the "
            "module takes, or the model as format export (.pt2, torch.export.save) or as a state_dict with its "
            "architecture"
        ) from None
    finally:
        export_log.setLevel(level)


def _program_input(ep: torch.export.ExportedProgram, fallback: tuple[int, ...]) -> tuple[int | None, tuple[int, ...]]:
    """The program's fixed batch size (None when dynamic) and per-sample input shape."""
    for spec in ep.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == spec.arg.name)
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() > 0:
                batch = int(val.shape[0]) if isinstance(val.shape[0], int) else None
                if all(isinstance(d, int) for d in val.shape[1:]):
                    return batch, tuple(int(d) for d in val.shape[1:])
                return batch, fallback
    return None, fallback


def _verify_lift(
    original: Callable[[torch.Tensor], Any], lifted: nn.Module, batch: int | None, shape: tuple[int, ...], path: Path
) -> None:
    """Lifted == original on random inputs (at the program's batch size), and the lifted model runs at another."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch or 3, *shape, generator=generator)
    with torch.no_grad():
        expected = original(x)
        got = lifted(x)
        if not (isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor) and expected.shape == got.shape):
            raise ModelError(f"model.path: {path.name!r}: the lifted model's output does not match the program's")
        tol = _LIFT_ATOL * max(1.0, float(expected.abs().max()))
        if not torch.allclose(got, expected, rtol=_LIFT_RTOL, atol=tol):
            raise ModelError(
                f"model.path: {path.name!r}: the lifted model differs from the program by "
                f"{float((got - expected).abs().max()):.3g}; please report this model"
            )
        other = (batch or 3) + 1
        try:
            lifted(torch.randn(other, *shape, generator=generator))
        except Exception as exc:
            raise ModelError(
                f"model.path: {path.name!r} was exported for batch size {batch} and does not run at {other} once "
                f"lifted{_torch_says(exc)}; allowed: a program exported with a dynamic batch dimension, e.g. "
                'torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})'
            ) from None


def load_program_module(path: Path, fmt: str, input_shape: tuple[int, ...]) -> tuple[nn.Module, dict[str, Any]]:
    """A TorchScript or .pt2 file as a lifted GraphModule in eval mode, plus what lifting did."""
    from ptq_core.lift import lift

    ep = _torchscript_to_program(path, input_shape) if fmt == "torchscript" else load_exported_program(path)
    batch, shape = _program_input(ep, input_shape)
    try:
        gm, report = lift(ep)
    except ModelError as exc:
        raise ModelError(f"model.path: {path.name!r}: {exc}") from None
    check_finite_state(gm, path)  # before comparing outputs: NaN never compares equal
    _verify_lift(ep.module(), gm, batch, shape, path)
    info = {"input_shape": list(shape), "kept_ops": report.kept_ops, "batch_rewrites": report.batch_rewrites}
    return gm.eval(), info


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict) and len(obj) <= 8:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"model.path: {str(path)!r} does not hold a state dict (a mapping from parameter names to tensors); "
            "allowed: the result of torch.save(model.state_dict(), path)"
        )
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):  # saved from nn.DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_state_dict_into(path: Path, architecture: str, lookup: Lookup) -> nn.Module:
    """The architecture ``architecture`` (random init) with the state dict of ``path`` loaded strictly."""
    entry = lookup(architecture)
    if entry.architecture is None:
        raise ModelError(
            f"model.architecture: {architecture!r} cannot take a state dict; allowed: a registered model name"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _refused_pickle(exc):
            raise ModelError(f"model.path: {str(path)!r} {_PICKLE_REFUSED}") from None
        _torch_says(exc)  # logged only: the unpickler's wording is about its own options, not the file
        raise ModelError(
            f"model.path: {str(path)!r} cannot be loaded as a state dict: it is truncated or corrupt; allowed: a "
            "complete file written by torch.save(model.state_dict(), path), holding tensors only"
        ) from None
    except Exception as exc:  # RuntimeError, EOFError, IndexError, zip errors: all "not a readable state dict"
        _torch_says(exc)
        raise ModelError(
            f"model.path: {str(path)!r} cannot be loaded as a state dict: it is truncated or corrupt; allowed: a "
            "complete file written by torch.save(model.state_dict(), path), holding tensors only"
        ) from None
    state = _unwrap_state(obj, path)
    model = entry.architecture()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:2])})")
        raise ModelError(
            f"model.path: the state dict in {path.name!r} does not match architecture {architecture!r}: "
            f"{', '.join(parts)}; allowed: a state dict saved from that architecture"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def _input_shape(value: Any) -> tuple[int, ...]:
    if value is None:
        return DEFAULT_INPUT_SHAPE
    if (
        not isinstance(value, list | tuple)
        or not 1 <= len(value) <= 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ModelError(f"model.input_shape: got {value!r}; allowed: a per-sample shape such as [3, 224, 224]")
    return tuple(value)


def pt2_input_shape(path: Path) -> tuple[int | None, ...] | None:
    """One sample's input shape as the .pt2's example input recorded it (None for a dynamic dimension).

    Read from the archive's ``models/*.json`` (the serialized graph) without loading any weight;
    None when the archive does not say (another schema version, no tensor input).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            graphs = [
                n for n in archive.namelist() if n.split("/", 1)[-1].startswith("models/") and n.endswith(".json")
            ]
            name = next(
                iter(sorted(graphs, key=lambda n: not n.endswith("models/model.json")))
            )  # the main program first
            program = json.loads(archive.read(name))
        graph = program["graph_module"]["graph"]
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if "user_input" in spec:
                tensor = graph["tensor_values"][spec["user_input"]["arg"]["as_tensor"]["name"]]
                dims = [d.get("as_int") if isinstance(d, dict) else None for d in tensor["sizes"]]
                return tuple(d if isinstance(d, int) else None for d in dims[1:]) if dims else None
    except (StopIteration, KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile):
        log.debug("no input shape read from %s", path, exc_info=True)
    return None


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _crop_text(crop: Size) -> str:
    return str(crop[0]) if crop[0] == crop[1] else f"{crop[0]}x{crop[1]}"


def _check_against_input(
    transform: ImageTransform, model_input: tuple[int, ...] | None, source: str, field: str
) -> list[str]:
    """Warnings when image preprocessing cannot give the model the input it takes."""
    if model_input is None:
        return []
    if len(model_input) != 3 or model_input[0] != 3:
        return [
            f"{field}: image preprocessing gives 3xHxW RGB tensors, but the model's input is "
            f"{_shape_text(model_input)} ({source}); allowed for such a model: none (tensor data sets)"
        ]
    settings = transform.settings
    if settings is not None and settings.crop != model_input[1:]:
        return [
            f"{field}.crop {_crop_text(settings.crop)} disagrees with the model's input "
            f"{model_input[1]}x{model_input[2]} ({source}); state the crop the model was trained at"
        ]
    return []


def _preprocessing(
    value: Any,
    architecture: tuple[str, ModelEntry] | None,
    lookup: Lookup,
    model_input: tuple[int, ...] | None,
    source: str,
) -> tuple[Callable[..., Any] | None, list[str]]:
    """The transform a file spec's ``preprocessing`` names, and the warnings it comes with.

    ``model_input`` is one sample's shape when known (``source`` says from where, for messages).
    """
    field = "model.preprocessing"
    hint = "state it if the model was trained otherwise"
    is_image = model_input is not None and len(model_input) == 3 and model_input[0] == 3
    if value is None:
        if architecture is not None:
            name, entry = architecture
            if entry.transform is None:
                return None, []
            described = getattr(entry.transform, "describe", repr(entry.transform))
            notes = [f"{field}: not given; using {name}'s: {described}; {hint}"]
            if isinstance(entry.transform, ImageTransform):
                notes += _check_against_input(entry.transform, model_input, source, field)
            return entry.transform, notes
        if model_input is not None and not is_image:
            return None, [
                f"{field}: not given; the model's input {_shape_text(model_input)} ({source}) is not an RGB image, "
                "so none: samples reach the model as the data set gives them (tensor data sets such as digits)"
            ]
        if is_image:
            assert model_input is not None
            crop = (model_input[1], model_input[2])
            settings, _ = parse_preprocessing({"crop": list(crop)})
            return settings.transform("file"), [
                f"{field}: not given; using ImageNet mean/std, resize {default_resize(crop)}, center-crop "
                f"{_crop_text(crop)} (the model's input {_shape_text(model_input)}, {source}); {hint}"
            ]
        return imagenet_transform(), [
            f"{field}: not given; using ImageNet mean/std, resize 256, center-crop 224; {hint}"
        ]
    if value == "none":
        return None, []
    if isinstance(value, dict):
        default_crop = (model_input[1], model_input[2]) if is_image and model_input is not None else None
        settings, missing = parse_preprocessing(value, default_crop=default_crop)
        stated = settings.transform("file")
        defaulted = [k for k in ("mean", "std") if k in missing]
        notes = [f"{field}: {' and '.join(defaulted)} not given; using ImageNet's; {hint}"] if defaulted else []
        return stated, notes + _check_against_input(stated, model_input, source, field)
    allowed = (
        "allowed: imagenet, none, a model name whose preprocessing to use (e.g. efficientnet_lite0, "
        "torchvision:resnet18), or an object with any of resize, crop, mean, std, interpolation "
        '(e.g. {"crop": 240, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})'
    )
    if not isinstance(value, str):
        raise ModelError(f"{field}: got {value!r}; {allowed}")
    try:
        named = imagenet_transform() if value == "imagenet" else lookup(value).transform
    except PTQError:
        raise ModelError(f"{field}: got {value!r}; {allowed}") from None
    if isinstance(named, ImageTransform):
        return named, _check_against_input(named, model_input, source, field)
    return named, []


def _model_input(
    spec: dict[str, Any], detected: str, path: Path
) -> tuple[tuple[int, ...], tuple[int, ...] | None, str]:
    """(the shape TorchScript is converted with, one sample's known input shape or None, where it comes from)."""
    given = spec.get("input_shape")
    input_shape = _input_shape(given)
    if detected == "export":
        recorded = pt2_input_shape(path)
        if recorded is not None and all(d is not None for d in recorded):
            example = tuple(int(d) for d in recorded if d is not None)
            if given is not None and input_shape != example:
                raise ModelError(
                    f"model.input_shape: got {list(input_shape)}, but {path.name!r} was exported with an example input "
                    f"of one sample {list(example)}; allowed: leave input_shape out (a .pt2 carries its own) or "
                    f"{list(example)}"
                )
            return example, example, "from the .pt2's example input"
        if given is not None:
            return input_shape, input_shape, "from model.input_shape"
        return input_shape, None, ""
    if detected == "torchscript":
        return (
            input_shape,
            input_shape,
            "from model.input_shape" if given is not None else "from the default input_shape",
        )
    return input_shape, (input_shape if given is not None else None), "from model.input_shape"


def resolve_file(spec: dict[str, Any], lookup: Lookup) -> ModelEntry:
    """The ModelEntry of a ``{"kind": "file", ...}`` spec; the file is checked now and loaded on build()."""
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ModelError(f"model.{unknown[0]}: unknown key for kind 'file'; allowed keys: {', '.join(SPEC_KEYS)}")
    raw_path = spec.get("path")
    if not isinstance(raw_path, str) or not raw_path:
        raise ModelError(f"model.path: got {raw_path!r}; allowed: the path of a .pt, .pth or .pt2 file")
    fmt = spec.get("format", "auto")
    if fmt not in FORMATS:
        raise ModelError(f"model.format: got {fmt!r}; allowed: {', '.join(FORMATS)}")
    path = check_model_file(raw_path)
    detected = detect_format(path)
    if fmt != "auto" and fmt != detected:
        raise ModelError(
            f"model.format: got {fmt!r} but {path.name!r} is a {detected} file; allowed: {detected} or auto"
        )
    arch_name = spec.get("architecture")
    arch_entry: ModelEntry | None = None
    if detected == "state_dict":
        if not isinstance(arch_name, str) or not arch_name:
            raise ModelError(
                f"model.architecture: {path.name!r} is a state dict, which needs the architecture it was saved from; "
                "allowed: a registered model name, e.g. digits_cnn, efficientnet_lite0, torchvision:resnet18"
            )
        arch_entry = lookup(arch_name)
    elif arch_name is not None:
        raise ModelError(f"model.architecture: only a state_dict file takes one; {path.name!r} is a {detected} file")
    input_shape, model_input, source = _model_input(spec, detected, path)
    architecture = (arch_name, arch_entry) if arch_entry is not None and isinstance(arch_name, str) else None
    transform, notes = _preprocessing(spec.get("preprocessing"), architecture, lookup, model_input, source)
    for note in notes:
        log.info("%s: %s", path.name, note)

    def build() -> nn.Module:
        # Read from the file on every call (a NEW module each time, no second copy kept in memory).
        if detected == "state_dict":
            assert isinstance(arch_name, str)
            module = load_state_dict_into(path, arch_name, lookup)
            check_finite_state(module, path)
            return module
        module, info = load_program_module(path, detected, input_shape)
        log.info("lifted %s: %s", path.name, info)
        return module

    size = _mib(path.stat().st_size)
    what = {"torchscript": "TorchScript module", "export": "torch.export program", "state_dict": "state dict"}[detected]
    description = f"your {what} {path.name} ({size})" + (f" for {arch_name}" if arch_name else "")
    if arch_entry is not None:
        default_dataset = arch_entry.default_dataset
    else:
        default_dataset = {"kind": "image_folder"} if transform is not None else "digits"
    return ModelEntry(
        name=f"file:{path.name}",
        description=description,
        default_dataset=default_dataset,
        build=build,
        pretrained=True,
        transform=transform,
        warnings=tuple(notes),
    )
