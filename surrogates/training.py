"""One seeded training loop with pluggable parts, used by every surrogate recipe and by the offline demo.

The loop (:func:`fit`) knows nothing about recipes. A recipe is a choice of parts (:class:`TrainParts`):

* ``augment``: per-batch data augmentation on the device (crop/flip, cutout, mixup, CutMix; ``augment.py``);
* ``perturb``: an input perturbation of the batch, i.e. the inner maximization of adversarial training;
* ``objective``: cross-entropy (label smoothing) plus gradient penalties (IR, JR, ER; ``regularizers.py``);
* ``optimizer``: a plain optimizer (one pass per step) or :class:`~surrogates.sam.SAM` (two passes per step);
* ``scheduler``: a learning-rate schedule stepped after every batch.

Data are tensors already on the training device (x in [0, 1], (N, C, H, W); y int64 (N,)); batches are
gathered there, so a GPU run never waits for a host loader. Randomness comes from four CPU generators
derived from one seed (data order, augmentation, regularizer projections, adversarial-training start points),
so the random draws do not depend on the device. Nothing is synchronised with the host inside an epoch: the
running loss and accuracy stay on the device until the epoch ends.

:func:`train_classifier` with :class:`TrainConfig` is the small ST/IR trainer of ``transferbench demo``;
it is the same loop with SGD + cosine and reproduces its earlier results bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from surrogates.augment import Augment
from surrogates.regularizers import Objective
from surrogates.sam import SAM, frozen_bn_stats

log = logging.getLogger(__name__)

Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]  # (model, x, t, gen) -> x'
STREAM_AUGMENT, STREAM_REGULARIZER, STREAM_PERTURB = 1, 2, 3  # generator streams derived from the run's seed


@dataclass(frozen=True)
class TrainConfig:
    """The demo's trainer (SGD + cosine, no warm-up, no augmentation) for the tiny 8x8 digits models."""

    epochs: int = 30  # the digits models fit their ~1,200 training images in 30 epochs, in seconds on a CPU
    batch_size: int = 64  # small batches: ~19 steps per epoch on the digits
    lr: float = 0.05  # peak lr, lower than CIFAR's 0.1 for the small un-normalized (no BatchNorm) networks
    momentum: float = 0.9  # standard SGD momentum
    weight_decay: float = 5e-4  # the usual CIFAR value, kept for the digits
    label_smoothing: float = 0.0  # LS off: the demo's ST and IR surrogates use hard labels
    input_grad_penalty: float = 0.0  # IR (seed 002): lambda * ||grad_x CE||_2^2, per image, averaged
    seed: int = 0  # data order (the model's init is seeded by the caller)


@dataclass(frozen=True)
class TrainParts:
    """What a recipe plugs into :func:`fit`. A :class:`SAM` optimizer selects the two-pass update."""

    optimizer: Optimizer
    objective: Objective
    scheduler: LRScheduler | None = None  # stepped once after every batch
    augment: Augment | None = None
    perturb: Perturb | None = None


@dataclass(frozen=True)
class EpochLog:
    """One epoch: lr at its start, mean loss and accuracy on the batches as trained (augmented/adversarial)."""

    epoch: int  # 1-based
    lr: float
    loss: float
    accuracy: float
    seconds: float


@dataclass(frozen=True)
class _Generators:
    data: torch.Generator
    augment: torch.Generator
    regularizer: torch.Generator
    perturb: torch.Generator


def derived_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one named stream of a run, independent of the other streams of the same seed."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _generators(seed: int) -> _Generators:
    # The data order uses the seed itself, as the demo's trainer always did (its results stay the same).
    return _Generators(
        torch.Generator().manual_seed(seed),
        derived_generator(seed, STREAM_AUGMENT),
        derived_generator(seed, STREAM_REGULARIZER),
        derived_generator(seed, STREAM_PERTURB),
    )


def autocast_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when asked (a GPU speed option), else nothing."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


