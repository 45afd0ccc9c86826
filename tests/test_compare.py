"""Paired comparison of two records: McNemar / sign-flip tests, bootstrap CI, Holm, refusals and the exit-code
contract."""

from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import pytest
from test_leaderboard import make_record

from bench.metrics.asr import Rate, pack_bits, transfer_rates, unpack_bits
from bench.protocol import get_protocol
from leaderboard.compare import (
    EXIT_NOT_COMPARABLE,
    EXIT_OK,
    EXIT_REGRESSION,
    LEVELS,
    ComparisonError,
    _binom_cdf_half_exact,
    compare,
    exit_code,
    gate,
    holm,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_p_value,
    run_permutation_p,
    sign_flip_p,
    welch,
)
from leaderboard.record import Record

PROTO = get_protocol("smoke-digits")
N = 300


def _with_outcomes(name: str, n: int, success_prob: float, *, worse_than: Record | None = None,
                   flip: float = 0.0, seed: int = 0) -> Record:  # fmt: skip
    """A make_record record re-filled with ``n`` images of outcome bits, its rates recomputed from the bits.

    Every record built here shares the target clean bits (same targets, same data). With ``worse_than``
    the success bits are those of that record with a fraction ``flip`` of its successes turned into failures,
    so the two records differ on many images, always in the same direction.
    """
    rec = copy.deepcopy(make_record(name))
    rec.data["n_images"] = n
    shared = np.random.default_rng(12345)
    target_clean = {t: shared.random(n) < 0.85 for t in PROTO.targets}
    for t, bits in target_clean.items():
        rec.targets[t]["clean_correct"] = pack_bits(bits)
        rec.targets[t]["clean_accuracy"] = float(bits.mean())
    rng = np.random.default_rng(seed)
    run = rec.runs[0]
    correct = rng.random(n) < 0.9
    run["outcomes"]["clean_correct"] = pack_bits(correct)
    for cell in PROTO.cells():
        models = ["surrogate", *PROTO.targets]
        if worse_than is None:
            bits = {m: rng.random(n) < success_prob for m in models}
        else:
            base = worse_than.runs[0]["outcomes"]["success"][cell.key]
            bits = {m: unpack_bits(base[m], n) & ~(rng.random(n) < flip) for m in models}
        run["outcomes"]["success"][cell.key] = {m: pack_bits(b) for m, b in bits.items()}
        rates = {t: transfer_rates(target_clean[t], bits[t], correct, bits["surrogate"]) for t in PROTO.targets}
        run["cells"][cell.key] = {
            "fooling_rate": Rate(int((bits["surrogate"] & correct).sum()), int(correct.sum())).to_json(),
            "targets": {t: {d: r.to_json() for d, r in per.items()} for t, per in rates.items()},
        }
    return rec


@pytest.fixture(scope="module")
def pair() -> tuple[Record, Record]:
    a = _with_outcomes("good", N, 0.6, seed=1)
    b = _with_outcomes("worse", N, 0.6, worse_than=a, flip=0.5, seed=2)
    return a, b


def test_record_compared_with_itself_has_no_differences() -> None:
    rec = make_record("self")
    result = compare(rec, rec)
    df = result.cells
    assert len(df) == len(PROTO.cells()) * len(PROTO.targets)
    assert (df["diff"] == 0).all() and (df["a_only"] == 0).all() and (df["b_only"] == 0).all()
    assert (df["p_value"] == 1).all() and (df["p_holm"] == 1).all()
    assert (df["ci_lo"] == 0).all() and (df["ci_hi"] == 0).all()
    assert result.regressions == [] and result.improvements == []
    assert exit_code(result) == result.exit_code == EXIT_OK
    code, text = gate(rec, rec)
    assert code == EXIT_OK and "no significant regression" in text and "exit 0" in text


def test_regression_is_detected_with_exit_1_and_ci_excluding_zero(pair: tuple[Record, Record]) -> None:
    a, b = pair
    result = compare(a, b)
    df = result.cells
    assert (df["diff"] < 0).all() and (df["b_only"] == 0).all() and (df["a_only"] > 20).all()
    assert len(result.regressions) == len(df)  # every cell got worse, far beyond chance
    assert all(r.ci_hi < 0 for r in result.regressions)
    assert all(r.p_holm < 0.05 and r.diff < 0 for r in result.regressions)
    assert exit_code(result) == EXIT_REGRESSION
    code, text = gate(a, b)
    assert code == EXIT_REGRESSION and "REGRESSION" in text and PROTO.ranking_cell in text
    # the other direction is an improvement, not a regression
    back = compare(b, a)
    assert back.regressions == [] and len(back.improvements) == len(df) and back.exit_code == EXIT_OK
    # a minimum effect larger than every difference turns the significant cells into non-regressions
    big = compare(a, b, min_effect=float(-df["diff"].min()) + 0.01)
    assert big.regressions == [] and big.exit_code == EXIT_OK


