"""Wrappers that fit a model to a protocol's input size and label space without touching its weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bench.resample import INTERPOLATIONS, resize

__all__ = ["INTERPOLATIONS", "ResizeInput", "RestrictLogits"]


class ResizeInput(nn.Module):
    """``model(resize(x))``: a differentiable resize from the protocol's image size to the model's own.

    Used for targets whose pretrained input size differs from the protocol's (Inception-v3 at 299 on a
    224 protocol). Bicubic output is clamped to [0, 1] so the model never sees out-of-range pixels.
    """

    def __init__(self, model: nn.Module, size: tuple[int, int], interpolation: str = "bilinear") -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.model = model
        self.train(model.training)  # a wrapper is in the mode of what it wraps (eval checks look at every module)
        self.size = (int(size[0]), int(size[1]))
        self.interpolation = interpolation

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            # Enlarging (every zoo target so far) needs no anti-aliasing; shrinking without it would alias.
            shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            x = resize(x, self.size, self.interpolation, antialias=shrink and self.interpolation != "nearest")
            if self.interpolation == "bicubic":
                x = x.clamp(0, 1)
        return self.model(x)


class RestrictLogits(nn.Module):
    """The logits of ``indices`` only (protocol class k = parent class ``indices[k]``).

    Prediction is then the restricted argmax, and cross-entropy is taken over the K classes, which is the
    rule :class:`bench.protocol.LabelSpace` documents.
    """

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        if len(set(indices)) != len(indices) or not indices:
            raise ValueError(f"indices must be distinct and non-empty, got {tuple(indices)}")
        self.model = model
        self.train(model.training)
        self.register_buffer("indices", torch.tensor(list(indices), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if logits.shape[-1] <= int(self.indices.max()):
            raise ValueError(
                f"the model gives {logits.shape[-1]} logits, the label space needs index {int(self.indices.max())}"
            )
        return logits.index_select(-1, self.indices)
