"""Model smoothness: the dominant eigenvalue of the input Hessian of the loss (Zhang et al., Def. 1).

``sigma_F = E_(x,y)[lambda_max(Hessian_x CE(F(x), y))]``: how sharply the loss surface curves around an input.
The seed paper links smoother surrogates (smaller sigma) to better-transferring adversarial examples, and also
reports the maximum over images ("upper smoothness").

The Hessian is never formed: it has (C*H*W)**2 entries per image. Instead a batched power iteration runs on all
images of a batch at once, using Hessian-vector products from double backward. Power iteration converges to the
eigenvalue of largest MAGNITUDE; that is what "dominant eigenvalue" means here. For piecewise-linear networks
(ReLU) the input Hessian is positive semi-definite (it comes from the softmax only), so it is also the largest
one; for smooth activations it can be negative. The iteration returns the signed value; what a protocol reports
is its ``smoothness_value`` (:data:`SMOOTHNESS_VALUES`): the signed eigenvalue, or its magnitude, the spectral
norm of the Hessian, which is what the seed's bound ``|xi^T H xi| <= sigma ||xi||^2`` (its Theorem 1 proof) needs.

Models must be in eval mode: the per-image loss then depends on its own image only, so the Hessian of the summed
loss is block-diagonal and one batched product gives every image its own Hessian-vector product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench import rng
from bench.metrics.similarity import (
    check_batch,
    check_dataset,
    check_eval_mode,
    margin_cross_entropy,
    metric_dtype,
    no_autocast,
    resolve_device,
)

INIT_SEED = 0
INIT_STREAM = "smoothness_init"
# When an image's power iteration counts as converged (``tol`` is relative in both):
# - "residual": ||H v - lambda v|| <= tol * |lambda| for the unit iterate v, i.e. lambda lies within tol of an
#   eigenvalue (Weyl) and v is an eigenvector to within tol. The default.
# - "rayleigh-change": |lambda_t - lambda_{t-1}| <= tol * |lambda_t|, the rule of the protocols defined before the
#   residual one (they pin it). The Rayleigh quotient converges twice as fast as the vector and stalls when the
#   two largest eigenvalues are close in magnitude, so this passes values that are off by more than tol.
STOP_RULES = ("residual", "rayleigh-change")
# What a protocol reports per image: "signed", the dominant eigenvalue itself (the protocols defined before this
# choice), or "magnitude", its absolute value, the Hessian's spectral norm. They differ only where the dominant
# eigenvalue is negative, which a piecewise-linear (ReLU) network cannot produce.
SMOOTHNESS_VALUES = ("signed", "magnitude")


@dataclass(frozen=True)
class SmoothnessResult:
    """Dominant input-Hessian eigenvalue per image, with per-image convergence flags."""

    eigenvalues: torch.Tensor  # (N,) float32 on CPU: signed Rayleigh quotient of the last iterate
    converged: torch.Tensor  # (N,) bool on CPU
    iterations: int  # power iterations actually run (max over batches)

    @property
    def mean(self) -> float:
        """sigma_F: mean eigenvalue over all images (unconverged ones included; see ``n_converged``)."""
        return float(self.eigenvalues.mean()) if self.eigenvalues.numel() else math.nan

    @property
    def max(self) -> float:
        """Upper smoothness: the largest eigenvalue over images."""
        return float(self.eigenvalues.max()) if self.eigenvalues.numel() else math.nan

    @property
    def n_converged(self) -> int:
        """Number of images whose power iteration met the tolerance."""
        return int(self.converged.sum())

    def reported(self, value: str) -> SmoothnessResult:
        """The result with each eigenvalue as ``value`` (:data:`SMOOTHNESS_VALUES`) has it: signed, or its magnitude."""
        if value not in SMOOTHNESS_VALUES:
            raise ValueError(f"smoothness value must be one of {SMOOTHNESS_VALUES}, got {value!r}")
        values = self.eigenvalues.abs() if value == "magnitude" else self.eigenvalues
        return SmoothnessResult(values, self.converged, self.iterations)


def _input_grad_graph(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf copy of ``x`` and ``g = grad_x sum_i CE_i`` with its graph kept, ready for repeated double backward."""
    x = x.detach().requires_grad_(True)  # (B, C, H, W)
    with torch.enable_grad(), no_autocast(x.device):
        loss = margin_cross_entropy(model(x), y)  # float32-exact on confident images (similarity.py)
        if not loss.requires_grad:
            return x, torch.zeros_like(x)
        (grad,) = torch.autograd.grad(loss, x, create_graph=True, allow_unused=True)
    return x, torch.zeros_like(x) if grad is None else grad  # (B, C, H, W)