def test_rates_are_the_records_own_rates(pair: tuple[Record, Record]) -> None:
    a, b = pair
    for asr in ("target_correct", "all"):
        df = compare(a, b, asr=asr).cells.set_index(["cell", "target"])
        for rec, col in ((a, "rate_a"), (b, "rate_b")):
            for cell, content in rec.runs[0]["cells"].items():
                for t, rates in content["targets"].items():
                    assert df.loc[(cell, t), col] == pytest.approx(rates[asr]["rate"])
                    assert df.loc[(cell, t), "n"] == rates[asr]["n"]


def test_both_correct_uses_a_common_paired_denominator(pair: tuple[Record, Record]) -> None:
    a, b = pair
    df = compare(a, b, asr="both_correct").cells
    ca = unpack_bits(a.runs[0]["outcomes"]["clean_correct"], N)
    cb = unpack_bits(b.runs[0]["outcomes"]["clean_correct"], N)
    for row in df.itertuples():
        tc = unpack_bits(a.targets[row.target]["clean_correct"], N)
        assert row.n == int((tc & ca & cb).sum())
        assert row.n <= min(a.runs[0]["cells"][row.cell]["targets"][row.target]["both_correct"]["n"],
                            b.runs[0]["cells"][row.cell]["targets"][row.target]["both_correct"]["n"])  # fmt: skip


def test_p_value_is_the_exact_mcnemar_binomial(pair: tuple[Record, Record]) -> None:
    # hand computation: 2 * P[X <= 3], X ~ Bin(15, 1/2) = 2 * (1 + 15 + 105 + 455) / 2^15
    assert mcnemar_exact(3, 12) == pytest.approx(2 * 576 / 32768, rel=1e-12)
    assert mcnemar_exact(12, 3) == mcnemar_exact(3, 12)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024, rel=1e-12)
    for b, c in ((7, 30), (40, 41), (0, 1)):
        exact = min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))
        assert mcnemar_exact(b, c) == pytest.approx(exact, rel=1e-9)
        tail = sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c)
        assert _binom_cdf_half_exact(min(b, c), b + c) == pytest.approx(tail, rel=1e-12)  # the scipy-free path
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 3)
    a = _with_outcomes("x", 64, 0.5, seed=7)
    b = _with_outcomes("y", 64, 0.5, seed=8)
    row = compare(a, b).cells.iloc[0]
    t = row["target"]
    mask = unpack_bits(a.targets[t]["clean_correct"], 64)
    sa = unpack_bits(a.runs[0]["outcomes"]["success"][row["cell"]][t], 64)[mask]
    sb = unpack_bits(b.runs[0]["outcomes"]["success"][row["cell"]][t], 64)[mask]
    a_only, b_only = int((sa & ~sb).sum()), int((sb & ~sa).sum())
    assert (row["a_only"], row["b_only"]) == (a_only, b_only)
    k, m = min(a_only, b_only), a_only + b_only
    assert row["p_value"] == pytest.approx(min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m))


def test_holm_adjustment() -> None:
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_nan = holm([0.01, float("nan"), 0.04])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.04)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 * 0.8 capped at 1, and monotone
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])


def test_bootstrap_ci_matches_normal_theory_and_is_reproducible(pair: tuple[Record, Record]) -> None:
    rng = np.random.default_rng(3)
    d = rng.choice([-1.0, 0.0, 1.0], size=2000, p=[0.3, 0.5, 0.2])
    lo, hi = paired_bootstrap_ci(d, n_boot=20_000, rng=np.random.default_rng(0))
    half = 1.959964 * d.std() / math.sqrt(d.size)
    assert lo == pytest.approx(d.mean() - half, abs=0.004) and hi == pytest.approx(d.mean() + half, abs=0.004)
    a, b = pair
    one, two = compare(a, b), compare(a, b)
    assert one.cells[["ci_lo", "ci_hi"]].equals(two.cells[["ci_lo", "ci_hi"]])
    only = compare(a, b, cells=[PROTO.ranking_cell])  # per-cell seeds: a subset gives the same intervals
    full = one.cells[one.cells["cell"] == PROTO.ranking_cell].reset_index(drop=True)
    assert only.cells[["ci_lo", "ci_hi", "p_value"]].equals(full[["ci_lo", "ci_hi", "p_value"]])
    assert len(only.cells) == len(PROTO.targets)


