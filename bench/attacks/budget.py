"""L-inf threat model on images in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch

BUDGET_TOL = 1e-6


class BudgetViolation(RuntimeError):
    """An adversarial batch left its budget or the [0, 1] box: the attack has a bug."""


@dataclass(frozen=True)
class LinfBudget:
    """``||x_adv - x||_inf <= eps`` and ``0 <= x_adv <= 1``."""

    eps: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1] (images are in [0, 1]); got {self.eps}")

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Closest point of the budget box intersected with [0, 1]."""
        return torch.clamp(torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps), 0.0, 1.0)

    def check(self, x_adv: torch.Tensor, x: torch.Tensor) -> None:
        """Raise ``BudgetViolation`` unless every image respects the budget and the box."""
        if not torch.isfinite(x_adv).all():
            raise BudgetViolation("adversarial batch contains NaN or inf")
        linf = (x_adv - x).abs().flatten(1).amax(1)  # (B,)
        worst = float(linf.max()) if linf.numel() else 0.0
        if worst > self.eps + BUDGET_TOL:
            raise BudgetViolation(f"perturbation {worst:.8f} exceeds eps {self.eps:.8f}")
        lo, hi = float(x_adv.min()), float(x_adv.max())
        if lo < -BUDGET_TOL or hi > 1 + BUDGET_TOL:
            raise BudgetViolation(f"adversarial images leave [0, 1]: min {lo}, max {hi}")
