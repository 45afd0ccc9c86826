"""Named attacks: each is a small builder of loop parts. Adding an attack = registering one builder.

A builder takes (eps, steps, **its own hyperparameters) and returns the ``AttackParts`` of the one loop
(step size, random start, gradient estimator, gradient transform, input transform). Registering it fills
two registries with the same name:

- ``ATTACKS[name](model, x, y, budget, *, steps, targeted, ids, seed, **params) -> x_adv``
- ``ATTACK_COST[name](steps, params) -> int``: gradient evaluations (forward + backward passes) per image,
  the same number the loop counts and checks, so a leaderboard can show success per unit of compute.

Step sizes are fractions of eps so that one protocol entry serves every budget. Hyperparameter defaults
are the papers' (see docs/attacks.md for the table and the choices made where a paper is silent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from bench.attacks.budget import LinfBudget
from bench.attacks.estimators import GNP, PGN, TPA, Nesterov, VarianceTuning
from bench.attacks.loop import iterative_attack, total_evals
from bench.attacks.parts import (
    Compose,
    DiverseInputs,
    GradEstimator,
    GradTransform,
    InputTransform,
    Momentum,
    TranslationInvariant,
)
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


CostFn = Callable[[int, Mapping[str, Any] | None], int]


@dataclass(frozen=True)
class AttackParts:
    """One configuration of ``iterative_attack`` (everything but the model, data and budget)."""

    step_size: float
    random_start: bool = False
    grad_estimator: GradEstimator | None = None
    grad_transform: GradTransform | None = None
    input_transform: InputTransform | None = None


ATTACKS: Registry[AttackFn] = Registry("attack")
ATTACK_COST: Registry[CostFn] = Registry("attack cost")
_NOMINAL_EPS = 8 / 255  # costs do not depend on eps; builders need one to build their parts


def _attack_fn(build: Callable[..., AttackParts]) -> AttackFn:
    def attack(model, x, y, budget, *, steps, targeted, ids, seed, **params):  # type: ignore[no-untyped-def]
        parts = build(budget.eps, steps, **params)
        return iterative_attack(
            model, x, y, budget, steps=steps, step_size=parts.step_size, targeted=targeted,
            random_start=parts.random_start, grad_estimator=parts.grad_estimator,
            grad_transform=parts.grad_transform, input_transform=parts.input_transform, ids=ids, seed=seed,
        )  # fmt: skip

    attack.__name__ = attack.__qualname__ = build.__name__
    attack.__doc__ = build.__doc__
    return attack


def _cost_fn(build: Callable[..., AttackParts]) -> CostFn:
    def cost(steps: int, params: Mapping[str, Any] | None = None) -> int:
        return total_evals(build(_NOMINAL_EPS, steps, **(params or {})).grad_estimator, steps)

    cost.__name__ = cost.__qualname__ = f"{build.__name__}_cost"
    return cost


def register(name: str) -> Callable[[Callable[..., AttackParts]], Callable[..., AttackParts]]:
    """Decorator: register a builder under ``name`` in ``ATTACKS`` and ``ATTACK_COST``."""

    def deco(build: Callable[..., AttackParts]) -> Callable[..., AttackParts]:
        ATTACKS.add(name, _attack_fn(build))
        ATTACK_COST.add(name, _cost_fn(build))
        return build

    return deco


@register("pgd")
def pgd(eps: float, steps: int, *, step_frac: float = 0.25, random_start: bool = True) -> AttackParts:
    """PGD (Madry et al. 2018): uniform random start in the eps-ball, step ``step_frac * eps``."""
    return AttackParts(step_size=step_frac * eps, random_start=bool(random_start))


@register("mifgsm")
def mifgsm(eps: float, steps: int, *, mu: float = 1.0) -> AttackParts:
    """MI-FGSM (Dong et al. 2018): momentum over L1-normalized gradients, step eps/steps, no random start."""
    return AttackParts(step_size=eps / steps, grad_transform=Momentum(mu))


@register("dim")
def dim(eps: float, steps: int, *, mu: float = 1.0, p: float = 0.5, resize_rate: float = 1.1) -> AttackParts:
    """DIM (Xie et al. 2019): MI-FGSM with per-image input diversity (probability ``p``)."""
    return AttackParts(
        step_size=eps / steps, grad_transform=Momentum(mu), input_transform=DiverseInputs(p=p, resize_rate=resize_rate)
    )


@register("nifgsm")
def nifgsm(eps: float, steps: int, *, mu: float = 1.0) -> AttackParts:
    """NI-FGSM (Lin et al. 2020): MI-FGSM with the gradient taken at the Nesterov look-ahead x + alpha mu g."""
    return AttackParts(step_size=eps / steps, grad_estimator=Nesterov(mu), grad_transform=Momentum(mu))


@register("vmifgsm")
def vmifgsm(eps: float, steps: int, *, mu: float = 1.0, n: int = 20, beta: float = 1.5) -> AttackParts:
    """VMI-FGSM (Wang & He 2021): MI-FGSM on variance-tuned gradients, n neighbours in the beta * eps ball."""
    return AttackParts(step_size=eps / steps, grad_estimator=VarianceTuning(n, beta), grad_transform=Momentum(mu))


@register("tifgsm")
def tifgsm(eps: float, steps: int, *, mu: float = 1.0, kernel_size: int = 7, nsig: float = 3.0) -> AttackParts:
    """TI-MI-FGSM (Dong et al. 2019): the gradient convolved with a Gaussian kernel, then MI-FGSM momentum."""
    ti = TranslationInvariant(kernel_size, nsig)
    return AttackParts(step_size=eps / steps, grad_transform=Compose((ti, Momentum(mu))))


@register("tidim")
def tidim(
    eps: float, steps: int, *, mu: float = 1.0, p: float = 0.5, resize_rate: float = 1.1, kernel_size: int = 7,
    nsig: float = 3.0,
) -> AttackParts:  # fmt: skip
    """TI-DIM (Dong et al. 2019): input diversity + translation-invariant gradient + MI-FGSM momentum."""
    ti = TranslationInvariant(kernel_size, nsig)
    return AttackParts(
        step_size=eps / steps, grad_transform=Compose((ti, Momentum(mu))),
        input_transform=DiverseInputs(p=p, resize_rate=resize_rate),
    )  # fmt: skip


@register("pgn")
def pgn(
    eps: float, steps: int, *, mu: float = 1.0, n: int = 20, delta: float = 0.5, zeta_frac: float = 3.0
) -> AttackParts:
    """PGN (Ge et al. 2023): MI-FGSM on gradient-norm-penalized gradients averaged over n neighbours."""
    return AttackParts(step_size=eps / steps, grad_estimator=PGN(n, delta, zeta_frac), grad_transform=Momentum(mu))


@register("gnp")
def gnp(eps: float, steps: int, *, mu: float = 1.0, r: float | None = None, beta: float = 0.8) -> AttackParts:
    """GNP (Wu et al. 2023): MI-FGSM on (1 + beta) g(x) - beta g(x + r g/||g||_2); r None = the paper's 0.01
    scaled to the input size (``estimators.GNP``)."""
    return AttackParts(step_size=eps / steps, grad_estimator=GNP(r, beta), grad_transform=Momentum(mu))


@register("tpa")
def tpa(
    eps: float,
    steps: int,
    *,
    mu: float = 1.0,
    alpha: float = 0.8,
    b_255: float = 28.6,
    k_255: float = 2.9,
    n: int = 10,
) -> AttackParts:
    """TPA / flatness-aware attack (Fan et al., seed 001): MI-FGSM on the estimator of the authors' code,
    (1 - alpha) g(x) + alpha mean_i g(x_i - k sign g(x_i)), x_i = x + U(-b, b) (``estimators.TPA``).

    ``b_255`` and ``k_255`` are in pixel levels (b = b_255 / 255): the released code's b = 16 * 0.031 and
    k = 0.05 in ImageNet-normalized units, times the mean ImageNet std 0.226.
    """
    estimator = TPA(alpha, b_255 / 255, k_255 / 255, n)
    return AttackParts(step_size=eps / steps, grad_estimator=estimator, grad_transform=Momentum(mu))


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


def attack_cost(name: str, steps: int, params: Mapping[str, Any] | None = None) -> int:
    """Gradient evaluations (forward + backward passes of the surrogate) per image for ``name`` with ``params``."""
    return ATTACK_COST.get(name)(steps, params)