def test_seed_group_compares_run_wise_means() -> None:
    a = make_record("single")
    g = make_record("group", n_runs=3)
    g.targets = copy.deepcopy(a.targets)  # same target clean bits, as in a real evaluation
    df = compare(a, g).cells.set_index(["cell", "target"])
    n = a.data["n_images"]
    for cell in (PROTO.ranking_cell, "dim/linf-64/targeted"):
        for t in PROTO.targets:
            clean = unpack_bits(a.targets[t]["clean_correct"], n)
            runs = [unpack_bits(r["outcomes"]["success"][cell][t], n)[clean].mean() for r in g.runs]
            assert df.loc[(cell, t), "rate_b"] == pytest.approx(np.mean(runs))


def test_refuses_records_that_are_not_paired() -> None:
    a = make_record("a")
    other_proto = make_record("b", protocol_sha256="f" * 64)
    with pytest.raises(ComparisonError, match="same protocol"):
        compare(a, other_proto)
    with pytest.raises(ComparisonError, match="different images"):
        compare(a, make_record("c", data_sha256="e" * 64))
    with pytest.raises(ComparisonError, match="different images"):
        compare(a, make_record("d", partial=True))
    with pytest.raises(ComparisonError, match="same protocol"):
        compare(a, make_record("e", protocol="cifar10"))
    other_target = make_record("f")
    other_target.targets["smoke-mlp"]["sha256"] = "0" * 64
    with pytest.raises(ComparisonError, match="smoke-mlp"):
        compare(a, other_target)
    code, text = gate(a, other_proto)
    assert code == EXIT_NOT_COMPARABLE and text.startswith("error:") and "protocol" in text


def test_bad_arguments_are_named() -> None:
    a = make_record("a")
    with pytest.raises(ComparisonError, match="alpha"):
        compare(a, a, alpha=1.5)
    with pytest.raises(ComparisonError, match="min_effect"):
        compare(a, a, min_effect=-0.1)
    with pytest.raises(ComparisonError, match="unknown ASR"):
        compare(a, a, asr="nope")
    with pytest.raises(ComparisonError, match="not in both records"):
        compare(a, a, cells=["pgd/linf-8/untargeted"])


def test_format_lists_method_and_verdict(pair: tuple[Record, Record]) -> None:
    text = compare(*pair).format(all_cells=True)
    assert "exact McNemar" in text and "bootstrap" in text and "Holm" in text
    assert PROTO.sha256 in text and "REGRESSION (exit 1)" in text
    assert text.count(PROTO.ranking_cell) >= len(PROTO.targets)


def test_records_made_by_code_with_other_reference_numerics_are_compared_with_a_warning(
    pair: tuple[Record, Record],
) -> None:
    a, b = (copy.deepcopy(r) for r in pair)
    a.provenance["numerics"], b.provenance["numerics"] = "a" * 64, "b" * 64
    text = compare(a, b).format()
    assert "WARNING: A and B were made by code that computes this protocol differently" in text
    assert "aaaaaaaaaaaa vs bbbbbbbbbbbb" in text and "Re-evaluate the older record" in text
    b.provenance["numerics"] = "a" * 64
    assert "WARNING" not in compare(a, b).format()
    b.provenance["numerics"] = None  # unknown (an older record, or an install that did not reproduce the pins)
    text = compare(a, b).format()
    assert "WARNING" not in text and "note: B carries no reference-numerics digest" in text
    a.provenance["numerics"] = None
    assert "reference-numerics" not in compare(a, b).format()  # neither knows: nothing to compare


def test_records_of_different_precisions_are_compared_only_when_asked(pair: tuple[Record, Record]) -> None:
    a, b = pair
    b16 = copy.deepcopy(b)
    b16.provenance.update(precision="bf16", protocol_precision="fp32", precision_matches_protocol=False)
    with pytest.raises(ComparisonError, match=r"fp32 and B \(worse\) in bf16.*--allow-precision-mismatch"):
        compare(a, b16)
    code, text = gate(a, b16)
    assert code == EXIT_NOT_COMPARABLE and "precision" in text
    result = compare(a, b16, allow_precision_mismatch=True)
    assert (result.precision_a, result.precision_b) == ("fp32", "bf16")
    assert "precision A fp32, B bf16" in result.format()
    assert result.cells.equals(compare(a, b).cells)  # the bits are the same: only the refusal differs


