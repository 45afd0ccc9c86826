"""Image data for the benchmark: the :class:`ImageSet` container and its loaders."""

from bench.data.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_DIR_ENV,
    CIFAR10_HUB_ID,
    CIFAR10_HUB_REVISION,
    load_cifar10,
)
from bench.data.digits import load_digits_smoke
from bench.data.imagenet import (
    IMAGENET_COMPATIBLE_DIR_ENV,
    IMAGENET_COMPATIBLE_PREPARATION,
    IMAGENET_DIR_ENV,
    IMAGENET_HUB_ID,
    IMAGENET_HUB_REVISION,
    IMAGENET_PREPARATION,
    imagenet_class_names,
    imagenet_compatible_target_labels,
    imagenet_wnids,
    load_imagenet_compatible,
    load_imagenet_val,
)
from bench.data.imagenette import (
    IMAGENETTE_CLASSES,
    IMAGENETTE_DIR_ENV,
    IMAGENETTE_HUB_ID,
    IMAGENETTE_HUB_REVISION,
    IMAGENETTE_PREPARATION,
    IMAGENETTE_TO_IMAGENET,
    IMAGENETTE_WNIDS,
    load_imagenette,
)
from bench.data.imageset import ImageSet
from bench.data.prepare import Preparation

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_DIR_ENV",
    "CIFAR10_HUB_ID",
    "CIFAR10_HUB_REVISION",
    "IMAGENETTE_CLASSES",
    "IMAGENETTE_DIR_ENV",
    "IMAGENETTE_HUB_ID",
    "IMAGENETTE_HUB_REVISION",
    "IMAGENETTE_PREPARATION",
    "IMAGENETTE_TO_IMAGENET",
    "IMAGENETTE_WNIDS",
    "IMAGENET_COMPATIBLE_DIR_ENV",
    "IMAGENET_COMPATIBLE_PREPARATION",
    "IMAGENET_DIR_ENV",
    "IMAGENET_HUB_ID",
    "IMAGENET_HUB_REVISION",
    "IMAGENET_PREPARATION",
    "ImageSet",
    "Preparation",
    "imagenet_class_names",
    "imagenet_compatible_target_labels",
    "imagenet_wnids",
    "load_cifar10",
    "load_digits_smoke",
    "load_imagenet_compatible",
    "load_imagenet_val",
    "load_imagenette",
]
