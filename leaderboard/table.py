"""Ranked tables: pure functions of records (pandas).

Two scores are comparable only when they were measured the same way. A **ranking group** is the protocol key
(name, version, hash), the content hash of the images and the weights of every target (target name and
sha256): records that share all three rank together; a protocol with several groups (a run on the JPEG copy of
CIFAR-10, a target re-trained with other weights) shows each as its own ranked section, labelled by what
differs. Within a group, equal scores at the shown precision share a rank (competition ranking, "1, 1, 3").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

from leaderboard.record import Record
from leaderboard.store import protocol_key

SCORE_DIGITS = 2  # decimals of the score (in %) in every rendering; ties are decided at this precision
TIE_NOTE = f"= equal scores at {SCORE_DIGITS} decimals share a rank (1, 1, 3); tied rows are listed by name"
GROUP_NOTE = "records evaluated on other data or against other target weights are ranked separately"


def seed_noise_note(df: pd.DataFrame) -> str:
    """The seed-to-seed spread that the seed groups of a ranked table measure, as a caution for its single-seed
    rows ('' where the table has no seed group with a std, or no single-seed row to caution)."""
    if df.empty or "score_std" not in df.columns:
        return ""
    stds = pd.to_numeric(df["score_std"], errors="coerce").dropna()
    if stds.empty or not (df["runs"] == 1).any():
        return ""
    spread = (
        f"{stds.iloc[0]:.2f}"
        if len(stds) == 1
        else f"{stds.min():.2f} to {stds.max():.2f} (median {stds.median():.2f})"
    )
    return (f"seed-to-seed std of the score in the {len(stds)} seed group(s) here: {spread} points; single-seed "
            "rows closer than that may differ by training seed alone (to compare recipes, evaluate seed groups: "
            "transferbench train --seeds, compare --level recipe)")  # fmt: skip


def numerics_note(df: pd.DataFrame) -> str:
    """Where rows of one ranked table were made by code that computes the protocol differently (their records'
    ``provenance.numerics`` differ, bench/numerics.py), which rows carry which digest; rows without one
    ("unverified": made before records carried it, or by an install that did not reproduce the pins) count as
    different from rows with one. '' where all rows agree."""
    if df.empty or "numerics" not in df.columns:
        return ""
    digests = list(dict.fromkeys(df["numerics"].astype(str)))
    if len(digests) < 2:
        return ""
    rows = "; ".join(f"{d or 'unverified'}: {', '.join(map(str, df.loc[df['numerics'] == d, 'surrogate']))}"
                     for d in digests)  # fmt: skip
    return (f"rows made by code that computes this protocol differently (reference numerics {rows}): differences "
            "between them may come from the code, not the surrogates; re-evaluate the rows of older or unverified "
            "code with one version that passes `transferbench selfcheck`")  # fmt: skip


def group_notes(df: pd.DataFrame) -> list[str]:
    """The notes one ranking group's table needs (seed-to-seed spread, differing numerics); every rendering
    (text, HTML page, Markdown, LaTeX) adds them per ranking group."""
    return [n for n in (seed_noise_note(df), numerics_note(df)) if n]


TargetKey = tuple[tuple[str, str], ...]  # ((target name, weights sha256), ...) sorted by name
GroupKey = tuple[str, str, TargetKey]  # (protocol key, data sha256, targets)


def ranked_precision(r: Record) -> str:
    """The precision a run used, with ``*`` when it is not the one its protocol pins."""
    return str(r.provenance["precision"]) + ("*" if r.off_protocol_precision else "")


def target_weights(r: Record) -> TargetKey:
    """The record's targets as ``((name, sha256), ...)`` sorted by name: which weights its ASRs were measured on."""
    return tuple(sorted((str(name), str(t.get("sha256") or "")) for name, t in r.targets.items()))


def shown_score(value: float) -> float:
    """``value`` rounded as the tables print it (:data:`SCORE_DIGITS` decimals), the precision ranks compare at."""
    return float(f"{value:.{SCORE_DIGITS}f}")


