"""The project's own multi-family CIFAR-10 targets (issue #3): one model per architecture family, trained here.

Each entry is built by ``transferbench targets train <name>`` (``targets/train.py``, which holds the frozen,
seeded recipe of every entry) and published to the Hub model repo :data:`ZOO_REPO` as
``<name>/model.safetensors`` (the bare network's state dict), ``<name>/config.json`` and ``<name>/README.md``
(``targets/publish.py``). The Hub commit, the weights' sha256 and the accuracy on the protocol's test images are
unknown until the GPU runs are done: they are pinned in :data:`MEASURED` from ``targets.train.target_pins``. Until
then the entries have ``revision=None, sha256=None`` and no expected accuracy, so no frozen protocol lists them;
the next ``cifar10`` protocol version will.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from targets.zoo import Family, HubWeights, TargetSpec, register

ZOO_REPO = "transferbench/cifar10-zoo"
# Per-channel mean and (population) standard deviation of the 50,000 CIFAR-10 training images, the values
# published with chenyaofo/pytorch-cifar-models (the often-copied std (0.2023, 0.1994, 0.2010) is not the std of
# the pixels). Normalization lives inside every model, so these are part of the entry, fixed before training.
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
LICENSE = "Apache-2.0"  # weights trained by the project, released under the project's license
TRAINED_HERE = (
    "TransferBench CIFAR-10 zoo (https://huggingface.co/transferbench/cifar10-zoo), trained from scratch on the "
    "CIFAR-10 training split (Krizhevsky 2009) by `transferbench targets train {name}`"
)


@dataclass(frozen=True)
class Measured:
    """What a finished GPU run pins: the Hub commit, the weights' sha256 and the clean accuracy per data hash."""

    revision: str | None = None
    sha256: str | None = None
    accuracy: tuple[tuple[str, float], ...] = ()


# Paste the lines printed by `targets.train.target_pins(...)` here after each GPU run; an absent name = not measured.
MEASURED: dict[str, Measured] = {}


@dataclass(frozen=True)
class FamilyEntry:
    name: str
    family: Family
    architecture: str
    paper: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


_VGG = "Simonyan & Zisserman, Very deep convolutional networks, ICLR 2015; Ioffe & Szegedy, Batch normalization, 2015"
_INCEPTION = (
    "Szegedy et al., Rethinking the Inception architecture, CVPR 2016 (32x32 stem of huyvnphan/PyTorch_CIFAR10)"
)
_AT = (
    "Madry et al., Towards deep learning models resistant to adversarial attacks, ICLR 2018; schedule of Pang et al., "
    "Bag of tricks for adversarial training, ICLR 2021"
)
FAMILY_TARGETS: tuple[FamilyEntry, ...] = (
    FamilyEntry("tb-resnet50", "cnn", "cifar_resnet50", "He et al., Deep residual learning, CVPR 2016"),
    FamilyEntry("tb-vgg16-bn", "cnn", "cifar_vgg16_bn", _VGG),
    FamilyEntry("tb-densenet121", "cnn", "cifar_densenet121", "Huang et al., Densely connected networks, CVPR 2017"),
    FamilyEntry("tb-inception-v3", "cnn", "cifar_inception_v3", _INCEPTION),
    FamilyEntry("tb-mobilenet-v2", "cnn", "cifar_mobilenet_v2", "Sandler et al., MobileNetV2, CVPR 2018"),
    FamilyEntry(
        "tb-wrn-28-10",
        "cnn",
        "cifar_wide_resnet",
        "Zagoruyko & Komodakis, Wide residual networks, BMVC 2016",
        {"depth": 28, "widen_factor": 10},
    ),
    # timm's reference ViT rather than an own one: its state-dict names are those every ViT tool reads, and timm is
    # already pinned by the project. ViT-S (12 blocks, width 384, 6 heads) with 4x4 patches: 8x8 tokens + class token.
    FamilyEntry(
        "tb-vit-s4",
        "vit",
        "timm:vit_small_patch16_224",
        "Dosovitskiy et al., An image is worth 16x16 words, ICLR 2021; timm (Wightman 2019)",
        {"img_size": 32, "patch_size": 4},
        "ViT-S/4 (21.3M params)",
    ),
    FamilyEntry(
        "tb-resnet18-at8",
        "adversarially-trained",
        "cifar_resnet18",
        _AT,
        notes="L-inf PGD adversarial training, eps 8/255",
    ),
)


def family_spec(entry: FamilyEntry) -> TargetSpec:
    """The zoo entry of ``entry``, with whatever :data:`MEASURED` pins for it."""
    measured = MEASURED.get(entry.name, Measured())
    notes = f"built by `transferbench targets train {entry.name}` (targets/train.py)"
    return TargetSpec(
        name=entry.name,
        family=entry.family,
        architecture=entry.architecture,
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        source=HubWeights(ZOO_REPO, f"{entry.name}/model.safetensors", measured.revision, measured.sha256),
        arch_kwargs=dict(entry.arch_kwargs),
        expected_accuracy=measured.accuracy,
        license=LICENSE,
        citation=f"{TRAINED_HERE.format(name=entry.name)}. Architecture: {entry.paper}.",
        notes=f"{entry.notes}; {notes}" if entry.notes else notes,
    )


for _entry in FAMILY_TARGETS:
    register(family_spec(_entry))
