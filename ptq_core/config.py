"""QuantConfig: everything that decides a PTQ run, as frozen dataclasses that round-trip to JSON.

A config names the model and data set, how weights and activations are quantized, which
calibration subset is used and which layers differ from the global choice. ``to_dict`` writes
every field with its default filled in, ``from_dict`` accepts exactly that schema and rejects
anything else with a :class:`~ptq_core.errors.ConfigError` naming the field, the value and
what is allowed. ``from_dict(c.to_dict()) == c`` for every valid config, so a config exported
by the dashboard reproduces the same run through ``python -m ptq_core run``.

Example (a W4 per-group, A8 static config)::

    {"schema_version": 2, "model": "digits_cnn", "dataset": "digits",
     "weights": {"bits": 4, "scheme": "symmetric", "granularity": "per_group",
                 "group_size": 32, "clipping": "mse"},
     "activations": {"bits": 8, "scheme": "asymmetric", "clipping": "percentile",
                     "percentile": 99.99},
     "calibration": {"num_samples": 256, "seed": 0, "selection": "random"},
     "fold_batchnorm": true, "keep_float": ["fc2"],
     "overrides": {"conv1": {"weights": {"bits": 8}}},
     "algorithms": {"cross_layer_equalization": false, "bias_correction": true, "rounding": "adaround",
                    "adaround": {"iterations": 1000, "seed": 0}, "finetune": null}}

``algorithms`` (schema_version 2) repairs what round-to-nearest loses at low bit widths: cross-layer
equalization, bias correction, AdaRound or GPTQ rounding and a short quantization-aware fine-tune
(:mod:`ptq_core.algorithms`). A version-1 file has no ``algorithms`` and loads as "none of them";
every config is written as version 2.

``weights.group_size`` (rules checked where they can be):

* here, for any model: an integer from 1 to :data:`MAX_GROUP_SIZE`; required with ``per_group``.
  With ``per_tensor``/``per_channel`` it is accepted (a sweep over granularities keeps one base
  config) but ignored, and the Result says so in a warning.
* when a plan is made for a model (:func:`ptq_core.quantize.make_plan`): a group size longer than
  the longest row (flattened input dimension, ``in_channels/groups * kh * kw`` or ``in_features``)
  of every layer it applies to is REJECTED with a ConfigError naming that layer and its row
  length: such a group is per-channel quantization under another name. Layers whose rows are no
  longer than the group (a short first conv, depthwise convs) get one group per row, the same
  numbers as ``per_channel``, and the Result warns, naming them.

``keep_float_activations`` names activation points (a layer's output tensor, the model input) left
without a quantizer while the layer's weights stay quantized: their readers take them in float (an
integer runtime runs those readers in float too; the ONNX report says which).

``"activations": null`` is weight-only quantization; ``"activations": {"mode": "dynamic"}``
quantizes each layer's input from its own min/max at inference time (no calibration).
What the fields mean for the numbers (integer ranges, placement of activation quantizers)
is documented in :mod:`ptq_core.primitives` and :mod:`ptq_core.graph`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

SCHEMA_VERSION = 2  # 2 added ``algorithms``; a version-1 file loads unchanged and means "none of them"
READABLE_SCHEMA_VERSIONS = (1, 2)

MIN_BITS, MAX_BITS = 2, 8
SCHEMES = ("symmetric", "asymmetric")
WEIGHT_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
# Static activations share one range per tensor, as integer runtimes do. Dynamic activations
# may also use one range per token (row) of a Linear input, as onnxruntime/torch dynamic do.
STATIC_ACTIVATION_GRANULARITIES = ("per_tensor",)
DYNAMIC_ACTIVATION_GRANULARITIES = ("per_tensor", "per_token")
ACTIVATION_CLIPPING = ("minmax", "percentile", "mse", "kl")
# KL/entropy calibration is defined on the histogram of a calibration set; weights have no
# such distribution per channel worth the name, so no PTQ tool offers it for weights.
WEIGHT_CLIPPING = ("minmax", "percentile", "mse")
ACTIVATION_MODES = ("static", "dynamic")
SELECTIONS = ("random", "first", "balanced")
RUNTIMES = ("onnxruntime",)  # evaluation.runtime: where the exported model is run and timed (or null)
ROUNDINGS = ("nearest", "adaround", "gptq")  # algorithms.rounding: how weights are rounded onto their grid
GPTQ_INPUTS = ("quantized", "float")  # algorithms.gptq.inputs: whose inputs make a layer's Hessian
BACKENDS = ("torch", "onnxruntime")  # evaluation.backend: what runs the simulated model (same numbers, see ptq_core.simulation)
# evaluation.arithmetic: float fake-quantize (fast, the default) or onnxruntime's integer kernels emulated exactly
ARITHMETICS = ("float", "integer")
# evaluation.targets: deployment runtimes run next to onnxruntime, each a row of Result.runtimes
TARGETS = ("litert", "pt2e")


# Largest weights.group_size any config may name: 2**16. The longest row of a registered model is
# 25,088 (VGG's first Linear, 512 x 7 x 7); a larger group only pads rows, so the bound keeps a mistyped
# 10**9 from allocating rows x group_size floats, and gives the dashboard's Group size box its maximum.
MAX_GROUP_SIZE = 65536


def _fail(path: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{path}: got {value!r}; allowed: {allowed}")


def _check_int(path: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
        raise _fail(path, value, rng)
    return value


def _check_choice(path: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(path, value, ", ".join(choices))
    return value


def _check_device(path: str, value: Any) -> str:
    # Only the spelling is checked here, so a config written on a GPU machine still loads on a laptop;
    # whether this machine has the device is checked when a run starts (ptq_core.models.device).
    kind, sep, index = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not (value == "cpu" or (kind == "cuda" and (not sep or index.isdigit()))):
        raise _fail(path, value, "cpu, cuda or cuda:N (N a GPU index)")
    return str(value)


def _check_percentile(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (50.0 < float(value) < 100.0):
        raise _fail(path, value, "a number strictly between 50 and 100, e.g. 99.9, 99.99, 99.999")
    return float(value)


_JSON_KINDS = ((list, "a JSON array"), (str, "a JSON string"), (bool, "a JSON boolean"), (int, "a JSON number"),
               (float, "a JSON number"), (type(None), "null"))


def _check_keys(path: str, data: Any, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        if not path:  # the whole config: say what it is, not its (possibly huge) value
            kind = next((name for t, name in _JSON_KINDS if isinstance(data, t)), type(data).__name__)
            raise ConfigError(f"config: got {kind}; allowed: a JSON object with keys {', '.join(allowed)}")
        raise _fail(path, data, "a JSON object with keys " + ", ".join(allowed))
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed keys{' of ' + path if path else ''}: {', '.join(allowed)}")
    return data


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class WeightQuant:
    """How the weights of Conv/Linear layers are quantized."""

    bits: int = 8  # INT8 is the deployment default; 4 and below need per-channel or per-group
    scheme: str = "symmetric"  # weights are centred on zero; symmetric keeps zero_point = 0
    granularity: str = "per_channel"  # one range per output channel: the standard for INT8 weights
    group_size: int | None = None  # required for per_group: elements of the input dimension sharing a range (ignored otherwise)
    clipping: str = "minmax"  # weights are all known: min-max loses no outliers
    percentile: float = 99.99  # used when clipping == "percentile"

    def validate(self, path: str = "weights") -> None:
        _check_int(f"{path}.bits", self.bits, MIN_BITS, MAX_BITS)
        _check_choice(f"{path}.scheme", self.scheme, SCHEMES)
        _check_choice(f"{path}.granularity", self.granularity, WEIGHT_GRANULARITIES)
        if self.group_size is not None:
            _check_int(f"{path}.group_size", self.group_size, 1, MAX_GROUP_SIZE)
        if self.granularity == "per_group" and self.group_size is None:
            raise ConfigError(f"{path}.group_size: required when granularity is per_group; allowed: a positive integer, e.g. 32, 64, 128")
        _check_choice(f"{path}.clipping", self.clipping, WEIGHT_CLIPPING)
        _check_percentile(f"{path}.percentile", self.percentile)


@dataclass(frozen=True)
class ActivationQuant:
    """How activations (the tensors between layers) are quantized."""

    mode: str = "static"  # static: ranges calibrated once; dynamic: from each input at inference
    bits: int = 8
    scheme: str = "asymmetric"  # post-ReLU activations are >= 0: unsigned uint8 uses all 256 levels
    granularity: str = "per_tensor"
    clipping: str = "minmax"  # static only; dynamic mode always uses the input's own min/max
    percentile: float = 99.99  # used when clipping == "percentile"

    def validate(self, path: str = "activations") -> None:
        _check_choice(f"{path}.mode", self.mode, ACTIVATION_MODES)
        _check_int(f"{path}.bits", self.bits, MIN_BITS, MAX_BITS)
        _check_choice(f"{path}.scheme", self.scheme, SCHEMES)
        grans = DYNAMIC_ACTIVATION_GRANULARITIES if self.mode == "dynamic" else STATIC_ACTIVATION_GRANULARITIES
        _check_choice(f"{path}.granularity", self.granularity, grans)
        _check_choice(f"{path}.clipping", self.clipping, ACTIVATION_CLIPPING)
        if self.mode == "dynamic" and self.clipping != "minmax":
            raise ConfigError(
                f"{path}.clipping: got {self.clipping!r} with mode 'dynamic'; allowed: minmax "
                "(a dynamic quantizer takes each input's own min/max, there is no calibration to clip)"
            )
        _check_percentile(f"{path}.percentile", self.percentile)


@dataclass(frozen=True)
class Calibration:
    """Which samples of the calibration pool the activation statistics come from."""

    num_samples: int = 256  # enough for stable INT8 ranges on small models; capped at the pool size
    seed: int = 0  # picks the samples for selection random/balanced
    selection: str = "random"  # random | first | balanced (round-robin over classes)
    batch_size: int = 32  # statistics are kept per batch, so subsets of them can be recombined

    def validate(self, path: str = "calibration") -> None:
        _check_int(f"{path}.num_samples", self.num_samples, 1)
        _check_int(f"{path}.seed", self.seed, 0)
        _check_choice(f"{path}.selection", self.selection, SELECTIONS)
        _check_int(f"{path}.batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class Evaluation:
    """Which samples accuracy and per-layer errors are measured on."""

    num_samples: int | None = None  # None: the whole evaluation split; N: its first N samples
    batch_size: int = 128
    layer_error_samples: int = 128  # first N evaluation samples on which per-layer output SQNR is measured
    # Export to ONNX and run it in onnxruntime too, so size and latency are measured on a real integer
    # runtime and the simulation is checked against it; None: simulation only (no export, faster).
    runtime: str | None = "onnxruntime"
    # What runs the simulated (fake-quantized) model: PyTorch eager (the reference), or the same float32 graph
    # in onnxruntime (CPU only; ~9x faster on EfficientNet-Lite0; only the convolutions' summation order
    # differs, see ptq_core.simulation for what that moves).
    backend: str = "torch"
    # "float": fake quantization in float32 (the fast default). "integer": what onnxruntime's CPU integer
    # kernels compute, op for op (integer sums, int32 bias, their requantization and rounding), in PyTorch;
    # ptq_core.onnx.integer says where that is exact. Runs on backend "torch".
    arithmetic: str = "float"
    # More runtimes to run the model on, each a row of Result.runtimes next to onnxruntime: "litert" (the
    # full-integer .tflite in the LiteRT interpreter), "pt2e" (PyTorch's own PTQ on the same calibration images).
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):  # from JSON
            object.__setattr__(self, "targets", tuple(self.targets))

    def validate(self, path: str = "evaluation") -> None:
        if self.num_samples is not None:
            _check_int(f"{path}.num_samples", self.num_samples, 1)
        _check_int(f"{path}.batch_size", self.batch_size, 1)
        _check_int(f"{path}.layer_error_samples", self.layer_error_samples, 1)
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise _fail(f"{path}.runtime", self.runtime, f"{', '.join(RUNTIMES)} or null (simulation only)")
        _check_choice(f"{path}.backend", self.backend, BACKENDS)
        _check_choice(f"{path}.arithmetic", self.arithmetic, ARITHMETICS)
        if self.arithmetic == "integer" and self.backend != "torch":
            raise ConfigError(f"{path}.arithmetic: got 'integer' with backend {self.backend!r}; allowed: arithmetic "
                              "'integer' with backend 'torch' (the integer kernels are emulated in PyTorch), or "
                              f"arithmetic 'float' with any backend")
        if not isinstance(self.targets, tuple) or not all(isinstance(t, str) for t in self.targets):
            raise _fail(f"{path}.targets", self.targets, f"a list of runtime names from {', '.join(TARGETS)}")
        for i, target in enumerate(self.targets):
            _check_choice(f"{path}.targets[{i}]", target, TARGETS)
        if len(set(self.targets)) != len(self.targets):
            raise _fail(f"{path}.targets", list(self.targets), "each runtime at most once")


def _check_positive(path: str, value: Any, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _fail(path, value, f"a positive number, e.g. {example}")
    return float(value)


@dataclass(frozen=True)
class AdaRound:
    """Settings of ``algorithms.rounding = "adaround"`` (Nagel et al. 2020), read only then."""

    # Optimisation steps per layer. The paper and AIMET use 10-20k; 1000 (AIMET's quick setting) already
    # recovers most of it on the models here at a fraction of the time (benchmarks/bench_int4.py).
    iterations: int = 1000
    seed: int = 0  # picks the calibration columns of each step: same seed, same rounding

    def validate(self, path: str = "algorithms.adaround") -> None:
        _check_int(f"{path}.iterations", self.iterations, 1, 100_000)
        _check_int(f"{path}.seed", self.seed, 0)


@dataclass(frozen=True)
class GPTQ:
    """Settings of ``algorithms.rounding = "gptq"`` (Frantar et al. 2022), read only then."""

    # Added to the Hessian's diagonal, as a fraction of its mean: keeps the inverse stable when few
    # calibration columns span a wide layer. 0.01 is the reference implementation's default.
    damping: float = 0.01
    # Quantize the columns with the largest Hessian diagonal first (the reference's act_order): their
    # error is then spread over the most columns. Scales are fixed before, so the export is unchanged.
    act_order: bool = True
    # Whose inputs make each layer's Hessian. "quantized": the layer's input in the quantized model, every layer
    # before it already rounded (GPTQ's sequential mode, so a layer compensates the error reaching it). "float": its
    # input in the FP32 model, so a layer's result depends on its own weights and grid only and is computed once
    # per layer and width: what a mixed-precision search needs (ptq_core.search).
    inputs: str = "quantized"

    def validate(self, path: str = "algorithms.gptq") -> None:
        d = _check_positive(f"{path}.damping", self.damping, "0.01")
        if d >= 1.0:
            raise _fail(f"{path}.damping", self.damping, "a number between 0 and 1 (a fraction of the Hessian's mean diagonal), e.g. 0.01")
        if not isinstance(self.act_order, bool):
            raise _fail(f"{path}.act_order", self.act_order, "true or false")
        _check_choice(f"{path}.inputs", self.inputs, GPTQ_INPUTS)


@dataclass(frozen=True)
class Finetune:
    """Quantization-aware fine-tuning by distillation from the FP32 model on the calibration images."""

    steps: int = 200  # optimiser steps; each is a forward and a backward pass of batch_size images
    # Adam learning rate of latent weights, biases and activation scales. Short runs need a larger rate than
    # QAT's usual 1e-5 to move a 4-bit weight across a rounding boundary: on digits W2, 100 steps at 1e-5 left
    # KL at 1.85 (round-to-nearest 2.75), at 1e-4 0.15, at 1e-3 0.07.
    lr: float = 1e-4
    batch_size: int = 16
    seed: int = 0  # picks each step's images

    def validate(self, path: str = "algorithms.finetune") -> None:
        _check_int(f"{path}.steps", self.steps, 1, 1_000_000)
        lr = _check_positive(f"{path}.lr", self.lr, "1e-4")
        if lr > 1.0:
            raise _fail(f"{path}.lr", self.lr, "a positive number up to 1, e.g. 1e-4")
        _check_int(f"{path}.batch_size", self.batch_size, 1, 4096)
        _check_int(f"{path}.seed", self.seed, 0)


@dataclass(frozen=True)
class SmoothQuant:
    """SmoothQuant (Xiao et al. 2023): move activation outliers into the weights, per input channel of each Linear."""

    # Migration strength: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha). 0.5 is the paper's default for
    # BERT-sized and OPT models (it balances the two ranges); larger moves more of the range into the weights.
    # "auto": per group of Linears sharing an input, the alpha of 0-1 whose quantized outputs come closest to
    # FP32 on the calibration samples (Intel Neural Compressor's alpha="auto"; ptq_core.algorithms.smoothquant).
    alpha: float | str = 0.5

    def validate(self, path: str = "algorithms.smoothquant") -> None:
        a = self.alpha
        if a == "auto":
            return
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0.0 <= float(a) <= 1.0:
            raise _fail(f"{path}.alpha", a, 'a number from 0 to 1, e.g. 0.5, or "auto" (chosen per group of Linears)')


@dataclass(frozen=True)
class Algorithms:
    """What repairs low-bit quantization, each switchable alone (ptq_core.algorithms says how each works).

    All off is plain round-to-nearest PTQ, what a version-1 config means.
    """

    cross_layer_equalization: bool = False  # rescale consecutive layers so per-channel ranges even out (data-free)
    bias_correction: bool = False  # remove the mean shift quantization causes in each layer's output
    rounding: str = "nearest"  # nearest | adaround | gptq
    adaround: AdaRound = field(default_factory=AdaRound)
    gptq: GPTQ = field(default_factory=GPTQ)
    finetune: Finetune | None = None  # null: no fine-tuning
    # null: none; applies when activations are quantized (static, or dynamic: a per-token range is still set by
    # the outlier channel of each token)
    smoothquant: SmoothQuant | None = None

    def validate(self, path: str = "algorithms") -> None:
        for name in ("cross_layer_equalization", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(f"{path}.{name}", getattr(self, name), "true or false")
        _check_choice(f"{path}.rounding", self.rounding, ROUNDINGS)
        self.adaround.validate(f"{path}.adaround")
        self.gptq.validate(f"{path}.gptq")
        if self.finetune is not None:
            self.finetune.validate(f"{path}.finetune")
        if self.smoothquant is not None:
            self.smoothquant.validate(f"{path}.smoothquant")

    @property
    def any(self) -> bool:
        """Whether anything beyond round-to-nearest is asked for."""
        return (self.cross_layer_equalization or self.bias_correction or self.rounding != "nearest"
                or self.finetune is not None or self.smoothquant is not None)

    @property
    def after_rounding(self) -> bool:
        """Whether anything changes the weights after the plan's round-to-nearest (everything but CLE)."""
        return self.bias_correction or self.rounding != "nearest" or self.finetune is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cross_layer_equalization": self.cross_layer_equalization,
            "bias_correction": self.bias_correction,
            "rounding": self.rounding,
            "adaround": dataclasses.asdict(self.adaround),
            "gptq": dataclasses.asdict(self.gptq),
            "finetune": None if self.finetune is None else dataclasses.asdict(self.finetune),
            "smoothquant": None if self.smoothquant is None else dataclasses.asdict(self.smoothquant),
        }

    @classmethod
    def from_dict(cls, data: Any, path: str = "algorithms") -> Algorithms:
        data = _check_keys(path, data, _field_names(cls))
        kwargs: dict[str, Any] = {k: data[k] for k in ("cross_layer_equalization", "bias_correction", "rounding") if k in data}
        if "adaround" in data:
            kwargs["adaround"] = _build(f"{path}.adaround", data["adaround"], AdaRound)
        if "gptq" in data:
            kwargs["gptq"] = _build(f"{path}.gptq", data["gptq"], GPTQ)
        if data.get("finetune") is not None:
            kwargs["finetune"] = _build(f"{path}.finetune", data["finetune"], Finetune)
        if data.get("smoothquant") is not None:
            kwargs["smoothquant"] = _build(f"{path}.smoothquant", data["smoothquant"], SmoothQuant)
        obj = cls(**kwargs)
        obj.validate(path)
        return obj


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer differences from the global choice: partial ``weights``/``activations`` objects.

    ``weights`` applies to the layer's weights; ``activations`` to the activation quantizer on
    the layer's output tensor (the one its consumers read).
    """

    weights: Mapping[str, Any] = field(default_factory=dict)
    activations: Mapping[str, Any] = field(default_factory=dict)


def _parse_partial(path: str, data: Any, cls: type) -> dict[str, Any]:
    return dict(_check_keys(path, data, _field_names(cls)))


def _spec(path: str, value: Any) -> str | dict[str, Any]:
    """A model or data-set spec: a registry name, or an object with a ``kind`` (checked by the registry)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping) and isinstance(value.get("kind"), str):
        return json.loads(json.dumps(value))  # a plain, JSON-clean copy
    raise _fail(path, value, 'a registered name such as "digits_cnn", or an object with a "kind" key')


