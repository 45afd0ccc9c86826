"""Paired comparison of two records of the same protocol and data: is B worse than A, image by image?

Both records carry per-image outcome bits, so every (cell, target) can be compared on the *same* images.
For each (cell, target), with the protocol's ranking ASR definition (``protocol.ranking_asr``, default
``target_correct``):

- **Images** (the denominator): ``target_correct``: images the target classifies correctly in both records
  (identical bits when the target and data are identical, which :func:`compare` checks; images where they
  disagree are counted in ``n_excluded``); ``all``: every image; ``both_correct``: images the target and
  *every* surrogate run of A and of B classify correctly, a common set so that the comparison stays paired
  (its rates can therefore differ slightly from each record's own ``both_correct`` rate).
- **Per-image outcome**: success (0/1) for a single model or an ensemble. For a seed group the outcome of
  an image is the fraction of its runs that succeed, so the rate is the mean over seeds of the run rates
  (the seed-group convention of the ranking score); a single model and a seed group can be compared.
- **Difference** ``diff = rate_B - rate_A`` (fractions; ``format`` prints percentage points).
- **95% CI of the difference**: paired percentile bootstrap over images, ``n_boot`` resamples with a fixed
  seed per (seed, cell, target), so the interval does not depend on the order of cells. Resampling is done
  exactly but cheaply: the per-image differences take few distinct values, and resampling images with
  replacement is the same as drawing the counts of those values from a multinomial.
- **p-value** of ``mean(d) = 0`` for the per-image differences ``d``. For 0/1 outcomes (single models and
  ensembles on both sides) the exact two-sided McNemar test on the discordant images (``a_only``: A better
  on the image, ``b_only``: B better), ``min(1, 2 P[X <= min(a_only, b_only)])`` with
  ``X ~ Binomial(a_only + b_only, 1/2)``. With a seed group on either side ``d`` is fractional and the
  counts of images where one side is ahead say nothing about the size of the lead (B ahead by 1/3 of the
  seeds on 60 images is less than A ahead by 1 on 25), so the test is the paired sign-flip randomization test
  of the mean difference: under the null each image's ``d`` is as likely to have the other sign.
  ``n_perm`` seeded draws (exactly the McNemar test's null for 0/1 outcomes). Either way the test is of the
  quantity ``diff`` estimates, so a significant result and ``diff`` point the same way.
- **Multiplicity**: Holm step-down adjusted p-values over all compared (cell, target) pairs.
- **Level** (what the test generalizes over). ``checkpoint`` (default): the trained models are fixed and the
  images are the sample, so the test asks whether *these* models differ on images like these: the right
  question for a rerun or a code change of one submission, and for "is this checkpoint better than that one".
  It says nothing about the training seed: two seeds of one recipe can differ significantly under it (on
  CIFAR-10, two seeds of one small CNN differ by 9 points in targeted cells, Holm p < 0.01; docs/results.md).
  ``recipe``: for comparing training methods, both sides must be seed groups of at least two runs; each run's
  rate on the paired images is one observation, and the test is Welch's unequal-variance t test of the
  difference of the run means (the CI is Welch's t interval), so the seed-to-seed spread is the noise. With
  few seeds it has little power, and that is the honest answer: more seeds, not more images, decide it.
  Where no side's runs spread at all, the exact permutation test over run labels gives p (no interval).
- **Regression**: B significantly worse than A, ``p_holm < alpha`` and ``diff < -min_effect``. The CI is
  per cell and not adjusted for multiplicity; it reports the size of the difference, the verdict is Holm's.
  A comparison in which no (cell, target) has an image to compare is refused (exit 2), not passed.

:func:`exit_code` is the process contract of ``transferbench compare A B``: 0 no significant regression,
1 a regression; :func:`gate` adds 2 for "cannot compare" (different protocol or data), so CI can tell them apart.
"""

from __future__ import annotations

import itertools
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.metrics.asr import unpack_bits
from bench.protocol import ASR_DEFINITIONS
from leaderboard.record import Record
from leaderboard.store import protocol_key

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_NOT_COMPARABLE = 2
LEVELS = ("checkpoint", "recipe")  # what the test generalizes over: images only, or training seeds too
CELL_COLUMNS = [
    "cell", "target", "ranking", "n", "n_excluded", "rate_a", "rate_b", "diff", "ci_lo", "ci_hi", "a_only", "b_only",
    "p_value", "p_holm", "significant", "regression", "improvement",
]  # fmt: skip


