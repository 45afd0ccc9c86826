"""Parts plugged into the one iterative loop: gradient transforms and input transforms.

Gradient transforms see the raw input gradient of each step and return the direction whose sign is
taken; input transforms are applied to the adversarial image before the surrogate sees it (the
gradient flows back through them). Randomness comes from ``bench.rng``, keyed by image id and step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from bench import rng


class GradTransform(Protocol):
    def __call__(self, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor: ...


class InputTransform(Protocol):
    def __call__(self, x: torch.Tensor, ids: torch.Tensor, step: int, seed: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class Momentum:
    """MI-FGSM accumulation (Dong et al. 2018): g_t = mu * g_{t-1} + grad / ||grad||_1, per image."""

    mu: float = 1.0

    def __call__(self, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))  # (B, 1, 1, 1)
        g = grad / l1
        if "momentum" in state:
            g = self.mu * state["momentum"] + g
        state["momentum"] = g
        return g


@dataclass(frozen=True)
class DiverseInputs:
    """Input diversity (Xie et al. 2019), drawn independently for every image and step.

    With probability ``p`` an image is resized (bilinear) to ``r x r`` with r uniform in
    [W, floor(W * resize_rate)), zero-padded at a random offset onto a ``floor(W * resize_rate)``
    canvas and resized back to ``W x W``, so that all images of a batch keep the input size (the
    convention of the TransferAttack library; Xie et al. fed the canvas directly to the network).
    """

    p: float = 0.5
    resize_rate: float = 1.1

    def __call__(self, x: torch.Tensor, ids: torch.Tensor, step: int, seed: int) -> torch.Tensor:
        b, _, h, w = x.shape
        if h != w:
            raise ValueError(f"input diversity expects square images, got {h}x{w}")
        canvas = int(w * self.resize_rate)
        if canvas <= w:
            raise ValueError(
                f"resize_rate {self.resize_rate} leaves {w}x{w} images unchanged (canvas {canvas}); "
                f"use resize_rate > {(w + 1) / w:.3f} for this input size"
            )
        draws = rng.randint(seed, "diversity", ids, step, 3, 0, 1 << 30).to(x.device)  # (B, 3)
        size = w + draws[:, 0] % (canvas - w)  # (B,) in [w, canvas)
        top = draws[:, 1] % (canvas - size + 1)
        left = draws[:, 2] % (canvas - size + 1)
        apply = rng.uniform(seed, "diversity", ids + (1 << 31), step, 1)[:, 0].to(x.device) < self.p  # (B,)
        out = resize_pad(x, size, top, left, canvas)  # (B, C, canvas, canvas)
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return torch.where(apply.view(b, 1, 1, 1), out, x)


def resize_pad(x: torch.Tensor, size: torch.Tensor, top: torch.Tensor, left: torch.Tensor, canvas: int) -> torch.Tensor:
    """Per-image bilinear resize of ``x`` (B, C, W, W) to ``size[i]`` placed at (top[i], left[i]) on a zero canvas.

    Equal to ``F.pad(F.interpolate(x_i, size_i, mode="bilinear", align_corners=False), ...)`` image by image,
    done for the whole batch with one ``grid_sample``.
    """
    b, _, _, w = x.shape
    pos = torch.arange(canvas, device=x.device, dtype=x.dtype).view(1, -1)  # (1, S)
    size_f = size.to(x.dtype).view(-1, 1)  # (B, 1)

    def axis(offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = pos - offset.to(x.dtype).view(-1, 1)  # (B, S) canvas pixel relative to the image corner
        src = (rel + 0.5) * (w / size_f) - 0.5  # source pixel centre, align_corners=False
        grid = (2 * src + 1) / w - 1  # normalized to [-1, 1]
        inside = (rel >= 0) & (rel < size_f)
        return grid, inside

    gy, in_y = axis(top)
    gx, in_x = axis(left)
    grid = torch.stack(torch.broadcast_tensors(gx.view(b, 1, -1), gy.view(b, -1, 1)), dim=-1)  # (B, S, S, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = (in_y.view(b, 1, -1, 1) & in_x.view(b, 1, 1, -1)).to(x.dtype)  # (B, 1, S, S)
    return out * mask