@dataclass(frozen=True)
class QuantConfig:
    """One PTQ run. See the module docstring for the JSON form."""

    model: str | dict[str, Any] = "digits_cnn"
    dataset: str | dict[str, Any] = "digits"
    weights: WeightQuant = field(default_factory=WeightQuant)
    activations: ActivationQuant | None = field(default_factory=ActivationQuant)  # None: weight-only
    calibration: Calibration = field(default_factory=Calibration)
    evaluation: Evaluation = field(default_factory=Evaluation)
    fold_batchnorm: bool = True  # integer runtimes fold BN into the conv before quantizing
    keep_float: tuple[str, ...] = ()  # layer names left in floating point
    # activation points (a layer's output tensor, the model input) with no quantizer: their readers take them in
    # float, the layer's weights stay quantized. What a search's "16 = float" activation candidate writes.
    keep_float_activations: tuple[str, ...] = ()
    overrides: Mapping[str, LayerOverride] = field(default_factory=dict)
    device: str = "cpu"  # cpu | cuda | cuda:N: where calibration and evaluation run (same numbers within float tolerance)
    algorithms: Algorithms = field(default_factory=Algorithms)  # all off: round-to-nearest
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version in READABLE_SCHEMA_VERSIONS and self.schema_version != SCHEMA_VERSION:
            object.__setattr__(self, "schema_version", SCHEMA_VERSION)  # read as the current version: one config, one JSON
        self.validate()

    def __hash__(self) -> int:
        return hash(self.to_json())

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise _fail("schema_version", self.schema_version, " or ".join(map(str, READABLE_SCHEMA_VERSIONS)))
        _spec("model", self.model)
        _spec("dataset", self.dataset)
        _check_device("device", self.device)
        if not isinstance(self.weights, WeightQuant):
            raise _fail("weights", self.weights, "an object with keys " + ", ".join(_field_names(WeightQuant)))
        self.weights.validate()
        if self.activations is not None:
            self.activations.validate()
        self.calibration.validate()
        self.evaluation.validate()
        if not isinstance(self.algorithms, Algorithms):
            raise _fail("algorithms", self.algorithms, "an object with keys " + ", ".join(_field_names(Algorithms)))
        self.algorithms.validate()
        if self.evaluation.backend == "onnxruntime" and self.device != "cpu":
            raise ConfigError(
                f"evaluation.backend: got 'onnxruntime' with device {self.device!r}; allowed: backend torch on "
                f"{self.device}, or device cpu (the onnxruntime backend runs on the CPU)"
            )
        if not isinstance(self.fold_batchnorm, bool):
            raise _fail("fold_batchnorm", self.fold_batchnorm, "true or false")
        for i, name in enumerate(self.keep_float):
            if not isinstance(name, str) or not name:
                raise _fail(f"keep_float[{i}]", name, "a layer name")
        for i, name in enumerate(self.keep_float_activations):
            if not isinstance(name, str) or not name:
                raise _fail(f"keep_float_activations[{i}]", name, "an activation point name")
        for name, ov in self.overrides.items():
            self.weight_quant_for(name, _override=ov)
            if ov.activations:
                if self.activations is None:
                    raise ConfigError(
                        f"overrides.{name}.activations: activations are not quantized (activations is null); "
                        "allowed: remove this override or quantize activations"
                    )
                self.activation_quant_for(name, _override=ov)

    # -- per-layer resolution ---------------------------------------------------------------
    def weight_quant_for(self, layer: str, *, _override: LayerOverride | None = None) -> WeightQuant | None:
        """The weight quantization of ``layer`` after overrides; None if it is kept in float."""
        if layer in self.keep_float:
            return None
        ov = _override if _override is not None else self.overrides.get(layer)
        if ov is None or not ov.weights:
            return self.weights
        wq = dataclasses.replace(self.weights, **ov.weights)
        wq.validate(f"overrides.{layer}.weights")
        return wq

    def activation_quant_for(self, point: str, *, _override: LayerOverride | None = None) -> ActivationQuant | None:
        """The quantization of the activation tensor produced by ``point`` after overrides."""
        if self.activations is None:
            return None
        ov = _override if _override is not None else self.overrides.get(point)
        if ov is None or not ov.activations:
            return self.activations
        aq = dataclasses.replace(self.activations, **ov.activations)
        aq.validate(f"overrides.{point}.activations")
        return aq

    @property
    def mode(self) -> str:
        """static, dynamic or weight_only: the activation mode this config produces."""
        return "weight_only" if self.activations is None else self.activations.mode

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "dataset": self.dataset,
            "weights": dataclasses.asdict(self.weights),
            "activations": None if self.activations is None else dataclasses.asdict(self.activations),
            "calibration": dataclasses.asdict(self.calibration),
            "evaluation": {**dataclasses.asdict(self.evaluation), "targets": list(self.evaluation.targets)},
            "fold_batchnorm": self.fold_batchnorm,
            "device": self.device,
            "keep_float": list(self.keep_float),
            "keep_float_activations": list(self.keep_float_activations),
            "algorithms": self.algorithms.to_dict(),
            "overrides": {
                name: {k: dict(v) for k, v in (("weights", ov.weights), ("activations", ov.activations)) if v}
                for name, ov in sorted(self.overrides.items())
            },
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=indent is None)

    @classmethod
    def from_dict(cls, data: Any) -> QuantConfig:
        data = _check_keys("", data, _field_names(cls))
        kwargs: dict[str, Any] = {}
        if "schema_version" in data:
            version = data["schema_version"]
            if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
                raise _fail("schema_version", version, " or ".join(map(str, READABLE_SCHEMA_VERSIONS)))
            if version == 1 and "algorithms" in data:
                raise ConfigError("algorithms: not part of schema_version 1; allowed: schema_version 2 with algorithms, "
                                  "or a version-1 config without them")
            kwargs["schema_version"] = version
        if "algorithms" in data:
            kwargs["algorithms"] = Algorithms.from_dict(data["algorithms"])
        for key in ("model", "dataset"):
            if key in data:
                kwargs[key] = _spec(key, data[key])
        if "weights" in data:
            if data["weights"] is None:
                raise _fail("weights", None, "an object; to keep every layer in float list them in keep_float")
            kwargs["weights"] = _build("weights", data["weights"], WeightQuant)
        if "activations" in data:
            kwargs["activations"] = None if data["activations"] is None else _build("activations", data["activations"], ActivationQuant)
        for key, sub in (("calibration", Calibration), ("evaluation", Evaluation)):
            if key in data:
                kwargs[key] = _build(key, data[key], sub)
        if "fold_batchnorm" in data:
            kwargs["fold_batchnorm"] = data["fold_batchnorm"]
        if "device" in data:
            kwargs["device"] = data["device"]
        if "keep_float" in data:
            kf = data["keep_float"]
            if not isinstance(kf, list):
                raise _fail("keep_float", kf, "a list of layer names")
            kwargs["keep_float"] = tuple(kf)
        if "keep_float_activations" in data:
            kfa = data["keep_float_activations"]
            if not isinstance(kfa, list):
                raise _fail("keep_float_activations", kfa, "a list of activation point names")
            kwargs["keep_float_activations"] = tuple(kfa)
        if "overrides" in data:
            ovs = data["overrides"]
            if not isinstance(ovs, Mapping):
                raise _fail("overrides", ovs, 'an object {"layer name": {"weights": {...}, "activations": {...}}}')
            parsed = {}
            for name, ov in ovs.items():
                ov = _check_keys(f"overrides.{name}", ov, ("weights", "activations"))
                parsed[name] = LayerOverride(
                    weights=_parse_partial(f"overrides.{name}.weights", ov.get("weights", {}), WeightQuant),
                    activations=_parse_partial(f"overrides.{name}.activations", ov.get("activations", {}), ActivationQuant),
                )
            kwargs["overrides"] = parsed
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a wrong type deep inside, e.g. a string where a number goes
            raise ConfigError(f"invalid config: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str) -> QuantConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror}") from None
        return cls.from_json(text)

    def replace(self, **changes: Any) -> QuantConfig:
        return dataclasses.replace(self, **changes)


