"""Surrogate training recipes: frozen, registered configurations of one training loop (issue #6).

Every method the seed papers study is a :class:`Recipe` in :data:`RECIPES`: a name, the paper it comes from
and a :class:`RecipeConfig` holding every hyperparameter. Defaults are the CIFAR-10 values of seed 002
(Zhang et al., Table 11: ResNet-18 from scratch, batch 128, SGD, peak lr 0.1, cosine, 10 warm-up epochs,
200 epochs) unless the recipe's paper says otherwise. :func:`train_recipe` trains one and writes a submission
folder whose ``config.json`` metadata records the recipe, every hyperparameter, the data, the train time and
the final train accuracy.

Three recipes write more than one model:

* ``early-stopping`` (seed 004, Gubri et al.) trains with a step schedule and keeps a checkpoint right after
  each learning-rate decay. ``out_dir`` is the checkpoint after decay ``es_select`` (default: the first);
  the other after-decay checkpoints and the fully trained model are single submissions beside it, named
  ``<out_dir>-epochNNN`` and ``<out_dir>-final``.
* ``lgv`` (Gubri et al. 2022; seed 002, Sec. 5.2) continues a trained model with a constant high learning rate
  and collects K checkpoints along the way into one ``ensemble`` submission (logits averaged).
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.data import ImageSet
from bench.models import build_model
from bench.precision import math_settings
from bench.registry import Registry
from surrogates.augment import AdversarialExamples, Augment, eval_mode
from surrogates.regularizers import INPUT_PENALTIES, Objective
from surrogates.sam import SAM
from surrogates.submission import (
    SubmissionError,
    differing_keys,
    load_surrogate,
    read_config,
    save_group,
    save_surrogate,
)
from surrogates.training import EpochLog, TrainParts, evaluate_accuracy, fit, lr_factor, model_device

log = logging.getLogger(__name__)

STREAM_LGV = 3  # seed stream of LGV's continuation run (data order differs from the base run's)

# The magnitudes seed 002 sweeps (Table 11, CIFAR-10 column); defaults below are its choices for Tabs. 2-3.
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "at-l2": {"at_eps": (0.01, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)},
    "mu": {"mixup_p": (0.1, 0.3, 0.5, 0.7, 0.9)},
    "cm": {"cutmix_p": (0.1, 0.3, 0.5, 0.7, 0.9)},
    "co": {"cutout_size": (8, 12, 16, 20, 24)},
    "ls": {"label_smoothing": (0.1, 0.2, 0.3, 0.4, 0.5)},
    "ir": {"lambda_ir": (0.1, 0.3, 0.5, 0.7, 1.0)},
    "jr": {"lambda_jr": (1e-5, 1e-4, 0.01, 0.05, 0.1)},
    "er": {"lambda_er": (1e-3, 5e-3, 0.01, 0.05, 0.1)},
    "sam": {"sam_rho": (0.01, 0.05, 0.1, 0.15, 0.2)},
}


@dataclass(frozen=True)
class RecipeConfig:
    """Every hyperparameter of a training run. Zero / "none" switches a part off."""

    # Base training: seed 002, Table 11 (CIFAR-10).
    epochs: int = 200  # Table 11
    batch_size: int = 128  # Table 11
    lr: float = 0.1  # peak learning rate, Table 11
    momentum: float = 0.9  # Table 11 says SGD; 0.9 is the standard CIFAR ResNet value (He et al. 2016)
    weight_decay: float = 5e-4  # not in Table 11; the usual CIFAR ResNet-18 value
    nesterov: bool = False  # plain heavy-ball momentum, as in He et al. 2016
    schedule: str = "cosine"  # Table 11: cosine decay; "step" for early stopping, "constant" for LGV
    warmup_epochs: int = 10  # Table 11: linear warm-up epochs
    lr_milestones: tuple[int, ...] = ()  # step schedule: epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1  # step schedule: decay factor (divide by 10, seed 004 Fig. 4)
    # Data augmentation, on the device (augment.py).
    crop_padding: int = 4  # random 32x32 crop of the 4-pixel zero-padded image: standard CIFAR-10 training
    hflip: bool = True  # random horizontal flip: standard CIFAR-10 training (switch off for digits)
    mixup_p: float = 0.0  # MU: probability that a batch is mixed (Table 11 grid 0.1..0.9)
    mixup_alpha: float = 1.0  # lam ~ Beta(1, 1), Zhang et al. 2018's CIFAR-10 setting
    cutmix_p: float = 0.0  # CM: probability that a batch is cut-mixed (Table 11 grid 0.1..0.9)
    cutmix_alpha: float = 1.0  # lam ~ Beta(1, 1), Yun et al. 2019's CIFAR setting
    cutout_size: int = 0  # CO: side M of the square set to 0 (Table 11 grid 8..24)
    label_smoothing: float = 0.0  # LS: p (Table 11 grid 0.1..0.5)
    # Adversarial training, seed 002 Eq. 1 (augment.AdversarialExamples).
    at_norm: str = "none"  # "l2" (seed 002), "linf", or "none"
    at_eps: float = 0.0  # budget on [0, 1] images; seed 002 default 0.03 (L2)
    at_steps: int = 10  # Table 11: 10 PGD steps
    at_step_frac: float = 0.25  # Table 11: step size 0.25 * eps
    at_random_start: bool = False  # PGD from a uniform point of the eps-ball (Madry et al. 2018); seed 002 is silent
    # Gradient penalties, seed 002 Sec. 4.1 (regularizers.py).
    lambda_ir: float = 0.0  # IR: lambda * mean ||grad_x CE||^2
    lambda_jr: float = 0.0  # JR: lambda * mean ||d logits / dx||_F^2
    jr_projections: int = 1  # random projections per image for JR; Hoffman et al. 2019 train with 1
    lambda_er: float = 0.0  # ER: lambda / 2 * ||grad_theta L||^2
    input_penalty: str = "squared"  # IR/JR norm form: "squared" (Ross; Hoffman) or "norm" (seed 002 Sec. 4.1.1)
    # Sharpness-aware minimization (sam.py).
    sam_rho: float = 0.0  # SAM neighbourhood radius; 0 = plain SGD
    sam_adaptive: bool = False  # ASAM (Kwon et al. 2021): per-weight scaled neighbourhood
    asam_eta: float = 0.01  # ASAM's T_w = |w| + eta, Kwon et al. 2021's value
    # Early stopping, seed 004: checkpoints right after each lr decay of a step schedule.
    es_epochs_after_decay: int = 0  # 0 = off; k = keep the weights k epochs after each decay
    es_select: int = 0  # which after-decay checkpoint becomes the submission (0 = first decay)
    # LGV (Gubri et al. 2022): constant high-lr continuation, checkpoints collected into an ensemble.
    lgv_epochs: int = 0  # 0 = off; Gubri et al. 2022 run 10 epochs
    lgv_per_epoch: int = 4  # checkpoints per epoch (Gubri et al. 2022: 4, so K = 40)
    lgv_lr: float = 0.05  # constant lr of the continuation, seed 002 Sec. 5.2
    lgv_init: str = ""  # single submission folder to continue from; "" = train the base model first
    # Run.
    seed: int = 0  # model init, data order, augmentation and projections all derive from it
    channels_last: bool = False  # GPU speed option (tensor-core friendly layout); no effect on the maths
    bf16: bool = False  # bf16 autocast: GPU speed option, changes numerics slightly

    def __post_init__(self) -> None:
        problems = [msg for bad, msg in _checks(self) if bad]
        if problems:
            raise ValueError("invalid recipe config: " + "; ".join(problems))


def _checks(c: RecipeConfig) -> list[tuple[bool, str]]:
    return [
        (min(c.epochs, c.batch_size, c.at_steps, c.jr_projections, c.lgv_per_epoch) < 1,
         "epochs, batch_size, at_steps, jr_projections and lgv_per_epoch must be >= 1"),
        (min(c.lr, c.momentum, c.weight_decay, c.sam_rho, c.asam_eta, c.lgv_lr, c.warmup_epochs) < 0,
         "lr, momentum, weight_decay, sam_rho, asam_eta, lgv_lr and warmup_epochs must be >= 0"),
        (not all(0 <= p <= 1 for p in (c.mixup_p, c.cutmix_p, c.label_smoothing)),
         "mixup_p, cutmix_p and label_smoothing must lie in [0, 1]"),
        (c.mixup_p > 0 and c.cutmix_p > 0, "use mixup or CutMix, not both"),
        (min(c.crop_padding, c.cutout_size, c.lambda_ir, c.lambda_jr, c.lambda_er, c.lgv_epochs) < 0,
         "crop_padding, cutout_size, lambda_* and lgv_epochs must be >= 0"),
        (c.schedule not in ("cosine", "step", "constant"), f"schedule must be cosine, step, constant: {c.schedule!r}"),
        (c.schedule == "step" and not c.lr_milestones, "a step schedule needs lr_milestones"),
        (list(c.lr_milestones) != sorted(set(c.lr_milestones)) or any(m < 1 for m in c.lr_milestones),
         "lr_milestones must be increasing positive epochs"),
        (c.at_norm not in ("none", "l2", "linf"), f"at_norm must be none, l2 or linf: {c.at_norm!r}"),
        (c.input_penalty not in INPUT_PENALTIES, f"input_penalty must be squared or norm: {c.input_penalty!r}"),
        ((c.at_norm == "none") != (c.at_eps == 0) or c.at_eps < 0, "at_eps > 0 exactly when at_norm is l2/linf"),
        (c.es_epochs_after_decay > 0 and c.schedule != "step", "early stopping needs the step schedule"),
        (c.es_epochs_after_decay < 0 or not 0 <= c.es_select <= max(len(c.lr_milestones) - 1, 0),
         "es_epochs_after_decay must be >= 0 and es_select index a milestone"),
        (c.es_epochs_after_decay > 0 and any(m + c.es_epochs_after_decay > c.epochs for m in c.lr_milestones),
         f"early stopping keeps the weights {c.es_epochs_after_decay} epoch(s) after each decay: every lr milestone "
         f"plus that must lie within epochs={c.epochs} (milestones {tuple(c.lr_milestones)})"),
        (c.warmup_epochs > 0 and c.schedule != "cosine",
         f"warm-up is part of the cosine schedule only; set warmup_epochs=0 for the {c.schedule!r} schedule"),
        (c.warmup_epochs > 0 and c.schedule == "cosine" and c.warmup_epochs >= c.epochs,
         f"a warm-up of {c.warmup_epochs} epochs leaves no cosine decay in a {c.epochs}-epoch run (the lr would "
         f"never reach its peak or decay); set warmup_epochs below epochs, e.g. {c.epochs // 20} (Table 11: 10 of "
         "200)"),
        (c.lgv_epochs > 0 and c.es_epochs_after_decay > 0, "LGV and early stopping do not combine"),
        (c.sam_adaptive and c.sam_rho == 0, "sam_adaptive (ASAM) needs sam_rho > 0"),
        (not 0 <= c.seed < 2**63, f"seed must be an integer in [0, 2**63): {c.seed}"),
    ]  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """A named training method: where it comes from, what it costs, and its configuration."""

    name: str
    paper: str  # the method and the source of its default hyperparameters
    summary: str
    cost: str  # compute per step relative to ST, for planning (docs/recipes.md)
    config: RecipeConfig = field(default_factory=RecipeConfig)


RECIPES: Registry[Recipe] = Registry("recipe")


def _register(name: str, paper: str, summary: str, cost: str, **params: Any) -> None:
    RECIPES.add(name, Recipe(name, paper, summary, cost, RecipeConfig(**params)))


_SAM_RHO = 0.1  # seed 002 Table 11 default for CIFAR-10 (grid 0.01..0.2)
_IR = 0.5  # seed 002 Table 11 default (grid 0.1..1)
_JR = 1e-4  # seed 002 Table 11 default (grid 1e-5..0.1)
_ST = "Zhang et al. (seed 002), Table 11"
_MADRY = "Madry et al. 2018"
_DOUBLE = "~3x (double backprop)"

_register("st", _ST, "standard training: SGD, cosine, crop + flip", "1x")
# eps 0.03: seed 002's default L2 budget (Tabs. 2-3); the whole grid is in GRIDS["at-l2"].
_register("at-l2", f"{_MADRY}; seed 002 Eq. 1", "small-budget L2 PGD adversarial training", "~11x", at_norm="l2",
          at_eps=0.03)  # fmt: skip
# Seed 002 studies L2 only; 1/255 is our small L-inf budget, in the spirit of Springer et al. 2021.
_register("at-linf", f"{_MADRY}; Springer et al. 2021", "small-budget L-inf PGD adversarial training", "~11x",
          at_norm="linf", at_eps=1 / 255)  # fmt: skip
# MU/CM/CO/LS: Tabs. 2-3 report tau = 1 (the weakest setting of each grid) and tau = 5; tau = 1 is the default.
_register("mu", "Zhang et al. 2018 (mixup); seed 002 Sec. 3", "mixup with probability p", "1x", mixup_p=0.1)
_register("cm", "Yun et al. 2019 (CutMix); seed 002 Sec. 3", "CutMix with probability p", "1x", cutmix_p=0.1)
_register("co", "DeVries & Taylor 2017 (Cutout); seed 002 Sec. 3", "cutout of an M x M square", "1x", cutout_size=8)
_register("ls", "Szegedy et al. 2016; seed 002 Sec. 3", "label smoothing p", "1x", label_smoothing=0.1)
_register("ir", "Ross & Doshi-Velez 2018; seed 002 Sec. 4.1.1", "input-gradient norm penalty", _DOUBLE, lambda_ir=_IR)
_register("jr", "Hoffman et al. 2019; seed 002 Sec. 4.1.1", "input-Jacobian penalty, 1 random projection", _DOUBLE,
          lambda_jr=_JR)  # fmt: skip
# lambda_er 0.05: seed 002 Table 11 default (grid 1e-3..0.1).
_register("er", "Barrett & Dherin 2021; seed 002 Sec. 4.1.2", "weight-gradient norm penalty", _DOUBLE, lambda_er=0.05)
_register("sam", "Foret et al. 2021; seed 002 Sec. 4.1.2", "sharpness-aware minimization", "2x", sam_rho=_SAM_RHO)
_register("sam-ir", "seed 002 Sec. 5.1", "SAM on the IR objective", "~6x", sam_rho=_SAM_RHO, lambda_ir=_IR)
_register("sam-jr", "seed 002 Sec. 5.1", "SAM on the JR objective", "~6x", sam_rho=_SAM_RHO, lambda_jr=_JR)
# rho 0.4, 8x Foret et al.'s 0.05: our reading of seed 004's l-SAM; its text in shared/seeds does not state it.
_register("l-sam", "Gubri et al. (seed 004)", "SAM with an unusually large neighbourhood", "2x", sam_rho=0.4)
# rho 0.5 and eta 0.01: Kwon et al. 2021's CIFAR-10 setting for ASAM with SGD.
_register("asam", "Kwon et al. 2021; seed 004", "adaptive (scale-invariant) SAM", "2x", sam_rho=0.5,
          sam_adaptive=True)  # fmt: skip
# Seed 004 Fig. 4: lr divided by 10 at epochs 50 and 100; we keep the weights one epoch after each decay
# ('a few iterations after the decay', Fig. 1), the first epoch end at which they exist.
_register("early-stopping", "Gubri et al. (seed 004), Figs. 1, 4", "step schedule; checkpoints after lr decays", "1x",
          epochs=150, schedule="step", warmup_epochs=0, lr_milestones=(50, 100), es_epochs_after_decay=1)  # fmt: skip
# 10 epochs x 4 checkpoints (K = 40) as Gubri et al. 2022; constant lr 0.05 as seed 002 Sec. 5.2.
_register("lgv", "Gubri et al. 2022 (LGV); seed 002 Sec. 5.2", "ensemble of K checkpoints of a constant-lr run",
          "1x + 10 epochs; K members to evaluate", lgv_epochs=10)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Configuration from overrides (library dicts or CLI strings).


def coerce_override(name: str, kind: str, value: Any) -> Any:
    """Convert an override of field ``name`` (possibly a CLI string) to the field's type ``kind`` (its annotation
    as a string: ``bool``, ``int``, ``float``, ``str``, ``tuple[int, ...]``), or explain what was expected."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if kind.startswith("tuple"):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(int(str(v).strip()) for v in items if str(v).strip())
    if kind == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    return float(value) if kind == "float" else str(value)


