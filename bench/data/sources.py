"""Which loader serves a protocol's ``dataset`` name: one registry instead of branches in the runner.

A loader takes the protocol's split, image ids and input size and a mirror directory (or None) and returns
an :class:`ImageSet` that holds at least the protocol's image ids.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from bench.data.cifar10 import load_cifar10
from bench.data.digits import load_digits_smoke
from bench.data.imagenet import load_imagenet_compatible, load_imagenet_val
from bench.data.imagenette import load_imagenette
from bench.data.imageset import ImageSet
from bench.data.prepare import Preparation
from bench.registry import Registry

DataDir = str | os.PathLike[str] | None
Loader = Callable[[str, Sequence[int], int, DataDir], ImageSet]  # (split, image ids, input size, data_dir)

DATASETS: Registry[Loader] = Registry("dataset")
DATASETS.add("cifar10", lambda split, ids, size, data_dir: load_cifar10(split, data_dir))
DATASETS.add("digits", lambda split, ids, size, data_dir: load_digits_smoke())
DATASETS.add("imagenette", lambda split, ids, size, data_dir: load_imagenette(split, data_dir, size))
DATASETS.add("imagenet-val", lambda split, ids, size, data_dir: load_imagenet_val(ids, data_dir, size))
DATASETS.add("imagenet-compatible", lambda split, ids, size, data_dir: load_imagenet_compatible(data_dir, size))

# The image preparation each loader applies at a given size (None: stored at their own size, no resizing).
PREPARATIONS: dict[str, Callable[[int], str]] = {
    "imagenette": lambda size: Preparation(size).describe(),
    "imagenet-val": lambda size: Preparation(size).describe(),
    "imagenet-compatible": lambda size: Preparation(size, crop_fraction=1.0).describe(),
}


def load_dataset_for(
    dataset: str, split: str, ids: Sequence[int], size: int, data_dir: DataDir = None, preparation: str | None = None
) -> ImageSet:
    """The images of ``dataset`` a protocol needs (``size`` = its input height = width).

    ``preparation`` is the protocol's rule; it must be the one the loader applies, so that a protocol that states
    another rule is refused instead of silently getting this one.
    """
    applied = PREPARATIONS[dataset](size) if dataset in PREPARATIONS else None
    if preparation != applied:
        raise ValueError(
            f"data set {dataset!r} at size {size} is prepared as {applied!r}, the protocol states {preparation!r}: "
            "a new preparation rule needs its loader (bench/data/prepare.py) first"
        )
    return DATASETS.get(dataset)(split, ids, size, data_dir)
