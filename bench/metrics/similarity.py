"""Gradient similarity between a surrogate and a target (Zhang et al., "Why Does Little Robustness Help?", Def. 2).

For an image ``x`` with true label ``y`` the similarity of surrogate ``F`` and target ``G`` is the cosine between
their input gradients of the cross-entropy loss, ``cos(grad_x loss_F(x, y), grad_x loss_G(x, y))``. A transfer
attack follows the surrogate's gradient, so the better it is aligned with the target's, the better the attack
transfers.

A cosine is undefined when either gradient is exactly zero (e.g. a saturated softmax or dead ReLUs). Such
images get NaN rather than 0: a 0 would claim "orthogonal gradients" and bias the mean towards zero.
``SimilarityResult`` therefore aggregates over the finite values only and reports how many there are. A
non-finite gradient (inf/NaN: a broken model or an overflow) is an error, not an undefined cosine.

This module also holds the small input checks shared with ``bench.metrics.smoothness``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.checks import check_eval_mode
from bench.resample import no_autocast


@dataclass(frozen=True)
class SimilarityResult:
    """Per-image gradient cosines of one (surrogate, target) pair; NaN where the cosine is undefined."""

    cosines: torch.Tensor  # (N,) float32 on CPU

    @property
    def n_valid(self) -> int:
        """Number of images with a defined (finite) cosine."""
        return int(torch.isfinite(self.cosines).sum())

    @property
    def mean(self) -> float:
        """Mean cosine over the finite values (NaN if there are none)."""
        finite = self.cosines[torch.isfinite(self.cosines)]
        return float(finite.mean()) if finite.numel() else math.nan

    @property
    def min(self) -> float:
        """Smallest cosine over the finite values (NaN if there are none): the worst-aligned image."""
        finite = self.cosines[torch.isfinite(self.cosines)]
        return float(finite.min()) if finite.numel() else math.nan


def metric_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the metrics compute in for ``model``: float32 (the benchmark's models), float64 for a model whose
    parameters are float64 (the reference numerics of bench/numerics.py, where the last bits must not depend on
    the machine)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    return torch.float64 if params and all(p.dtype == torch.float64 for p in params) else torch.float32


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter or buffer, else CPU."""
    if device is not None:
        return torch.device(device)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_batch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Validate an image batch ``x`` (B, C, H, W) and labels ``y`` (B,); return ``y`` as int64 on x's device."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point image batch (B, C, H, W) in [0, 1], got {got}")
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class indices, got {getattr(y, 'dtype', type(y))}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match x {tuple(x.shape)}, got {tuple(y.shape)}")
    return y.to(device=x.device, dtype=torch.long)


