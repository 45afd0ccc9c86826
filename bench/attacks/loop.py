"""The one iterative L-inf attack loop. PGD, MI-FGSM and DIM are this loop with different parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench import rng
from bench.attacks.budget import LinfBudget
from bench.attacks.parts import GradTransform, InputTransform


def iterative_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    budget: LinfBudget,
    *,
    steps: int,
    step_size: float,
    targeted: bool = False,
    random_start: bool = False,
    grad_transform: GradTransform | None = None,
    input_transform: InputTransform | None = None,
    ids: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Sign-gradient ascent on the cross-entropy (descent towards ``y`` when ``targeted``), projected every step.

    x: (B, C, H, W) in [0, 1]; y: (B,) true labels, or target labels when ``targeted``.
    ``ids`` are the images' ids in the protocol image list: they key the random start and any random
    input transform, so results do not depend on how images are batched.
    Returns x_adv, checked against the budget and the [0, 1] box.
    """
    if steps < 1 or step_size <= 0:
        raise ValueError(f"need steps >= 1 and step_size > 0, got steps={steps}, step_size={step_size}")
    if ids is None:
        ids = torch.arange(x.shape[0])
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        noise = rng.uniform(seed, "random_start", ids, 0, x[0].numel()).to(x.device).view_as(x)
        x_adv = budget.project(x + (2 * noise - 1) * budget.eps, x)
    state: dict[str, torch.Tensor] = {}
    for step in range(steps):
        x_adv.requires_grad_(True)
        inputs = input_transform(x_adv, ids, step, seed) if input_transform is not None else x_adv
        loss = F.cross_entropy(model(inputs), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        direction = grad_transform(grad, state) if grad_transform is not None else grad
        sign = -1.0 if targeted else 1.0
        x_adv = budget.project(x_adv.detach() + sign * step_size * direction.sign(), x)
    budget.check(x_adv, x)
    return x_adv.detach()
