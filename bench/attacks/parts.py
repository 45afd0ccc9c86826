"""Parts plugged into the one iterative loop: gradient estimators, gradient transforms and input transforms.

Each step of ``iterative_attack`` asks a *gradient estimator* for the gradient of the attack objective
(plain gradient by default; look-ahead, variance-tuned or penalized gradients in ``estimators.py``), passes
it through a *gradient transform* (momentum, translation-invariant smoothing) and steps along the sign.
*Input transforms* are applied to every point before the surrogate sees it (the gradient flows back
through them). Randomness comes from ``bench.rng``, keyed by image id and step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from bench import rng
from bench.resample import no_autocast, resize_matrix

GradFn = Callable[[torch.Tensor], torch.Tensor]
"""Gradient of the attack objective (summed over the batch) at a point (B, C, H, W); one call = one evaluation."""


@dataclass(frozen=True)
class StepContext:
    """What a gradient estimator may know about the current step. ``state`` persists across steps."""

    step: int
    steps: int
    step_size: float
    eps: float
    ids: torch.Tensor  # (B,) image ids in the protocol list
    seed: int
    state: dict[str, torch.Tensor]


class GradEstimator(Protocol):
    def __call__(self, grad_fn: GradFn, x_adv: torch.Tensor, ctx: StepContext) -> torch.Tensor: ...

    def evals(self, step: int, steps: int) -> int:
        """Gradient evaluations (forward + backward passes per image) made at ``step`` of ``steps``."""
        ...


class GradTransform(Protocol):
    def __call__(self, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor: ...


class InputTransform(Protocol):
    def __call__(self, x: torch.Tensor, ids: torch.Tensor, step: int, seed: int) -> torch.Tensor: ...


def per_image(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-image vector (B,) so that it broadcasts against ``like`` (B, C, H, W)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class Momentum:
    """MI-FGSM accumulation (Dong et al. 2018): g_t = mu * g_{t-1} + grad / ||grad||_1, per image."""

    mu: float = 1.0

    def __call__(self, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        l1 = per_image(grad.abs().flatten(1).sum(1).clamp_min(1e-12), grad)  # (B, 1, 1, 1)
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
        draws = rng.randint(seed, "diversity", ids, step, 3, 0, 1 << 30)  # (B, 3), CPU
        size = w + draws[:, 0] % (canvas - w)  # (B,) in [w, canvas)
        top = draws[:, 1] % (canvas - size + 1)
        left = draws[:, 2] % (canvas - size + 1)
        apply = rng.uniform(seed, "diversity", ids + (1 << 31), step, 1)[:, 0].to(x.device) < self.p  # (B,)
        # Resize to size_i, pad onto the canvas and resize back to w, per axis one (w, w) matrix per image:
        # out_i = Ay_i @ x_i @ Ax_i^T, a deterministic backward on CUDA (bench.resample).
        with no_autocast(x.device):
            back = resize_matrix(canvas, w, device=x.device, dtype=x.dtype)  # (w, canvas)
            ay = back @ placement_matrices(size, top, canvas, w, device=x.device, dtype=x.dtype)  # (B, w, w)
            ax = back @ placement_matrices(size, left, canvas, w, device=x.device, dtype=x.dtype)
            out = ay[:, None] @ x @ ax[:, None].transpose(-1, -2)  # (B, C, H, W)
        return torch.where(apply.view(b, 1, 1, 1), out, x)


def placement_matrices(
    size: torch.Tensor, offset: torch.Tensor, canvas: int, n_in: int, *, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # fmt: skip
    """(B, canvas, n_in): per image, the bilinear resize of an axis of ``n_in`` pixels to ``size[i]`` pixels,
    placed at ``offset[i]`` on a zero canvas of ``canvas`` pixels (what overhangs the canvas is cut off).
    ``size``, ``offset``: (B,) integer tensors."""
    size, offset = size.cpu().long(), offset.cpu().long()
    if ((size < 1) | (offset < 0)).any():
        raise ValueError(f"need sizes >= 1 and offsets >= 0, got sizes {size.tolist()}, offsets {offset.tolist()}")
    sizes = torch.unique(size)  # sorted; the cache key, so it stays on the CPU
    stack = _resize_stack(tuple(sizes.tolist()), canvas, n_in, device, dtype)  # (S, rows, n_in)
    # Only the (B,) integers travel to the device; the (B, canvas) indices are built there.
    which = torch.searchsorted(sizes, size).to(stack.device).view(-1, 1)  # (B, 1) index into the stack
    size, offset = size.to(stack.device).view(-1, 1), offset.to(stack.device).view(-1, 1)
    rows = torch.arange(canvas, device=stack.device).view(1, -1) - offset  # (B, canvas): row of the resized image
    inside = (rows >= 0) & (rows < size)
    mats = stack[which, rows.clamp(0, stack.shape[1] - 1)]  # (B, canvas, n_in)
    return mats * inside.to(dtype).unsqueeze(-1)


@functools.lru_cache(maxsize=32)
def _resize_stack(
    sizes: tuple[int, ...], canvas: int, n_in: int, device: torch.device | None, dtype: torch.dtype
) -> torch.Tensor:
    """(len(sizes), rows, n_in): the resize matrices n_in -> s, zero-padded below to ``rows = max(canvas, *sizes)``
    rows. Built outside inference mode: the cached tensor may later enter a graph that needs gradients."""
    with torch.inference_mode(False):
        stack = torch.zeros(len(sizes), max(canvas, *sizes), n_in, dtype=dtype, device=device)
        for k, s in enumerate(sizes):
            stack[k, :s] = resize_matrix(n_in, s, device=device, dtype=dtype)
    return stack


def resize_pad(x: torch.Tensor, size: torch.Tensor, top: torch.Tensor, left: torch.Tensor, canvas: int) -> torch.Tensor:
    """Per-image bilinear resize of ``x`` (B, C, W, W) to ``size[i]`` placed at (top[i], left[i]) on a zero canvas.

    Equal to ``F.pad(F.interpolate(x_i, size_i, mode="bilinear", align_corners=False), ...)`` image by image
    (to float rounding), done for the whole batch as two batched matrix products.
    """
    w = x.shape[-1]
    py = placement_matrices(size, top, canvas, w, device=x.device, dtype=x.dtype)  # (B, canvas, W)
    px = placement_matrices(size, left, canvas, w, device=x.device, dtype=x.dtype)
    with no_autocast(x.device):
        return py[:, None] @ x @ px[:, None].transpose(-1, -2)  # (B, C, canvas, canvas)


@dataclass(frozen=True)
class Compose:
    """Gradient transforms applied in order, e.g. translation-invariant smoothing and then momentum (TI-MI)."""

    transforms: tuple[GradTransform, ...]

    def __call__(self, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        for transform in self.transforms:
            grad = transform(grad, state)
        return grad


def gaussian_kernel(size: int, nsig: float) -> torch.Tensor:
    """(size, size) float64 Gaussian kernel summing to 1, sampled at ``size`` points of [-nsig, nsig] per axis.

    The construction of Dong et al.'s TI code (``gkern``): with ``nsig = 3`` the kernel spans +-3 standard
    deviations, i.e. sigma = (size - 1) / 6 pixels.
    """
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * t * t)  # the 1/sqrt(2 pi) of the normal pdf cancels in the normalization
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


@dataclass(frozen=True)
class TranslationInvariant:
    """TI (Dong et al. 2019, Eq. 8): W * grad, the gradient convolved channel-wise with a Gaussian kernel W.

    Convolving the gradient approximates averaging the gradients of translated copies of the image
    (Eq. 7), so the perturbation is less specific to the surrogate's discriminative regions. Zero padding
    keeps the size. Dong et al. used 15 x 15 kernels on 299 x 299 ImageNet images; scaled to 32 x 32 that
    would be a no-op, so the registry uses 7 x 7 (sigma = 1 pixel) on CIFAR-10 (see docs/attacks.md).
    """

    kernel_size: int = 7
    nsig: float = 3.0

    def __post_init__(self) -> None:
        size = self.kernel_size
        if size != int(size) or size < 1 or int(size) % 2 == 0:
            raise ValueError(f"TI kernel_size must be a positive odd integer (centred kernel); got {size!r}")
        object.__setattr__(self, "kernel_size", int(size))  # a protocol's JSON may hold 7.0
        if self.nsig <= 0:
            raise ValueError(f"TI nsig must be > 0; got {self.nsig}")

    def __call__(self, grad: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        c, k = grad.shape[1], self.kernel_size
        weight = gaussian_kernel(k, self.nsig).to(grad).repeat(c, 1, 1, 1)  # (C, 1, k, k), one kernel per channel
        return F.conv2d(grad, weight, padding=k // 2, groups=c)
