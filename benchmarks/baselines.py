"""Classical baselines the benchmarks compare against (not part of the package): TV-regularised least squares by
PDHG and the power iteration it needs."""

from __future__ import annotations

import numpy as np
import torch


def _grad(x: torch.Tensor) -> torch.Tensor:
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return torch.stack([gx, gy])


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    gx, gy = g[0], g[1]
    out = torch.zeros_like(gx)
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    return out


def operator_norm(operator, measurements: torch.Tensor, iterations: int = 30, seed: int = 0) -> float:
    """Largest singular value of ``operator`` (power iteration on ``A^T A``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(operator.adjoint(measurements[:1]).shape, generator=gen).to(measurements.device)
    norm = 1.0
    for _ in range(iterations):
        x = operator.adjoint(operator.forward(x))
        norm = float(x.norm())
        x = x / max(norm, 1e-12)
    return float(np.sqrt(norm))


def tv_reconstruct(
    operator,
    measurements: torch.Tensor,
    weight: float,
    iterations: int = 300,
    nonnegative: bool = False,
    data_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """TV-regularised least squares by PDHG (Chambolle & Pock 2011):
    ``argmin_x 0.5 sum_i w_i ((A x)_i - y_i)^2 + weight * TV(x)`` with isotropic TV coupled over the image channels.

    ``measurements`` batched ``(B, ...)``; returns ``(B, C, H, W)``. ``nonnegative`` adds ``x >= 0``.
    ``data_weights`` ``w`` (the shape of ``y``; ``None``: all 1), e.g. each ray's inverse variance, enter the data
    term's proximal step, so that rays of very different weight do not slow the iteration down.
    """
    with torch.no_grad():
        # Solve the equivalent problem with A' = A / c, y' = y / c, weight' = weight / c^2 (c = ||A||), so that
        # the data and TV blocks are balanced: ||[A'; grad]|| <= 3.
        c = operator_norm(operator, measurements.float())
        y = measurements.float() / c
        weight = weight / c**2
        w = torch.ones_like(y) if data_weights is None else data_weights.float().to(y.device).clamp_min(1e-12)
        tau = sigma = 1.0 / 3.0
        x = operator.adjoint(y).clone() / c
        x_bar = x.clone()
        p = torch.zeros_like(y)
        q = torch.zeros_like(_grad(x))
        for _ in range(iterations):
            p = (p + sigma * (operator.forward(x_bar) / c - y)) / (1 + sigma / w)
            q = q + sigma * _grad(x_bar)
            q_norm = q.pow(2).sum(dim=(0, 2), keepdim=True).sqrt()  # over gradient directions and channels
            q = q / torch.clamp(q_norm / weight, min=1.0)
            x_new = x - tau * (operator.adjoint(p) / c + _grad_adjoint(q))
            if nonnegative:
                x_new = x_new.clamp_min(0)
            x_bar = 2 * x_new - x
            x = x_new
    return x
