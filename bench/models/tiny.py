"""Small networks for the offline smoke protocol (8x8 digits) and the CPU tests.

They are real architectures of the ``smoke-digits`` protocol, not mocks: two families (a CNN and an
MLP) so that the smoke run has cross-architecture transfer to measure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.registry import ARCHS


class BlockMeanPool(nn.Module):
    """Adaptive average pooling to ``size`` x ``size``, as a mean over equal blocks where ``size`` divides the input.

    Same values as ``nn.AdaptiveAvgPool2d(size)`` (to float rounding) there, but its backward is deterministic
    on CUDA, where adaptive pooling's is not (``bench.determinism``); other input sizes fall back to it.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.size
        if h % s or w % s:
            return F.adaptive_avg_pool2d(x, s)
        return x.reshape(b, c, s, h // s, s, w // s).mean((3, 5))


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 16, act: str = "relu") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        layer = ACTIVATIONS[act]
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1),
            layer(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            layer(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            layer(),
            BlockMeanPool(2),
        )
        self.head = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    def __init__(self, num_classes: int = 10, in_features: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@ARCHS.register("small_cnn")
def small_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 16, act: str = "relu") -> SmallCNN:
    """Three-conv CNN with ~10k parameters (width 16); ``act``: relu (default), gelu, silu or tanh."""
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, width=width, act=act)


@ARCHS.register("mlp")
def mlp(num_classes: int = 10, in_features: int = 64, hidden: int = 128) -> MLP:
    """Two-hidden-layer ReLU MLP over flattened pixels."""
    return MLP(num_classes=num_classes, in_features=in_features, hidden=hidden)