def _field_name(raw_key: str) -> str:
    """An override's name as a ``RecipeConfig`` field: ``--sam-rho`` -> ``sam_rho``."""
    return raw_key.lstrip("-").replace("-", "_")


def configure(recipe_name: str, overrides: Mapping[str, Any] | None = None) -> RecipeConfig:
    """The recipe's config with ``overrides`` applied (names as fields; ``-`` is read as ``_``), validated."""
    base = RECIPES.get(recipe_name).config
    fields = {f.name: str(f.type) for f in dataclasses.fields(RecipeConfig)}
    changes = {}
    for raw_key, value in (overrides or {}).items():
        key = _field_name(raw_key)
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown hyperparameter {raw_key!r} for recipe {recipe_name!r}.{hint}")
        try:
            changes[key] = coerce_override(key, fields[key], value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"recipe {recipe_name!r}: bad value for {key}: {e}") from None
    return dataclasses.replace(base, **changes)


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--sam-rho", "0.2", "--epochs=5"]`` -> ``{"sam_rho": "0.2", "epochs": "5"}`` (for the CLI)."""
    out, i = {}, 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            raise ValueError(f"expected --name value, got {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"{token} needs a value")
            value, i = args[i + 1], i + 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


# ---------------------------------------------------------------------------------------------------------
# Parts and one training run.


def asam_groups(model: nn.Module) -> list[dict[str, Any]]:
    """ASAM's parameter groups as in Kwon et al.'s reference code: parameters whose name contains ``weight``
    (convolution, linear and normalization scales) get the adaptive neighbourhood ``T_w = |w| + eta``; the
    others (biases) keep ``T_w = 1``, i.e. plain SAM."""
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if "weight" in n]},
              {"params": [p for n, p in named if "weight" not in n], "adaptive": False}]  # fmt: skip
    return [g for g in groups if g["params"]]