def _build(path: str, data: Any, cls: type) -> Any:
    data = _check_keys(path, data, _field_names(cls))
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(f"{path}.{key}", value, "a finite number")
    obj = cls(**data)
    obj.validate(path)
    return obj


def set_field(config: QuantConfig, dotted: str, value: Any) -> QuantConfig:
    """Return ``config`` with one dotted field (``weights.bits``) set, re-validated.

    Used by sweeps (``--grid weights.bits=8,4``) and the dashboard's controls.
    """
    return set_fields(config, {dotted: value})


def set_fields(config: QuantConfig, changes: Mapping[str, Any]) -> QuantConfig:
    """Return ``config`` with several dotted fields set together, validated once all are set.

    Together, because one field may need another: ``weights.granularity=per_group`` is valid only
    with ``weights.group_size`` set in the same step.
    """
    data = config.to_dict()
    for dotted, value in changes.items():
        node: Any = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"{dotted}: no such config field; allowed: top-level fields {', '.join(data)} and their sub-fields")
            node = node[part]
        if parts[-1] not in node and not (dotted.startswith("overrides.") or parts[-1] in ("group_size",)):
            raise ConfigError(f"{dotted}: no such config field; allowed fields here: {', '.join(node)}")
        node[parts[-1]] = value
    return QuantConfig.from_dict(data)
