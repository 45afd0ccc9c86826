"""Resampling as matrix products: ``F.interpolate``'s weights, with a backward pass that is deterministic on CUDA.

PyTorch's interpolation kernels accumulate their backward pass with atomics on CUDA, so a gradient through them
(input diversity, a target that resizes its input) changes in the last bits from run to run, and deterministic
mode refuses them (``bench.determinism``). Bilinear and bicubic resampling, anti-aliased or not, are separable:
resizing (H, W) to (Ho, Wo) is ``Ry @ x @ Rx.T`` with one (Ho, H) and one (Wo, W) matrix. The matrices come
from ``F.interpolate`` itself, applied to unit vectors, so the weights and edge rules are PyTorch's.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that switches autocast off on ``device``, so a caller's mixed-precision region cannot leak in."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=64)
def _resize_matrix_f64(n_in: int, n_out: int, mode: str, antialias: bool) -> torch.Tensor:
    # Image k: the k-th unit vector down its height, constant across a width of 2 kept at 2. (Width 2, not 1:
    # PyTorch's anti-aliased kernels give wrong values on a width-1 image; measured with torch 2.14.)
    with torch.inference_mode(False):  # cached: it may later enter a graph that needs gradients
        eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 2).contiguous()
        kw = {} if mode == "nearest" else {"align_corners": False, "antialias": antialias}
        return F.interpolate(eye, size=(n_out, 2), mode=mode, **kw)[:, 0, :, 0].T.contiguous()  # (n_out, n_in)


@functools.lru_cache(maxsize=256)
def resize_matrix(
    n_in: int, n_out: int, mode: str = "bilinear", antialias: bool = False, *, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:  # fmt: skip
    """(n_out, n_in) matrix of ``F.interpolate``'s 1-D resampling along one axis (``align_corners=False``).

    Built by resizing the unit vectors with ``F.interpolate`` itself (in float64), so it carries PyTorch's exact
    weights and edge rules for ``mode`` and ``antialias``. Cached per size, mode, device and dtype.
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"mode must be one of {INTERPOLATIONS}, got {mode!r}")
    with torch.inference_mode(False):
        return _resize_matrix_f64(n_in, n_out, mode, antialias).to(device=device, dtype=dtype)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode, align_corners=False, antialias=antialias)`` as two matrix products.

    x: (..., H, W). The same resampling (bilinear, bicubic and their anti-aliased forms are separable; equal to
    float rounding), but its backward pass is a matrix product, which is deterministic on CUDA where the
    interpolation kernels' backward accumulates with atomics (``bench.determinism``). Runs in x's dtype with
    autocast off, so a bf16 region around it does not round the resampling weights.
    """
    h, w = x.shape[-2:]
    ry = resize_matrix(h, int(size[0]), mode, antialias, device=x.device, dtype=x.dtype)  # (Ho, H)
    rx = resize_matrix(w, int(size[1]), mode, antialias, device=x.device, dtype=x.dtype)  # (Wo, W)
    with no_autocast(x.device):
        return ry @ x @ rx.T  # (..., Ho, Wo)
