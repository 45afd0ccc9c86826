"""The target zoo: pinned, hash-verified models that adversarial examples are transferred to."""

from targets.zoo import TARGETS, LoadedTarget, TargetError, TargetSpec, UrlWeights, load_target, load_targets

# Zoo entries register themselves on import.
from targets import cifar10_zoo, smoke_zoo  # noqa: F401  isort: skip

__all__ = ["TARGETS", "LoadedTarget", "TargetError", "TargetSpec", "UrlWeights", "load_target", "load_targets"]
