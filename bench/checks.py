"""Sanity checks run before a model's numbers are trusted (in the spirit of AutoAttack's checks)."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class ModelCheckError(ValueError):
    """A model's outputs cannot be trusted; the message names the model and the likely fix."""


def check_eval_mode(model: nn.Module) -> None:
    """Raise ValueError if ``model`` or any of its submodules is in training mode.

    The metrics here are per-image quantities. In training mode BatchNorm normalises with the statistics of the
    batch, which couples the images of a batch (the input Hessian gains cross-image blocks), and dropout makes
    the loss random. Submodules are checked too: a BatchNorm left in train mode inside an eval model does the same.
    """
    for name, module in model.named_modules():
        if module.training:
            where = f"submodule {name!r} ({type(module).__name__}) of " if name else ""
            raise ValueError(
                f"{where}model {type(model).__name__} is in training mode; per-image gradient metrics need "
                "eval mode (BatchNorm in train mode couples the images of a batch): call model.eval() first"
            )


def check_logits(name: str, logits: torch.Tensor, num_classes: int) -> None:
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ModelCheckError(
            f"{name} returns outputs of shape {tuple(logits.shape)}; the protocol has {num_classes} classes. "
            "Check num_classes in its config."
        )
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).any(1).sum())
        raise ModelCheckError(f"{name} returns NaN or inf logits for {bad} image(s); the checkpoint is broken.")
    sums = logits.sum(1)
    if (logits >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        log.warning("%s seems to return probabilities, not logits; attacks on softmax outputs are weak", name)


def check_model(name: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Eval mode, deterministic, sane logits on a sample batch."""
    try:
        check_eval_mode(model)
    except ValueError as e:
        raise ModelCheckError(f"{name}: {e}") from None
    with torch.no_grad():
        a, b = model(x), model(x)
    check_logits(name, a, num_classes)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise ModelCheckError(f"{name} gives different outputs for the same input; remove randomness from forward().")
