"""Named attacks: each is a small factory over ``iterative_attack``. Adding an attack = registering one.

Every attack takes (model, x, y, budget, *, steps, targeted, ids, seed, **its own hyperparameters).
Step sizes are given as a fraction of eps so that one protocol entry serves every budget.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from bench.attacks.budget import LinfBudget
from bench.attacks.loop import iterative_attack
from bench.attacks.parts import DiverseInputs, Momentum
from bench.registry import Registry


class AttackFn(Protocol):
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        budget: LinfBudget,
        *,
        steps: int,
        targeted: bool,
        ids: torch.Tensor,
        seed: int,
        **params: Any,
    ) -> torch.Tensor: ...


ATTACKS: Registry[AttackFn] = Registry("attack")


@ATTACKS.register("pgd")
def pgd(model, x, y, budget, *, steps, targeted, ids, seed, step_frac=0.25, random_start=True):  # type: ignore[no-untyped-def]
    """PGD (Madry et al. 2018): uniform random start in the eps-ball, step ``step_frac * eps``."""
    return iterative_attack(
        model, x, y, budget, steps=steps, step_size=step_frac * budget.eps, targeted=targeted,
        random_start=bool(random_start), ids=ids, seed=seed,
    )  # fmt: skip


@ATTACKS.register("mifgsm")
def mifgsm(model, x, y, budget, *, steps, targeted, ids, seed, mu=1.0):  # type: ignore[no-untyped-def]
    """MI-FGSM (Dong et al. 2018): momentum over L1-normalized gradients, step eps/steps, no random start."""
    return iterative_attack(
        model, x, y, budget, steps=steps, step_size=budget.eps / steps, targeted=targeted,
        grad_transform=Momentum(mu), ids=ids, seed=seed,
    )  # fmt: skip


@ATTACKS.register("dim")
def dim(model, x, y, budget, *, steps, targeted, ids, seed, mu=1.0, p=0.5, resize_rate=1.1):  # type: ignore[no-untyped-def]
    """DIM (Xie et al. 2019): MI-FGSM with per-image input diversity (probability ``p``)."""
    return iterative_attack(
        model, x, y, budget, steps=steps, step_size=budget.eps / steps, targeted=targeted,
        grad_transform=Momentum(mu), input_transform=DiverseInputs(p=p, resize_rate=resize_rate), ids=ids, seed=seed,
    )  # fmt: skip


def run_attack(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int,
    targeted: bool,
    ids: torch.Tensor,
    seed: int,
    params: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Look ``name`` up in the registry and run it at L-inf budget ``eps``."""
    return ATTACKS.get(name)(
        model, x, y, LinfBudget(eps), steps=steps, targeted=targeted, ids=ids, seed=seed, **(params or {})
    )