def test_sign_flip_p_matches_exact_enumeration_and_mcnemar() -> None:
    import itertools

    d = np.array([1 / 3, 1 / 3, 2 / 3, -1.0, 0.0, 1 / 3, -1 / 3, 2 / 3])
    nz = d[d != 0]
    sums = [abs(float(np.dot(s, nz))) for s in itertools.product((-1, 1), repeat=nz.size)]
    exact = np.mean([s >= abs(d.sum()) - 1e-12 for s in sums])
    rng = np.random.default_rng(0)
    assert sign_flip_p(d, n_perm=200_000, rng=rng) == pytest.approx(exact, abs=0.005)
    # for differences of 0/1 outcomes the randomization null is McNemar's: both give the same p
    d01 = np.array([1.0] * 9 + [-1.0] * 2 + [0.0] * 30)
    assert paired_p_value(d01, n_perm=1000, rng=rng) == mcnemar_exact(2, 9)
    assert sign_flip_p(d01, n_perm=200_000, rng=rng) == pytest.approx(mcnemar_exact(2, 9), abs=0.005)
    assert sign_flip_p(np.zeros(5), n_perm=1000, rng=rng) == 1.0


def _blank(name: str, n_runs: int, n: int) -> Record:
    """A record of ``n_runs`` runs on ``n`` images that every model classifies correctly and no attack fools."""
    rec = copy.deepcopy(make_record(name, n_runs=n_runs))
    rec.data["n_images"] = n
    for run in rec.runs:
        run["outcomes"]["clean_correct"] = pack_bits(np.ones(n, dtype=bool))
        for c in run["outcomes"]["success"]:
            run["outcomes"]["success"][c] = {m: pack_bits(np.zeros(n, dtype=bool)) for m in
                                             ["surrogate", *PROTO.targets]}  # fmt: skip
    for target in PROTO.targets:
        rec.targets[target]["clean_correct"] = pack_bits(np.ones(n, dtype=bool))
    return rec


def _set_success(rec: Record, cell: str, target: str, runs_bits: list[np.ndarray]) -> None:
    for run, bits in zip(rec.runs, runs_bits, strict=True):
        run["outcomes"]["success"][cell][target] = pack_bits(bits)


def test_a_seed_group_lead_on_more_images_but_smaller_in_total_is_not_a_regression() -> None:
    """B ahead by 1/3 of A's seeds on 60 images, A ahead by 1 on 25: the counts favour B, the mean favours A
    by 1.25 points; the verdict follows the tested mean, which is not significantly different from 0."""
    n, cell, t = 400, PROTO.ranking_cell, PROTO.targets[0]
    a, b = _blank("group", 3, n), _blank("single", 1, n)
    seeds = [np.zeros(n, dtype=bool) for _ in range(3)]
    for s in seeds:
        s[:60] = True  # 2 of 3 seeds succeed on images 0..59 (below), B on all of them: B ahead by 1/3
    seeds[2][:60] = False
    for s in seeds:
        s[100:125] = True  # every seed succeeds on 25 images where B fails: A ahead by 1
    single = np.zeros(n, dtype=bool)
    single[:60] = True
    _set_success(a, cell, t, seeds)
    _set_success(b, cell, t, [single])
    row = compare(a, b, cells=[cell]).cells.set_index("target").loc[t]
    assert (row["a_only"], row["b_only"]) == (25, 60)  # the counts point to B ...
    assert row["diff"] == pytest.approx((60 / 3 - 25) / n)  # ... the mean to A
    assert row["p_value"] > 0.2 and not row["regression"] and not row["improvement"]
    code, _ = gate(a, b, cells=[cell])
    assert code == EXIT_OK and gate(b, a, cells=[cell])[0] == EXIT_OK  # symmetric


def test_a_comparison_with_nothing_to_compare_is_refused_not_passed() -> None:
    a, b = make_record("a"), make_record("b")
    b.targets = copy.deepcopy(a.targets)
    code, report = gate(a, b, cells=[])
    assert code == EXIT_NOT_COMPARABLE and "nothing to compare" in report
    for rec in (a, b):
        for target in PROTO.targets:  # no image any target classifies correctly
            rec.targets[target]["clean_correct"] = pack_bits(np.zeros(a.data["n_images"], dtype=bool))
    code, report = gate(a, b)
    assert code == EXIT_NOT_COMPARABLE and "target_correct" in report
    empty = copy.deepcopy(b)
    empty.runs = []
    assert gate(a, empty)[0] == EXIT_NOT_COMPARABLE and "has no runs" in gate(a, empty)[1]


