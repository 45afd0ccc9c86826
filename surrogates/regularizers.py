"""Gradient penalties added to the training loss (seed 002, Zhang et al., Sec. 4.1), and the loss they join.

* IR, input-gradient regularization (Sec. 4.1.1, Ross & Doshi-Velez 2018):
  ``lambda_ir * mean_i ||grad_x CE(f(x_i), y_i)||_2^2``.
* JR, input-Jacobian regularization (Sec. 4.1.1, Hoffman et al. 2019):
  ``lambda_jr * mean_i ||J(x_i)||_F^2`` with ``J = d logits / d x``, estimated by random projections.

  Both use the *squared* norm by default (Ross & Doshi-Velez; Hoffman et al.). Seed 002's Sec. 4.1.1 writes
  the plain norms ``||grad_x CE||_2`` and ``||J||_F``; ``input_penalty="norm"`` trains with those instead
  (the square root of the same per-image quantity, kept differentiable at 0). For JR that is the root of the
  projection estimate, which underestimates ``||J||_F`` a little (Jensen), by a factor that does not depend
  on the model.
* ER, explicit weight-gradient regularization (Sec. 4.1.2, Barrett & Dherin 2021; Smith et al. 2021):
  ``lambda_er / 2 * ||grad_theta L||_2^2`` with L the batch loss.

All three are "double backpropagation": the penalty is built from a gradient computed with
``create_graph=True`` and then differentiated once more by ``loss.backward()``.
Gradients w.r.t. x are taken w.r.t. the [0, 1] image the model takes, not its normalized form.
In train mode, BatchNorm couples the images of a batch; like the papers, we differentiate the batch's
summed loss and read each image's slice, which includes those cross-image terms (an image's slice is not
the gradient of its own loss alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def input_grad_sq_norms(x: torch.Tensor, ce_mean: torch.Tensor) -> torch.Tensor:
    """(B,) ``||grad_x CE_i||^2`` per image, differentiable (for IR).

    ``ce_mean`` is the batch-mean loss computed from ``x`` (which requires grad); scaling it by B gives each
    image its own gradient.
    """
    (gx,) = torch.autograd.grad(ce_mean * len(x), x, create_graph=True)  # (B, C, H, W) per-image gradients
    return gx.pow(2).flatten(1).sum(1)


def jacobian_sq_frobenius(
    x: torch.Tensor, logits: torch.Tensor, n_proj: int, gen: torch.Generator, *, create_graph: bool = True
) -> torch.Tensor:
    """(B,) unbiased random-projection estimates of ``||J(x_i)||_F^2`` (Hoffman et al. 2019, Alg. 1).

    For v uniform on the unit sphere of R^K, ``E[v v^T] = I / K``, hence ``K * E||v^T J||^2 = ||J||_F^2``.
    Each projection costs one backward pass; the estimate averages ``n_proj`` of them, one v per image.
    """
    b, k = logits.shape
    total = logits.new_zeros(b)
    for _ in range(n_proj):
        v = torch.randn(b, k, generator=gen).to(device=logits.device, dtype=logits.dtype)
        v = v / v.norm(dim=1, keepdim=True)  # (B, K) uniform on the sphere
        (vj,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=create_graph, retain_graph=True)
        total = total + vj.pow(2).flatten(1).sum(1)  # (B,) ||v_i^T J_i||^2
    return k * total / n_proj


def weight_grad_sq_norm(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``||grad_theta loss||_2^2`` over ``params`` (global norm), differentiable (for ER)."""
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return sum((g.pow(2).sum() for g in grads if g is not None), loss.new_zeros(()))


def smoothed_targets(targets: torch.Tensor, num_classes: int, p: float) -> torch.Tensor:
    """Label smoothing as seed 002 (Sec. 3.2) defines it: the true class keeps 1 - p, each of the other m - 1
    classes gets p / (m - 1). (PyTorch's ``label_smoothing=p`` spreads p over all m classes instead, true
    class 1 - p + p/m, so it smooths by a factor (m - 1)/m less.) Probability targets q (mixup, CutMix) become
    (1 - p) q + p/(m - 1) (1 - q), which is the same rule for one-hot q and still sums to one.
    """
    q = targets.float() if targets.dim() == 2 else F.one_hot(targets, num_classes).float()
    return (1 - p) * q + p / (num_classes - 1) * (1 - q)


INPUT_PENALTIES = ("squared", "norm")  # how IR and JR use their per-image norm: ||.||^2 (default) or ||.||
_NORM_EPS = 1e-12  # inside the square root: the plain norm's gradient stays finite where the norm is 0


def penalty_form(sq_norms: torch.Tensor, form: str) -> torch.Tensor:
    """(B,) per-image penalty from (B,) squared norms: themselves (``squared``) or their root (``norm``)."""
    if form == "squared":
        return sq_norms
    if form == "norm":
        return torch.sqrt(sq_norms + _NORM_EPS)
    raise ValueError(f"input_penalty must be one of {INPUT_PENALTIES}, got {form!r}")


@dataclass(frozen=True)
class Objective:
    """The training loss of a recipe: cross-entropy (with label smoothing) plus the gradient penalties.

    Called as ``objective(model, x, targets, gen) -> (loss, logits)``; ``targets`` are labels (B,) or
    probabilities (B, K). ``gen`` seeds JR's projections.
    """

    label_smoothing: float = 0.0
    lambda_ir: float = 0.0
    lambda_jr: float = 0.0
    jr_projections: int = 1
    lambda_er: float = 0.0
    input_penalty: str = "squared"  # IR and JR: "squared" norms (default) or plain "norm" (seed 002's Eqs.)

    @property
    def needs_input_grad(self) -> bool:
        return self.lambda_ir > 0 or self.lambda_jr > 0

    def __call__(
        self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.needs_input_grad:
            x = x.detach().requires_grad_(True)
        logits = model(x)
        if self.label_smoothing > 0:
            targets = smoothed_targets(targets, logits.shape[1], self.label_smoothing).to(logits.dtype)
        loss = F.cross_entropy(logits, targets)
        ce = loss
        if self.lambda_ir > 0:
            loss = loss + self.lambda_ir * penalty_form(input_grad_sq_norms(x, ce), self.input_penalty).mean()
        if self.lambda_jr > 0:
            sq = jacobian_sq_frobenius(x, logits, self.jr_projections, gen)
            loss = loss + self.lambda_jr * penalty_form(sq, self.input_penalty).mean()
        if self.lambda_er > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            loss = loss + 0.5 * self.lambda_er * weight_grad_sq_norm(ce, params)
        return loss, logits