def _update(
    model: nn.Module, parts: TrainParts, xb: torch.Tensor, tb: torch.Tensor, gen: torch.Generator, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch: plain, or SAM's ascent + descent. Returns the loss and logits at w."""
    opt, device = parts.optimizer, xb.device
    with autocast_context(device, bf16):
        loss, logits = parts.objective(model, xb, tb, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if not isinstance(opt, SAM):
        opt.step()
        return loss, logits
    opt.first_step(zero_grad=True)
    with frozen_bn_stats(model), autocast_context(device, bf16):
        perturbed_loss, _ = parts.objective(model, xb, tb, gen)
    perturbed_loss.backward()
    opt.second_step(zero_grad=True)
    return loss, logits


def _run_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    parts: TrainParts,
    gens: _Generators,
    *,
    batch_size: int,
    channels_last: bool,
    bf16: bool,
    on_step: Callable[[], None] | None,
) -> tuple[float, float]:
    """One pass over (x, y) in a seeded random order; (mean loss, accuracy) synchronised once at the end."""
    order = torch.randperm(len(y), generator=gens.data).to(x.device)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]  # (B, C, H, W), (B,)
        tb: torch.Tensor = yb
        if parts.augment is not None:
            xb, tb = parts.augment(xb, yb, gens.augment)
        if parts.perturb is not None:
            with autocast_context(x.device, bf16):
                xb = parts.perturb(model, xb, tb, gens.perturb)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss, logits = _update(model, parts, xb, tb, gens.regularizer, bf16)
        if parts.scheduler is not None:
            parts.scheduler.step()
        loss_sum += loss.detach().float() * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
        if on_step is not None:
            on_step()
    return float(loss_sum) / len(y), int(correct) / len(y)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    parts: TrainParts,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device | str | None = None,
    channels_last: bool = False,
    bf16: bool = False,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> list[EpochLog]:
    """Train ``model`` (which takes [0, 1] inputs) in place; returns one :class:`EpochLog` per epoch.

    ``on_step`` runs after every optimizer + scheduler step, ``on_epoch`` after every epoch (checkpointing).
    """
    dev = torch.device(device) if device is not None else model_device(model)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x, y = x.to(dev), y.to(dev)
    gens = _generators(seed)
    model.train()
    logs = []
    for epoch in range(epochs):
        t0, lr = time.perf_counter(), float(parts.optimizer.param_groups[0]["lr"])
        loss, acc = _run_epoch(model, x, y, parts, gens, batch_size=batch_size, channels_last=channels_last,
                               bf16=bf16, on_step=on_step)  # fmt: skip
        logs.append(EpochLog(epoch + 1, lr, loss, acc, time.perf_counter() - t0))
        log.debug("epoch %d/%d lr %.5f loss %.4f acc %.4f", epoch + 1, epochs, lr, loss, acc)
        if on_epoch is not None:
            on_epoch(logs[-1])
    return logs


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024, bf16: bool = False
) -> float:
    """Top-1 accuracy of ``model`` in eval mode on clean (x, y); the model's train/eval mode is restored."""
    was_training, dev = model.training, model_device(model)
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
        with autocast_context(dev, bf16):
            correct += (model(xb).argmax(1) == yb).sum()
    model.train(was_training)
    return int(correct) / max(len(y), 1)


def lr_factor(
    schedule: str, *, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0,
    milestones: Sequence[int] = (), gamma: float = 0.1,
) -> Callable[[int], float]:  # fmt: skip
    """Multiplier of the peak lr at optimizer step ``t`` (for ``LambdaLR``, stepped per batch).

    ``cosine``: linear warm-up from ``1 / warmup_steps`` to 1, then half a cosine down to 0 at ``total_steps``
    (seed 002, Table 11). ``step``: times ``gamma`` at each epoch in ``milestones`` (seed 004's schedule, whose
    decays early stopping exploits). ``constant``: 1 (LGV's high constant-lr run, Gubri et al. 2022).
    """
    if schedule == "cosine":

        def cosine(t: int) -> float:
            if t < warmup_steps:
                return (t + 1) / warmup_steps
            progress = (t - warmup_steps) / max(total_steps - warmup_steps, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return cosine
    if schedule == "step":
        return lambda t: gamma ** sum(t // steps_per_epoch >= m for m in milestones)
    if schedule == "constant":
        return lambda t: 1.0
    raise ValueError(f"unknown lr schedule {schedule!r}; use 'cosine', 'step' or 'constant'")


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> nn.Module:
    """SGD with a cosine schedule on (x in [0, 1], y); returns the model in eval mode (the demo's trainer)."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    objective = Objective(label_smoothing=cfg.label_smoothing, lambda_ir=cfg.input_grad_penalty)
    fit(model, x, y, TrainParts(opt, objective, sched), epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed)
    return model.eval()