def _hvp_from_graph(x: torch.Tensor, grad: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``H v`` per image: the gradient of <grad, v> w.r.t. x, with v held constant. Keeps the graph for reuse."""
    if not grad.requires_grad:  # loss is (piecewise) linear in x or independent of it: H = 0
        return torch.zeros_like(v)
    with torch.enable_grad(), no_autocast(x.device):
        # grad_outputs=v is the vector-Jacobian product of grad, i.e. d<grad, v>/dx, without forming the sum.
        (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(v) if hv is None else hv.detach()  # (B, C, H, W)


def hessian_vector_product(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched input-Hessian-vector product ``H_i v_i`` of each image's CE loss, shape (B, C, H, W).

    Double backward on the SUM of per-image losses: in eval mode the Hessian of the sum is block-diagonal with
    image i's own Hessian as block i, so no cross-image terms appear. Runs in x's dtype with autocast off.
    """
    check_eval_mode(model)
    y = check_batch(x, y)
    if v.shape != x.shape:
        raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    x_leaf, grad = _input_grad_graph(model, x, y)
    return _hvp_from_graph(x_leaf, grad, v.to(device=x.device, dtype=x.dtype))


def init_vectors(ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Deterministic start vectors shaped like x, keyed by image id: uniform(-0.5, 0.5), not normalised.

    Keyed by id (``bench.rng``) so an image's result does not depend on its batch, batch size or device.
    """
    if ids.shape != (x.shape[0],):
        raise ValueError(f"ids must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, got {tuple(ids.shape)}")
    n = x[0].numel()
    u = rng.uniform(seed=INIT_SEED, stream=INIT_STREAM, ids=ids.to(x.device), step=0, n=n)  # (B, n)
    return (u - 0.5).reshape(x.shape).to(dtype=x.dtype)  # (B, C, H, W)


def _unit(v: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``v / norm`` per image; images with norm 0 stay as they are (zero)."""
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))  # (B,)
    return v / safe.view(-1, *([1] * (v.ndim - 1)))


def _check_power_params(iters: int, tol: float, stop: str) -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number (relative), got {tol!r}")
    if stop not in STOP_RULES:
        raise ValueError(f"stop must be one of {STOP_RULES}, got {stop!r}")


def input_hessian_top_eigenvalue(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    init: torch.Tensor | None = None,
    stop: str = "residual",
) -> SmoothnessResult:
    """Dominant (largest-magnitude, signed) input-Hessian eigenvalue of each image's CE loss by power iteration.

    All images of the batch iterate together. Start vectors are ``init`` (shape of x) or, by default, the
    ``bench.rng`` vectors of ids ``arange(B)``. Image i has converged once it passes the ``stop`` rule
    (:data:`STOP_RULES`; by default its residual ``||H v - lambda v|| <= tol * |lambda|``) or when ``H v = 0``
    (eigenvalue 0); it is then frozen, so its result does not depend on the other images. Stops after ``iters``
    or when all have converged. Runs in x's dtype (float32 in the benchmark) with autocast off; the result is
    float32 on CPU.
    """
    check_eval_mode(model)
    y = check_batch(x, y)
    _check_power_params(iters, tol, stop)
    if init is None:
        init = init_vectors(torch.arange(x.shape[0]), x)
    elif init.shape != x.shape:
        raise ValueError(f"init must have the shape of x {tuple(x.shape)}, got {tuple(init.shape)}")
    if x.shape[0] == 0:
        return SmoothnessResult(torch.empty(0), torch.empty(0, dtype=torch.bool), 0)
    v = init.detach().to(device=x.device, dtype=x.dtype)  # (B, C, H, W)
    v = _unit(v, v.flatten(1).norm(dim=1))
    eigenvalues, converged, iterations = _power_iteration(model, x, y, v, iters, float(tol), stop)
    return SmoothnessResult(eigenvalues.float().cpu(), converged.cpu(), iterations)


