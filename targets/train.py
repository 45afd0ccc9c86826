"""Seeded training of the project's own CIFAR-10 targets (``targets/cifar10_family.py``) and the pins they yield.

Every family target has one frozen :class:`TargetRecipe`, registered under the target's name in
:data:`TARGET_RECIPES`: the surrogate loop's :class:`~surrogates.recipes.RecipeConfig` (epochs, batch size, lr
schedule, weight decay, augmentation, adversarial training, seed, precision) plus the optimizer, which the
surrogate recipes fix to SGD. Training reuses that machinery unchanged (``build_parts`` for schedule, augmentation
and PGD, ``fit`` for the loop, ``ModelSpec`` for the seeded initialisation); only AdamW (for the ViT) and a budget
check on every adversarial training batch are added here as parts.

:func:`train_target` writes ``model.safetensors`` + ``config.json`` + ``README.md`` (the submission layout, so the
folder also loads with ``surrogates.load_surrogate``) atomically. The model's normalization is the zoo entry's
mean/std, not statistics of the data given, so the folder is exactly the zoo entry. On a CPU, a run is a pure
function of the recipe and the data (bit-identical weights); GPU kernels are not bit-reproducible, which is why
the finished weights are pinned by sha256 (:func:`target_pins`) rather than by the recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from bench.attacks.budget import BUDGET_TOL, BudgetViolation, LinfBudget
from bench.data import ImageSet
from bench.hashing import sha256_file
from bench.precision import math_settings
from bench.provenance import collect
from bench.registry import Registry
from surrogates.recipes import ModelSpec, RecipeConfig, build_parts, coerce_override
from surrogates.submission import CONFIG_NAME, WEIGHTS_NAME, SurrogateConfig, atomic_folder, load_surrogate
from surrogates.training import EpochLog, Perturb, TrainParts, evaluate_accuracy, fit, lr_factor
from targets.cifar10_family import FAMILY_TARGETS  # registers the family targets
from targets.zoo import TARGETS, TargetError, TargetSpec

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
ARCH_PREFIX = "arch_"  # overrides named arch_<kwarg> change the architecture's keyword arguments (tests, tiny runs)
STREAM_MODULES = 4  # seed stream of randomness inside the model (dropout); surrogates/ uses streams 1-3
CARD_NAME = "README.md"
# Hyperparameters the model card always lists; the others only where they differ from RecipeConfig's defaults (all
# of them are in config.json).
CARD_FIELDS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup_epochs",
               "crop_padding", "hflip")  # fmt: skip


@dataclass(frozen=True)
class TargetRecipe:
    """How one zoo target is trained: every loop hyperparameter (``config``), where they come from, the optimizer."""

    target: str
    config: RecipeConfig
    source: str
    # "sgd": momentum and nesterov from config; "adamw": decoupled weight decay (Loshchilov & Hutter 2019).
    optimizer: str = "sgd"
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's defaults (Loshchilov & Hutter 2019)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"target recipe {self.target!r}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.optimizer == "adamw" and self.config.sam_rho > 0:
            raise ValueError(f"target recipe {self.target!r}: SAM wraps SGD here; use optimizer 'sgd' with sam_rho")

    @property
    def precision(self) -> str:
        return "bf16" if self.config.bf16 else "fp32"


TARGET_RECIPES: Registry[TargetRecipe] = Registry("target recipe")


def _register(target: str, source: str, config: RecipeConfig, **kwargs: Any) -> None:
    TARGET_RECIPES.add(target, TargetRecipe(target, config, source, **kwargs))


# The CIFAR CNN setting of kuangliu/pytorch-cifar (main.py: SGD, lr 0.1, momentum 0.9, weight decay 5e-4, cosine
# over 200 epochs, random crop with 4-pixel padding + horizontal flip), with seed 002's batch of 128 (Table 11).
# No warm-up: every network here has BatchNorm and trains stably at lr 0.1 from the first step. fp32: these are
# reference models; bf16 (`--bf16 true`) is a speed option that changes the numerics.
_CNN = RecipeConfig(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                    warmup_epochs=0, crop_padding=4, hflip=True)  # fmt: skip
_KUANGLIU = "kuangliu/pytorch-cifar (SGD 0.1, cosine, 200 epochs, wd 5e-4, crop + flip); batch 128 as seed 002"
# Distinct seeds, so that no two targets share an initialisation stream or a data order.
for _seed, _name in enumerate(("tb-resnet50", "tb-vgg16-bn", "tb-densenet121", "tb-inception-v3", "tb-mobilenet-v2")):
    _register(_name, _KUANGLIU, dataclasses.replace(_CNN, seed=101 + _seed))
# Zagoruyko & Komodakis 2016, Sec. 3: SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 divided
# by 5 at epochs 60, 120 and 160 of 200; no dropout (the RobustBench layout of the architecture).
_register("tb-wrn-28-10", "Zagoruyko & Komodakis 2016, Sec. 3", dataclasses.replace(
    _CNN, nesterov=True, schedule="step", lr_milestones=(60, 120, 160), lr_gamma=0.2, seed=106))  # fmt: skip
# A ViT from scratch on 50,000 images needs AdamW, warm-up and label smoothing (DeiT, Touvron et al. 2021:
# AdamW, weight decay 0.05, label smoothing 0.1, warm-up then cosine); lr 1e-3 at batch 128 and 200 epochs as the
# CIFAR ViT of omihub777/ViT-CIFAR. Warm-up of 10 epochs as seed 002 (Table 11). Crop + flip only: the loop has
# no RandAugment, so expect a lower accuracy than DeiT-style ViTs with heavy augmentation. As in DeiT, no weight
# decay on biases, norm weights, the position embedding and the class token (decay_groups).
_register("tb-vit-s4", "DeiT (Touvron et al. 2021) optimizer at CIFAR scale; lr/batch/epochs of omihub777/ViT-CIFAR",
          dataclasses.replace(_CNN, lr=1e-3, weight_decay=0.05, warmup_epochs=10, label_smoothing=0.1, seed=107),
          optimizer="adamw")  # fmt: skip
# Madry et al. 2018 PGD adversarial training at L-inf 8/255, 10 steps of 2/255 (at_step_frac 0.25), with the
# schedule of Pang et al. 2021 (Bag of tricks, Sec. 3): 110 epochs, lr 0.1 divided by 10 at epochs 100 and 105,
# weight decay 5e-4, batch 128; stopping soon after the first decay avoids robust overfitting (Rice et al. 2020).
# The inner maximization starts at a uniform point of the L-inf ball, as Madry et al. (Sec. 5) and Pang et al. do.
_register("tb-resnet18-at8", "Madry et al. 2018 PGD-10 AT at 8/255; schedule of Pang et al. 2021", dataclasses.replace(
    _CNN, epochs=110, schedule="step", lr_milestones=(100, 105), lr_gamma=0.1, at_norm="linf", at_eps=8 / 255,
    at_steps=10, at_step_frac=0.25, at_random_start=True, seed=108))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Configuration with overrides.


def _literal(value: Any) -> Any:
    """A CLI string as JSON when it parses ("8" -> 8, "0.5" -> 0.5, "true" -> True), else the string itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def configure_target(name: str, overrides: Mapping[str, Any] | None = None) -> tuple[TargetRecipe, dict[str, Any]]:
    """The target's recipe and architecture kwargs with ``overrides`` applied and validated.

    Keys are ``RecipeConfig`` fields, ``optimizer``, or ``arch_<kwarg>`` for the architecture (``-`` reads as ``_``);
    values may be CLI strings. A changed architecture is no longer the zoo entry: :func:`target_pins` refuses it.
    """
    recipe, spec = TARGET_RECIPES.get(name), TARGETS.get(name)
    fields = {f.name: str(f.type) for f in dataclasses.fields(RecipeConfig)}
    changes: dict[str, Any] = {}
    arch_kwargs, optimizer = dict(spec.arch_kwargs), recipe.optimizer
    for raw_key, value in (overrides or {}).items():
        key = raw_key.lstrip("-").replace("-", "_")
        if key.startswith(ARCH_PREFIX):
            arch_kwargs[key[len(ARCH_PREFIX) :]] = _literal(value)
        elif key == "optimizer":
            optimizer = str(value)
        elif key in fields:
            try:
                changes[key] = coerce_override(key, fields[key], value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"target {name!r}: bad value for {key}: {e}") from None
        else:
            close = difflib.get_close_matches(key, [*fields, "optimizer"], n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown hyperparameter {raw_key!r} for target {name!r}.{hint} Architecture keyword "
                             f"arguments take the prefix {ARCH_PREFIX!r} (e.g. arch_width).")  # fmt: skip
    config = dataclasses.replace(recipe.config, **changes)
    return dataclasses.replace(recipe, config=config, optimizer=optimizer), arch_kwargs


