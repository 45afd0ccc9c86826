"""Weight-space sharpness of the training loss: top Hessian eigenvalue and Hessian trace (seed 004, Gubri et al.).

Seed 004 relates transferability to the sharpness of the surrogate's training loss w.r.t. its *weights*: both
the largest eigenvalue and the trace of ``H = d^2 L / d theta^2`` drop when the learning rate decays, which is
when early-stopped surrogates transfer best, and sharpness-aware minimizers keep them low. These are surrogate
diagnostics (not to be confused with :mod:`bench.metrics.smoothness`, the *input*-space curvature of seed 002).

``L`` is the mean cross-entropy over a fixed batch of N images, with the model in eval mode (BatchNorm uses its
running statistics, so ``L`` is a fixed function of the weights). ``H`` is never formed: both estimators use
Hessian-vector products from double backward, ``H v = d <grad L, v> / d theta``.

* :func:`hessian_top_eigenvalue`: power iteration from a seeded Gaussian start. It converges to the eigenvalue
  of largest magnitude, which is the top eigenvalue near a minimum (where H is close to PSD); the signed
  Rayleigh quotient is reported.
* :func:`hessian_trace`: Hutchinson's estimator ``tr H = E[z^T H z]`` with Rademacher probes z; its standard
  error is reported. For a diagonal H every probe gives the trace exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.metrics.similarity import resolve_device
from bench.resample import no_autocast

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> mean loss over the batch


@dataclass(frozen=True)
class SharpnessEstimate:
    """An estimate with what it cost: power iterations run, or Hutchinson probes averaged."""

    value: float
    count: int  # iterations (eigenvalue) or probes (trace)
    converged: bool = True  # eigenvalue: relative change fell below tol; trace: always True
    stderr: float = 0.0  # trace: standard error of the probe mean; eigenvalue: 0


def _params(model: nn.Module) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires grad: weight-space sharpness is undefined")
    return params


def _chunks(x: torch.Tensor, y: torch.Tensor, batch_size: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    step = batch_size or len(y)
    for start in range(0, len(y), step):
        yield x[start : start + step], y[start : start + step]


def weight_hvp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    v: list[torch.Tensor],
    *,
    loss_fn: LossFn = F.cross_entropy,
    batch_size: int | None = None,
) -> list[torch.Tensor]:
    """``H v`` for the mean loss over (x, y), one tensor per parameter; memory bounded by ``batch_size`` images.

    Chunks are weighted by their share of the images, so the result does not depend on ``batch_size``.
    """
    params, dev = _params(model), resolve_device(model, None)
    out = [torch.zeros_like(p) for p in params]
    for xb, yb in _chunks(x, y, batch_size):
        xb, yb = xb.to(dev), yb.to(dev)
        with torch.enable_grad(), no_autocast(dev):
            loss = loss_fn(model(xb), yb) * (len(yb) / len(y))
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            pairs = [(g, u) for g, u in zip(grads, v, strict=True) if g is not None and g.requires_grad]
            if not pairs:
                continue  # loss linear in the weights on this chunk: H = 0
            dot = sum((g * u).sum() for g, u in pairs)
            hv = torch.autograd.grad(dot, params, allow_unused=True)
        for acc, h in zip(out, hv, strict=True):
            if h is not None:
                acc += h.detach()
    return out


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((u * w).sum() for u, w in zip(a, b, strict=True))  # type: ignore[return-value]


def _random_like(params: list[torch.Tensor], gen: torch.Generator, kind: str) -> list[torch.Tensor]:
    """Seeded draws on the CPU (the same on every device), moved to each parameter's device and dtype."""
    out = []
    for p in params:
        if kind == "rademacher":
            r = torch.randint(0, 2, p.shape, generator=gen).to(torch.float64) * 2 - 1  # +-1 with probability 1/2
        else:
            r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        out.append(r.to(device=p.device, dtype=p.dtype))
    return out


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def hessian_top_eigenvalue(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_iters: int = 100,  # PyHessian's default (Yao et al. 2020), the usual tool for this diagnostic
    tol: float = 1e-3,  # relative change of the Rayleigh quotient between iterations; PyHessian's default
    seed: int = 0,
    batch_size: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> SharpnessEstimate:
    """Largest-magnitude eigenvalue of the weight Hessian of the mean loss on (x, y), by power iteration."""
    if max_iters < 1 or tol <= 0:
        raise ValueError(f"need max_iters >= 1 and tol > 0, got {max_iters}, {tol}")
    params = _params(model)
    v = _random_like(params, torch.Generator().manual_seed(seed), "gaussian")
    eig, prev = math.nan, math.nan
    with _eval_mode(model):
        for it in range(1, max_iters + 1):
            norm = torch.sqrt(_dot(v, v))
            v = [u / norm for u in v]
            hv = weight_hvp(model, x, y, v, loss_fn=loss_fn, batch_size=batch_size)
            eig = float(_dot(v, hv))
            if it > 1 and abs(eig - prev) <= tol * max(abs(eig), 1e-30):
                return SharpnessEstimate(eig, it, converged=True)
            if float(torch.sqrt(_dot(hv, hv))) == 0.0:
                return SharpnessEstimate(0.0, it, converged=True)  # H v = 0: v in the null space
            prev, v = eig, hv
    return SharpnessEstimate(eig, max_iters, converged=False)


def hessian_trace(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    probes: int = 100,  # Hutchinson samples; the standard error returned says whether that was enough
    seed: int = 0,
    batch_size: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> SharpnessEstimate:
    """Hutchinson estimate of the trace of the weight Hessian of the mean loss on (x, y)."""
    if probes < 1:
        raise ValueError(f"need probes >= 1, got {probes}")
    params, gen = _params(model), torch.Generator().manual_seed(seed)
    samples = []
    with _eval_mode(model):
        for _ in range(probes):
            z = _random_like(params, gen, "rademacher")
            samples.append(float(_dot(z, weight_hvp(model, x, y, z, loss_fn=loss_fn, batch_size=batch_size))))
    values = torch.tensor(samples, dtype=torch.float64)
    stderr = float(values.std(unbiased=True) / math.sqrt(probes)) if probes > 1 else math.inf
    return SharpnessEstimate(float(values.mean()), probes, converged=True, stderr=stderr)