def test_bit_strings_of_another_length_or_with_padding_set_are_refused() -> None:
    bits = np.array([True, False, True])
    assert unpack_bits(pack_bits(bits), 3).tolist() == bits.tolist()
    assert unpack_bits(pack_bits(np.zeros(0, dtype=bool)), 0).size == 0
    with pytest.raises(ValueError, match="expected 3"):
        unpack_bits(pack_bits(np.ones(20, dtype=bool)), 3)  # outcomes of 20 images read as 3
    with pytest.raises(ValueError, match="beyond the 3 images"):
        unpack_bits("/w==", 3)  # one byte, all 8 bits set
    with pytest.raises(ValueError, match="not a base64"):
        unpack_bits("not base64!", 3)


def test_a_rerun_of_the_same_submission_reports_how_many_outcome_bits_differ() -> None:
    from leaderboard.compare import rerun_differences

    rec = make_record("rerun")
    n = int(rec.data["n_images"])
    n_models = 1 + len(PROTO.targets)
    total = n * (len(PROTO.targets) + 1 + len(PROTO.cells()) * n_models)  # target clean, run clean, success bits
    assert rerun_differences(rec, copy.deepcopy(rec)) == (0, total)
    assert "per-image outcomes identical" in compare(rec, copy.deepcopy(rec)).format()

    other = copy.deepcopy(rec)
    cell = PROTO.cells()[0].key
    success = other.runs[0]["outcomes"]["success"][cell]
    bits = unpack_bits(success["surrogate"], n)
    bits[[0, 3]] = ~bits[[0, 3]]
    success["surrogate"] = pack_bits(bits)
    t = PROTO.targets[0]
    clean = unpack_bits(other.targets[t]["clean_correct"], n)
    clean[5] = ~clean[5]
    other.targets[t]["clean_correct"] = pack_bits(clean)
    assert rerun_differences(rec, other) == (3, total)
    assert f"3 of {total} per-image outcome bits differ" in compare(rec, other).format()

    stranger = make_record("someone-else")
    assert rerun_differences(rec, stranger) is None
    assert "rerun of the same submission" not in compare(rec, stranger).format()


