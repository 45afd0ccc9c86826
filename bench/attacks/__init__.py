"""Attacks: one loop (``iterative_attack``) and a registry of named configurations of it."""

from bench.attacks.budget import BudgetViolation, LinfBudget
from bench.attacks.loop import iterative_attack
from bench.attacks.parts import DiverseInputs, Momentum
from bench.attacks.registry import ATTACKS, AttackFn, run_attack

__all__ = [
    "ATTACKS",
    "AttackFn",
    "BudgetViolation",
    "DiverseInputs",
    "LinfBudget",
    "Momentum",
    "iterative_attack",
    "run_attack",
]
