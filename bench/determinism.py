"""Bit-reproducible GPU runs: the deterministic mode, and an audit for operations that would break it.

On a CPU every operation the benchmark uses is deterministic. On CUDA, a few backward kernels accumulate with
atomics (bilinear resizing, ``grid_sample``, adaptive pooling to sizes other than 1, ...), and cuDNN and
cuBLAS may pick kernels whose reduction order varies, so two runs of one protocol on one GPU can differ in a
few per-image outcome bits. ``deterministic_algorithms()`` switches PyTorch's deterministic mode on for an
evaluation: every op then runs a deterministic kernel, or raises where CUDA has none. That error is turned
into a ``DeterminismError`` that names the model and the fix (``deterministic_error``).

The benchmark's own code avoids the ops without a deterministic CUDA kernel: input diversity and the
resizing adapter resize by matrix products (``bench.resample.resize``), and global average pooling is
``adaptive_avg_pool2d(x, 1)``, which PyTorch computes as a mean. ``cuda_nondeterministic_ops`` checks a
computation for such ops on the CPU, by recording the ATen operators it dispatches, forward and backward;
the tests run it over every attack, metric, training recipe and registered architecture, so this holds
without a GPU. Same batch shapes are part of it: a kernel may round differently at another batch size, so a
deterministic evaluation fixes its batch size (``bench.runner.evaluate``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
        "aten.adaptive_max_pool3d_backward",
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
        "aten._ctc_loss_backward",
        "aten._embedding_bag_backward",
        "aten._embedding_bag_dense_backward",
        "aten.put_",
        "aten.put",
        "aten.histc",
        "aten.kthvalue",
        "aten.grid_sampler_2d_backward",
        "aten.grid_sampler_3d_backward",
    }
)


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


# Operators that raise only with some arguments: (func, args, kwargs) -> True where it would raise.
CONDITIONAL_OPS: dict[str, Callable[[Any, tuple, dict], bool]] = {
    "aten.median": lambda f, a, k: "dim" in str(f),  # the form that returns indices
    "aten.nanmedian": lambda f, a, k: "dim" in str(f),
    "aten.bincount": lambda f, a, k: _arg(a, k, 1, "weights") is not None,
    "aten.nll_loss2d_forward": lambda f, a, k: _arg(a, k, 3, "reduction") != 0,  # 0 = "none"
    "aten.scatter_reduce": lambda f, a, k: _arg(a, k, 4, "reduce") == "prod",
}


class DeterminismError(RuntimeError):
    """A computation asked to be deterministic uses an op that has no deterministic CUDA kernel."""


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()
        self.flagged: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        self.ops.add(name)
        if name in NONDETERMINISTIC_CUDA_OPS or (name in CONDITIONAL_OPS and CONDITIONAL_OPS[name](func, args, kwargs)):
            self.flagged.add(name)
        return func(*args, **kwargs)


@dataclass(frozen=True)
class OpAudit:
    """What a computation dispatched: every ATen operator (``"aten.mean"``, ...), and those that would raise
    under deterministic algorithms on CUDA (with the arguments it used)."""

    ops: frozenset[str]
    flagged: frozenset[str]


def audit_ops(fn: Callable[[], Any]) -> OpAudit:
    """Run ``fn()`` and record the operators it dispatches, backward passes included.

    Run on the CPU, the flags hold for the operators that PyTorch dispatches alike on every device: it decomposes
    composite ops (e.g. ``adaptive_avg_pool2d(x, 1)`` into a mean) before choosing a kernel. Attention is the
    exception: ``scaled_dot_product_attention`` dispatches a CPU kernel here and flash, memory-efficient or
    cuDNN kernels on CUDA, which PyTorch runs deterministically in deterministic mode (and whose backward can
    vary from run to run without it). On CUDA, ``check_deterministic`` runs the real kernels in that mode.
    """
    with _OpRecorder() as recorder:
        fn()
    return OpAudit(frozenset(recorder.ops), frozenset(recorder.flagged))


def cuda_nondeterministic_ops(fn: Callable[[], Any]) -> frozenset[str]:
    """The operators of ``fn()`` that would raise under deterministic algorithms on CUDA (empty: none)."""
    return audit_ops(fn).flagged


def reserve_cublas_workspace() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` unless the environment has one. cuBLAS reads it when it creates its
    workspace, so callers that will run deterministically (the CLI) call this before any CUDA work."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)


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
    reserve_cublas_workspace()
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
    return _refusal(what, text.split(marker, 1)[0].strip() or "an op")


@contextlib.contextmanager
def refusals_named(what: str) -> Iterator[None]:
    """PyTorch's refusal of an op in deterministic mode, raised inside, becomes a ``DeterminismError`` naming
    ``what`` (``deterministic_error``); every other error passes through unchanged."""
    try:
        yield
    except RuntimeError as e:
        converted = deterministic_error(e, what)
        if converted is None:
            raise
        raise converted from e


def check_deterministic(what: str, fn: Callable[[], Any]) -> None:
    """Run ``fn()`` (a forward and backward pass of ``what``) and raise a ``DeterminismError`` naming ``what`` if
    it dispatches an op without a deterministic CUDA kernel, or if PyTorch refuses one while running it.

    Used before a deterministic evaluation on CUDA, on a couple of images, so that a model that cannot run
    deterministically fails in seconds, by name, instead of partway through the grid.
    """
    with refusals_named(what):
        found = cuda_nondeterministic_ops(fn)
    if found:
        raise _refusal(what, ", ".join(sorted(found)))
