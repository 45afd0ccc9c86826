"""Do a record's numbers follow from its own per-image outcome bits?

A record's integrity hash is a checksum: whoever edits a score can recompute it. What a shared leaderboard can
check beyond it is that every rate, the fooling rates, the clean accuracies and the score are the ones the
record's per-image outcome bits give. A forged score then needs forged bits that agree with it, cell by cell and
target by target, which is no longer a one-character edit, and the bits stay open to a paired comparison with
anyone's re-run (``transferbench compare``). ``pull`` refuses a record that fails this check.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.metrics.asr import transfer_rates, unpack_bits
from leaderboard.record import Record, RecordError

_TOLERANCE = 1e-9  # rates and scores are stored as float64 fractions of integer counts


def check_consistent(record: Record, *, where: str = "record") -> None:
    """Raise :class:`RecordError` naming the first number that does not follow from the record's bits.

    Checked: each target's clean accuracy; per run, the clean accuracy, and per cell the fooling rate and every
    target's three ASR definitions (counts ``k`` and ``n``); the score of each run (mean over the record's
    targets of the ranking ASR in the ranking cell, targets with an undefined rate left out) and their mean and
    standard deviation.
    """
    try:
        _check(record, where)
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a field the check needs is absent
        raise RecordError(f"{where}: its outcome bits cannot be read back ({type(e).__name__}: {e})") from None


def _check(record: Record, where: str) -> None:
    n = int(record.data["n_images"])
    target_bits = {}
    for t, info in record.targets.items():
        bits = unpack_bits(info["clean_correct"], n)
        _close(info.get("clean_accuracy"), bits.mean() if n else math.nan, f"{where}: targets[{t!r}].clean_accuracy")
        target_bits[t] = bits
    for i, run in enumerate(record.runs):
        tag = f"{where}: runs[{i}]"
        correct = unpack_bits(run["outcomes"]["clean_correct"], n)
        _close(run["clean_accuracy"], correct.mean() if n else math.nan, f"{tag}.clean_accuracy")
        for key, content in run["cells"].items():
            per_model = run["outcomes"]["success"][key]
            s_bits = unpack_bits(per_model["surrogate"], n)
            _counts(content["fooling_rate"], int((s_bits & correct).sum()), int(correct.sum()),
                    f"{tag}.cells[{key!r}].fooling_rate")  # fmt: skip
            for t, rates in content["targets"].items():
                expected = transfer_rates(target_bits[t], unpack_bits(per_model[t], n), correct, s_bits)
                for d, r in expected.items():
                    _counts(rates[d], r.k, r.n, f"{tag}.cells[{key!r}].targets[{t!r}].{d}")
    scores = run_scores(record)
    score = record.score
    _close(score["mean"], float(np.mean(scores)), f"{where}: score.mean")
    for i, (stored, recomputed) in enumerate(zip(score.get("per_run", scores), scores, strict=True)):
        _close(stored, recomputed, f"{where}: score.per_run[{i}]")
    std = float(np.std(scores, ddof=1)) if len(scores) > 1 else None
    if (score.get("std") is None) != (std is None):
        raise RecordError(f"{where}: score.std is {score.get('std')!r} for {len(scores)} run(s)")
    if std is not None:
        _close(score["std"], std, f"{where}: score.std")


def run_scores(record: Record) -> list[float]:
    """Each run's score from its cells: the mean over targets of the ranking ASR in the ranking cell (targets with
    an undefined rate left out, as ``bench.runner.score_of`` does)."""
    cell, asr = record.protocol["ranking_cell"], record.protocol.get("ranking_asr", "target_correct")
    scores = []
    for i, run in enumerate(record.runs):
        defined = [r[asr]["rate"] for r in run["cells"][cell]["targets"].values() if r[asr]["rate"] is not None]
        if not defined:
            raise RecordError(f"runs[{i}]: no target has a defined {asr} rate in the ranking cell {cell}")
        scores.append(float(np.mean(defined)))
    return scores


def _counts(stored: dict[str, Any], k: int, n: int, what: str) -> None:
    if (stored.get("k"), stored.get("n")) != (k, n):
        raise RecordError(f"{what} says {stored.get('k')}/{stored.get('n')}, its outcome bits give {k}/{n}")
    _close(stored.get("rate"), k / n if n else None, what)


def _close(stored: Any, expected: float | None, what: str) -> None:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        ok = stored is None or (isinstance(stored, float) and math.isnan(stored))
    else:
        ok = isinstance(stored, (int, float)) and not isinstance(stored, bool) and abs(stored - expected) <= _TOLERANCE
    if not ok:
        raise RecordError(f"{what} is {stored!r}, its outcome bits give {expected!r}")
