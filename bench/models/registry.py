"""The architecture registry: name -> factory(num_classes, **kwargs) -> nn.Module."""

from collections.abc import Callable

from torch import nn

from bench.registry import Registry

ARCHS: Registry[Callable[..., nn.Module]] = Registry("architecture")