# ---------------------------------------------------------------------------------------------------------------------
# Parts and the run.


class BudgetCheckedPerturb:
    """Adversarial training's inner maximization, with every batch it returns checked against the budget.

    A batch outside the eps-ball or [0, 1] raises ``BudgetViolation`` (training stops, nothing is written). The
    number of checked batches and the largest perturbation seen go into the model card.
    """

    def __init__(self, perturb: Perturb, norm: str, eps: float) -> None:
        self.perturb, self.norm, self.eps = perturb, norm, eps
        self.batches, self.largest = 0, 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x_adv = self.perturb(model, x, targets, gen)
        delta = (x_adv - x).flatten(1)
        size = float((delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)).max())
        if self.norm == "linf":
            LinfBudget(self.eps).check(x_adv, x)
        elif size > self.eps + BUDGET_TOL or float(x_adv.min()) < -BUDGET_TOL or float(x_adv.max()) > 1 + BUDGET_TOL:
            raise BudgetViolation(f"L2 training perturbation {size:.8f} exceeds eps {self.eps:.8f} or leaves [0, 1]")
        self.batches += 1
        self.largest = max(self.largest, size)
        return x_adv


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups as in DeiT (Touvron et al. 2021) and timm: no weight decay on biases, norm weights
    and what the network lists in ``no_weight_decay()`` (a ViT's position embedding and class token)."""
    from timm.optim import param_groups_weight_decay

    net = getattr(model, "net", model)
    skip = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    return param_groups_weight_decay(net, weight_decay, no_weight_decay_list=skip)


def build_target_parts(
    recipe: TargetRecipe, model: nn.Module, *, steps_per_epoch: int, num_classes: int
) -> tuple[TrainParts, BudgetCheckedPerturb | None]:
    """The surrogate loop's parts for ``recipe``: ``build_parts``, then AdamW and the budget check where asked."""
    cfg = recipe.config
    parts = build_parts(cfg, model, steps_per_epoch=steps_per_epoch, num_classes=num_classes)
    if recipe.optimizer == "adamw":
        groups = decay_groups(model, cfg.weight_decay)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=recipe.adam_betas)
        factor = lr_factor(cfg.schedule, total_steps=cfg.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                           warmup_steps=cfg.warmup_epochs * steps_per_epoch, milestones=cfg.lr_milestones,
                           gamma=cfg.lr_gamma)  # fmt: skip
        parts = dataclasses.replace(parts, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, factor))
    checked = None
    if parts.perturb is not None:
        checked = BudgetCheckedPerturb(parts.perturb, cfg.at_norm, cfg.at_eps)
        parts = dataclasses.replace(parts, perturb=checked)
    return parts, checked