def ranking_groups(records: Sequence[Record]) -> list[GroupKey]:
    """The ranking group of each record: (protocol key, data sha256, target weights).

    A partial run (``--limit``) measures a subset of the images, so its own data hash differs from the full
    run's; it joins the group of the canonical runs whose full data set (``data.full_sha256``) and targets it
    shares, where there is one (it then ranks after them, as every deviating run does), and otherwise forms a
    group of its own keyed by that full data hash.
    """
    canonical: dict[tuple[str, TargetKey, str], set[str]] = {}
    for r in records:
        if not r.data.get("partial"):
            full = str(r.data.get("full_sha256") or r.data["sha256"])
            canonical.setdefault((protocol_key(r.protocol), target_weights(r), full), set()).add(r.data["sha256"])
    keys: list[GroupKey] = []
    for r in records:
        proto, targets = protocol_key(r.protocol), target_weights(r)
        data = str(r.data["sha256"])
        if r.data.get("partial"):
            full = str(r.data.get("full_sha256") or r.data["sha256"])
            data = min(canonical.get((proto, targets, full), {full}))
        keys.append((proto, data, targets))
    return keys


def group_order(keys: Sequence[GroupKey]) -> dict[GroupKey, int]:
    """Position of each group within its protocol: most records first, then by hash (independent of input order)."""
    count: dict[GroupKey, int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    ordered = sorted(count, key=lambda k: (k[0], -count[k], k[1], k[2]))
    return {k: i for i, k in enumerate(ordered)}


def group_labels(records: Sequence[Record]) -> list[str]:
    """Per record, what sets its ranking group apart from the protocol's other groups, with short sha256 prefixes
    (``data sha256 6f8fd2bd01, target resnet56 sha256 4b851e093446``); empty where the protocol has one group."""
    keys = ranking_groups(records)
    per_protocol: dict[str, set[GroupKey]] = {}
    for k in keys:
        per_protocol.setdefault(k[0], set()).add(k)
    labels = {}
    for groups in per_protocol.values():
        if len(groups) == 1:
            labels.update({k: "" for k in groups})
            continue
        datas = {k[1] for k in groups}
        common = set.intersection(*(set(k[2]) for k in groups))
        for k in groups:
            parts = [f"data sha256 {k[1][:10]}"] if len(datas) > 1 else []
            odd = [p for p in k[2] if p not in common] or list(k[2])
            parts += [f"target {name} sha256 {sha[:12]}" for name, sha in odd]
            labels[k] = ", ".join(parts)
    return [labels[k] for k in keys]


def leaderboard_order(records: Iterable[Record]) -> list[Record]:
    """Records in the order of :func:`ranked_table`: by protocol key, ranking group, canonical runs before
    deviating ones, best shown score first, then by name and surrogate sha256 (so ties do not depend on input
    order)."""
    records = list(records)
    keys = ranking_groups(records)
    order = group_order(keys)
    ranked = sorted(
        zip(records, keys, strict=True),
        key=lambda rk: (rk[1][0], order[rk[1]], bool(rk[0].deviations), -shown_score(100 * float(rk[0].score["mean"])),
                        str(rk[0].submission["name"]), str(rk[0].submission["sha256"])),
    )  # fmt: skip
    return [r for r, _ in ranked]


def _mean(values: Iterable[float | None]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else math.nan


def _row(r: Record, group: str) -> dict[str, object]:
    std = r.score.get("std")
    return {
        "protocol": protocol_key(r.protocol),
        "kind": r.protocol.get("kind", ""),
        "group": group,
        "surrogate": r.submission["name"],
        "recipe": r.submission.get("metadata", {}).get("recipe", ""),
        "type": r.submission["kind"],
        "runs": len(r.runs),
        "score": 100 * r.score["mean"],
        "score_std": None if std is None else 100 * std,
        "clean_acc": 100 * _mean(x["clean_accuracy"] for x in r.runs),
        "smoothness": _mean(x.get("smoothness", {}).get("mean") for x in r.runs),
        "similarity": _mean(_mean(s.get("mean") for s in x.get("similarity", {}).values()) for x in r.runs),
        "weight_eig": _mean(x.get("weight_sharpness", {}).get("top_eigenvalue") for x in r.runs),
        "partial": bool(r.data.get("partial", False)),
        "precision": ranked_precision(r),
        "data": r.data["sha256"][:10],
        "numerics": str(r.provenance.get("numerics") or "")[:8],
        "sha256": r.submission["sha256"][:12],
    }  # fmt: skip


def ranked_table(records: Iterable[Record]) -> pd.DataFrame:
    """One row per record, best first within each ranking group.

    Rank by ``score`` (the protocol's ranking rule: mean over targets of the ranking ASR in the ranking
    cell). Records rank only within their ranking group (:func:`ranking_groups`: protocol key, data sha256 and
    target weights), so a run under a modified protocol, on another copy of the data or against other target
    weights never ranks beside canonical ones; ``group`` names what sets a group apart when a protocol has more
    than one (empty otherwise). Rows from partial runs (--limit) and from runs at another precision than the
    protocol's (``precision`` ends in ``*``) rank after canonical ones.

    Ties: scores are compared as shown (rounded to :data:`SCORE_DIGITS` decimals, in %); equal shown scores share
    a rank and the next rank skips (competition ranking, "1, 1, 3"); tied rows are listed by name.

    Seed groups: ``score`` is the mean over seeds (``score_std`` their std); ``clean_acc``, ``smoothness``,
    ``similarity`` (mean over targets of the mean gradient cosine) and ``weight_eig`` (the top weight-Hessian
    eigenvalue, where the protocol measures it) are means over the runs. ``data`` shows the image-content hash
    so that runs on different copies of a data set (canonical CIFAR-10 vs the JPEG copy) are visible as such.
    """
    records = leaderboard_order(records)
    if not records:
        return pd.DataFrame()
    keys = ranking_groups(records)
    df = pd.DataFrame([_row(r, g) for r, g in zip(records, group_labels(records), strict=True)])
    ranks: list[int] = []
    prev: tuple[object, ...] | None = None
    for i, (r, key) in enumerate(zip(records, keys, strict=True)):
        sort_key = (key, bool(r.deviations), shown_score(100 * float(r.score["mean"])))
        if prev is None or prev[0] != key:
            start = i  # first row of this ranking group
        if sort_key != prev:
            rank = i - start + 1
        ranks.append(rank)
        prev = sort_key
    df.insert(0, "rank", ranks)
    return df


def _fmt_cell(v: object) -> str:
    return f"{v:.2f}" if v is not None and not pd.isna(v) else ""


def format_table(df: pd.DataFrame) -> str:
    """Plain-text rendering, one block per protocol, smoke protocols labelled as such; a protocol with several
    ranking groups shows one ranked sub-table per group, headed by what differs."""
    if df.empty:
        return "(no results yet: run `transferbench demo` or `transferbench evaluate`)"
    blocks = []
    for proto, sub in df.groupby("protocol", sort=True):
        label = " [SMOKE: not benchmark results]" if (sub["kind"] == "smoke").any() else ""
        groups = list(dict.fromkeys(sub["group"])) if "group" in sub.columns else [""]
        parts = []
        for group in groups:
            part = sub[sub["group"] == group] if "group" in sub.columns else sub
            hidden = ("protocol", "kind", "group", "numerics")  # numerics: named by its note where rows differ
            shown = part.drop(columns=[c for c in hidden if c in part.columns]).copy()
            for col in shown.columns:
                if col in ("score", "score_std", "clean_acc", "smoothness", "similarity", "weight_eig"):
                    shown[col] = [_fmt_cell(v) for v in shown[col]]
            head = f"-- ranked separately: {group} --\n" if len(groups) > 1 else ""
            parts.append(head + shown.to_string(index=False) + "".join(f"\n{n}" for n in group_notes(part)))
        notes = []
        if sub["precision"].str.endswith("*").any():
            notes.append("* not the protocol's precision (--precision): shown, ranked after runs at the protocol's")
        if "group" in sub.columns and sub.duplicated(["group", "rank"]).any():
            notes.append(TIE_NOTE)
        if len(groups) > 1:
            notes.append(f"{len(groups)} ranking groups: {GROUP_NOTE}")
        blocks.append(
            f"== {proto}{label} (score = mean transfer ASR %, ranking cell of the protocol) ==\n"
            + "\n".join(parts) + "".join(f"\n{n}" for n in notes)
        )  # fmt: skip
    return "\n\n".join(blocks)
