"""Batch sizes that fit the device: back-off on out-of-memory errors, and sizing from free GPU memory.

Every per-image result of the benchmark is a function of that image alone: models are in eval mode, and all
attack randomness is keyed by the image's id (``bench.rng``), not by its place in a batch. Running the same
images again in smaller batches therefore gives the same results (up to float rounding of batched kernels),
which is what makes it safe to back off:

- ``AdaptiveBatch`` runs work over [start, stop) in batches. On an out-of-memory error it frees the allocator
  cache, halves the batch size, runs the *same* images again and carries on at the smaller size (a size that
  failed once is not tried again in the same run). At batch size 1 there is nothing left to halve: it raises
  ``OutOfMemory`` with a message that names the work, the batch size and the fix. Every back-off is logged
  and kept in ``events`` for the record's provenance.
- ``fit_batch_size`` picks a batch size from the GPU's free memory (``torch.cuda.mem_get_info``) and the peak
  memory per image of a probe batch (``torch.cuda.max_memory_allocated``), capped at the requested size. On a
  CPU (or any other device) it returns the requested size: host memory is not measured this way.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_HEADROOM = 0.8  # use at most this share of free memory: allocator fragmentation, cuDNN workspaces
ROUND_TO = 8  # batch sizes rounded down to a multiple of 8 (tensor-core friendly) when at least that large
# How allocation failures outside PyTorch's caching allocator read: cuDNN / cuBLAS workspaces, and a cudaMalloc
# made by a kernel or library directly (raised as torch.AcceleratorError, a RuntimeError, "CUDA error: out of memory").
_ALLOC_FAILED = (
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDA out of memory",
    "CUDA error: out of memory",
)


class OutOfMemory(RuntimeError):
    """Out of memory even at batch size 1; the message names the work, the device and what to do."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for ``torch.OutOfMemoryError`` and for cuDNN/cuBLAS workspace allocation failures.

    cuDNN and cuBLAS report a failed allocation as a plain RuntimeError with their status name in the text.
    """
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _ALLOC_FAILED)


def free_cached_memory(device: torch.device | str) -> None:
    """Collect garbage and return the CUDA allocator's cached blocks to the device (no-op elsewhere)."""
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Backoff:
    """One out-of-memory back-off: what ran out, where, and the batch size tried next."""

    label: str
    start: int  # first image of the batch that failed (0 for work that batches internally)
    failed: int  # batch size that ran out of memory
    retry: int  # batch size tried next

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


