"""Ranked tables: pure functions of records (pandas)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from leaderboard.record import Record
from leaderboard.store import protocol_key


def ranked_precision(r: Record) -> str:
    """The precision a run used, with ``*`` when it is not the one its protocol pins."""
    return str(r.provenance["precision"]) + ("*" if r.off_protocol_precision else "")


def ranked_table(records: Iterable[Record]) -> pd.DataFrame:
    """One row per record, best first within each protocol.

    Rank by ``score`` (the protocol's ranking rule: mean over targets of the ranking ASR in the ranking
    cell). Records are grouped by protocol name, version and hash (``protocol_key``), so a run under a
    modified protocol never ranks beside canonical ones. Rows from partial runs (--limit) and from runs at
    another precision than the protocol's (``precision`` ends in ``*``) rank after canonical ones.
    ``weight_eig`` is the top weight-Hessian eigenvalue where the protocol measures it. ``data`` shows the
    image-content hash so that runs on different copies of a data set (canonical CIFAR-10 vs the JPEG copy)
    are visible as such.
    """
    rows = []
    for r in records:
        run0 = r.runs[0]
        sims = [s["mean"] for s in run0.get("similarity", {}).values() if s.get("mean") is not None]
        std = r.score.get("std")
        rows.append({
            "protocol": protocol_key(r.protocol),
            "kind": r.protocol.get("kind", ""),
            "surrogate": r.submission["name"],
            "recipe": r.submission.get("metadata", {}).get("recipe", ""),
            "type": r.submission["kind"],
            "runs": len(r.runs),
            "score": 100 * r.score["mean"],
            "score_std": None if std is None else 100 * std,
            "clean_acc": 100 * sum(x["clean_accuracy"] for x in r.runs) / len(r.runs),
            "smoothness": run0.get("smoothness", {}).get("mean"),
            "similarity": sum(sims) / len(sims) if sims else math.nan,
            "weight_eig": run0.get("weight_sharpness", {}).get("top_eigenvalue", math.nan),
            "partial": bool(r.data.get("partial", False)),
            "precision": ranked_precision(r),
            "_deviates": bool(r.deviations),
            "data": r.data["sha256"][:10],
            "sha256": r.submission["sha256"][:12],
        })  # fmt: skip
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values(["protocol", "_deviates", "score"], ascending=[True, True, False], kind="stable")
    df = df.drop(columns="_deviates").reset_index(drop=True)
    df.insert(0, "rank", df.groupby("protocol").cumcount() + 1)
    return df


def format_table(df: pd.DataFrame) -> str:
    """Plain-text rendering, one block per protocol, smoke protocols labelled as such."""
    if df.empty:
        return "(no results yet: run `transferbench demo` or `transferbench evaluate`)"
    blocks = []
    for proto, sub in df.groupby("protocol", sort=True):
        label = " [SMOKE: not benchmark results]" if (sub["kind"] == "smoke").any() else ""
        shown = sub.drop(columns=["protocol", "kind"]).copy()
        for col in shown.columns:
            if col in ("score", "score_std", "clean_acc", "smoothness", "similarity", "weight_eig"):
                shown[col] = [f"{v:.2f}" if v is not None and not pd.isna(v) else "" for v in shown[col]]
        note = ("\n* not the protocol's precision (--precision): shown, ranked after runs at the protocol's"
                if sub["precision"].str.endswith("*").any() else "")  # fmt: skip
        blocks.append(
            f"== {proto}{label} (score = mean transfer ASR %, ranking cell of the protocol) ==\n"
            + shown.to_string(index=False) + note
        )  # fmt: skip
    return "\n\n".join(blocks)
