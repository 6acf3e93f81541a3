"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020).

Round-to-nearest minimises each weight's own error; what matters is the layer's output. AdaRound
keeps the plan's scales and zero points and learns, per weight, whether to round down or up:
``w~ = s * (clamp(floor(w / s) + h(V) + zp, qmin, qmax) - zp)`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (zeta = 1.1, gamma = -0.1), ``V``
initialised so that ``h(V)`` equals the fractional part (the start is the float weight itself),
and minimises, on the calibration columns of :mod:`.capture`,

    || f(W~ x_q + b) - f(W x_fp + b) ||^2   +   lambda * sum(1 - |2 h(V) - 1|^beta)

where ``x_q`` is the layer's input in the quantized model (every layer before already rounded),
``W x_fp + b`` its FP32 output and ``f`` the fused activation (ReLU/ReLU6), the paper's asymmetric
reconstruction with the activation. The regulariser pushes every ``h`` to 0 or 1; ``beta`` anneals
from 20 to 2 after a warm-up of 20% of the iterations without it; lambda = 0.01, as in the paper and
AIMET; Adam on ``V`` with a learning rate that grows as the iterations shrink (:func:`learning_rate`).
The result rounds ``h >= 0.5`` up: integer codes on the plan's
grid, so the ONNX export stores exactly these codes.

Cost per iteration: one batched matrix product of the layer on BATCH_COLUMNS columns, forward and
backward. Seeded: the same seed and calibration images give the same codes (on one machine and
thread count; float sums may differ elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ZETA, GAMMA = 1.1, -0.1
LAMBDA = 0.01
BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2
# Adam's learning rate on V: the paper's 1e-3 is for 10-20k iterations. Fewer iterations move V less, and h(V)
# is then still undecided when the regulariser forces it: measured on a 16x32 layer at 3 bits, 300 iterations at
# 1e-3 ended 10% WORSE than nearest, at 3e-2 36% better. So the rate scales with 10,000 / iterations, within
# [1e-3, 3e-2] (1000 iterations: 1e-2).
LR_BASE, LR_MAX, LR_REFERENCE_ITERATIONS = 1e-3, 3e-2, 10_000


def learning_rate(iterations: int) -> float:
    return min(LR_MAX, max(LR_BASE, LR_BASE * LR_REFERENCE_ITERATIONS / iterations))

# Columns per step. The paper uses batches of 32 images (every position); random columns give an unbiased
# gradient for much less. 512 halves the time of 1024 on wide layers (EfficientNet-Lite0's pointwise convs:
# 28 against 70 ms per iteration, one thread); with 500 iterations it reaches 84.9% top-1 at W4A8 there.
BATCH_COLUMNS = 512
CHECK_COLUMNS = 4096  # columns the output error before/after is measured on
PROGRESS_EVERY = 50  # iterations between progress reports (and chances to cancel)


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _product(weight: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``weight [G, O, I] @ cols [G, I, B]``."""
    return torch.bmm(weight, cols)


def adaround_layer(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, bias: torch.Tensor,
    x: torch.Tensor, y: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor], *, iterations: int, seed: int,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Learned rounding of one layer in the batched view: ``w, scale, zero_point [G, O, I]`` (qparams broadcast to
    every weight), ``bias [G, O]``, ``x [G, I, N]`` input columns, ``y [G, O, N]`` FP32 pre-activation outputs.

    Returns the fake-quantized weight ``[G, O, I]`` (on the grid of ``scale``/``zero_point``) and what the
    optimisation reached (output MSE before and after, the share of weights rounded the other way from nearest).
    If the learned rounding ends with a larger output error than nearest on the same columns (too few
    iterations for the annealing to settle), nearest is kept and ``kept_nearest`` says so.
    ``on_step(done, iterations)`` is called every PROGRESS_EVERY iterations (a caller may raise there to stop).
    """
    with torch.enable_grad():  # called inside the quantized model's no-grad forward (capture.walk_quantized)
        return _adaround(w, scale, zero_point, qmin, qmax, bias, x, y, act, iterations=iterations, seed=seed,
                         on_step=on_step)


def _adaround(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, bias: torch.Tensor,
    x: torch.Tensor, y: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor], *, iterations: int, seed: int,
    on_step: Callable[[int, int], None] | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    gen = torch.Generator().manual_seed(seed)
    w, scale, zp = w.float(), scale.float(), zero_point.float()
    inv = 1.0 / scale
    w_div = w * inv
    w_floor = torch.floor(w_div)
    rest = (w_div - w_floor).clamp(0.0, 1.0)
    # h(V) = rest  <=>  sigmoid(V) = (rest - gamma) / (zeta - gamma)
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    v = torch.log(p / (1 - p)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=learning_rate(iterations))
    target = act(y)
    b = bias.float().unsqueeze(-1)
    n = x.shape[-1]
    batch = min(BATCH_COLUMNS, n)
    check = slice(0, min(CHECK_COLUMNS, n))  # the columns are random positions already: the first ones will do

    def soft() -> torch.Tensor:
        return (torch.clamp(w_floor + _h(v) + zp, qmin, qmax) - zp) * scale

    def out_mse(weight: torch.Tensor) -> float:
        with torch.no_grad():
            return float((act(_product(weight, x[:, :, check]) + b) - target[:, :, check]).square().sum(1).mean())

    nearest = (torch.clamp(torch.round(w_div) + zp, qmin, qmax) - zp) * scale
    before = out_mse(nearest)
    warm = int(WARMUP * iterations)
    # The columns shuffled once (a gather of every column costs as much as tens of steps on a depthwise layer), then
    # contiguous windows, each epoch from another random offset so that batches differ between epochs.
    perm = torch.randperm(n, generator=gen)
    xs, ts = x[:, :, perm], target[:, :, perm]
    pos = n
    for it in range(iterations):
        if pos + batch > n:
            pos = int(torch.randint(0, max(1, n - batch * (n // batch) + 1), (1,), generator=gen)) if n > batch else 0
        cols, want = xs[:, :, pos:pos + batch], ts[:, :, pos:pos + batch]
        pos += batch
        loss = (act(_product(soft(), cols) + b) - want).square().sum(1).mean()
        if it >= warm:
            frac = (it - warm) / max(1, iterations - warm)
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + math.cos(frac * math.pi))
            loss = loss + LAMBDA * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None and (it + 1) % PROGRESS_EVERY == 0:
            on_step(it + 1, iterations)
    with torch.no_grad():
        up = (v >= 0).float()
        hard = (torch.clamp(w_floor + up + zp, qmin, qmax) - zp) * scale
        after = out_mse(hard)
        if after > before:
            return nearest, {"output_mse_nearest": before, "output_mse": before, "flipped_fraction": 0.0,
                             "kept_nearest": True, "output_mse_learned": after}
        flipped = float(((w_floor + up) != torch.round(w_div)).float().mean())
    return hard.detach(), {"output_mse_nearest": before, "output_mse": after, "flipped_fraction": flipped}
