"""Counter-based random numbers keyed by (seed, stream, image id, step).

Every random choice an attack makes for an image (random start, input-diversity resize and pad) is a
pure function of the protocol seed, the image's id in the protocol image list and the iteration. The
numbers therefore do not depend on batch size, batch order or device: integer hashing is exact on CPU
and GPU alike, so an out-of-memory back-off or a different GPU changes no result.

The hash is Chris Wellons' ``lowbias32`` mixer. Multiplications are split into 16-bit halves so
that every intermediate fits in a signed int64 (torch has no uint32 arithmetic on all devices).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B

# Named streams keep unrelated random choices independent of each other.
# "reference": the inputs and weights of the reference numerics (bench/numerics.py).
STREAMS = {
    "random_start": 1, "diversity": 2, "target_label": 3, "subset": 4, "smoothness_init": 5, "neighbours": 6,
    "reference": 7,
}  # fmt: skip


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2**32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def keyed_uint32(seed: int, stream: str, ids: torch.Tensor, step: int, n: int) -> torch.Tensor:
    """(B, n) uint32-valued int64 tensor: n independent draws for each id at this step."""
    ids = ids.to(torch.int64).reshape(-1, 1)  # (B, 1)
    elem = torch.arange(n, dtype=torch.int64, device=ids.device).reshape(1, -1)  # (1, n)
    h = hash32(torch.full_like(ids, (seed ^ (STREAMS[stream] * 0x9E3779B1)) & _MASK32))
    h = hash32(h ^ hash32(ids))
    h = hash32(h ^ (step & _MASK32))
    return hash32(h ^ hash32(elem))  # (B, n)


def uniform(seed: int, stream: str, ids: torch.Tensor, step: int, n: int) -> torch.Tensor:
    """(B, n) float32 in [0, 1) with 24 random bits, exactly the same on every device."""
    bits = keyed_uint32(seed, stream, ids, step, n) >> 8
    return bits.to(torch.float32) * (1.0 / (1 << 24))


def randint(seed: int, stream: str, ids: torch.Tensor, step: int, n: int, low: int, high: int) -> torch.Tensor:
    """(B, n) int64 in [low, high). Modulo bias is below 2**-20 for the small ranges used here."""
    if high <= low:
        raise ValueError(f"empty range [{low}, {high})")
    return low + keyed_uint32(seed, stream, ids, step, n) % (high - low)