class ComparisonError(ValueError):
    """The two records cannot be compared pairwise; the message says why and what to do."""


@dataclass(frozen=True)
class CellDiff:
    """One compared (cell, target): rates of A and B on the common images, the difference, its CI and p-values."""

    cell: str
    target: str
    n: int
    rate_a: float
    rate_b: float
    diff: float
    ci_lo: float
    ci_hi: float
    a_only: int
    b_only: int
    p_value: float
    p_holm: float


@dataclass
class Comparison:
    """Result of :func:`compare`; ``cells`` has one row per (cell, target) with the columns of :data:`CELL_COLUMNS`."""

    a: str
    b: str
    protocol: str
    protocol_sha256: str
    data_sha256: str
    n_images: int
    asr: str
    alpha: float
    min_effect: float
    n_boot: int
    seed: int
    runs_a: int
    runs_b: int
    precision_a: str
    precision_b: str
    score_a: float
    score_b: float
    ranking_cell: str
    cells: pd.DataFrame
    regressions: list[CellDiff] = field(default_factory=list)
    improvements: list[CellDiff] = field(default_factory=list)
    rerun_bits: tuple[int, int] | None = None  # (differing, total) outcome bits when B reruns A's submission
    level: str = "checkpoint"
    same_submission: bool = False
    numerics_a: str | None = None  # digest of the reference numerics of the code that made each record
    numerics_b: str | None = None

    @property
    def exit_code(self) -> int:
        return exit_code(self)

    def _method(self) -> str:
        tests = f"Holm-adjusted over {int(self.cells['p_value'].notna().sum())} (cell, target) tests; "
        rule = f"regression = Holm p < {self.alpha:g} and diff < -{100 * self.min_effect:g} pp"
        if self.level == "recipe":
            return (
                f"method (level recipe): diff = B - A of the mean over runs of each run's {self.asr} ASR on paired "
                f"images ({self.runs_a} vs {self.runs_b} runs); 95% CI and p by Welch's t test on the run rates "
                "(permutation test of run labels where no side's runs spread); A only / B only count images, for "
                "description only; " + tests + rule
            )
        return (
            f"method (level checkpoint): diff = B - A of the {self.asr} ASR on paired images; 95% CI by paired "
            f"bootstrap over images ({self.n_boot} resamples, seed {self.seed}); p by exact McNemar on discordant "
            "images (0/1 outcomes) or a paired sign-flip test of the mean (seed groups), " + tests + rule
        )

    def format(self, *, all_cells: bool = False) -> str:
        """Human-readable report: header, method, regressions, improvements, the ranking cell (or every cell)."""
        lines = [
            f"Paired comparison  A = {self.a}  vs  B = {self.b}",
            f"protocol {self.protocol} (sha256 {self.protocol_sha256}), data sha256 {self.data_sha256}, "
            f"{self.n_images} images; runs A {self.runs_a}, B {self.runs_b}; precision A {self.precision_a}, "
            f"B {self.precision_b}",
            f"score ({self.ranking_cell}, mean {self.asr} ASR over targets): A {100 * self.score_a:.2f}%  "
            f"B {100 * self.score_b:.2f}%  (B - A {100 * (self.score_b - self.score_a):+.2f} pp)",
            self._method(),
        ]
        if self.level == "checkpoint" and not self.same_submission:
            lines.append(
                "level checkpoint: the test holds these trained models fixed and treats the images as the sample; "
                "it does not cover training-seed variance (two seeds of one recipe can differ significantly). To "
                "compare training methods, evaluate a seed group of each and pass --level recipe."
            )
        if bool(self.numerics_a) != bool(self.numerics_b):
            unverified = "A" if not self.numerics_a else "B"
            lines.append(
                f"note: {unverified} carries no reference-numerics digest (made before records had one, or by an "
                "install that did not reproduce its protocol's pins: provenance.numerics_check), so whether A and B "
                "were computed the same way is unknown."
            )
        if self.numerics_a and self.numerics_b and self.numerics_a != self.numerics_b:
            lines.append(
                f"WARNING: A and B were made by code that computes this protocol differently (reference numerics "
                f"{self.numerics_a[:12]} vs {self.numerics_b[:12]}; bench/numerics.py): a difference below may come "
                "from the code, not the surrogates. Re-evaluate the older record with the newer code before reading "
                "it as a regression or an improvement."
            )
        if self.rerun_bits is not None:
            differ, total = self.rerun_bits
            lines.append(
                f"rerun of the same submission: per-image outcomes identical ({total} bits, every cell and model)"
                if differ == 0
                else f"rerun of the same submission: {differ} of {total} per-image outcome bits differ (every cell "
                "and model)"
            )
        sections: list[tuple[str, pd.DataFrame]] = [
            (f"regressions (B significantly worse): {len(self.regressions)}", self.cells[self.cells["regression"]]),
            (f"improvements (B significantly better): {len(self.improvements)}", self.cells[self.cells["improvement"]]),
        ]
        if all_cells:
            sections.append(("all cells", self.cells))
        else:
            sections.append((f"ranking cell {self.ranking_cell}", self.cells[self.cells["ranking"]]))
        for title, df in sections:
            lines += ["", title]
            if not df.empty:
                lines.append(_format_rows(df))
        verdict = "REGRESSION" if self.regressions else "no significant regression"
        lines += ["", f"result: {verdict} (exit {self.exit_code})"]
        return "\n".join(lines)