def build_parts(cfg: RecipeConfig, model: nn.Module, *, steps_per_epoch: int, num_classes: int) -> TrainParts:
    """The loop's parts for ``cfg``: SGD or SAM/ASAM around SGD, lr schedule, augmentation, AT, objective."""
    sgd = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.sam_rho > 0:
        params = asam_groups(model) if cfg.sam_adaptive else model.parameters()
        opt: torch.optim.Optimizer = SAM(params, torch.optim.SGD, rho=cfg.sam_rho, adaptive=cfg.sam_adaptive,
                                         eta=cfg.asam_eta, **sgd)  # fmt: skip
        stepped = opt.base_optimizer  # type: ignore[attr-defined]
    else:
        opt = stepped = torch.optim.SGD(model.parameters(), **sgd)
    factor = lr_factor(cfg.schedule, total_steps=cfg.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                       warmup_steps=cfg.warmup_epochs * steps_per_epoch, milestones=cfg.lr_milestones,
                       gamma=cfg.lr_gamma)  # fmt: skip
    augment = Augment(num_classes, cfg.crop_padding, cfg.hflip, cfg.cutout_size, cfg.mixup_p, cfg.mixup_alpha,
                      cfg.cutmix_p, cfg.cutmix_alpha)  # fmt: skip
    perturb = None
    if cfg.at_norm != "none":
        perturb = AdversarialExamples(cfg.at_norm, cfg.at_eps, cfg.at_steps, cfg.at_step_frac * cfg.at_eps,  # type: ignore[arg-type]
                                      cfg.at_random_start)  # fmt: skip
    objective = Objective(cfg.label_smoothing, cfg.lambda_ir, cfg.lambda_jr, cfg.jr_projections, cfg.lambda_er,
                          cfg.input_penalty)  # fmt: skip
    return TrainParts(opt, objective, torch.optim.lr_scheduler.LambdaLR(stepped, factor),
                      augment if augment != Augment(num_classes) else None, perturb)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """What ``save_surrogate`` needs besides the weights."""

    architecture: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def build(self, seed: int) -> nn.Module:
        """A freshly initialised model; the init uses ``seed`` without touching the global RNG.

        One forward pass on a blank image checks, before any training, that the architecture takes the
        data's images and gives ``num_classes`` logits; a mismatch is a ``ValueError`` naming both.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(self.architecture, self.num_classes, self.mean, self.std, **self.arch_kwargs)
        what = f"architecture {self.architecture!r} (arch kwargs {self.arch_kwargs})"
        fix = "pick an architecture for these images or set its arguments with --arch-kwargs (e.g. in_chans)"
        try:
            with torch.no_grad(), eval_mode(model):
                out = model(torch.zeros(1, *self.input_size))
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise ValueError(f"{what} does not take the training images of shape {self.input_size}: {first}; "
                             f"{fix}.") from None  # fmt: skip
        if tuple(out.shape) != (1, self.num_classes):
            raise ValueError(f"{what} gives logits of shape {tuple(out.shape)[1:]} for {self.num_classes} "
                             f"classes; {fix}.")  # fmt: skip
        return model

    def save(self, model: nn.Module, out: Path, metadata: dict[str, Any], overwrite: bool) -> Path:
        return save_surrogate(model, out, architecture=self.architecture, num_classes=self.num_classes,
                              mean=self.mean, std=self.std, input_size=self.input_size, arch_kwargs=self.arch_kwargs,
                              metadata=metadata, overwrite=overwrite)  # fmt: skip


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of the training images: the model's built-in normalization."""
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-3)  # a constant channel must not divide by 0
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


