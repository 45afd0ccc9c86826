"""Bit-reproducible GPU runs: the deterministic mode, and an audit for operations that would break it.

On a CPU every operation the benchmark uses is deterministic. On CUDA, a few backward kernels accumulate with
atomics (bilinear resizing, ``grid_sample``, adaptive pooling to sizes other than 1, ...), and cuDNN and
cuBLAS may pick kernels whose reduction order varies, so two runs of one protocol on one GPU can differ in a
few per-image outcome bits. ``deterministic_algorithms()`` switches PyTorch's deterministic mode on for an
evaluation: every op then runs a deterministic kernel, or raises where CUDA has none. That error is turned
into a ``DeterminismError`` that names the model and the fix (``deterministic_error``).

The benchmark's own code avoids the ops without a deterministic CUDA kernel: input diversity and the
resizing adapter resize by matrix products (``bench.models.adapters.resize``), and global average pooling
is ``adaptive_avg_pool2d(x, 1)``, which PyTorch computes as a mean. ``cuda_nondeterministic_ops`` checks a
computation for such ops on the CPU, by recording the ATen operators it dispatches, forward and backward;
the tests run it over every attack, metric and registered architecture, so this holds without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

CUBLAS_WORKSPACE_CONFIG = ":4096:8"
"""cuBLAS needs a fixed workspace configuration for reproducible results (CUDA >= 10.2; PyTorch's
reproducibility notes). Set in the environment by ``deterministic_algorithms`` when unset."""

NONDETERMINISTIC_CUDA_OPS = frozenset(
    {
        # The ATen operators behind the ops that torch.use_deterministic_algorithms documents as raising on CUDA
        # (torch 2.14 docstring): pooling and resizing backwards, padding by reflection, sampling grids, ...
        "aten._adaptive_avg_pool2d_backward",
        "aten._adaptive_avg_pool3d_backward",
        "aten.adaptive_max_pool2d_backward",
        "aten.avg_pool3d_backward",
        "aten.fractional_max_pool2d_backward",
        "aten.fractional_max_pool3d_backward",
        "aten.max_unpool2d",
        "aten.max_unpool3d",
        "aten.upsample_linear1d_backward",
        "aten.upsample_bilinear2d_backward",
        "aten.upsample_bicubic2d_backward",
        "aten.upsample_trilinear3d_backward",
        "aten._upsample_bilinear2d_aa_backward",
        "aten._upsample_bicubic2d_aa_backward",
        "aten.reflection_pad1d_backward",
        "aten.reflection_pad2d_backward",
        "aten.reflection_pad3d_backward",
        "aten.nll_loss2d_forward",
        "aten._ctc_loss_backward",
        "aten.put_",
        "aten.histc",
        "aten.bincount",
        "aten.median",
        "aten.grid_sampler_2d_backward",
        "aten.grid_sampler_3d_backward",
    }
)


class DeterminismError(RuntimeError):
    """A computation asked to be deterministic uses an op that has no deterministic CUDA kernel."""


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def dispatched_ops(fn: Callable[[], Any]) -> set[str]:
    """The ATen operators (``"aten.mean"``, ...) that ``fn()`` dispatches, backward passes included."""
    with _OpRecorder() as recorder:
        fn()
    return recorder.ops


def cuda_nondeterministic_ops(fn: Callable[[], Any]) -> set[str]:
    """The operators of ``fn()`` that would raise under deterministic algorithms on CUDA (empty: none).

    Run it on the CPU: which operators a computation dispatches does not depend on the device (PyTorch
    decomposes composite ops, e.g. ``adaptive_avg_pool2d(x, 1)`` into a mean, before choosing a kernel).
    """
    return dispatched_ops(fn) & NONDETERMINISTIC_CUDA_OPS


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """PyTorch's deterministic mode for the duration (a no-op when not ``enabled``); restores the settings.

    Switches ``torch.use_deterministic_algorithms`` and ``cudnn.deterministic`` on and cuDNN autotuning
    (``cudnn.benchmark``) off, and sets ``CUBLAS_WORKSPACE_CONFIG`` when the environment has none. cuBLAS
    reads that variable when it creates its workspace, so a library caller that has already run CUDA
    matmuls should set it before its first one (the CLI does so at start-up).
    """
    if not enabled:
        yield
        return
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    set_env = "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    if set_env:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if set_env:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _refusal(what: str, ops: str) -> DeterminismError:
    return DeterminismError(
        f"{what} uses {ops} (no deterministic CUDA kernel), so the run cannot be made bit-reproducible. "
        "Run without --deterministic (records say whether a run was deterministic), or replace that op in the "
        "model (e.g. global average pooling as a mean, resizing with bench.resample.resize)."
    )


def deterministic_error(err: BaseException, what: str) -> DeterminismError | None:
    """A ``DeterminismError`` naming ``what`` (e.g. "target tv-inception_v3") for PyTorch's error when an op has
    no deterministic implementation; None for any other error."""
    text = str(err)
    marker = " does not have a deterministic implementation"
    if not isinstance(err, RuntimeError) or marker not in text:
        return None
    head = text.split(marker, 1)[0].split()
    return _refusal(what, head[-1] if head else "an op")


def check_deterministic(what: str, fn: Callable[[], Any]) -> None:
    """Run ``fn()`` (a forward and backward pass of ``what``) and raise a ``DeterminismError`` naming ``what`` if
    it dispatches an op without a deterministic CUDA kernel, or if PyTorch refuses one while running it.

    Used before a deterministic evaluation on CUDA, on a couple of images, so that a model that cannot run
    deterministically fails in seconds, by name, instead of partway through the grid.
    """
    try:
        found = cuda_nondeterministic_ops(fn)
    except RuntimeError as e:
        converted = deterministic_error(e, what)
        if converted is None:
            raise
        raise converted from e
    if found:
        raise _refusal(what, ", ".join(sorted(found)))
