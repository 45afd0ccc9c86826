"""The one iterative L-inf attack loop. Every registered attack is this loop with different parts.

One step: a gradient estimator returns the gradient used this step (the plain gradient by default), a
gradient transform turns it into a direction (e.g. momentum), and x_adv moves by ``step_size`` along the
sign of that direction, projected onto the eps-ball and [0, 1].

Conventions that the parts rely on:
- The *objective* is the summed cross-entropy for untargeted attacks and its negative for targeted ones,
  so the loop always ascends and an estimator's penalties (gradient norms, flatness) are those of the
  objective. Negating a float is exact, so this costs nothing in bit-identity with a descending loop.
- Cost is counted in *gradient evaluations*: one forward and one backward pass of the surrogate per
  image. Every estimator declares its count (``GradEstimator.evals``) and the loop checks the declaration
  against what it did, so ``ATTACK_COST`` can be trusted by a leaderboard.
- Evaluation j (0-based) of a step passes ``step + j * DRAW_STRIDE`` to the input transform, so every
  evaluation gets its own random draw (e.g. input diversity at each neighbour) and evaluation 0 keeps the
  key of the single-evaluation loop.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import nn

from bench import rng
from bench.attacks.budget import LinfBudget
from bench.attacks.parts import GradEstimator, GradTransform, InputTransform, StepContext

DRAW_STRIDE = 1 << 16  # evaluations of one step are keyed step, step + 2**16, ...; steps must stay below it


class ObjectiveGrad:
    """Gradient of the attack objective at any point, for one step of the loop; counts its evaluations.

    Untargeted: d/dp sum_i CE(model(T(p_i)), y_i); targeted: the negative. T is the input transform, drawn
    afresh for every evaluation (see the module docstring). Per-image gradients do not depend on the batch.
    """

    def __init__(
        self,
        model: nn.Module,
        y: torch.Tensor,
        *,
        targeted: bool,
        input_transform: InputTransform | None,
        ids: torch.Tensor,
        seed: int,
        step: int,
    ) -> None:
        self.model, self.y, self.targeted = model, y, targeted
        self.input_transform, self.ids, self.seed, self.step = input_transform, ids, seed, step
        self.calls = 0

    def __call__(self, point: torch.Tensor) -> torch.Tensor:
        key = self.step + self.calls * DRAW_STRIDE
        self.calls += 1
        point = point.detach().requires_grad_(True)
        inputs = self.input_transform(point, self.ids, key, self.seed) if self.input_transform is not None else point
        loss = F.cross_entropy(self.model(inputs), self.y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, point)  # (B, C, H, W)
        return -grad if self.targeted else grad


def total_evals(grad_estimator: GradEstimator | None, steps: int) -> int:
    """Gradient evaluations per image of a whole attack of ``steps`` iterations (the random start is free)."""
    if grad_estimator is None:
        return steps
    return sum(grad_estimator.evals(step, steps) for step in range(steps))


@overload
def iterative_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: LinfBudget, *, steps: int, step_size: float,
    targeted: bool = ..., random_start: bool = ..., grad_transform: GradTransform | None = ...,
    input_transform: InputTransform | None = ..., grad_estimator: GradEstimator | None = ...,
    ids: torch.Tensor | None = ..., seed: int = ..., return_cost: Literal[False] = ...,
) -> torch.Tensor: ...  # fmt: skip


@overload
def iterative_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: LinfBudget, *, steps: int, step_size: float,
    targeted: bool = ..., random_start: bool = ..., grad_transform: GradTransform | None = ...,
    input_transform: InputTransform | None = ..., grad_estimator: GradEstimator | None = ...,
    ids: torch.Tensor | None = ..., seed: int = ..., return_cost: Literal[True],
) -> tuple[torch.Tensor, int]: ...  # fmt: skip


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
    grad_estimator: GradEstimator | None = None,
    ids: torch.Tensor | None = None,
    seed: int = 0,
    return_cost: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Sign-gradient ascent on the objective (cross-entropy; its negative when ``targeted``), projected every step.

    x: (B, C, H, W) in [0, 1]; y: (B,) true labels, or target labels when ``targeted``.
    ``ids`` are the images' ids in the protocol image list: they key the random start and every random part,
    so results do not depend on how images are batched.
    Returns x_adv, checked against the budget and the [0, 1] box, and with ``return_cost`` also the number
    of gradient evaluations (forward + backward passes) spent on each image.
    """
    if steps < 1 or step_size <= 0 or steps >= DRAW_STRIDE:
        raise ValueError(f"need 1 <= steps < {DRAW_STRIDE} and step_size > 0, got steps={steps}, step_size={step_size}")
    if ids is None:
        ids = torch.arange(x.shape[0])
    x = x.detach()
    x_adv = x.clone()
    if x.shape[0] == 0:  # nothing to attack (the parts index x[0] and reduce over the batch)
        return (x_adv, 0) if return_cost else x_adv
    if random_start:
        noise = rng.uniform(seed, "random_start", ids, 0, x[0].numel()).to(x.device).view_as(x)
        x_adv = budget.project(x + (2 * noise - 1) * budget.eps, x)
    state: dict[str, torch.Tensor] = {}
    cost = 0
    for step in range(steps):
        grad_fn = ObjectiveGrad(
            model, y, targeted=targeted, input_transform=input_transform, ids=ids, seed=seed, step=step
        )
        if grad_estimator is None:
            grad = grad_fn(x_adv)
        else:
            grad = grad_estimator(grad_fn, x_adv, StepContext(step, steps, step_size, budget.eps, ids, seed, state))
        cost += _checked_evals(grad_estimator, grad_fn.calls, step, steps)
        direction = grad_transform(grad, state) if grad_transform is not None else grad
        x_adv = budget.project(x_adv.detach() + step_size * direction.sign(), x)
    budget.check(x_adv, x)
    return (x_adv.detach(), cost) if return_cost else x_adv.detach()


def _checked_evals(grad_estimator: GradEstimator | None, calls: int, step: int, steps: int) -> int:
    """The evaluations made this step, after checking them against what the estimator declares."""
    declared = 1 if grad_estimator is None else grad_estimator.evals(step, steps)
    if calls != declared:
        raise RuntimeError(
            f"{type(grad_estimator).__name__} declares {declared} gradient evaluations at step {step} of {steps} "
            f"but made {calls}: fix its evals() so that reported costs are true"
        )
    return calls
