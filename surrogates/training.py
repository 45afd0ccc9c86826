"""A small, seeded training loop used by the smoke protocol (ST and input-gradient regularization).

The full recipe collection (AT, SAM, JR, mixup, ...) builds on this loop; here it trains the tiny
digits models of ``transferbench demo`` on a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    input_grad_penalty: float = 0.0  # IR (seed 002): lambda * ||grad_x CE||_2^2, per image, averaged
    seed: int = 0


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> nn.Module:
    """SGD with a cosine schedule on (x in [0, 1], y); returns the model in eval mode."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            xb, yb = x[idx].clone().requires_grad_(cfg.input_grad_penalty > 0), y[idx]
            loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            if cfg.input_grad_penalty > 0:
                (gx,) = torch.autograd.grad(loss * len(idx), xb, create_graph=True)  # per-image gradients
                loss = loss + cfg.input_grad_penalty * gx.pow(2).flatten(1).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