@dataclass(frozen=True)
class TargetRun:
    logs: list[EpochLog]
    seconds: float
    checked: BudgetCheckedPerturb | None


def _module_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, STREAM_MODULES]).generate_state(1)[0])


def run_target_training(model: nn.Module, data: ImageSet, recipe: TargetRecipe, device: torch.device) -> TargetRun:
    """Train ``model`` (on ``device``) with ``recipe`` on all of ``data``; the global RNG is left as it was."""
    cfg = recipe.config
    x, y = data.images().to(device), data.labels.to(device)
    parts, checked = build_target_parts(recipe, model, steps_per_epoch=math.ceil(len(y) / cfg.batch_size),
                                        num_classes=data.num_classes)  # fmt: skip

    def epoch_done(e: EpochLog) -> None:
        log.info("%s epoch %d/%d  lr %.5f  loss %.4f  train acc %.4f  (%.1f s)", recipe.target, e.epoch, cfg.epochs,
                 e.lr, e.loss, e.accuracy, e.seconds)  # fmt: skip

    devices = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_module_seed(cfg.seed))  # dropout draws from the global generators
        logs = fit(model, x, y, parts, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                   channels_last=cfg.channels_last, bf16=cfg.bf16, on_epoch=epoch_done)  # fmt: skip
    return TargetRun(logs, time.perf_counter() - t0, checked)


