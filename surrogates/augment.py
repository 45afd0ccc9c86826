"""Batch augmentations for the surrogate recipes, run on the training device (seed 002, Zhang et al., Sec. 3).

Every function takes a batch ``x`` of shape (B, C, H, W) with values in [0, 1] and an explicit CPU
``torch.Generator``. The random *parameters* (crop offsets, flips, mixing weights, boxes, permutations) are a
few numbers per image, drawn on the CPU and then moved to ``x.device``; the pixel work runs on the device. A run
therefore draws the same random numbers on a CPU and a GPU, and nothing is copied back to the host.

Targets are either hard labels (B,) or class probabilities (B, K); mixing augmentations need probabilities
(:func:`one_hot_targets`). ``F.cross_entropy`` accepts both, with label smoothing applied on top.

Adversarial training is data augmentation with adversarial examples (seed 002, Eq. 1), so its inner
maximization (:class:`AdversarialExamples`) lives here too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks.parts import per_image


def one_hot_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) labels -> (B, K) float probabilities, for augmentations that mix labels."""
    return F.one_hot(y, num_classes).to(torch.float32)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding by ``padding`` pixels, then a horizontal flip with probability 1/2.

    The standard CIFAR-10 augmentation (padding 4); one offset and one coin per image, applied as a gather.
    """
    b, c, h, w = x.shape
    if padding > 0:
        off = torch.randint(0, 2 * padding + 1, (b, 2), generator=gen).to(x.device)  # (B, 2): top, left
        padded = F.pad(x, (padding, padding, padding, padding))  # zeros, as torchvision's RandomCrop(padding=4)
        rows = off[:, :1] + torch.arange(h, device=x.device)  # (B, H)
        cols = off[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
        bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
        x = padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]  # (B, C, H, W)
    if flip:
        coin = (torch.rand(b, generator=gen) < 0.5).to(x.device).view(b, 1, 1, 1)
        x = torch.where(coin, x.flip(3), x)
    return x


def cutout_boxes(b: int, h: int, w: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(B, 4) boxes [top, bottom, left, right) of a ``size`` x ``size`` square, clipped at the borders.

    As in Cutout (DeVries & Taylor 2017), the centre is uniform over the whole image, so the square may be
    partly outside it.
    """
    cy = torch.randint(0, h, (b,), generator=gen)
    cx = torch.randint(0, w, (b,), generator=gen)
    top, left = cy - size // 2, cx - size // 2
    return torch.stack([top.clamp(0, h), (top + size).clamp(0, h), left.clamp(0, w), (left + size).clamp(0, w)], 1)


