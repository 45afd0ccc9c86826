"""Type checks for values read from JSON files (submission configs, leaderboard records).

Python's ``json`` module reads ``NaN`` and ``Infinity``, turns ``true`` into a ``bool`` (which is an ``int`` in
Python) and keeps integers of any size (too large for a float): a config or record that uses them must be
refused with a message, not crash a later ``math.isfinite`` or pass for a count.
"""

from __future__ import annotations

import math
from typing import Any


def is_finite_number(v: Any) -> bool:
    """A finite JSON number: not a bool, not NaN or +-Infinity, not an integer too large for a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def is_positive_int(v: Any) -> bool:
    """A JSON integer > 0 (``true`` is not 1 here)."""
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
