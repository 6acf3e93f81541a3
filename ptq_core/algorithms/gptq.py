"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2022).

Optimal Brain Quantization made fast: quantize a layer's weight one input column at a time and,
after each column, spread its rounding error over the columns not yet quantized, weighted by the
inverse of the layer's input Hessian ``H = mean(x x^T)`` (``x``: the layer's input columns in the
quantized model, every layer before already quantized; im2col columns for convolutions, per group
for grouped and depthwise convs, see :mod:`.geometry`). Minimises ``||W x - W~ x||^2`` for the
inputs the layer actually sees, with no gradient descent: one Cholesky factorisation and one pass
over the columns per layer.

As in the reference implementation: dead inputs (``H_ii = 0``) get ``H_ii = 1`` and zero weight;
``damping * mean(diag H)`` is added to the diagonal; with ``act_order`` the columns are visited
by decreasing ``H_ii``; updates are applied lazily in blocks of BLOCK columns. The scales and zero
points are the plan's, fixed before (per channel, per tensor, or per group: "static groups"), so
the result is integer codes on the plan's grid and the ONNX export stores exactly these codes.
"""

from __future__ import annotations

import torch

BLOCK = 128


def gptq_layer(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, hessian: torch.Tensor, *,
    damping: float, act_order: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GPTQ on one layer in the batched view: ``w, scale, zero_point [G, O, I]`` (qparams broadcast to every weight),
    ``hessian [G, I, I]``. Returns the fake-quantized weight ``[G, O, I]`` and the Hessian-weighted error before/after.
    """
    W = w.double().clone()
    s, zp = scale.double(), zero_point.double()
    H = hessian.double().clone()
    G, _, I = W.shape  # noqa: E741 - the paper's names
    diag = torch.diagonal(H, dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0  # a view: sets H_ii
    W.masked_fill_(dead.unsqueeze(1), 0.0)

    def fq(col: torch.Tensor, sc: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(torch.round(col / sc) + z, qmin, qmax) - z) * sc

    def weighted_error(q: torch.Tensor) -> float:
        d = (w.double() - q)
        return float(torch.einsum("goi,gij,goj->", d, hessian.double(), d))

    nearest_err = weighted_error(fq(w.double(), s, zp))
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H, dim1=1, dim2=2), dim=1, descending=True)  # [G, I]
        idx_w = perm.unsqueeze(1).expand_as(W)
        W, s, zp = W.gather(2, idx_w), s.gather(2, idx_w), zp.gather(2, idx_w)
        H = H.gather(1, perm.unsqueeze(2).expand(G, I, I)).gather(2, perm.unsqueeze(1).expand(G, I, I))
    damp = damping * torch.diagonal(H, dim1=1, dim2=2).mean(dim=1)
    H = H + torch.diag_embed(damp.unsqueeze(1).expand(G, I))
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)  # [G, I, I]
    Q = torch.zeros_like(W)
    for i1 in range(0, I, BLOCK):
        i2 = min(i1 + BLOCK, I)
        W1 = W[:, :, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, :, i]
            d = U1[:, i, i].unsqueeze(1)  # [G, 1]
            q = fq(col, s[:, :, i1 + i], zp[:, :, i1 + i])
            Q[:, :, i1 + i] = q
            err = (col - q) / d
            W1[:, :, i:] -= err.unsqueeze(2) * U1[:, i, i:].unsqueeze(1)
            Err1[:, :, i] = err
        W[:, :, i2:] -= torch.bmm(Err1, U[:, i1:i2, i2:])
    if perm is not None:
        inv = torch.argsort(perm, dim=1).unsqueeze(1).expand_as(Q)
        Q = Q.gather(2, inv)
    out = Q.float()
    return out, {"hessian_error_nearest": nearest_err, "hessian_error": weighted_error(out.double())}