def _check_data(spec: TargetSpec, data: ImageSet, role: str) -> None:
    channels = data.pixels.shape[1]
    if data.num_classes != spec.num_classes or channels != len(spec.mean):
        raise ValueError(
            f"target {spec.name!r} needs {len(spec.mean)}-channel images of {spec.num_classes} classes; the {role} "
            f"data ({data.source}) has {channels} channels and {data.num_classes} classes. Use CIFAR-10."
        )


def _data_info(data: ImageSet) -> dict[str, Any]:
    return {"source": data.source, "sha256": data.content_sha256(), "n_images": len(data)}


# ---------------------------------------------------------------------------------------------------------------------
# The folder: weights, config, model card.


def _metadata(spec: TargetSpec, recipe: TargetRecipe, overrides: Mapping[str, Any] | None, run: TargetRun,
              data: ImageSet, accuracy: dict[str, Any], device: torch.device) -> dict[str, Any]:  # fmt: skip
    cfg = recipe.config
    meta: dict[str, Any] = {
        "name": spec.name,
        "target": spec.name,
        "family": spec.family,
        "recipe": {**asdict(recipe), "precision": recipe.precision},
        "seed": cfg.seed,
        "overrides": {str(k): v for k, v in (overrides or {}).items()},
        "train_data": _data_info(data),
        **accuracy,
        "last_epoch_batch_accuracy": run.logs[-1].accuracy if run.logs else None,
        "epochs": [[e.epoch, e.lr, round(e.loss, 6), e.accuracy] for e in run.logs],  # epoch, lr, loss, batch acc
        "train_time_s": round(run.seconds, 3),
        "provenance": {**collect(device, precision=recipe.precision, seed=cfg.seed), "math": math_settings()},
        "citation": spec.citation,
        "license": spec.license,
    }
    if run.checked is not None:
        meta["adversarial_training"] = {"batches_checked": run.checked.batches, "largest_perturbation":
                                        run.checked.largest, "norm": cfg.at_norm, "eps": cfg.at_eps}  # fmt: skip
    return meta


def _card_hyperparameters(config: Mapping[str, Any]) -> str:
    """CARD_FIELDS, the adversarial-training fields when AT is on, and whatever else differs from the defaults."""
    defaults, at = asdict(RecipeConfig()), config["at_norm"] != "none"

    def shown(key: str, value: Any) -> bool:
        changed = value != defaults[key] and key not in ("seed", "bf16")  # both are shown elsewhere in the card
        return key in CARD_FIELDS or (at and key.startswith("at_")) or changed

    return ", ".join(f"{k} {v}" for k, v in config.items() if shown(k, v))


