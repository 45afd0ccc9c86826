"""Numeric precision of the model passes: ``fp32`` (IEEE float32) or ``bf16`` (bfloat16 autocast).

What each precision means, everywhere in the benchmark:

- ``fp32``: every operation in IEEE float32. On CUDA that needs TF32 switched *off*: PyTorch's default lets
  cuDNN convolutions use TF32 tensor cores (a 10-bit mantissa), so a plain "fp32" run on an Ampere or newer GPU
  is not fp32. ``ieee_fp32`` turns TF32 off for CUDA matmuls and cuDNN convolutions for the duration of an
  evaluation and restores the previous settings afterwards; ``math_settings`` says what was in effect, and the
  runner stores it in every record (``provenance.math``). On a CPU the flags change nothing.
- ``bf16``: the model's forward pass runs under ``torch.autocast(dtype=torch.bfloat16)``, so convolutions and
  matmuls of the forward *and* of the backward pass run in bf16 (autograd replays an op in the dtype of its
  forward). Everything else stays float32: the attack's master copy ``x_adv``, its gradient, momentum, input
  transforms, the L-inf projection and the [0, 1] clamp, and the cross-entropy (``AtPrecision`` returns the
  logits as float32). A step of ``eps / 10`` therefore lands exactly where it would in fp32; only the gradient
  direction carries bf16 rounding.

Metrics that need exact second derivatives (input-Hessian smoothness, gradient similarity, weight-space
sharpness) always run in fp32 whatever the attack precision: they receive the unwrapped model and switch
autocast off themselves (``bench.resample.no_autocast``).

``channels_last`` (NHWC) is a memory layout, not a precision: it changes which convolution kernels run (faster
tensor-core kernels on GPUs, float rounding only) and is recorded beside the precision.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from bench.resample import no_autocast

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``; otherwise a ValueError that lists them."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a model forward runs in: autocast off (``fp32``) or bf16 autocast (``bf16``) on ``device``."""
    device = torch.device(device)
    if check_precision(precision) == "fp32":
        return no_autocast(device)
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"bf16 autocast is not available on device type {device.type!r}; use --precision fp32")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class AtPrecision(nn.Module):
    """``model`` run at ``precision`` (and optionally on channels_last inputs), returning float32 logits.

    The wrapper is what attacks and scoring passes see: inputs stay float32 and NCHW for the caller, the
    gradient w.r.t. them is float32, and the loss is computed on float32 logits. It follows the wrapped
    model's train/eval mode, so the eval-mode checks see through it.
    """

    def __init__(self, model: nn.Module, precision: str, *, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.precision = check_precision(precision)
        self.channels_last = channels_last
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a copy autograd sees through
        with autocast(self.precision, x.device):
            out = self.model(x)
        return out.float()  # (B, K)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Store every 4-d parameter and buffer of ``model`` channels_last (in place); returns ``model``."""
    return model.to(memory_format=torch.channels_last)


def prepare(model: nn.Module, precision: str, *, channels_last: bool = False, compiled: bool = False) -> nn.Module:
    """The model as attack and scoring passes see it: ``AtPrecision``, optionally compiled.

    ``channels_last`` converts the model's weights in place (results change by float rounding only).
    ``compiled`` wraps the result in ``torch.compile`` (default mode): the first calls compile, later calls
    with the same input shape reuse the code. It needs a working C++ compiler on CPU and Triton on CUDA.
    """
    if channels_last:
        to_channels_last(model)
    wrapped: nn.Module = AtPrecision(model, precision, channels_last=channels_last)
    return torch.compile(wrapped) if compiled else wrapped  # type: ignore[return-value]


def _new_tf32_api() -> bool:
    """True where torch has the per-backend ``fp32_precision`` settings (torch >= 2.9)."""
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
        getattr(torch.backends.cudnn, "conv", None), "fp32_precision"
    )


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Full float32 math inside the block: TF32 off for CUDA matmuls and cuDNN convolutions, and oneDNN's CPU
    matmuls and convolutions at IEEE float32 too (a process that called ``torch.set_float32_matmul_precision``
    with "medium" would otherwise run them in bf16 on CPUs that have it). The previous settings come back after.

    Uses the ``fp32_precision`` settings where torch has them and the ``allow_tf32`` flags otherwise, never
    both: torch refuses a mix of the two. (The old flags have no CPU counterpart.)
    """
    if _new_tf32_api():
        mkldnn = getattr(torch.backends, "mkldnn", None)
        backends = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
        backends += [b for b in (getattr(mkldnn, "matmul", None), getattr(mkldnn, "conv", None))
                     if hasattr(b, "fp32_precision")]  # fmt: skip
        saved = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "ieee"
        try:
            yield
        finally:
            for b, value in zip(backends, saved, strict=True):
                b.fp32_precision = value
        return
    saved_flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_flags


def math_settings() -> dict[str, Any]:
    """The float32 math settings in effect now, for a record's provenance.

    With the ``fp32_precision`` settings: their values ("ieee" = full float32, "tf32" = TF32 allowed, "none" =
    inherit the parent's); otherwise the ``allow_tf32`` flags. Plus ``torch.get_float32_matmul_precision()`` and
    the determinism switches (deterministic algorithms, cuDNN deterministic / benchmark).
    """
    out: dict[str, Any] = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    if _new_tf32_api():
        out["cuda_matmul_fp32_precision"] = torch.backends.cuda.matmul.fp32_precision
        out["cudnn_conv_fp32_precision"] = torch.backends.cudnn.conv.fp32_precision
        mkldnn = getattr(torch.backends, "mkldnn", None)
        for op in ("matmul", "conv"):
            sub = getattr(mkldnn, op, None)
            if hasattr(sub, "fp32_precision"):
                out[f"mkldnn_{op}_fp32_precision"] = sub.fp32_precision  # oneDNN on CPU: "none" = IEEE
    else:
        out["cuda_matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        out["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    # Determinism (bench.determinism): on CUDA some kernels vary their reduction order unless deterministic
    # algorithms are on, so two GPU runs can differ in a few outcome bits.
    out["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    out["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
    out["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    out["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")  # needed for deterministic cuBLAS
    return out
