"""Attack success rates from per-image outcomes, with 95% Wilson intervals.

Per-image outcomes are kept as bit vectors (clean correctness of every model, success of every model on
every adversarial setting), so every ASR below can be recomputed from a record and two submissions can
be compared image by image.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """k successes out of n, with a 95% Wilson score interval. ``value`` is NaN when n == 0."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def to_json(self) -> dict[str, float | int | None]:
        lo, hi = self.interval
        v = self.value
        return {"k": self.k, "n": self.n, "rate": None if math.isnan(v) else v,
                "lo": None if math.isnan(lo) else lo, "hi": None if math.isnan(hi) else hi}  # fmt: skip


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (stays inside [0, 1], sane at 0 and n)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends: rounding must not exclude k/n
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def transfer_rates(
    target_clean_correct: np.ndarray,
    target_success: np.ndarray,
    surrogate_clean_correct: np.ndarray,
    surrogate_success: np.ndarray,
) -> dict[str, Rate]:
    """The three ASR definitions of the protocol for one target and one adversarial setting (bool arrays (N,))."""
    both = target_clean_correct & surrogate_clean_correct
    return {
        "target_correct": Rate(int((target_success & target_clean_correct).sum()), int(target_clean_correct.sum())),
        "both_correct": Rate(int((target_success & surrogate_success & both).sum()), int(both.sum())),
        "all": Rate(int(target_success.sum()), int(target_success.size)),
    }


def pack_bits(bits: np.ndarray) -> str:
    """bool (N,) -> base64 string (N/8 bytes)."""
    return base64.b64encode(np.packbits(bits.astype(bool)).tobytes()).decode()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """base64 string -> bool (n,), the inverse of :func:`pack_bits`.

    The string must hold exactly ``ceil(n / 8)`` bytes with the padding bits after the n-th at zero, as
    :func:`pack_bits` writes it: a longer string or set padding bits mean the outcomes belong to another image
    count (a damaged or mismatched record), and reading a prefix of them would pair the wrong images.
    """
    try:
        raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a base64 bit string ({e})") from None
    if raw.size != (n + 7) // 8:
        raise ValueError(f"bit string holds {8 * raw.size} outcomes (with padding), expected {n}")
    bits = np.unpackbits(raw)
    if bits[n:].any():
        raise ValueError(f"bit string has outcomes set beyond the {n} images it should hold")
    return bits[:n].astype(bool)