@dataclass(frozen=True)
class RunResult:
    logs: list[EpochLog]
    seconds: float
    train_accuracy: float  # clean, eval mode, whole training set


def run_training(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: RecipeConfig,
    *,
    num_classes: int,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> RunResult:
    """Train ``model`` (already on x's device) with ``cfg``; logs every epoch at INFO level."""
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    parts = build_parts(cfg, model, steps_per_epoch=steps_per_epoch, num_classes=num_classes)

    def epoch_done(e: EpochLog) -> None:
        log.info("epoch %d/%d  lr %.5f  loss %.4f  train acc %.4f  (%.1f s)", e.epoch, cfg.epochs, e.lr, e.loss,
                 e.accuracy, e.seconds)  # fmt: skip
        if on_epoch is not None:
            on_epoch(e)

    t0 = time.perf_counter()
    logs = fit(model, x, y, parts, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
               channels_last=cfg.channels_last, bf16=cfg.bf16, on_step=on_step, on_epoch=epoch_done)  # fmt: skip
    seconds = time.perf_counter() - t0
    return RunResult(logs, seconds, evaluate_accuracy(model, x, y, bf16=cfg.bf16))


def _metadata(recipe: Recipe, cfg: RecipeConfig, data: ImageSet, name: str, run: RunResult, device: torch.device,
              **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "name": name,
        "recipe": recipe.name,
        "paper": recipe.paper,
        "hyperparameters": asdict(cfg),
        "train_time_s": round(run.seconds, 3),
        "final_train_accuracy": run.train_accuracy,
        "last_epoch_batch_accuracy": run.logs[-1].accuracy if run.logs else None,
        "train_data": {"source": data.source, "sha256": data.content_sha256(), "n_images": len(data)},
        "device": str(device),
        "torch": torch.__version__,
        "math": math_settings(),  # TF32 and determinism switches in effect while training
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------
# Early stopping (seed 004) and LGV (Gubri et al. 2022).


class DecayCheckpoints:
    """Epoch callback: keeps the weights ``after`` epochs after every learning-rate decrease.

    A decay is read from the lr at the start of each epoch, so any step schedule works.
    """

    def __init__(self, model: nn.Module, after: int) -> None:
        self.model, self.after = model, after
        self.prev_lr: float | None = None
        self.due: list[tuple[int, float]] = []  # (epoch to save at, lr after the decay)
        self.saved: list[tuple[int, float, dict[str, torch.Tensor]]] = []  # (epoch, lr, state on CPU)

    def __call__(self, e: EpochLog) -> None:
        if self.prev_lr is not None and e.lr < self.prev_lr * (1 - 1e-9):
            self.due.append((e.epoch + self.after - 1, e.lr))
        self.prev_lr = e.lr
        for epoch, lr in [d for d in self.due if d[0] == e.epoch]:
            self.saved.append((epoch, lr, _cpu_state(self.model)))
            log.info("early stopping: kept the weights after epoch %d (lr %.5f)", epoch, lr)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    net = getattr(model, "net", model)
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _load_net_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    getattr(model, "net", model).load_state_dict(state)


def _save_early_stopping(
    recipe: Recipe, cfg: RecipeConfig, data: ImageSet, spec: ModelSpec, model: nn.Module, run: RunResult,
    ckpts: DecayCheckpoints, out: Path, overwrite: bool,
) -> Path:  # fmt: skip
    """``out`` = the selected after-decay checkpoint; the others and the final model beside it."""
    if not ckpts.saved:
        raise RuntimeError(f"early stopping saw no lr decay in {cfg.epochs} epochs (milestones {cfg.lr_milestones})")
    x, y = data.images().to(model_device(model)), data.labels.to(model_device(model))
    if cfg.es_select >= len(ckpts.saved):
        raise RuntimeError(f"es_select={cfg.es_select} asks for after-decay checkpoint {cfg.es_select + 1}, but "
                           f"{len(ckpts.saved)} decay(s) happened; nothing was written")  # fmt: skip
    final_state, selected = _cpu_state(model), cfg.es_select
    names = {i: out.name if i == selected else f"{out.name}-epoch{ep:03d}" for i, (ep, _, _) in enumerate(ckpts.saved)}
    listing = {names[i]: {"epoch": ep, "lr": lr} for i, (ep, lr, _) in enumerate(ckpts.saved)}

    def save_checkpoint(i: int) -> None:
        epoch, lr, state = ckpts.saved[i]
        _load_net_state(model, state)
        acc = evaluate_accuracy(model, x, y, bf16=cfg.bf16)
        meta = _metadata(recipe, cfg, data, names[i], dataclasses.replace(run, train_accuracy=acc), model_device(model),
                         early_stopping={"epoch": epoch, "lr": lr, "checkpoints": listing,
                                         "final": f"{out.name}-final"})  # fmt: skip
        spec.save(model, out.with_name(names[i]), meta, overwrite)

    if overwrite:  # the previous run's outputs go first: an interruption below leaves no selected checkpoint
        # beside new siblings (a rerun then refuses the leftovers), and no -epochNNN of other milestones stays
        fresh = {out.with_name(n) for n in names.values()}
        for stale in [out, *(p for p in _early_stopping_siblings(out)[1:] if p not in fresh)]:
            if stale.is_dir():
                shutil.rmtree(stale)
    for i in range(len(ckpts.saved)):
        if i != selected:
            save_checkpoint(i)
    _load_net_state(model, final_state)
    meta = _metadata(recipe, cfg, data, f"{out.name}-final", run, model_device(model),
                     early_stopping={"epoch": cfg.epochs, "checkpoints": listing})  # fmt: skip
    spec.save(model, out.with_name(f"{out.name}-final"), meta, overwrite)
    save_checkpoint(selected)  # last: ``out`` exists only once all its siblings do (train_seeds resumes on that)
    return out


def _collect_steps(total_steps: int, k: int) -> set[int]:
    """K step counts spread evenly over the run, the last one at its end (LGV: 4 per epoch)."""
    if k > total_steps:
        raise ValueError(f"LGV wants {k} checkpoints but the continuation has only {total_steps} steps")
    return {round((i + 1) * total_steps / k) for i in range(k)}


def _lgv_start(cfg: RecipeConfig, spec: ModelSpec, data: ImageSet, x: torch.Tensor, y: torch.Tensor,
               device: torch.device) -> tuple[nn.Module, ModelSpec, dict[str, Any], float]:  # fmt: skip
    """The model LGV continues from: a given submission (``lgv_init``) or a base run of ``cfg`` itself."""
    if not cfg.lgv_init:
        model = spec.build(cfg.seed).to(device)
        base = run_training(model, x, y, cfg, num_classes=data.num_classes)
        return model, spec, {"base": "trained with these hyperparameters", "base_epochs": cfg.epochs}, base.seconds
    init = load_surrogate(cfg.lgv_init)
    c = init.config
    if init.kind != "single" or c.architecture != spec.architecture or c.num_classes != data.num_classes:
        raise SubmissionError(
            f"lgv_init {cfg.lgv_init}: need a single {spec.architecture!r} submission with {data.num_classes} "
            f"classes, got a {init.kind} {c.architecture!r} with {c.num_classes}"
        )
    spec = ModelSpec(c.architecture, dict(c.arch_kwargs), c.num_classes, c.input_size, c.mean, c.std)
    return init.runs[0].to(device), spec, {"base": str(cfg.lgv_init), "base_sha256": init.sha256}, 0.0


def _train_lgv(recipe: Recipe, cfg: RecipeConfig, data: ImageSet, spec: ModelSpec, out: Path,
               device: torch.device, overwrite: bool) -> Path:  # fmt: skip
    """LGV: continue with a constant high lr for ``lgv_epochs``; save K checkpoints as one ensemble."""
    x, y = data.images().to(device), data.labels.to(device)
    model, spec, base_info, base_seconds = _lgv_start(cfg, spec, data, x, y, device)
    seed = int(np.random.SeedSequence([cfg.seed, STREAM_LGV]).generate_state(1)[0])
    cont = dataclasses.replace(cfg, schedule="constant", lr=cfg.lgv_lr, epochs=cfg.lgv_epochs, warmup_epochs=0,
                               lr_milestones=(), seed=seed)  # fmt: skip
    k, total = cfg.lgv_epochs * cfg.lgv_per_epoch, cfg.lgv_epochs * math.ceil(len(y) / cfg.batch_size)
    when, states, step = _collect_steps(total, k), [], [0]

    def on_step() -> None:
        step[0] += 1
        if step[0] in when:
            states.append((step[0], _cpu_state(model)))

    run = run_training(model, x, y, cont, num_classes=data.num_classes, on_step=on_step)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.members.", dir=_parent(out)))
    try:
        members = {}
        logits = torch.zeros(len(y), data.num_classes, device=device)
        for i, (at_step, state) in enumerate(states):
            _load_net_state(model, state)
            logits += _logits(model, x)
            acc = evaluate_accuracy(model, x, y, bf16=cfg.bf16)
            where = {"member": i, "step": at_step, "epoch": at_step * cfg.lgv_epochs / total}
            meta = _metadata(recipe, cfg, data, f"m{i:02d}", dataclasses.replace(run, train_accuracy=acc), device,
                             lgv=where)  # fmt: skip
            members[f"m{i:02d}"] = spec.save(model, staging / f"m{i:02d}", meta, overwrite=False)
        ens_acc = float((logits.argmax(1) == y).float().mean())
        whole = dataclasses.replace(run, seconds=run.seconds + base_seconds, train_accuracy=ens_acc)
        meta = _metadata(recipe, cfg, data, out.name, whole, device, lgv={"members": len(members), **base_info})
        return save_group(members, out, kind="ensemble", metadata=meta, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


# ---------------------------------------------------------------------------------------------------------
# Entry point.


def train_recipe(
    recipe_name: str,
    data: ImageSet,
    *,
    arch: str,
    out_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    arch_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train ``recipe_name`` on all of ``data`` and write its submission folder (atomically); returns it.

    The model takes [0, 1] inputs; its built-in normalization is the per-channel mean/std of ``data``.
    """
    recipe, cfg = RECIPES.get(recipe_name), configure(recipe_name, overrides)
    out, dev = Path(out_dir), torch.device(device)
    written = [out, *(_early_stopping_siblings(out) if cfg.es_epochs_after_decay else [])]
    for path in written:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) or choose another folder.")
    x, y = data.images(), data.labels
    mean, std = channel_stats(x)
    spec = ModelSpec(arch, dict(arch_kwargs or {}), data.num_classes, tuple(x.shape[1:]), mean, std)  # type: ignore[arg-type]
    log.info("training %s (%s) on %d images, %s, device %s", recipe.name, recipe.paper, len(y), arch, dev)
    if cfg.lgv_epochs > 0:
        return _train_lgv(recipe, cfg, data, spec, out, dev, overwrite)
    model = spec.build(cfg.seed).to(dev)
    x, y = x.to(dev), y.to(dev)
    ckpts = DecayCheckpoints(model, cfg.es_epochs_after_decay) if cfg.es_epochs_after_decay > 0 else None
    run = run_training(model, x, y, cfg, num_classes=data.num_classes, on_epoch=ckpts)
    if ckpts is not None:
        return _save_early_stopping(recipe, cfg, data, spec, model, run, ckpts, out, overwrite)
    return spec.save(model, out, _metadata(recipe, cfg, data, out.name, run, dev), overwrite)


def _early_stopping_siblings(out: Path) -> list[Path]:
    """The ``-final`` folder of an early-stopping run at ``out`` and its ``-epochNNN`` folders that exist."""
    epoch = re.compile(rf"{re.escape(out.name)}-epoch\d{{3,}}")
    found = sorted(p for p in out.parent.glob(f"{glob.escape(out.name)}-epoch*") if epoch.fullmatch(p.name))
    return [out.with_name(f"{out.name}-final"), *found]


def seed_member(out_dir: str | Path, seed: int) -> Path:
    """Where :func:`train_seeds` writes the member of ``seed``: beside the group, ``<group>-s<seed>``."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}-s{seed}")


def _as_json(value: Any) -> Any:
    """``value`` as a JSON file gives it back (tuples as lists): how a member's config records it."""
    return json.loads(json.dumps(value))


def _trained_differently(member: Path, recipe_name: str, cfg: RecipeConfig, arch: str,
                         arch_kwargs: Mapping[str, Any], data_sha256: str) -> list[str]:  # fmt: skip
    """What about an existing member folder differs from the training asked for (empty: it is that training).

    The folder must be a complete, loadable submission; anything else is an error naming the remedy."""
    try:
        found = load_surrogate(member).config  # reads the weights too: a truncated file is caught here
    except SubmissionError as e:
        raise SubmissionError(f"{member} is not a complete submission ({e}); delete it to train that seed again "
                              "(--overwrite trains every seed again). Nothing was trained.") from None  # fmt: skip
    meta = found.metadata
    if found.kind != "single":
        return [f"kind ({found.kind!r}, not a single checkpoint)"]
    wanted = {"recipe": recipe_name, "architecture": arch, "arch_kwargs": _as_json(dict(arch_kwargs)),
              "training data": data_sha256}  # fmt: skip
    have = {"recipe": meta.get("recipe"), "architecture": found.architecture,
            "arch_kwargs": _as_json(dict(found.arch_kwargs)),
            "training data": train_data.get("sha256") if isinstance(train_data := meta.get("train_data"), dict)
            else None}  # fmt: skip
    differ = [k for k in wanted if have[k] != wanted[k]]
    hp_want, hp_have = _as_json(asdict(cfg)), meta.get("hyperparameters")
    if not isinstance(hp_have, dict):
        return [*differ, "hyperparameters (not recorded)"]
    return differ + [f"hyperparameter {k}" for k in differing_keys(hp_have, hp_want)]


def check_seed_request(
    recipe_name: str,
    seeds: Sequence[int],
    out_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> RecipeConfig:
    """Everything :func:`train_seeds` can refuse before it loads data or trains: the seeds (two or more,
    distinct), a seed also given as a hyperparameter, an LGV recipe, the hyperparameters themselves and an
    existing group folder. Returns the recipe's config (seed not yet set)."""
    seeds = list(seeds)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be integers, got {seeds}")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed group needs two or more different seeds, got {seeds}")
    if any(_field_name(k) == "seed" for k in (overrides or {})):
        raise ValueError("give the seeds with --seeds only, not also as the seed hyperparameter")
    base = configure(recipe_name, overrides)
    for seed in seeds:
        dataclasses.replace(base, seed=seed)  # each seed's config validates (e.g. no negative seed)
    if base.lgv_epochs > 0:
        raise ValueError(f"recipe {recipe_name!r} writes an LGV ensemble per training, and a seed group holds "
                         "single checkpoints: train each seed with `transferbench train --seed N`")  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not overwrite:
        if _config_kind(out) == "single":
            raise FileExistsError(
                f"{out} holds a single trained checkpoint, not a seed group. To use it as one seed's member, move it "
                f"to {seed_member(out, seeds[0]).name} (or -s<its seed>) beside it: a member that records the same "
                "training is kept, not retrained. Otherwise choose another --out."
            )
        raise FileExistsError(f"{out} exists: delete it to assemble the group again (trained members beside it "
                              f"are kept) or pass --overwrite to train every seed again.")  # fmt: skip
    return base


def _config_kind(folder: Path) -> str | None:
    """The ``kind`` of a submission folder's config.json (None where there is no valid one)."""
    try:
        return read_config(folder).kind
    except (SubmissionError, OSError):
        return None


def _check_seed_members(recipe_name: str, base: RecipeConfig, seeds: Sequence[int], out: Path, arch: str,
                        arch_kwargs: Mapping[str, Any], data_sha256: str) -> list[int]:  # fmt: skip
    """The seeds that still need training; refuses, before any of them trains, a member folder that holds
    another training or is incomplete, and early-stopping folders that a missing member's run would overwrite."""
    missing = []
    for seed in seeds:
        member, cfg = seed_member(out, seed), dataclasses.replace(base, seed=seed)
        if member.exists():
            differ = _trained_differently(member, recipe_name, cfg, arch, arch_kwargs, data_sha256)
            if differ:
                raise FileExistsError(
                    f"{member} exists but holds another training (it differs in {', '.join(differ)}); delete "
                    "it (and its -final / -epochNNN folders, if any) to train that seed again, or choose another "
                    "--out. Nothing was trained."
                )
            continue
        left = [p for p in _early_stopping_siblings(member) if p.exists()] if cfg.es_epochs_after_decay else []
        if left:
            raise FileExistsError(
                f"seed {seed}: {', '.join(p.name for p in left)} exist beside the missing member {member.name} "
                "(an early-stopping run cut short?); delete them to train that seed again. Nothing was trained."
            )
        missing.append(seed)
    return missing


def train_seeds(
    recipe_name: str,
    data: ImageSet,
    seeds: Sequence[int],
    *,
    arch: str,
    out_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    arch_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train ``recipe_name`` once per seed and assemble the runs as the seed group ``out_dir``; returns it.

    Each seed's checkpoint is a submission of its own at :func:`seed_member` (``<out>-s<seed>``, with its
    ``-final`` and ``-epochNNN`` siblings under early stopping), written as it finishes, so it can be evaluated
    alone too. A member folder that exists already and records this very training (recipe, every
    hyperparameter with its seed, architecture and its arguments, training data sha256) is kept, not
    retrained: a run cut short resumes with the seeds still missing. One that records anything else, or is
    incomplete, is an error naming what differs, raised before any seed trains. ``overwrite`` trains every seed
    again. The group is written last. :func:`check_seed_request` runs first.
    """
    seeds = list(seeds)
    overrides = dict(overrides or {})
    base = check_seed_request(recipe_name, seeds, out_dir, overrides, overwrite)
    out, kwargs = Path(out_dir), dict(arch_kwargs or {})
    to_train = seeds if overwrite else _check_seed_members(recipe_name, base, seeds, out, arch, kwargs,
                                                           data.content_sha256())  # fmt: skip
    members: dict[str, Path] = {}
    for seed in seeds:
        member = seed_member(out, seed)
        if seed in to_train:
            log.info("seed %d of %s: training %s", seed, seeds, member)
            train_recipe(recipe_name, data, arch=arch, out_dir=member, overrides={**overrides, "seed": seed},
                         device=device, arch_kwargs=kwargs, overwrite=overwrite)  # fmt: skip
        else:
            log.info("seed %d: keeping %s, trained already with these settings", seed, member)
        members[member.name] = member
    meta = {"name": out.name, "recipe": recipe_name}
    return save_group(members, out, kind="seed-group", metadata=meta, overwrite=overwrite)
