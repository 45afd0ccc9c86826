"""Architectures (one per file) and the [0,1]-input wrapper every model is evaluated through.

``build_model("cifar_resnet18", num_classes=10, mean=..., std=...)`` returns a ``NormalizedModel``;
``timm:<name>`` builds any timm architecture (random init; weights come from a checkpoint).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from bench.models.normalize import NormalizedModel
from bench.models.registry import ARCHS

# Importing the architecture modules fills ARCHS.
from bench.models import cifar_resnet, cifar_zoo, resnet18, tiny  # noqa: F401  isort: skip

TIMM_PREFIX = "timm:"

__all__ = ["ARCHS", "NormalizedModel", "build_architecture", "build_model", "known_architecture"]


def known_architecture(name: str) -> bool:
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.is_model(name[len(TIMM_PREFIX) :])
    return name in ARCHS


# Builder keywords that read files or fetch weights (timm's create_model honours checkpoint_path, pretrained*):
# a submission's config.json must not be able to point the loader at a file, which could be a pickle from the
# same Hub download. Weights come from model.safetensors only.
LOADING_KWARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict",
                            "checkpoint_path", "cache_dir", "weights", "state_dict", "device", "dtype"})  # fmt: skip


def build_architecture(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The bare network (expects normalized input), randomly initialised."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    loading = sorted(set(kwargs) & LOADING_KWARGS)
    if loading:
        raise ValueError(
            f"architecture keywords {loading} would make the builder load files, fetch weights or place the model; "
            "they are not allowed (the weights come from model.safetensors only): remove them from arch_kwargs"
        )
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX) :]
        if not timm.is_model(timm_name):
            close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"unknown timm architecture {timm_name!r}; similar names: {close}")
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    return ARCHS.get(name)(num_classes=num_classes, **kwargs)


def build_model(
    name: str,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    **kwargs: Any,
) -> NormalizedModel:
    """Architecture wrapped so that it takes images in [0, 1]."""
    return NormalizedModel(build_architecture(name, num_classes, **kwargs), mean, std)
