"""Attack success rates: Wilson intervals, the three ASR definitions on handcrafted outcomes, bit packing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.metrics.asr import Z95, Rate, pack_bits, transfer_rates, unpack_bits, wilson

# --- wilson ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (0, 10, 0.0, 0.2775328),  # z^2/n / (1 + z^2/n)
        (5, 10, 0.2365931, 0.7634069),
        (1, 10, 0.0178762, 0.4041500),
        (9, 10, 0.5958500, 0.9821238),
        (50, 100, 0.4038315, 0.5961685),
        (0, 1, 0.0, 0.7934506),
    ],
)
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got_lo, got_hi = wilson(k, n)
    assert got_lo == pytest.approx(lo, abs=1e-6)
    assert got_hi == pytest.approx(hi, abs=1e-6)


def test_wilson_matches_textbook_formula() -> None:
    """Independent closed form: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    z = Z95
    for k, n in [(3, 7), (17, 40), (123, 599), (599, 600)]:
        p = k / n
        centre = p + z**2 / (2 * n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        denom = 1 + z**2 / n
        assert wilson(k, n) == pytest.approx(((centre - half) / denom, (centre + half) / denom), rel=1e-12)


def test_wilson_is_symmetric_in_successes_and_failures() -> None:
    for k, n in [(0, 10), (2, 9), (30, 599)]:
        lo, hi = wilson(k, n)
        lo2, hi2 = wilson(n - k, n)
        assert lo == pytest.approx(1 - hi2, abs=1e-12)
        assert hi == pytest.approx(1 - lo2, abs=1e-12)


def test_wilson_narrows_with_more_samples() -> None:
    widths = [wilson(n // 2, n)[1] - wilson(n // 2, n)[0] for n in (10, 100, 1000, 10000)]
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.02


def test_wilson_n_zero_is_nan() -> None:
    lo, hi = wilson(0, 0)
    assert math.isnan(lo)
    assert math.isnan(hi)


def test_wilson_all_successes_upper_is_one_approximately() -> None:
    for n in (1, 10, 13, 25, 599):
        lo, hi = wilson(n, n)
        assert hi == pytest.approx(1.0, abs=1e-12)
        assert 0.0 < lo < 1.0


# k == n must give exactly 1.0 (and k == 0 exactly 0.0): otherwise the "95% interval" of a 10/10 ASR excludes
# the observed rate 1.0 itself, and a table that prints the bound shows 0.9999999999999999.
@pytest.mark.parametrize(("k", "n", "bound", "exact"), [(10, 10, 1, 1.0), (13, 13, 1, 1.0), (0, 3, 0, 0.0)])
def test_wilson_exact_endpoints(k: int, n: int, bound: int, exact: float) -> None:
    assert wilson(k, n)[bound] == exact


# hypothesis is not installed in the project venv: a grid of every k for small n and edge k for large n instead.
GRID = [(k, n) for n in range(1, 41) for k in range(n + 1)] + [
    (k, n) for n in (100, 599, 1000, 10_000, 100_000) for k in (0, 1, 2, n // 3, n // 2, n - 2, n - 1, n)
]


def test_wilson_interval_inside_unit_interval_and_around_p() -> None:
    for k, n in GRID:
        lo, hi = wilson(k, n)
        assert 0.0 <= lo <= hi <= 1.0, (k, n, lo, hi)
        # Up to float rounding; the exact containment is checked below.
        assert lo - 1e-12 <= k / n <= hi + 1e-12, (k, n, lo, hi)
        if 0 < k < n:
            assert lo < k / n < hi, (k, n, lo, hi)


def test_wilson_interval_contains_p_exactly() -> None:
    outside = [(k, n) for k, n in GRID if not wilson(k, n)[0] <= k / n <= wilson(k, n)[1]]
    assert outside == []


# --- transfer_rates ----------------------------------------------------------------------------------------------


def _b(s: str) -> np.ndarray:
    return np.array([c == "1" for c in s], dtype=bool)


def test_transfer_rates_three_definitions_by_hand() -> None:
    # image:                 0  1  2  3  4  5  6  7
    target_clean = _b("11110011")
    target_success = _b("10101011")
    surrogate_clean = _b("11011010")
    surrogate_success = _b("11100001")
    # image 0: both correct, both fooled               -> success in every definition
    # image 1: both correct, neither fooled            -> failure everywhere (counted in all denominators)
    # image 2: target correct, surrogate wrong, target fooled -> target_correct and all, not both_correct (n)
    # image 3: both correct, target not fooled, surrogate not fooled
    # image 4: target wrong when clean, surrogate correct, target "fooled" -> counts only in "all"
    # image 5: both wrong                              -> only in all's denominator
    # image 6: both correct, target fooled but NOT the surrogate -> target_correct and all, not both_correct
    # image 7: target correct, surrogate wrong, both fooled -> target_correct and all, not in both's denominator
    r = transfer_rates(target_clean, target_success, surrogate_clean, surrogate_success)
    assert set(r) == {"target_correct", "both_correct", "all"}
    # target_correct: images 0,1,2,3,6,7 are target-clean-correct; fooled among them: 0,2,6,7
    assert (r["target_correct"].k, r["target_correct"].n) == (4, 6)
    # both_correct: images 0,1,3,6 both correct; both fooled among them: 0 only (6 fools the target only)
    assert (r["both_correct"].k, r["both_correct"].n) == (1, 4)
    # all: fooled anywhere: 0,2,4,6,7 of 8
    assert (r["all"].k, r["all"].n) == (5, 8)
    for rate in r.values():
        assert type(rate.k) is int
        assert type(rate.n) is int


def test_target_only_fooled_image_counts_in_target_correct_and_all_but_not_both_correct() -> None:
    ones = np.ones(1, dtype=bool)
    r = transfer_rates(ones, ones, ones, ~ones)
    assert (r["target_correct"].k, r["target_correct"].n) == (1, 1)
    assert (r["all"].k, r["all"].n) == (1, 1)
    assert (r["both_correct"].k, r["both_correct"].n) == (0, 1)


def test_transfer_rates_nobody_correct_gives_undefined_rates() -> None:
    z = np.zeros(5, dtype=bool)
    r = transfer_rates(z, np.ones(5, dtype=bool), z, np.ones(5, dtype=bool))
    assert r["target_correct"].n == 0
    assert math.isnan(r["target_correct"].value)
    assert r["both_correct"].n == 0
    assert r["all"].value == 1.0


def test_transfer_rates_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    tc, ts, sc, ss = (rng.random(200) < p for p in (0.8, 0.4, 0.9, 0.7))
    r = transfer_rates(tc, ts, sc, ss)
    exp_tc = [ts[i] for i in range(200) if tc[i]]
    exp_both = [ts[i] and ss[i] for i in range(200) if tc[i] and sc[i]]
    assert (r["target_correct"].k, r["target_correct"].n) == (sum(exp_tc), len(exp_tc))
    assert (r["both_correct"].k, r["both_correct"].n) == (sum(exp_both), len(exp_both))
    assert (r["all"].k, r["all"].n) == (int(ts.sum()), 200)


# --- Rate --------------------------------------------------------------------------------------------------------


def test_rate_to_json_numbers() -> None:
    d = Rate(3, 4).to_json()
    assert d["k"] == 3 and type(d["k"]) is int
    assert d["n"] == 4 and type(d["n"]) is int
    assert d["rate"] == 0.75
    lo, hi = wilson(3, 4)
    assert d["lo"] == lo and d["hi"] == hi
    for key in ("rate", "lo", "hi"):
        assert isinstance(d[key], float)
    parsed = json.loads(json.dumps(d, allow_nan=False))
    assert parsed == d
    assert all(not isinstance(v, str) for v in parsed.values())


def test_rate_to_json_undefined_is_none_not_nan() -> None:
    d = Rate(0, 0).to_json()
    assert d == {"k": 0, "n": 0, "rate": None, "lo": None, "hi": None}
    text = json.dumps(d, allow_nan=False)  # would raise on NaN
    assert "NaN" not in text


def test_rate_value_and_interval() -> None:
    assert Rate(1, 4).value == 0.25
    assert Rate(1, 4).interval == wilson(1, 4)
    assert math.isnan(Rate(0, 0).value)


# --- bit packing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_pack_unpack_round_trip(n: int) -> None:
    bits = np.random.default_rng(n).random(n) < 0.5
    text = pack_bits(bits)
    assert isinstance(text, str)
    text.encode("ascii")  # base64 is plain ASCII, safe in JSON
    assert len(text) == 4 * math.ceil(math.ceil(n / 8) / 3)
    out = unpack_bits(text, n)
    assert out.dtype == bool
    assert out.shape == (n,)
    np.testing.assert_array_equal(out, bits)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_pack_unpack_all_ones_and_all_zeros(n: int) -> None:
    for bits in (np.ones(n, dtype=bool), np.zeros(n, dtype=bool)):
        np.testing.assert_array_equal(unpack_bits(pack_bits(bits), n), bits)


def test_pack_bits_accepts_non_bool_arrays() -> None:
    ints = np.array([0, 1, 2, 0, 1], dtype=np.int64)
    np.testing.assert_array_equal(unpack_bits(pack_bits(ints), 5), ints.astype(bool))


def test_pack_bits_order_is_msb_first() -> None:
    # documented layout: np.packbits (big bit order); the first image is the high bit of the first byte
    assert pack_bits(np.array([True] + [False] * 7)) == "gA=="  # 0x80


def test_unpack_bits_rejects_too_short_text() -> None:
    text = pack_bits(np.ones(7, dtype=bool))  # one byte: 8 bits at most
    with pytest.raises(ValueError):
        unpack_bits(text, 20)