def model_card(cfg: SurrogateConfig) -> str:
    """README.md of a target folder: what it is, how it was trained, what it scores, where it comes from."""
    meta, name = cfg.metadata, cfg.metadata["target"]
    recipe = meta["recipe"]
    hyper = _card_hyperparameters(recipe["config"])
    test = meta.get("test")
    test_line = "not measured"
    if test:
        test_line = f"{100 * test['accuracy']:.2f}% on {test['n_images']} images (data sha256 {test['sha256']})"
    lines = [
        "---", "library_name: transferbench", f"license: {meta['license'].lower()}", "datasets: [cifar10]",
        "tags: [transferbench, adversarial-transferability, target-model, image-classification]", "---",
        f"# {name}", "",
        f"A target model of the TransferBench CIFAR-10 zoo (family `{meta['family']}`), built by "
        f"`transferbench targets train {name}`.", "",
        f"- architecture: `{cfg.architecture}` {json.dumps(cfg.arch_kwargs)} ({cfg.num_classes} classes, input "
        f"{list(cfg.input_size)} in [0, 1]); normalization inside the model: mean {list(cfg.mean)}, "
        f"std {list(cfg.std)}",
        f"- weights: `{WEIGHTS_NAME}` (safetensors, the bare network's state dict), sha256 `{meta['weights_sha256']}`",
        f"- recipe: {recipe['source']}; optimizer {recipe['optimizer']}, precision {recipe['precision']}, "
        f"seed {meta['seed']}; overrides {json.dumps(meta['overrides']) if meta['overrides'] else 'none'}",
        f"- hyperparameters (all of them in config.json): {hyper}",
        f"- train data: {meta['train_data']['n_images']} images, sha256 {meta['train_data']['sha256']}; clean train "
        f"accuracy {100 * meta['train_accuracy']:.2f}%",
        f"- test accuracy: {test_line}",
    ]  # fmt: skip
    if "adversarial_training" in meta:
        at = meta["adversarial_training"]
        lines.append(f"- adversarial training: {at['norm']} eps {at['eps']:.6f}; {at['batches_checked']} training "
                     f"batches checked, largest perturbation {at['largest_perturbation']:.6f}")  # fmt: skip
    prov = meta["provenance"]
    lines += [f"- trained on {prov['device']} in {meta['train_time_s']:.0f} s; torch {prov['torch']}, timm "
              f"{prov['timm']}, transferbench {prov['package_version']} (git {prov['git_sha']})", "",
              f"Citation: {meta['citation']}", ""]  # fmt: skip
    return "\n".join(lines)


def write_target_folder(
    model: nn.Module, spec: ModelSpec, out: Path, metadata: dict[str, Any], overwrite: bool
) -> Path:
    """Weights, then config.json (with the weights' sha256) and the model card, into ``out`` atomically."""
    net = getattr(model, "net", model)

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_NAME))
        meta = {**metadata, "weights_sha256": sha256_file(tmp / WEIGHTS_NAME)}
        cfg = SurrogateConfig(kind="single", architecture=spec.architecture, num_classes=spec.num_classes,
                              input_size=spec.input_size, mean=spec.mean, std=spec.std,
                              arch_kwargs=dict(spec.arch_kwargs), metadata=meta)  # fmt: skip
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(cfg))

    return atomic_folder(out, fill, overwrite)


def train_target(
    name: str,
    data: ImageSet,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
    test_data: ImageSet | None = None,
    overwrite: bool = False,
) -> Path:
    """Train zoo target ``name`` on ``data`` (the CIFAR-10 training split) with its registered recipe.

    Writes ``out_dir`` (weights, config.json, model card) atomically and returns it; ``test_data`` (the test
    split) adds the test accuracy to the card. ``overrides`` as in :func:`configure_target`.
    """
    recipe, arch_kwargs = configure_target(name, overrides)
    spec, out, dev = TARGETS.get(name), Path(out_dir), torch.device(device)
    for role, d in (("training", data), ("test", test_data)):
        if d is not None:
            _check_data(spec, d, role)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) or choose another folder.")
    mspec = ModelSpec(spec.architecture, arch_kwargs, spec.num_classes, tuple(data.pixels.shape[1:]), spec.mean,
                      spec.std)  # type: ignore[arg-type]  # fmt: skip
    log.info("training target %s (%s, %s) on %d images, device %s", name, spec.architecture, recipe.source, len(data),
             dev)  # fmt: skip
    model = mspec.build(recipe.config.seed).to(dev)
    run = run_target_training(model, data, recipe, dev)
    accuracy: dict[str, Any] = {"train_accuracy": _accuracy(model, data, dev, recipe.config.bf16), "test": None}
    if test_data is not None:
        accuracy["test"] = {**_data_info(test_data), "accuracy": _accuracy(model, test_data, dev, recipe.config.bf16)}
    meta = _metadata(spec, recipe, overrides, run, data, accuracy, dev)
    return write_target_folder(model, mspec, out, meta, overwrite)


def _accuracy(model: nn.Module, data: ImageSet, device: torch.device, bf16: bool) -> float:
    return evaluate_accuracy(model, data.images().to(device), data.labels.to(device), bf16=bf16)