def apply_cutout(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero each image inside its box (all channels). ``boxes`` as returned by :func:`cutout_boxes`."""
    _, _, h, w = x.shape
    boxes = boxes.to(x.device)
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (ar_h >= boxes[:, :1]) & (ar_h < boxes[:, 1:2])  # (B, H)
    cols = (ar_w >= boxes[:, 2:3]) & (ar_w < boxes[:, 3:4])  # (B, W)
    mask = rows[:, None, :, None] & cols[:, None, None, :]  # (B, 1, H, W)
    return x.masked_fill(mask, 0.0)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): one ``size`` x ``size`` square per image set to 0."""
    b, _, h, w = x.shape
    return apply_cutout(x, cutout_boxes(b, h, w, size, gen))


def sample_beta(alpha: float, gen: torch.Generator) -> float:
    """One draw from Beta(alpha, alpha), seeded by ``gen`` (torch's Beta sampler takes no generator)."""
    if alpha == 1.0:  # Beta(1, 1) is uniform: stay in torch
        return float(torch.rand((), generator=gen, dtype=torch.float64))
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: ``x = mix(x, x[perm])``, ``targets = lam * t + (1 - lam) * t[perm]``.

    ``lam`` is the weight of the original image (for CutMix: the fraction of its pixels kept); ``perm`` is
    None when the batch was left unmixed (probability 1 - p).
    """

    x: torch.Tensor
    targets: torch.Tensor
    lam: float
    perm: torch.Tensor | None
    box: tuple[int, int, int, int] | None = None  # CutMix: [top, bottom, left, right)


def mixup(x: torch.Tensor, t: torch.Tensor, *, p: float, alpha: float, gen: torch.Generator) -> Mixed:
    """Mixup (Zhang et al. 2018) applied to the whole batch with probability ``p`` (seed 002's MU).

    ``lam ~ Beta(alpha, alpha)`` is shared by the batch; partners are a random permutation of it.
    """
    if float(torch.rand((), generator=gen)) >= p:
        return Mixed(x, t, 1.0, None)
    lam = sample_beta(alpha, gen)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return Mixed(lam * x + (1.0 - lam) * x[perm], lam * t + (1.0 - lam) * t[perm], lam, perm)


def cutmix(x: torch.Tensor, t: torch.Tensor, *, p: float, alpha: float, gen: torch.Generator) -> Mixed:
    """CutMix (Yun et al. 2019) with probability ``p`` (seed 002's CM): paste a box of the partner image.

    The box has area ratio ``1 - lam`` (``lam ~ Beta(alpha, alpha)``) and a uniform centre; after clipping at
    the borders, ``lam`` is recomputed from the pixels actually kept, as in the paper.
    """
    if float(torch.rand((), generator=gen)) >= p:
        return Mixed(x, t, 1.0, None)
    _, _, h, w = x.shape
    lam = sample_beta(alpha, gen)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(0, h, (), generator=gen)), int(torch.randint(0, w, (), generator=gen))
    top, bottom = max(cy - ch // 2, 0), min(cy - ch // 2 + ch, h)
    left, right = max(cx - cw // 2, 0), min(cx - cw // 2 + cw, w)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    return Mixed(mixed, lam * t + (1.0 - lam) * t[perm], lam, perm, (top, bottom, left, right))


@dataclass(frozen=True)
class Augment:
    """The per-batch augmentation pipeline of a recipe: crop/flip, then cutout, then mixup or CutMix."""

    num_classes: int
    crop_padding: int = 0
    hflip: bool = False
    cutout_size: int = 0
    mixup_p: float = 0.0
    mixup_alpha: float = 1.0
    cutmix_p: float = 0.0
    cutmix_alpha: float = 1.0

    @property
    def mixes_labels(self) -> bool:
        return self.mixup_p > 0 or self.cutmix_p > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented x, targets): hard labels, or (B, K) probabilities when labels are mixed."""
        if self.crop_padding > 0 or self.hflip:
            x = random_crop_flip(x, self.crop_padding, self.hflip, gen)
        if self.cutout_size > 0:
            x = cutout(x, self.cutout_size, gen)
        if not self.mixes_labels:
            return x, y
        t = one_hot_targets(y, self.num_classes)
        if self.mixup_p > 0:
            mixed = mixup(x, t, p=self.mixup_p, alpha=self.mixup_alpha, gen=gen)
        else:
            mixed = cutmix(x, t, p=self.cutmix_p, alpha=self.cutmix_alpha, gen=gen)
        return mixed.x, mixed.targets


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch to eval mode (BatchNorm uses running statistics and is not updated)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class AdversarialExamples:
    """PGD inner maximization of adversarial training (Madry et al. 2018; seed 002, Eq. 1).

    ``max_{||delta|| <= eps} CE(f(x + delta), y)`` by ``steps`` steps of size ``step_size``: L2 steps along
    the per-image normalized gradient, L-inf steps along its sign; after each step delta is projected onto the
    eps-ball and x + delta onto [0, 1] (which only shrinks delta, so the budget holds). The model is in eval
    mode meanwhile, so BatchNorm statistics are not updated by the attack iterates.

    Start: delta = 0, or with ``random_start`` a point drawn uniformly from the eps-ball (Madry et al. 2018,
    Sec. 5: uniform in the L-inf cube; for L2, uniform in the ball: a Gaussian direction with radius
    eps * u^(1/d), d pixels per image), then projected so that x + delta lies in [0, 1]. The noise is drawn
    on the CPU from ``gen`` (the run's perturbation stream), like every random draw of a recipe, so a CPU
    and a GPU run start from the same points.
    """

    norm: Literal["l2", "linf"]
    eps: float
    steps: int = 10
    step_size: float = 0.0
    random_start: bool = False

    def __call__(
        self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator | None = None
    ) -> torch.Tensor:
        delta = self.start(x, gen)
        with eval_mode(model), torch.enable_grad():
            for _ in range(self.steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(model(x + delta), targets, reduction="sum")  # per-image gradients
                (grad,) = torch.autograd.grad(loss, delta)
                delta = self._project(x, delta.detach() + self.step_size * self._direction(grad))
        return (x + delta).detach()

    def start(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """The initial delta: zeros, or a uniform point of the eps-ball (drawn from ``gen``) kept in [0, 1]."""
        if not self.random_start:
            return torch.zeros_like(x)
        if gen is None:
            raise ValueError("AdversarialExamples(random_start=True) needs a torch.Generator for its start points")
        if self.norm == "linf":
            noise = (2 * torch.rand(x.shape, generator=gen) - 1) * self.eps
        else:
            direction = self._direction(torch.randn(x.shape, generator=gen))  # unit L2 per image
            radius = self.eps * torch.rand(len(x), generator=gen) ** (1.0 / x[0].numel())
            noise = direction * per_image(radius, x)
        return self._project(x, noise.to(device=x.device, dtype=x.dtype))

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return grad.sign()
        norms = per_image(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
        return grad / norms

    def _project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = per_image(delta.flatten(1).norm(dim=1), delta)
            delta = delta * torch.clamp(self.eps / norms.clamp_min(1e-12), max=1.0)
        return (x + delta).clamp(0.0, 1.0) - x