def _format_rows(df: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "cell": df["cell"], "target": df["target"], "n": df["n"],
        "A %": [f"{100 * v:.2f}" for v in df["rate_a"]], "B %": [f"{100 * v:.2f}" for v in df["rate_b"]],
        "diff pp": [f"{100 * v:+.2f}" for v in df["diff"]],
        "95% CI pp": [f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" for lo, hi in zip(df["ci_lo"], df["ci_hi"], strict=True)],
        "A only": df["a_only"], "B only": df["b_only"],
        "p": [f"{v:.3g}" for v in df["p_value"]], "p Holm": [f"{v:.3g}" for v in df["p_holm"]],
    })  # fmt: skip
    return shown.to_string(index=False)


# --- statistics ----------------------------------------------------------------------------------------------------


def _binom_cdf_half_exact(k: int, n: int) -> float:
    """P[X <= k] for X ~ Binomial(n, 1/2), exactly with integers (the path without scipy)."""
    term, total = 1, 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return total / (1 << n)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts: ``min(1, 2 P[X <= min])``, X ~ Bin(a+b, 1/2)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be non-negative, got {a_only} and {b_only}")
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    try:
        from scipy.stats import binom
    except ImportError:  # a minimal machine without scipy still runs the default comparison, exactly
        cdf = _binom_cdf_half_exact(k, n)
    else:
        cdf = float(binom.cdf(k, n, 0.5))
    return min(1.0, 2.0 * cdf)


