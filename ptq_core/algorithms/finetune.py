"""Quantization-aware fine-tuning by distillation: a short training of the quantized model towards the FP32 one.

No labels: the loss is the KL divergence from the FP32 model's output distribution to the
quantized model's, on the calibration images (Hinton-style distillation at temperature 1). What
trains: every quantized layer's float "latent" weights, seen through their fake quantizer with a
straight-through estimator for rounding (the plan's weight scales and zero points stay, so the
export still stores codes on the plan's grid), every layer's bias, and every static activation
quantizer's scale (zero points stay; the gradient reaches the scale through both the division and
the multiplication of the fake quantizer, as in LSQ, Esser et al. 2020). Adam, one learning rate,
batches drawn with the config's seed.

The latent weights start at the weights the plan has (round-to-nearest: the float weights, whose
rounding is the nearest; after AdaRound or GPTQ: their codes), so fine-tuning continues from the
best rounding there is instead of undoing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class QATWeight(nn.Module):
    """A Conv/Linear whose weight is ``fake_quantize(latent)`` with fixed qparams (broadcast to the weight)."""

    def __init__(self, module: nn.Module, latent: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 qmin: int, qmax: int, bias: torch.Tensor) -> None:
        super().__init__()
        self.inner = module
        self.latent = nn.Parameter(latent.clone().float())
        self.bias = nn.Parameter(bias.clone().float())
        self.scale: torch.Tensor
        self.zero_point: torch.Tensor
        self.register_buffer("scale", scale.float().clone())
        self.register_buffer("zero_point", zero_point.float().clone())
        self.qmin, self.qmax = qmin, qmax

    def quantized_weight(self) -> torch.Tensor:
        q = torch.clamp(_round_ste(self.latent * (1.0 / self.scale)) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.inner
        if isinstance(m, nn.Linear):
            return F.linear(x, self.quantized_weight(), self.bias)
        return m._conv_forward(x, self.quantized_weight(), self.bias)  # type: ignore[operator]


class LearnableFakeQuantize(nn.Module):
    """A static activation quantizer whose scale trains (zero point fixed)."""

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.zero_point, self.qmin, self.qmax = float(zero_point), qmin, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale.clamp_min(1e-12)
        q = torch.clamp(_round_ste(x / s) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * s


def _set(gm: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, attr, module)


def finetune(
    gm: torch.fx.GraphModule, layers: Mapping[str, tuple[str, QATWeight]],
    points: Mapping[str, tuple[str, LearnableFakeQuantize]],
    images: torch.Tensor, teacher_logits: torch.Tensor, *, steps: int, lr: float, batch_size: int, seed: int,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float], dict[str, float]]:
    """Train ``gm`` (a private copy of the simulated model) in place and return what changed.

    ``layers``: layer name -> (module path in ``gm``, its :class:`QATWeight` replacement); ``points``: point ->
    (module path of its FakeQuantize in ``gm``, the :class:`LearnableFakeQuantize`). Returns per layer the
    fake-quantized weight and bias, per point the new scale, and the loss at the start and the end.
    """
    for _name, (path, mod) in layers.items():
        _set(gm, path, mod)
    for _name, (path, fq) in points.items():
        _set(gm, path, fq)
    params = [p for _, m in layers.values() for p in (m.latent, m.bias)] + [fq.scale for _, fq in points.values()]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    gm.eval()  # eval semantics (dropout off); gradients still flow
    losses: list[float] = []
    order = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(steps):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + min(batch_size, n)]
        pos += len(idx)
        with torch.enable_grad():
            out = gm(images[idx])
            loss = F.kl_div(F.log_softmax(out.float(), dim=1), F.log_softmax(teacher_logits[idx], dim=1),
                            log_target=True, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, steps)
    with torch.no_grad():
        weights = {name: (m.quantized_weight().detach().clone(), m.bias.detach().clone()) for name, (_, m) in layers.items()}
        scales = {name: float(fq.scale.clamp_min(1e-12)) for name, (_, fq) in points.items()}
    k = max(1, min(10, len(losses) // 5))
    summary = {"kl_start": sum(losses[:k]) / k, "kl_end": sum(losses[-k:]) / k} if losses else {}
    return weights, scales, summary
