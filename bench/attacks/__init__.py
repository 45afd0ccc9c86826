"""Attacks: one loop (``iterative_attack``), the parts plugged into it, and a registry of named configurations."""

from bench.attacks.budget import BudgetViolation, LinfBudget
from bench.attacks.estimators import GNP, PGN, TPA, Nesterov, VarianceTuning
from bench.attacks.loop import iterative_attack, total_evals
from bench.attacks.parts import (
    Compose,
    DiverseInputs,
    GradEstimator,
    Momentum,
    StepContext,
    TranslationInvariant,
)
from bench.attacks.registry import ATTACK_COST, ATTACKS, AttackFn, AttackParts, attack_cost, run_attack

# Attacks run by peer libraries register themselves on import.
from bench.attacks import external  # noqa: F401  isort: skip

__all__ = [
    "ATTACKS",
    "ATTACK_COST",
    "GNP",
    "PGN",
    "TPA",
    "AttackFn",
    "AttackParts",
    "BudgetViolation",
    "Compose",
    "DiverseInputs",
    "GradEstimator",
    "LinfBudget",
    "Momentum",
    "Nesterov",
    "StepContext",
    "TranslationInvariant",
    "VarianceTuning",
    "attack_cost",
    "iterative_attack",
    "run_attack",
    "total_evals",
]
