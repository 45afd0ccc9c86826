"""Frozen, versioned, hashed protocols. Two results are comparable only if their protocol hashes agree.

A protocol pins everything but the surrogate: data set, split and image list, the rule for targeted
labels, the target zoo, the attack grid (attacks x budgets x modes), steps and step sizes, seeds,
numeric precision, the smoothness / similarity subsets and iteration counts, the metric definitions
and the ranking rule. ``Protocol.sha256`` is the hash of its canonical JSON; changing any field is a
new version. Budgets are stored as integers over 255 (``eps_255``) so the JSON holds exact numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from bench import rng
from bench.data.imagenet import IMAGENET_COMPATIBLE_PREPARATION
from bench.data.imagenette import IMAGENETTE_PREPARATION, IMAGENETTE_TO_IMAGENET
from bench.metrics.smoothness import SMOOTHNESS_VALUES, STOP_RULES
from bench.registry import Registry

Mode = Literal["untargeted", "targeted"]
ASR_DEFINITIONS = ("target_correct", "both_correct", "all")

METRIC_DEFINITIONS = {
    "asr.target_correct": "success rate over images the target classifies correctly when clean (ranking default)",
    "asr.both_correct": "seed 002 Definition 3: over images surrogate AND target classify correctly; success when "
    "both are fooled (targeted: both output the target label)",
    "asr.all": "success rate over all images of the list (TransferAttack convention)",
    "success.untargeted": "prediction on x_adv differs from the true label",
    "success.targeted": "prediction on x_adv equals the assigned target label",
    "surrogate.fooling_rate": "white-box success on the surrogate over images it classifies correctly (1 - alpha)",
    "smoothness": "seed 002 Definition 1: dominant (largest-magnitude) eigenvalue of the input Hessian of the "
    "cross-entropy at the true label, per image, by power iteration on Hessian-vector products; mean and max",
    "similarity": "seed 002 Definition 2: cosine of surrogate and target input gradients of the cross-entropy at the "
    "true label, per image; mean and min over images with non-zero gradients",
    "ci": "95% Wilson score interval on every ASR",
}


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the grid: a registry key and its hyperparameters (step sizes relative to eps)."""

    attack: str
    steps: int
    params: tuple[tuple[str, int | float | bool], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Cell:
    """One (attack, budget, mode) setting; ``key`` is how records and tables name it."""

    attack: str
    eps_255: int
    mode: Mode

    @property
    def eps(self) -> float:
        return self.eps_255 / 255

    @property
    def key(self) -> str:
        return f"{self.attack}/linf-{self.eps_255}/{self.mode}"

    def success(self, pred: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per image, whether predictions ``pred`` count as a success in this cell's mode: the target label ``t``
        (targeted), anything but the true label ``y`` (untargeted)."""
        return pred == t if self.mode == "targeted" else pred != y


@dataclass(frozen=True)
class LabelSpace:
    """The protocol's K classes as indices into a larger label space that some models predict in.

    A model with ``len(parent)`` outputs (an ImageNet classifier on ImageNette, say) is read on the K columns
    ``indices`` only: its prediction is the argmax over those logits (``rule``), and the attack loss uses the
    same K logits. A model with K outputs is used as it is.
    """

    parent: str  # e.g. "imagenet-1k"
    parent_classes: int  # e.g. 1000
    indices: tuple[int, ...]  # protocol class k is parent class indices[k]
    rule: str = "argmax over the K listed logits of the parent classifier (restricted argmax)"

    def __post_init__(self) -> None:
        if len(set(self.indices)) != len(self.indices) or not all(0 <= i < self.parent_classes for i in self.indices):
            raise ValueError(f"label space {self.parent}: indices must be distinct and in [0, {self.parent_classes})")


@dataclass(frozen=True)
class WeightSharpnessSpec:
    """Weight-space sharpness of the surrogate (seed 004): power iteration and Hutchinson on a fixed batch."""

    images: int  # class-balanced prefix of the image list (same rule as smoothness)
    max_iters: int
    tol: float
    probes: int
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.images, self.max_iters, self.probes) < 1 or self.tol <= 0:
            raise ValueError(f"weight sharpness needs images, max_iters, probes >= 1 and tol > 0, got {self}")


OPTIONAL_FIELDS = ("image_preparation", "label_space", "weight_sharpness", "smoothness_stop", "smoothness_value")
LEGACY_SMOOTHNESS_STOP = "rayleigh-change"  # the rule of every protocol defined before smoothness_stop existed
LEGACY_SMOOTHNESS_VALUE = "signed"  # what every protocol defined before smoothness_value existed reports


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    kind: Literal["benchmark", "smoke"]
    status: Literal["provisional", "frozen"]
    description: str
    dataset: str
    split: str
    image_ids: tuple[int, ...]
    num_classes: int
    input_size: tuple[int, int, int]
    targets: tuple[str, ...]
    attacks: tuple[AttackSpec, ...]
    eps_255: tuple[int, ...]
    modes: tuple[Mode, ...]
    seed: int
    precision: Literal["fp32"]
    smoothness_images: int
    smoothness_iters: int
    smoothness_tol: float
    similarity_images: int
    ranking_cell: str
    ranking_asr: str = "target_correct"
    target_label_rule: str = "t = (y + 1 + u mod (K - 1)) mod K, u = rng.randint(seed, 'target_label', image id)"
    metric_definitions: dict[str, str] = field(default_factory=lambda: dict(METRIC_DEFINITIONS))
    # Fields added after the first protocols. They are left out of the canonical JSON while they hold their
    # "absent" value (None), so protocols defined before them keep their hashes.
    image_preparation: str | None = None  # how stored images became input_size (resize / crop rule)
    label_space: LabelSpace | None = None  # e.g. ImageNette's 10 classes inside ImageNet's 1,000
    weight_sharpness: WeightSharpnessSpec | None = None  # surrogate diagnostic of seed 004, in every run
    # Convergence rule of the smoothness power iteration (bench.metrics.smoothness.STOP_RULES); None is the rule
    # the protocols before this field used, "rayleigh-change". New versions should state "residual".
    smoothness_stop: str | None = None
    # What the smoothness numbers are (bench.metrics.smoothness.SMOOTHNESS_VALUES); None is what the protocols
    # before this field reported, the signed eigenvalue. New versions should state "magnitude" (docs/protocols.md).
    smoothness_value: str | None = None

    def __post_init__(self) -> None:
        keys = {c.key for c in self.cells()}
        if self.ranking_cell not in keys:
            raise ValueError(f"ranking cell {self.ranking_cell!r} is not in the grid of {self.name}")
        if self.ranking_asr not in ASR_DEFINITIONS:
            raise ValueError(f"ranking_asr must be one of {ASR_DEFINITIONS}")
        if self.smoothness_stop not in (None, *STOP_RULES):
            raise ValueError(f"{self.name}: smoothness_stop must be one of {STOP_RULES}, got {self.smoothness_stop!r}")
        if self.smoothness_value not in (None, *SMOOTHNESS_VALUES):
            raise ValueError(
                f"{self.name}: smoothness_value must be one of {SMOOTHNESS_VALUES}, got {self.smoothness_value!r}"
            )
        if self.label_space is not None and len(self.label_space.indices) != self.num_classes:
            raise ValueError(f"{self.name}: its label space lists {len(self.label_space.indices)} classes, not "
                             f"num_classes={self.num_classes}")  # fmt: skip

    @property
    def id(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def smoothness_stop_rule(self) -> str:
        """The smoothness convergence rule this protocol uses (``smoothness_stop``, or the legacy rule)."""
        return self.smoothness_stop or LEGACY_SMOOTHNESS_STOP

    @property
    def smoothness_value_rule(self) -> str:
        """What this protocol's smoothness numbers are (``smoothness_value``, or the legacy signed eigenvalue)."""
        return self.smoothness_value or LEGACY_SMOOTHNESS_VALUE

    def cells(self) -> list[Cell]:
        return [Cell(a.attack, e, m) for a in self.attacks for e in self.eps_255 for m in self.modes]

    def attack_spec(self, attack: str) -> AttackSpec:
        return next(a for a in self.attacks if a.attack == attack)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for name in OPTIONAL_FIELDS:
            if d[name] is None:
                del d[name]
        return d

    @property
    def sha256(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def target_labels(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Fixed per-image target class for targeted attacks, never the true class."""
        k = self.num_classes
        u = rng.randint(self.seed, "target_label", ids, 0, 1, 0, k - 1)[:, 0]
        return (labels + 1 + u) % k


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def core_attacks(resize_rate: float) -> tuple[AttackSpec, ...]:
    """PGD, MI-FGSM and DIM, 10 steps each. DIM's canvas must grow by at least one pixel at the input size."""
    return (
        AttackSpec("pgd", steps=10, params=(("random_start", True), ("step_frac", 0.25))),
        AttackSpec("mifgsm", steps=10, params=(("mu", 1.0),)),
        AttackSpec("dim", steps=10, params=(("mu", 1.0), ("p", 0.5), ("resize_rate", resize_rate))),
    )


PROTOCOLS.add(
    "cifar10",
    Protocol(
        name="cifar10",
        version=1,
        kind="benchmark",
        status="provisional",
        description="CIFAR-10 test split (all 10,000 images), 32x32 surrogates, L-inf PGD/MI-FGSM/DIM x {4,8,16}/255 "
        "x {untargeted, targeted}, 10 steps, fp32. Provisional: the target zoo holds the external He et al. "
        "ResNets until the multi-family zoo lands as v2.",
        dataset="cifar10",
        split="test",
        image_ids=tuple(range(10_000)),
        num_classes=10,
        input_size=(3, 32, 32),
        targets=("akamaster-resnet20", "akamaster-resnet32", "akamaster-resnet44", "akamaster-resnet56"),
        attacks=core_attacks(resize_rate=1.1),  # 32 -> canvas 35 (Xie et al.: 299 -> 330)
        eps_255=(4, 8, 16),
        modes=("untargeted", "targeted"),
        seed=0,
        precision="fp32",
        smoothness_images=1000,
        smoothness_iters=20,
        smoothness_tol=1e-3,
        similarity_images=1000,
        ranking_cell="pgd/linf-8/untargeted",
    ),
)

PROTOCOLS.add(
    "smoke-digits",
    Protocol(
        name="smoke-digits",
        version=2,
        kind="smoke",
        status="frozen",
        description="Offline smoke protocol on scikit-learn's 8x8 digits (every third image held out, 599 images). "
        "Exercises the whole pipeline on a CPU in minutes; its numbers are never benchmark results. "
        "v2 adds the surrogate's weight-space sharpness (seed 004).",
        dataset="digits",
        split="all",
        image_ids=tuple(range(0, 1797, 3)),
        num_classes=10,
        input_size=(1, 8, 8),
        targets=("smoke-cnn-a", "smoke-cnn-b", "smoke-mlp"),
        attacks=core_attacks(resize_rate=1.25),  # 8 -> canvas 10
        eps_255=(16, 32, 64),
        modes=("untargeted", "targeted"),
        seed=0,
        precision="fp32",
        smoothness_images=200,
        smoothness_iters=20,
        smoothness_tol=1e-3,
        similarity_images=200,
        ranking_cell="pgd/linf-32/untargeted",
        weight_sharpness=WeightSharpnessSpec(images=200, max_iters=20, tol=1e-3, probes=10),
    ),
)


# Generation strategies beyond the core three (docs/attacks.md), each with its paper's defaults, on a
# 1,000-image list: the grid costs about 29x the core one in gradient evaluations per image.
EXTENDED_ATTACKS = (
    *core_attacks(resize_rate=1.1),
    AttackSpec("nifgsm", steps=10, params=(("mu", 1.0),)),
    AttackSpec("vmifgsm", steps=10, params=(("beta", 1.5), ("mu", 1.0), ("n", 20))),
    AttackSpec(
        "tidim", steps=10, params=(("kernel_size", 7), ("mu", 1.0), ("nsig", 3.0), ("p", 0.5), ("resize_rate", 1.1))
    ),
    AttackSpec("pgn", steps=10, params=(("delta", 0.5), ("mu", 1.0), ("n", 20), ("zeta_frac", 3.0))),
    AttackSpec("gnp", steps=10, params=(("beta", 0.8), ("mu", 1.0), ("r", 0.00107))),
    AttackSpec("tpa", steps=10, params=(("alpha", 0.8), ("b_255", 28.6), ("k_255", 2.9), ("mu", 1.0), ("n", 10))),
)

PROTOCOLS.add(
    "cifar10-ext",
    dataclasses.replace(
        PROTOCOLS.get("cifar10"),
        name="cifar10-ext",
        version=2,
        description="cifar10 v1 with the extended attack grid (NI, VMI, TI-DIM, PGN, GNP and the flatness-aware "
        "TPA of seed 001) on every tenth test image (1,000 images). Provisional like cifar10 v1. v2: GNP's "
        "finite-difference length scaled to 32x32 inputs, TPA as the authors' released estimator (v1, never "
        "published, had settings under which both attacks mostly failed even on the surrogate).",
        image_ids=tuple(range(0, 10_000, 10)),
        attacks=EXTENDED_ATTACKS,
    ),
)

PROTOCOLS.add(
    "cifar10-autoattack",
    dataclasses.replace(
        PROTOCOLS.get("cifar10"),
        name="cifar10-autoattack",
        description="Transfer of AutoAttack-crafted examples (seed 002 Table 13): AutoAttack standard (APGD-CE, "
        "APGD-T, FAB-T with 100 iterations, Square with 5,000 queries; torchattacks components) on every tenth "
        "test image (1,000 images), untargeted, L-inf {4,8,16}/255. Provisional like cifar10 v1.",
        image_ids=tuple(range(0, 10_000, 10)),
        attacks=(AttackSpec("autoattack", steps=100, params=(("num_classes", 10),)),),
        modes=("untargeted",),
        ranking_cell="autoattack/linf-8/untargeted",
    ),
)

# ImageNet-side protocols. Images are prepared by the data loader to 224x224 (the rule is part of the protocol);
# targets at another native size are resized inside their wrapper (targets/zoo.py). Transfer papers on ImageNet
# use eps 16/255 and MI-FGSM as their headline setting, hence the ranking cell.
IMAGENET_TARGETS = (
    "imagenet-resnet50",
    "imagenet-vgg16",
    "imagenet-densenet121",
    "imagenet-mobilenetv2",
    "imagenet-inception-v3",
    "imagenet-xception",
    "imagenet-vit-b16",
    "imagenet-deit-b",
    "imagenet-swin-b",
    "imagenet-inception-v3-adv",
    "imagenet-incres-v2-ens-adv",
    "imagenet-resnet50-linf4",
)
IMAGENETTE_VALIDATION_IMAGES = 3925  # imagenette2 validation split (fast.ai, all three resolutions)

PROTOCOLS.add(
    "imagenette",
    Protocol(
        name="imagenette",
        version=1,
        kind="benchmark",
        status="provisional",
        description="ImageNette validation split (3,925 images, 10 classes) at 224x224, ImageNet-1k targets read on "
        "the 10 ImageNette classes (restricted argmax), L-inf PGD/MI-FGSM/DIM x {4,8,16}/255 x {untargeted, "
        "targeted}, 10 steps, fp32. Surrogates give 10 logits in ImageNette order, or 1,000 ImageNet logits. "
        "Provisional until the targets' Hub revisions, sha256 and accuracies are pinned.",
        dataset="imagenette",
        split="validation",
        image_ids=tuple(range(IMAGENETTE_VALIDATION_IMAGES)),
        num_classes=10,
        input_size=(3, 224, 224),
        targets=IMAGENET_TARGETS,
        attacks=core_attacks(resize_rate=1.1),  # 224 -> canvas 246 (Xie et al.: 299 -> 330)
        eps_255=(4, 8, 16),
        modes=("untargeted", "targeted"),
        seed=0,
        precision="fp32",
        smoothness_images=500,
        smoothness_iters=20,
        smoothness_tol=1e-3,
        similarity_images=500,
        ranking_cell="mifgsm/linf-16/untargeted",
        image_preparation=IMAGENETTE_PREPARATION,
        label_space=LabelSpace("imagenet-1k", 1000, IMAGENETTE_TO_IMAGENET),
        weight_sharpness=WeightSharpnessSpec(images=250, max_iters=20, tol=1e-3, probes=10),
    ),
)

PROTOCOLS.add(
    "imagenet",
    dataclasses.replace(
        PROTOCOLS.get("imagenette"),
        name="imagenet",
        description="The 1,000-image ImageNet-compatible set of the NIPS 2017 adversarial competition (the list "
        "transfer papers use), resized whole to 224x224, 1,000 classes, the ImageNet target zoo, L-inf "
        "PGD/MI-FGSM/DIM x {4,8,16}/255 x {untargeted, targeted}, 10 steps, fp32. Targeted labels follow the "
        "protocol's rule, not the competition's TargetClass column. Provisional until the targets are pinned.",
        dataset="imagenet-compatible",
        split="dev",
        image_ids=tuple(range(1000)),
        num_classes=1000,
        smoothness_images=1000,
        similarity_images=1000,
        image_preparation=IMAGENET_COMPATIBLE_PREPARATION,
        label_space=None,
        weight_sharpness=WeightSharpnessSpec(images=250, max_iters=20, tol=1e-3, probes=10),
    ),
)


def get_protocol(name: str) -> Protocol:
    """``cifar10`` or ``cifar10-v1``; the version suffix is checked if given."""
    base, _, version = name.partition("-v")
    if version and base in PROTOCOLS:
        proto = PROTOCOLS.get(base)
        if str(proto.version) != version:
            raise ValueError(f"protocol {base!r} is at version {proto.version}; version {version} is not available")
        return proto
    return PROTOCOLS.get(name)