def check_dataset(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> int:
    """Validate a full image set and the batch size; return the number of images N."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_batch(images, labels)
    return images.shape[0]


def margin_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of (B, K) ``logits`` at labels ``y``, written so that float32 keeps its gradient.

    ``CE = log(1 + sum_{j != y} exp(z_j - z_y))``: the same function as ``F.cross_entropy``, but its gradient
    w.r.t. ``z_y`` comes out as ``-sum_{j != y} p_j``, a sum of small numbers, instead of ``p_y - 1``, which
    float32 rounds to 0 once ``1 - p_y < 6e-8`` (a logit margin of about 17, common on a well-trained model).
    With ``p_y - 1`` lost, the input gradient of a confident image points the wrong way and its cosine with
    another model's gradient is meaningless. Used by the metrics (similarity, smoothness); the attacks keep
    ``F.cross_entropy``, as the reference implementations they are tested against do.
    """
    true = logits.gather(1, y[:, None])  # (B, 1)
    others = (logits - true).masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))  # (B, K), -inf at y
    return F.softplus(torch.logsumexp(others, dim=1)).sum()


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image input gradients ``grad_x CE(model(x), y)``, shape (B, C, H, W), detached.

    CE is :func:`margin_cross_entropy`, exact in float32 also on confidently classified images.

    The loss is the SUM of per-image losses: in eval mode image i's loss depends on x_i only, so the gradient of
    the sum w.r.t. x_i is exactly image i's own gradient (a mean would scale it by 1/B). Runs in x's dtype with
    autocast off. A model whose loss does not depend on x yields zeros.
    """
    check_eval_mode(model)
    y = check_batch(x, y)
    x = x.detach().requires_grad_(True)  # (B, C, H, W)
    with torch.enable_grad(), no_autocast(x.device):
        loss = margin_cross_entropy(model(x), y)
        if not loss.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def finite_gradient(model_name: str, grad: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """``grad`` (B, ...) itself, or ValueError naming the model and the rows (``offset`` + row) that hold inf/NaN.

    Only an exactly zero gradient makes a cosine undefined (NaN, left out of the mean); a non-finite one is a
    broken model or an overflow, and silently leaving those images out would bias the mean.
    """
    bad = ~torch.isfinite(grad.flatten(1)).all(dim=1)  # (B,)
    if bad.any():
        rows = (bad.nonzero().flatten() + offset).tolist()
        raise ValueError(
            f"{model_name} has a non-finite input gradient on {len(rows)} image(s) (rows {rows[:5]} of the set): its "
            "loss overflows there. Evaluate the model in fp32 on these images and fix the checkpoint."
        )
    return grad


def cosine_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two (B, ...) tensors, flattened per image: (B,) float32 on CPU, NaN where a norm is 0.

    Each row is first divided by its largest absolute entry. The cosine is scale-invariant, and this keeps tiny
    but non-zero gradients (whose squares would underflow in float32) from being mistaken for zero ones.
    """
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a = a.detach().flatten(1).to(dtype)  # (B, D)
    b = b.detach().flatten(1).to(dtype)  # (B, D)
    a_max = a.abs().amax(dim=1, keepdim=True)  # (B, 1)
    b_max = b.abs().amax(dim=1, keepdim=True)  # (B, 1)
    valid = (a_max > 0) & (b_max > 0)  # (B, 1)
    a = a / torch.where(valid, a_max, torch.ones_like(a_max))
    b = b / torch.where(valid, b_max, torch.ones_like(b_max))
    denom = a.norm(dim=1) * b.norm(dim=1)  # (B,)
    cos = (a * b).sum(dim=1) / torch.where(valid[:, 0], denom, torch.ones_like(denom))  # (B,)
    cos = cos.clamp(-1.0, 1.0)  # rounding can step just outside [-1, 1]
    return torch.where(valid[:, 0], cos, torch.full_like(cos, math.nan)).float().cpu()


def gradient_cosine(surrogate: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) float32 on CPU: per-image cosine between the surrogate's and the target's input gradients.

    NaN for an image where either gradient is exactly zero (the cosine is undefined there).
    """
    return cosine_per_image(input_gradient(surrogate, x, y), input_gradient(target, x, y))


def gradient_similarity(
    surrogate: nn.Module,
    target: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> SimilarityResult:
    """Gradient cosines of one surrogate/target pair over an image set, in batches of ``batch_size``.

    ``images`` (N, C, H, W) float in [0, 1] and ``labels`` (N,) may live on CPU; each batch is moved to ``device``
    (default: the surrogate's device) as float32 (float64 for a float64 surrogate, :func:`metric_dtype`). Both
    models must already be on that device and in eval mode.
    """
    return gradient_similarity_many(
        surrogate, {"target": target}, images, labels, batch_size=batch_size, device=device
    )["target"]


def gradient_similarity_many(
    surrogate: nn.Module,
    targets: Mapping[str, nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, SimilarityResult]:
    """Like ``gradient_similarity`` for several targets: name -> result, same keys and order as ``targets``.

    The surrogate's gradient of each batch is computed once and reused for every target, which saves one
    backward pass of the surrogate per target.
    """
    check_eval_mode(surrogate)
    for target in targets.values():
        check_eval_mode(target)
    n = check_dataset(images, labels, batch_size)
    device, dtype = resolve_device(surrogate, device), metric_dtype(surrogate)
    if not targets:
        return {}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size].to(device=device, dtype=dtype)  # (b, C, H, W)
        y = labels[start : start + batch_size].to(device)  # (b,)
        grad_surrogate = finite_gradient("the surrogate", input_gradient(surrogate, x, y), start)  # (b, C, H, W)
        for name, target in targets.items():
            grad_target = finite_gradient(f"target {name}", input_gradient(target, x, y), start)
            parts[name].append(cosine_per_image(grad_surrogate, grad_target))
    empty = torch.empty(0, dtype=torch.float32)
    return {name: SimilarityResult(torch.cat(p) if p else empty) for name, p in parts.items()}