def test_compare_reads_a_folder_that_holds_one_record(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main
    from leaderboard.store import LocalStore

    rec = make_record("folder")
    for name in ("a", "b"):
        LocalStore(tmp_path / name).add(rec)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == EXIT_OK
    assert "per-image outcomes identical" in capsys.readouterr().out
    LocalStore(tmp_path / "b").add(make_record("another"))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == EXIT_NOT_COMPARABLE
    assert "holding 2 records" in capsys.readouterr().err


# --- level recipe: seed groups, Welch's t test on run rates -------------------------------------------------------


def test_welch_is_scipys_unequal_variance_t_test_and_its_interval_inverts_it() -> None:
    from scipy.stats import ttest_ind

    a, b = np.array([0.41, 0.47, 0.44]), np.array([0.52, 0.50, 0.61, 0.55])
    p, lo, hi = welch(a, b)
    assert p == pytest.approx(ttest_ind(b, a, equal_var=False).pvalue, rel=1e-10)
    assert lo < b.mean() - a.mean() < hi
    for bound in (lo, hi):  # the 95% interval is where the test of "diff = bound" stops rejecting at 5 %
        assert welch(a, b - bound)[0] == pytest.approx(0.05, rel=1e-8)
    # no spread on either side: a few runs cannot show that it is zero, so the exact run-label permutation test
    p, lo, hi = welch(np.array([0.5, 0.5]), np.array([0.475, 0.475]))
    assert p == pytest.approx(1 / 3) and math.isnan(lo) and math.isnan(hi)  # 2 of the 6 splits are as extreme
    assert welch(np.array([0.4, 0.4, 0.4]), np.array([0.5, 0.5, 0.5]))[0] == pytest.approx(2 / 20)
    assert welch(np.array([0.4, 0.4]), np.array([0.4, 0.4]))[0] == 1.0
    # by hand: the splits of {.1, .2, .3, .5} into two pairs give |diff| .25, .15, .05, .05, .15, .25
    assert run_permutation_p(np.array([0.1, 0.2]), np.array([0.3, 0.5])) == pytest.approx(2 / 6)
    assert run_permutation_p(np.array([0.1, 0.2]), np.array([0.2, 0.3])) == pytest.approx(4 / 6)
    with pytest.raises(ComparisonError, match="two or more runs per side, got 1 and 3"):
        welch(np.array([0.4]), b[:3])


def _groups(rates_a: list[float], rates_b: list[float], n: int = 500) -> tuple[Record, Record, str, str]:
    """Two seed groups whose runs succeed on the first ``rate * n`` images of one (cell, target)."""
    cell, t = PROTO.ranking_cell, PROTO.targets[0]
    recs = []
    for name, rates in (("recipe-a", rates_a), ("recipe-b", rates_b)):
        rec = _blank(name, len(rates), n)
        rec.submission["sha256"] = hashlib.sha256(name.encode()).hexdigest()
        runs = [np.arange(n) < round(r * n) for r in rates]
        _set_success(rec, cell, t, runs)
        recs.append(rec)
    return recs[0], recs[1], cell, t


def test_a_seed_spread_larger_than_the_difference_is_a_checkpoint_difference_but_no_recipe_difference() -> None:
    """Runs of B are 4 points lower on average but seeds spread by 10: the images say 'these models differ', the
    seeds say 'these recipes may not'."""
    a, b, cell, t = _groups([0.50, 0.60, 0.40], [0.46, 0.56, 0.36])
    by_images = compare(a, b, cells=[cell]).cells.set_index("target").loc[t]
    by_seeds = compare(a, b, cells=[cell], level="recipe").cells.set_index("target").loc[t]
    assert by_images["diff"] == by_seeds["diff"] == pytest.approx(-0.04)
    assert by_images["regression"] and by_images["p_value"] < 1e-3  # the sign-flip test's floor is 1e-4
    assert not by_seeds["regression"] and by_seeds["p_value"] > 0.5 and by_seeds["ci_lo"] < 0 < by_seeds["ci_hi"]
    code, text = gate(a, b, cells=[cell], level="recipe")
    assert code == EXIT_OK and "level recipe" in text and "Welch" in text and "3 vs 3 runs" in text


def test_a_difference_every_seed_agrees_on_is_a_recipe_regression() -> None:
    a, b, cell, t = _groups([0.50, 0.51, 0.49, 0.50], [0.40, 0.41, 0.39, 0.40])
    row = compare(a, b, cells=[cell], level="recipe").cells.set_index("target").loc[t]
    assert row["diff"] == pytest.approx(-0.10) and row["ci_hi"] < 0 and row["regression"]
    assert gate(a, b, cells=[cell], level="recipe")[0] == EXIT_REGRESSION
    assert gate(b, a, cells=[cell], level="recipe")[0] == EXIT_OK  # the other way it is an improvement


def test_level_recipe_needs_seed_groups_and_checkpoint_level_says_what_it_covers(pair: tuple[Record, Record]) -> None:
    assert LEVELS == ("checkpoint", "recipe")
    a, b = pair
    with pytest.raises(ComparisonError, match=r"A \(good\) has 1 run\(s\) and B \(worse\) 1; each side needs two"):
        compare(a, b, level="recipe")
    with pytest.raises(ComparisonError, match="unknown level 'seed'"):
        compare(a, b, level="seed")
    text = compare(a, b).format()
    assert "level checkpoint" in text and "does not cover training-seed variance" in text and "--level recipe" in text
    same = compare(a, a).format()  # a rerun of one submission: the caveat does not apply
    assert "does not cover training-seed variance" not in same and "method (level checkpoint)" in same


def test_the_cli_compares_seed_groups_at_recipe_level(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bench.cli import main

    a, b, _, _ = _groups([0.50, 0.51, 0.49, 0.50], [0.40, 0.41, 0.39, 0.40])
    paths = []
    for rec in (a, b, _blank("single", 1, 500)):
        path = tmp_path / f"{rec.submission['name']}.json"
        path.write_text(json.dumps(rec.to_json()))
        paths.append(str(path))
    assert main(["compare", paths[0], paths[1], "--level", "recipe", "--ranking-cell-only"]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    assert "method (level recipe)" in out and "4 vs 4 runs" in out and "REGRESSION" in out
    assert main(["compare", paths[2], paths[1], "--level", "recipe"]) == EXIT_NOT_COMPARABLE
    assert "each side needs two or more" in capsys.readouterr().err