def _power_iteration(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, iters: int, tol: float, stop: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the iteration on unit vectors v; return (eigenvalues (B,), converged (B,), iterations run).

    The forward pass and first backward are built once and reused by every Hessian-vector product
    (retain_graph). When at most half of the images in that graph are still active it is rebuilt on the active
    ones only, so late iterations cost little when most images have converged.
    """
    b = x.shape[0]
    lam = torch.full((b,), math.nan, dtype=x.dtype, device=x.device)  # (B,) NaN: no previous value yet
    converged = torch.zeros(b, dtype=torch.bool, device=x.device)  # (B,)
    graph_idx = torch.arange(b, device=x.device)  # images in the current graph
    x_leaf, grad = _input_grad_graph(model, x, y)
    iterations = 0
    while iterations < iters and not bool(converged.all()):
        active = (~converged).nonzero().squeeze(1)  # (A,)
        if 2 * active.numel() <= graph_idx.numel():
            x_leaf = grad = None  # free the old graph before building the smaller one
            graph_idx = active
            x_leaf, grad = _input_grad_graph(model, x[active], y[active])
        w = _hvp_from_graph(x_leaf, grad, v[graph_idx])  # (G, C, H, W)
        keep = ~converged[graph_idx]  # (G,) frozen images are skipped
        _power_step(v, w[keep], lam, converged, graph_idx[keep], tol, stop)
        iterations += 1
    return lam, converged, iterations


def _power_step(
    v: torch.Tensor,
    w: torch.Tensor,
    lam: torch.Tensor,
    converged: torch.Tensor,
    idx: torch.Tensor,
    tol: float,
    stop: str = "residual",
) -> None:
    """In-place update of images ``idx``: eigenvalue <v, Hv>, convergence test (``stop``, see
    :data:`STOP_RULES`), next vector Hv / ||Hv||."""
    v_old = v[idx]  # (A, C, H, W)
    lam_new = (v_old * w).flatten(1).sum(dim=1)  # (A,) Rayleigh quotient of the unit vector v_old
    norm = w.flatten(1).norm(dim=1)  # (A,)
    if stop == "residual":
        residual = (w - lam_new.view(-1, *([1] * (w.ndim - 1))) * v_old).flatten(1).norm(dim=1)  # (A,)
        done = residual <= tol * lam_new.abs()
    else:  # "rayleigh-change": NaN on the first iteration, so never converged there
        done = (lam_new - lam[idx]).abs() <= tol * lam_new.abs().clamp_min(1e-12)
    done = done | (norm == 0)
    lam[idx] = lam_new
    converged[idx] = done
    v[idx] = torch.where((norm > 0).view(-1, *([1] * (w.ndim - 1))), _unit(w, norm), v_old)


def smoothness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    iters: int = 20,
    tol: float = 1e-3,
    device: torch.device | str | None = None,
    ids: torch.Tensor | None = None,
    stop: str = "residual",
) -> SmoothnessResult:
    """Dominant input-Hessian eigenvalue for every image of a set, in batches of ``batch_size``.

    ``stop`` is the convergence rule (:data:`STOP_RULES`); a protocol pins it (``Protocol.smoothness_stop``).

    ``images`` (N, C, H, W) float in [0, 1] and ``labels`` (N,) may live on CPU; each batch is moved to ``device``
    (default: the model's device) as float32 (float64 for a float64 model, :func:`metric_dtype`). ``ids`` (N,)
    key the start vectors (default ``arange(N)``): pass the images' protocol ids so that an image's eigenvalue
    does not depend on which subset or batch it is in.
    """
    check_eval_mode(model)
    n = check_dataset(images, labels, batch_size)
    _check_power_params(iters, tol, stop)
    if ids is None:
        ids = torch.arange(n)
    elif ids.shape != (n,) or ids.is_floating_point():
        raise ValueError(f"ids must be an integer tensor of shape ({n},) matching images, got {ids.dtype} {ids.shape}")
    device, dtype = resolve_device(model, device), metric_dtype(model)
    parts = []
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size].to(device=device, dtype=dtype)  # (b, C, H, W)
        y = labels[start : start + batch_size].to(device)  # (b,)
        init = init_vectors(ids[start : start + batch_size], x)  # (b, C, H, W)
        parts.append(input_hessian_top_eigenvalue(model, x, y, iters=iters, tol=tol, init=init, stop=stop))
    if not parts:
        return SmoothnessResult(torch.empty(0), torch.empty(0, dtype=torch.bool), 0)
    return SmoothnessResult(
        eigenvalues=torch.cat([p.eigenvalues for p in parts]),
        converged=torch.cat([p.converged for p in parts]),
        iterations=max(p.iterations for p in parts),
    )
