"""The target zoo: pinned, hash-verified models that adversarial examples are transferred to."""

from targets.zoo import (
    TARGETS,
    HubWeights,
    LoadedTarget,
    LocalWeights,
    TargetError,
    TargetSpec,
    UrlWeights,
    describe_source,
    load_target,
    load_targets,
    unpinned_targets,
)

# Zoo entries register themselves on import.
from targets import cifar10_family, cifar10_zoo, imagenet_zoo, smoke_zoo  # noqa: F401  isort: skip

__all__ = [
    "TARGETS",
    "HubWeights",
    "LoadedTarget",
    "LocalWeights",
    "TargetError",
    "TargetSpec",
    "UrlWeights",
    "describe_source",
    "load_target",
    "load_targets",
    "unpinned_targets",
]