# ---------------------------------------------------------------------------------------------------------------------
# Pins for the zoo entry.


@dataclass(frozen=True)
class TargetPins:
    """What a trained folder pins in ``targets/cifar10_family.py``: weights sha256, accuracy on one data hash."""

    name: str
    sha256: str
    data_sha256: str
    n_images: int
    accuracy: float
    revision: str | None = None  # the Hub commit holding the files (``publish_target``'s return value)

    def as_code(self) -> str:
        """One line of ``cifar10_family.MEASURED`` (paste it there)."""
        rev = json.dumps(self.revision) if self.revision else "None"
        return (f"{json.dumps(self.name)}: Measured(revision={rev}, sha256={json.dumps(self.sha256)}, "
                f"accuracy=(({json.dumps(self.data_sha256)}, {self.accuracy!r}),)),")  # fmt: skip


def check_is_zoo_entry(
    folder: Path, cfg: SurrogateConfig, allow_overrides: bool, allow_arch_overrides: bool = False
) -> TargetSpec:
    name = cfg.metadata.get("target")
    if not isinstance(name, str) or name not in TARGETS:
        raise TargetError(f"{folder}: config.json names no zoo target (metadata.target = {name!r}); train the folder "
                          "with `transferbench targets train NAME`.")  # fmt: skip
    spec = TARGETS.get(name)
    # Pins must match the entry's kwargs exactly (the zoo loads with them); publishing a tiny arch_* variant is
    # allowed on request (tests), and loading it through the zoo would then fail its strict key check.
    kwargs_of = (lambda kw: {}) if allow_arch_overrides else (lambda kw: kw)
    built = (cfg.architecture, cfg.num_classes, kwargs_of(cfg.arch_kwargs), cfg.mean, cfg.std)
    needed = (spec.architecture, spec.num_classes, kwargs_of(spec.arch_kwargs), spec.mean, spec.std)
    if built != needed:
        raise TargetError(f"{folder} is not the zoo entry {name!r}: it was built as {built} (architecture, classes, "
                          f"kwargs, mean, std), the zoo needs {needed}.")  # fmt: skip
    if cfg.metadata.get("overrides") and not allow_overrides:
        raise TargetError(f"{folder} was trained with overrides {cfg.metadata['overrides']}, not {name!r}'s registered "
                          "recipe; retrain without them, or pass allow_overrides=True to pin it anyway.")  # fmt: skip
    return spec


def target_pins(
    folder: str | Path,
    test_data: ImageSet,
    *,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
    allow_overrides: bool = False,
) -> TargetPins:
    """Measure a trained target folder: sha256 of its weights and clean accuracy on ``test_data``.

    The folder must be the zoo entry (same architecture, kwargs, mean/std; the registered recipe unless
    ``allow_overrides``). The returned pins' :meth:`TargetPins.as_code` is logged, ready for ``MEASURED``.
    """
    from bench.runner import predictions

    path = Path(folder)
    surrogate = load_surrogate(path, device=device)
    spec = check_is_zoo_entry(path, surrogate.config, allow_overrides)
    recorded = surrogate.config.metadata.get("weights_sha256")
    if recorded != surrogate.sha256:
        raise TargetError(f"{path / WEIGHTS_NAME} has sha256 {surrogate.sha256}, its config.json records {recorded}: "
                          "the folder was changed after training. Retrain it.")  # fmt: skip
    _check_data(spec, test_data, "test")
    with torch.no_grad():
        preds = predictions(spec.name, surrogate.runs[0], test_data.images(), torch.device(device), spec.num_classes,
                            batch_size)  # fmt: skip
    accuracy = float((preds == test_data.labels).double().mean())
    pins = TargetPins(spec.name, surrogate.sha256, test_data.content_sha256(), len(test_data), accuracy, revision)
    log.info("pins for targets/cifar10_family.py MEASURED:\n    %s", pins.as_code())
    return pins


__all__ = ["FAMILY_TARGETS", "TARGET_RECIPES", "TargetPins", "TargetRecipe", "configure_target", "model_card",
           "target_pins", "train_target"]  # fmt: skip