class AdaptiveBatch:
    """A batch size that halves on out-of-memory errors and stays halved; shared by the loops of one evaluation.

    ``map`` runs a per-slice function over a range of images; ``call`` runs a function that batches
    internally (a metric that takes ``batch_size``) and calls it again from the start at half the size.
    """

    def __init__(
        self, batch_size: int, *, device: torch.device | str = "cpu", label: str = "batch", backoff: bool = True
    ) -> None:
        self.batch_size = _check_size(batch_size)
        self.initial = batch_size
        self.device = torch.device(device)
        self.label = label
        self.backoff = backoff  # False: an out-of-memory error is final (a deterministic run keeps its batch shapes)
        self.events: list[Backoff] = []

    def map(self, fn: Callable[[slice], T], start: int, stop: int) -> list[T]:
        """``fn(slice)`` on consecutive slices of [start, stop) of at most ``batch_size`` images, in order.

        A slice that runs out of memory is run again as smaller slices over the same images, so the returned
        results always cover [start, stop) exactly once, in order.
        """
        out: list[T] = []
        pos = start
        while pos < stop:
            sl = slice(pos, min(pos + self.batch_size, stop))
            ok, result = self._attempt(lambda sl=sl: fn(sl), sl.start, sl.stop - sl.start)
            if ok:
                out.append(result)  # type: ignore[arg-type]
                pos = sl.stop
        return out

    def call(self, fn: Callable[[int], T], n: int | None = None) -> T:
        """``fn(batch_size)``; on out-of-memory, ``fn`` again from the start at half the size.

        ``n`` (the number of images ``fn`` works on) keeps the halving from retrying sizes above ``n``, which
        would run the same single batch again.
        """
        while True:
            size = self.batch_size if n is None else max(1, min(self.batch_size, n))
            ok, result = self._attempt(lambda size=size: fn(size), 0, size)
            if ok:
                return result  # type: ignore[return-value]

    def _attempt(self, thunk: Callable[[], T], start: int, size: int) -> tuple[bool, T | None]:
        try:
            return True, thunk()
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            if not self.backoff:
                raise OutOfMemory(
                    f"{self.label}: out of memory on {self.device} at batch size {size} (images {start}-"
                    f"{start + size - 1}) in deterministic mode, which does not back off: a smaller batch would change "
                    "the float rounding and so the bits. Rerun with a smaller --batch-size."
                ) from e
            if size <= 1:
                raise OutOfMemory(
                    f"{self.label}: out of memory on {self.device} with batch size 1 (image {start}); there is no "
                    "smaller batch to try. Free memory on the device (other processes: see nvidia-smi), evaluate a "
                    "smaller model, or run on a device with more memory (--device cpu works, slowly)."
                ) from e
        # Outside the handler the exception and its traceback are gone, and with them the frames that held the
        # failed batch's tensors: only now can the cache be returned to the device.
        free_cached_memory(self.device)
        retry = size // 2
        self.batch_size = min(self.batch_size, retry)
        self.events.append(Backoff(self.label, start, size, retry))
        log.warning(
            "%s: out of memory on %s at batch size %d (images %d-%d); freed the cache, retrying the same images "
            "at batch size %d",
            self.label, self.device, size, start, start + size - 1, retry,
        )  # fmt: skip
        return False, None


def batch_size_for(free_bytes: float, per_image_bytes: float, *, cap: int, headroom: float = DEFAULT_HEADROOM) -> int:
    """The largest batch whose estimated peak fits in ``headroom * free_bytes``, at most ``cap``, at least 1.

    Sizes of at least ``ROUND_TO`` are rounded down to a multiple of it.
    """
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    fit = int(headroom * free_bytes // max(per_image_bytes, 1.0))
    if fit >= ROUND_TO:
        fit -= fit % ROUND_TO
    return max(1, min(_check_size(cap), fit))


def peak_bytes_per_image(probe: Callable[[int], object], n: int, device: torch.device) -> float:
    """CUDA memory ``probe(n)`` allocates at its peak beyond what was allocated before, divided by ``n``.

    Includes fixed costs (workspaces) in the per-image figure, so it over-estimates: the safe direction.
    """
    torch.cuda.synchronize(device)
    free_cached_memory(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    probe(n)
    torch.cuda.synchronize(device)
    return max(torch.cuda.max_memory_allocated(device) - base, 0) / n


def fit_batch_size(
    probe: Callable[[int], object],
    device: torch.device | str,
    *,
    requested: int,
    probe_size: int = 64,
    headroom: float = DEFAULT_HEADROOM,
    label: str = "batch",
) -> int:
    """A batch size for ``device``: ``requested`` except on CUDA, where it is what fits free memory, capped there.

    ``probe(b)`` must do the most memory-hungry work of one batch of ``b`` images (e.g. one forward and
    backward pass of an attack step). It runs once on ``min(probe_size, requested)`` images, backing off
    itself if even that does not fit.
    """
    device = torch.device(device)
    _check_size(requested)
    if device.type != "cuda":
        return requested
    prober = AdaptiveBatch(max(1, min(probe_size, requested)), device=device, label=f"{label} (memory probe)")
    per_image = prober.call(lambda b: peak_bytes_per_image(probe, b, device))
    free_cached_memory(device)
    free, total = torch.cuda.mem_get_info(device)
    size = batch_size_for(free, per_image, cap=requested, headroom=headroom)
    log.info(
        "%s: %.1f MiB per image at its peak, %.1f of %.1f GiB free on %s: batch size %d (cap %d)",
        label, per_image / 2**20, free / 2**30, total / 2**30, device, size, requested,
    )  # fmt: skip
    return size
