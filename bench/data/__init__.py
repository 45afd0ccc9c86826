"""Image data for the benchmark: the :class:`ImageSet` container and its loaders."""

from bench.data.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_DIR_ENV,
    CIFAR10_HUB_ID,
    CIFAR10_HUB_REVISION,
    load_cifar10,
)
from bench.data.digits import load_digits_smoke
from bench.data.imageset import ImageSet

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_DIR_ENV",
    "CIFAR10_HUB_ID",
    "CIFAR10_HUB_REVISION",
    "ImageSet",
    "load_cifar10",
    "load_digits_smoke",
]