def sign_flip_p(d: np.ndarray, *, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of ``mean(d) = 0`` by the paired sign-flip randomization test (Monte Carlo).

    Under the null every nonzero ``d_i`` is as likely to be ``-d_i``. The draws use the distinct absolute
    values of ``d``: with ``c`` images at ``|d| = v``, a draw's sum gets ``v (2 Binomial(c, 1/2) - c)`` from them,
    which is exact and costs one binomial per distinct value. ``p = (1 + #{|sum*| >= |sum|}) / (1 + n_perm)``.
    """
    nz = np.abs(d[d != 0])
    if nz.size == 0:
        return 1.0
    values, counts = np.unique(nz, return_counts=True)
    observed = abs(float(d.sum()))
    draws = (2 * rng.binomial(counts, 0.5, size=(n_perm, values.size)) - counts) @ values  # (n_perm,)
    tol = 1e-9 * max(1.0, observed)  # equal sums may differ in the last bits
    return float((1 + np.count_nonzero(np.abs(draws) >= observed - tol)) / (1 + n_perm))


def paired_p_value(d: np.ndarray, *, n_perm: int, rng: np.random.Generator) -> float:
    """p of ``mean(d) = 0``: exact McNemar for differences of 0/1 outcomes, else :func:`sign_flip_p`."""
    if np.isin(d, (-1.0, 0.0, 1.0)).all():
        return mcnemar_exact(int((d < 0).sum()), int((d > 0).sum()))
    return sign_flip_p(d, n_perm=n_perm, rng=rng)


def run_permutation_p(rates_a: np.ndarray, rates_b: np.ndarray) -> float:
    """Exact two-sided p of "no difference" by permuting the run labels: the share of the ``C(ka + kb, ka)``
    splits of all runs into sides of the observed sizes whose mean difference is at least the observed one.
    Its smallest value is ``2 / C(ka + kb, ka)`` (1/3 for 2 vs 2 runs, 1/10 for 3 vs 3)."""
    pooled = np.concatenate([rates_a, rates_b]).astype(float)
    ka, total = len(rates_a), pooled.sum()
    observed = abs(float(np.mean(rates_b) - np.mean(rates_a)))
    tol = 1e-12 * max(1.0, observed)
    hits = count = 0
    for side_a in itertools.combinations(range(pooled.size), ka):
        sum_a = pooled[list(side_a)].sum()
        hits += abs((total - sum_a) / (pooled.size - ka) - sum_a / ka) >= observed - tol
        count += 1
    return hits / count


def welch(rates_a: np.ndarray, rates_b: np.ndarray, *, level: float = 0.95) -> tuple[float, float, float]:
    """(p, ci_lo, ci_hi) of ``mean(rates_b) - mean(rates_a)`` by Welch's unequal-variance t test, one rate per run.

    Needs two or more runs per side. When neither side's runs spread (every run of a side has the same rate,
    common on few images, where rates move in steps of 1/n) the t statistic is undefined, and a handful of runs
    cannot show that the spread is zero: p then comes from the exact permutation test over run labels
    (:func:`run_permutation_p`), which needs no variance, and the interval is undefined (NaN).
    """
    a, b = np.asarray(rates_a, dtype=float), np.asarray(rates_b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ComparisonError(f"Welch's test needs two or more runs per side, got {a.size} and {b.size}")
    try:
        from scipy import stats
    except ImportError:
        raise ComparisonError(
            "compare --level recipe needs scipy (Student's t distribution): pip install scipy"
        ) from None
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # equal values exactly (a computed variance may round to 1e-33)
        return run_permutation_p(a, b), math.nan, math.nan
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))  # Welch-Satterthwaite
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    return p, diff - half, diff + half


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(p_values, dtype=float)
    adj = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m, running = len(valid), 0.0
    for rank, idx in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adj[idx] = running
    return adj


def paired_bootstrap_ci(
    d: np.ndarray, *, n_boot: int, rng: np.random.Generator, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(d)`` resampling images, via multinomial counts of d's distinct values."""
    if d.size == 0:
        return math.nan, math.nan
    values, counts = np.unique(d, return_counts=True)
    if values.size == 1:
        return float(values[0]), float(values[0])
    draws = rng.multinomial(d.size, counts / d.size, size=n_boot)
    means = draws @ values / d.size
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# --- pairing -------------------------------------------------------------------------------------------------------


def check_comparable(a: Record, b: Record, *, allow_precision_mismatch: bool = False) -> None:
    """Raise :class:`ComparisonError` unless A and B share the protocol hash, the data hash, the target weights
    and the numeric precision (the last unless ``allow_precision_mismatch``: a deliberate fp32-vs-bf16 check)."""
    if a.protocol["sha256"] != b.protocol["sha256"]:
        raise ComparisonError(
            f"A ({a.submission['name']}) was evaluated under {protocol_key(a.protocol)} (sha256 "
            f"{a.protocol['sha256'][:12]}) and B ({b.submission['name']}) under {protocol_key(b.protocol)} (sha256 "
            f"{b.protocol['sha256'][:12]}); only records of the same protocol hash are comparable. Evaluate both "
            "under the same protocol."
        )
    if a.data["sha256"] != b.data["sha256"] or a.data.get("n_images") != b.data.get("n_images"):
        raise ComparisonError(
            f"A and B were evaluated on different images (data sha256 {a.data['sha256'][:12]} with "
            f"{a.data.get('n_images')} images vs {b.data['sha256'][:12]} with {b.data.get('n_images')}), so they "
            "cannot be paired: e.g. a --limit run vs a full run, or a JPEG copy vs canonical data. Evaluate both on "
            "the same data with the same --limit."
        )
    if not isinstance(a.data.get("n_images"), int) or a.data["n_images"] < 1:
        raise ComparisonError(f"data.n_images of the records is {a.data.get('n_images')!r}, not a positive integer; "
                              "the records are damaged or too old: re-evaluate them.")  # fmt: skip
    pa, pb = a.provenance.get("precision"), b.provenance.get("precision")
    if pa != pb and not allow_precision_mismatch:
        raise ComparisonError(
            f"A ({a.submission['name']}) ran in {pa} and B ({b.submission['name']}) in {pb}; a difference between them "
            "would mix the surrogates' effect with the precision's. Evaluate both at the protocol's precision, or pass "
            "--allow-precision-mismatch to measure what the precision changes."
        )
    for t in sorted(set(a.targets) & set(b.targets)):
        if a.targets[t].get("sha256") != b.targets[t].get("sha256"):
            raise ComparisonError(
                f"target {t} has different weights in A (sha256 {str(a.targets[t].get('sha256'))[:12]}) and B "
                f"(sha256 {str(b.targets[t].get('sha256'))[:12]}); evaluate both against the same target checkpoint."
            )
    for name, rec in (("A", a), ("B", b)):
        if not rec.runs:
            raise ComparisonError(
                f"{name} ({rec.submission['name']}) has no runs; the record is damaged: re-evaluate it."
            )
        for i, run in enumerate(rec.runs):
            if "outcomes" not in run or "success" not in run["outcomes"]:
                raise ComparisonError(
                    f"{name} ({rec.submission['name']}) runs[{i}] has no per-image outcomes; re-evaluate it with a "
                    "transferbench version that stores them."
                )


def _bits(text: str | None, n: int, where: str) -> np.ndarray:
    if text is None:
        raise ComparisonError(f"{where} is missing from the record; re-evaluate the submission.")
    try:
        return unpack_bits(text, n)
    except ValueError as e:
        raise ComparisonError(f"{where}: {e}; the record is damaged.") from None


def _per_image(rec: Record, cell: str, target: str, asr: str, n: int, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(mask of images every run of ``rec`` needs correct for ``both_correct``, (runs, n) success bits)."""
    need = np.ones(n, dtype=bool)
    per_run = np.zeros((len(rec.runs), n), dtype=bool)
    for i, run in enumerate(rec.runs):
        per_model = run["outcomes"]["success"].get(cell, {})
        where = f"{tag} runs[{i}].outcomes.success[{cell!r}]"
        success = _bits(per_model.get(target), n, f"{where}[{target!r}]")
        if asr == "both_correct":
            sur = _bits(per_model.get("surrogate"), n, f"{where}['surrogate']")
            need &= _bits(run["outcomes"].get("clean_correct"), n, f"{tag} runs[{i}].outcomes.clean_correct")
            success = success & sur
        per_run[i] = success
    return need, per_run


def rerun_differences(a: Record, b: Record) -> tuple[int, int] | None:
    """(differing, total) per-image outcome bits of two records of one submission, e.g. a rerun on other hardware
    or in deterministic mode; None when they are not of the same submission and runs.

    Counts every bit both records hold: each target's clean correctness, each run's clean correctness, and the
    success bits of each (cell, model) present in both. Identical bits mean an identical evaluation.
    """
    same = a.submission.get("sha256") == b.submission.get("sha256")
    if not same or [r.get("name") for r in a.runs] != [r.get("name") for r in b.runs]:
        return None
    n = int(a.data["n_images"])
    common = [t for t in a.targets if t in b.targets]
    pairs = [(a.targets[t].get("clean_correct"), b.targets[t].get("clean_correct")) for t in common]
    for ra, rb in zip(a.runs, b.runs, strict=True):
        oa, ob = ra["outcomes"], rb["outcomes"]
        pairs.append((oa.get("clean_correct"), ob.get("clean_correct")))
        for cell, models in oa["success"].items():
            pairs += [(bits, ob["success"].get(cell, {}).get(m)) for m, bits in models.items()]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    differ = sum(int((_bits(x, n, "A") != _bits(y, n, "B")).sum()) for x, y in pairs)
    return differ, n * len(pairs)


def compare(
    a: Record,
    b: Record,
    *,
    alpha: float = 0.05,
    min_effect: float = 0.0,
    asr: str | None = None,
    cells: Sequence[str] | None = None,
    n_boot: int = 10_000,
    n_perm: int = 10_000,
    seed: int = 0,
    allow_precision_mismatch: bool = False,
    level: str = "checkpoint",
) -> Comparison:
    """Paired comparison of B against A (see the module docstring for the method).

    ``asr`` defaults to the protocol's ranking definition; ``cells`` restricts the comparison (and the Holm
    family) to some cell keys, e.g. ``[record.protocol["ranking_cell"]]``. ``min_effect`` is a fraction
    (0.02 = 2 percentage points). Records of different precisions are refused unless
    ``allow_precision_mismatch``. ``level`` is ``checkpoint`` (the images are the sample) or ``recipe`` (the
    seed groups' runs are: Welch's t test on run rates).
    """
    if level not in LEVELS:
        raise ComparisonError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    if not 0 < alpha < 1:
        raise ComparisonError(f"alpha must be in (0, 1), got {alpha}")
    if min_effect < 0:
        raise ComparisonError(f"min_effect is a non-negative fraction (0.02 = 2 points), got {min_effect}")
    if n_boot < 100 or n_perm < 100:
        raise ComparisonError(f"n_boot={n_boot}, n_perm={n_perm}: too few resamples for a 95% interval or a p-value "
                              "near 0.05; use 1000 or more")  # fmt: skip
    check_comparable(a, b, allow_precision_mismatch=allow_precision_mismatch)
    if level == "recipe" and min(len(a.runs), len(b.runs)) < 2:
        raise ComparisonError(
            f"--level recipe compares seed groups: A ({a.submission['name']}) has {len(a.runs)} run(s) and B "
            f"({b.submission['name']}) {len(b.runs)}; each side needs two or more. Train more seeds of each recipe "
            "and evaluate them as a seed group (`transferbench group OUT FOLDERS...`), or compare these "
            "checkpoints with --level checkpoint."
        )
    asr = asr or a.protocol.get("ranking_asr", "target_correct")
    if asr not in ASR_DEFINITIONS:
        raise ComparisonError(f"unknown ASR definition {asr!r}; use one of {', '.join(ASR_DEFINITIONS)}")
    n = int(a.data["n_images"])
    ranking_cell = a.protocol.get("ranking_cell", "")
    common = [c for c in a.runs[0]["cells"] if all(c in r["cells"] for r in (*a.runs, *b.runs))]
    if cells is not None:
        unknown = [c for c in cells if c not in common]
        if unknown:
            raise ComparisonError(f"cells {unknown} are not in both records; available: {', '.join(common)}")
        common = [c for c in common if c in cells]
    targets = sorted(set(a.targets) & set(b.targets))
    base: dict[str, tuple[np.ndarray, int]] = {}
    for t in targets:
        clean_a = _bits(a.targets[t].get("clean_correct"), n, f"A targets[{t!r}].clean_correct")
        clean_b = _bits(b.targets[t].get("clean_correct"), n, f"B targets[{t!r}].clean_correct")
        if asr == "all":
            base[t] = np.ones(n, dtype=bool), 0
        else:
            base[t] = clean_a & clean_b, int((clean_a ^ clean_b).sum())
            if base[t][1]:
                log.warning("target %s: clean correctness differs on %d of %d images between A and B (same weights "
                            "and data, different hardware?); those images are left out", t, base[t][1], n)  # fmt: skip
    rows = []
    for cell in common:
        for t in targets:
            mask, excluded = base[t][0].copy(), base[t][1]
            need_a, runs_a = _per_image(a, cell, t, asr, n, "A")
            need_b, runs_b = _per_image(b, cell, t, asr, n, "B")
            if asr == "both_correct":
                mask &= need_a & need_b
            runs_a, runs_b = runs_a[:, mask], runs_b[:, mask]  # (runs, paired images)
            fa, fb = runs_a.mean(axis=0), runs_b.mean(axis=0)  # per-image success fraction
            d = fb - fa
            a_only, b_only = int((d < 0).sum()), int((d > 0).sum())
            if not d.size:
                p, lo, hi = math.nan, math.nan, math.nan
            elif level == "recipe":
                p, lo, hi = welch(runs_a.mean(axis=1), runs_b.mean(axis=1))  # one rate per run
            else:
                rng = np.random.default_rng([seed, zlib.crc32(f"{cell}|{t}".encode())])
                lo, hi = paired_bootstrap_ci(d, n_boot=n_boot, rng=rng)
                p = paired_p_value(d, n_perm=n_perm, rng=rng)
            rate_a = float(fa.mean()) if fa.size else math.nan
            rate_b = float(fb.mean()) if fb.size else math.nan
            rows.append({
                "cell": cell, "target": t, "ranking": cell == ranking_cell, "n": int(mask.sum()),
                "n_excluded": excluded, "rate_a": rate_a, "rate_b": rate_b, "diff": rate_b - rate_a,
                "ci_lo": lo, "ci_hi": hi, "a_only": a_only, "b_only": b_only,
                "p_value": p,
            })  # fmt: skip
    df = pd.DataFrame(rows, columns=[c for c in CELL_COLUMNS if c not in ("p_holm", "significant", "regression",
                                                                          "improvement")])  # fmt: skip
    if not df["p_value"].notna().any():
        raise ComparisonError(
            f"nothing to compare: {len(df)} (cell, target) pairs and none has an image to pair under the {asr!r} "
            "definition (no cells selected, or no image that the targets classify correctly). Compare more cells, "
            "another --asr, or records on more images."
        )
    df["p_holm"] = holm(df["p_value"].to_numpy())
    df["significant"] = df["p_holm"] < alpha
    df["regression"] = df["significant"] & (df["diff"] < -min_effect)
    df["improvement"] = df["significant"] & (df["diff"] > min_effect)
    df = df[CELL_COLUMNS]

    def diffs(sel: pd.Series) -> list[CellDiff]:
        return [CellDiff(**{k: r[k] for k in CellDiff.__dataclass_fields__}) for r in df[sel].to_dict("records")]

    return Comparison(
        a=_label(a), b=_label(b), protocol=protocol_key(a.protocol), protocol_sha256=a.protocol["sha256"],
        data_sha256=a.data["sha256"], n_images=n, asr=asr, alpha=alpha, min_effect=min_effect, n_boot=n_boot,
        seed=seed, runs_a=len(a.runs), runs_b=len(b.runs), precision_a=str(a.provenance.get("precision")),
        precision_b=str(b.provenance.get("precision")), score_a=float(a.score["mean"]),
        score_b=float(b.score["mean"]), ranking_cell=ranking_cell, cells=df, regressions=diffs(df["regression"]),
        improvements=diffs(df["improvement"]), rerun_bits=rerun_differences(a, b), level=level,
        same_submission=a.submission.get("sha256") == b.submission.get("sha256"),
        numerics_a=a.provenance.get("numerics"), numerics_b=b.provenance.get("numerics"),
    )  # fmt: skip


def _label(r: Record) -> str:
    return f"{r.submission['name']} ({r.submission['kind']}, sha256 {r.submission['sha256'][:12]})"


def exit_code(comparison: Comparison) -> int:
    """Process exit status for CI: 0 when no cell regressed significantly, 1 when at least one did."""
    return EXIT_REGRESSION if comparison.regressions else EXIT_OK


def gate(a: Record, b: Record, *, all_cells: bool = False, **options: Any) -> tuple[int, str]:
    """What ``transferbench compare A B`` prints and returns: (0 | 1 | 2, report); 2 = cannot be compared.

    ``options`` are :func:`compare`'s keywords; ``all_cells`` lists every cell in the report.
    """
    try:
        result = compare(a, b, **options)
    except ComparisonError as e:
        return EXIT_NOT_COMPARABLE, f"error: {e}"
    return exit_code(result), result.format(all_cells=all_cells)
