"""Figures and the factor analysis of a leaderboard, as pure functions of records (matplotlib, Agg, no pyplot).

- :func:`asr_vs_eps`: transfer ASR against the L-inf budget, one line per surrogate, one panel per
  (mode, attack), 95% Wilson error bars.
- :func:`asr_vs_factors`: the ranking score against smoothness and against gradient similarity across the
  trained checkpoints of one protocol, Pearson r in each panel's title and the R^2 of the joint least-squares fit of
  the score on (smoothness, similarity) in the figure title (seed 002, Table 6).
- :func:`heatmap`: surrogate x target ASR at the ranking cell.
- :func:`analysis_table`: per protocol, Pearson r between the score and clean accuracy, white-box fooling
  rate, smoothness and similarity, and the R^2 of the score on (smoothness, similarity) and on all four.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never through ``pyplot``, so
no global state is touched and nothing needs a display. ``path=`` saves PNG or PDF (by suffix) atomically.

Factors per checkpoint (one run of a record; a seed group has one per seed): ``score`` is the run's ranking
number (``record.score.per_run``, %), with its clean accuracy, white-box fooling rate at the ranking cell,
smoothness (mean dominant Hessian eigenvalue) and similarity (mean over targets of the mean gradient cosine).
The factor analysis and its scatter plot use one point per trained checkpoint: canonical records only
(partial and other-precision runs are left out, they would count a surrogate twice with numbers measured
differently), from each protocol's main ranking group (the one with most canonical records; other data or
target weights are left out), and a checkpoint held by two records (a seed evaluated alone and in its seed
group) once; the output says what was left out. Seeds of one recipe are separate observations but not
independent ones (they share the recipe's effect), so r and R^2 over a board of seed groups describe the
checkpoints, not a sample of recipes. A protocol without any canonical record (a pilot of
``--limit`` runs) is analysed on its partial runs at the protocol's precision that share one image subset,
and the note says so.

The ASR figures draw every record, deviating runs included under their own labels (``(partial)``, ``(bf16)``),
matching records by their integrity hash, so a canonical and a deviating run of one surrogate never merge.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from leaderboard.consistency import run_scores
from leaderboard.export import by_protocol, long_table, pooled_interval, surrogate_labels
from leaderboard.record import Record
from leaderboard.store import StoreError, protocol_key
from leaderboard.table import group_order, leaderboard_order, ranking_groups, target_weights

log = logging.getLogger(__name__)

FACTORS = ("clean_acc", "fooling_rate", "smoothness", "similarity")
MIN_RECORDS = 3


class PlotError(ValueError):
    """A figure cannot be drawn from the given records; the message names the input and the fix."""


# --- per-record factors and statistics -----------------------------------------------------------------------------


def _mean(values: Iterable[float | None]) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def analysis_records(records: Iterable[Record]) -> tuple[list[Record], dict[str, list[str]]]:
    """The records the factor analysis uses, one per surrogate, and per protocol what was left out and why.

    Kept: canonical records (no ``deviations``) of each protocol's main ranking group (most canonical records;
    :func:`leaderboard.table.ranking_groups`), the first per surrogate sha256 in leaderboard order. A protocol
    with no canonical record at all (a pilot study of ``--limit`` runs) is analysed on its partial runs at the
    protocol's precision instead, grouped by the exact image subset (the subset's own data sha256, so runs of
    different ``--limit`` values never mix), and its note says so.
    """
    records = leaderboard_order(records)
    with_full = {protocol_key(r.protocol) for r in records if not r.deviations}
    pilot = {id(r) for r in records if protocol_key(r.protocol) not in with_full and r.data.get("partial")
             and not r.off_protocol_precision}  # fmt: skip
    pool = [r for r in records if not r.deviations or id(r) in pilot]
    keys = [(k[0], str(r.data["sha256"]), target_weights(r)) if id(r) in pilot else k
            for r, k in zip(pool, ranking_groups(pool), strict=True)]  # fmt: skip
    order = group_order(keys)
    group_of = {id(r): order[k] for r, k in zip(pool, keys, strict=True)}
    main: dict[str, int] = {}
    for k in keys:
        main[k[0]] = min(main.get(k[0], order[k]), order[k])
    left: dict[str, dict[str, int]] = {}
    kept, seen = [], set()
    for r in records:
        proto, sha = protocol_key(r.protocol), r.submission["sha256"]
        if id(r) not in group_of:
            why = "partial or other-precision run(s)"
        elif group_of[id(r)] != main[proto]:
            why = "record(s) on other data or target weights"
        elif (proto, sha) in seen:
            why = "repeated surrogate(s)"
        else:
            seen.add((proto, sha))
            kept.append(r)
            continue
        left.setdefault(proto, {})[why] = left.get(proto, {}).get(why, 0) + 1
    notes = {p: [f"left out {n} {why}" for why, n in whys.items()] for p, whys in left.items()}
    first_partial: dict[str, Record] = {}  # per protocol analysed on partial runs, one of its kept runs
    for r in kept:
        if id(r) in pilot:
            first_partial.setdefault(protocol_key(r.protocol), r)
    for proto, r in first_partial.items():
        subset = f"{r.data.get('n_images')} images (data sha256 {str(r.data['sha256'])[:12]})"
        notes.setdefault(proto, []).insert(0, f"no full run: partial runs on one subset of {subset}")
    return kept, notes


def analysis_runs(records: Iterable[Record]) -> tuple[list[tuple[Record, int]], dict[str, list[str]]]:
    """The checkpoints the factor analysis uses, as (record, run index), and per protocol what was left out.

    Every run of the records of :func:`analysis_records` is one trained checkpoint; a seed group's runs are
    points of their own. A checkpoint (its weights sha256) that several kept records hold, such as a seed
    evaluated alone and again inside its seed group, counts once, from the first record in leaderboard order.
    """
    kept, notes = analysis_records(records)
    out: list[tuple[Record, int]] = []
    seen: set[tuple[str, str]] = set()
    repeated: dict[str, int] = {}
    for r in kept:
        proto = protocol_key(r.protocol)
        for i, run in enumerate(r.runs):
            checkpoint = (proto, str(run.get("sha256") or f"{r.submission['sha256']}/{i}"))
            if checkpoint in seen:
                repeated[proto] = repeated.get(proto, 0) + 1
                continue
            seen.add(checkpoint)
            out.append((r, i))
    for proto, n in repeated.items():
        notes.setdefault(proto, []).append(f"counted once: {n} run(s) of a checkpoint another record holds too "
                                           "(a seed evaluated alone and in its seed group)")  # fmt: skip
    return out, notes


def _run_scores(r: Record) -> list[float]:
    per_run = r.score.get("per_run")
    return [float(v) for v in per_run] if isinstance(per_run, list) and len(per_run) == len(r.runs) else run_scores(r)


def record_factors(records: Iterable[Record]) -> pd.DataFrame:
    """One row per checkpoint (:func:`analysis_runs`, leaderboard order): protocol, surrogate (the record's label,
    with the run's name for a seed group's run), score % (that run's ranking number), clean_acc %, fooling_rate %
    (white-box, ranking cell), smoothness, similarity (mean over targets)."""
    return _factor_rows(analysis_runs(records)[0])


def _factor_rows(points: Sequence[tuple[Record, int]]) -> pd.DataFrame:
    """:func:`record_factors` of the checkpoints ``points`` (from :func:`analysis_runs`)."""
    recs = list({id(r): r for r, _ in points}.values())
    labels = dict(zip(map(id, recs), surrogate_labels(recs), strict=True))
    scores = {id(r): _run_scores(r) for r in recs}  # once per record: older records recompute them from cells
    rows = []
    for r, i in points:
        run, cell = r.runs[i], r.protocol.get("ranking_cell", "")
        rows.append({
            "protocol": protocol_key(r.protocol),
            "surrogate": labels[id(r)] + (f": {run.get('name', i)}" if len(r.runs) > 1 else ""),
            "score": 100 * scores[id(r)][i],
            "clean_acc": 100 * _mean([run["clean_accuracy"]]),
            "fooling_rate": 100 * _mean([run["cells"].get(cell, {}).get("fooling_rate", {}).get("rate")]),
            "smoothness": _mean([run.get("smoothness", {}).get("mean")]),
            "similarity": _mean(s.get("mean") for s in run.get("similarity", {}).values()),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["protocol", "surrogate", "score", *FACTORS])


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation over pairs where both are finite; NaN with fewer than 3 pairs or a constant variable."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if xa.size < MIN_RECORDS or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return math.nan
    return float(np.corrcoef(xa, ya)[0, 1])


def ols_r2(y: Sequence[float], x: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``y`` on the columns of ``x`` plus an intercept (``numpy.linalg.lstsq``).

    NaN when rows with a non-finite value leave no more observations than parameters (a saturated fit
    has R^2 = 1 whatever the data) or when ``y`` is constant.
    """
    ya = np.asarray(y, dtype=float)
    if ya.size == 0:
        return math.nan
    xa = np.asarray(x, dtype=float).reshape(len(ya), -1)
    ok = np.isfinite(ya) & np.isfinite(xa).all(axis=1)
    ya, xa = ya[ok], xa[ok]
    if ya.size <= xa.shape[1] + 1 or np.ptp(ya) == 0:
        return math.nan
    design = np.column_stack([np.ones(ya.size), xa])
    coef, *_ = np.linalg.lstsq(design, ya, rcond=None)
    ss_res = float(((ya - design @ coef) ** 2).sum())
    ss_tot = float(((ya - ya.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot


def analysis_table(records: Iterable[Record]) -> pd.DataFrame:
    """Per protocol: Pearson r of the score with each factor, R^2_1 (smoothness + similarity), R^2_2 (all four).

    One observation per checkpoint (:func:`analysis_runs`: the runs of the canonical records of the protocol's
    main ranking group, each checkpoint once; ``n_checkpoints`` counts them, ``note`` says what was left out).
    Needs at least 3 checkpoints of a protocol for r, more than 3 for R^2_1 and more than 5 for R^2_2 (more
    observations than parameters); otherwise the value is NaN and ``note`` says why.
    """
    records = list(records)
    points, left_out = analysis_runs(records)
    f = _factor_rows(points)
    rows = []
    for key, sub in f.groupby("protocol", sort=True):
        n = len(sub)
        row: dict[str, object] = {"protocol": key, "n_checkpoints": n}
        for name in FACTORS:
            row[f"r_{name}"] = pearson(sub[name], sub["score"])
        row["r2_smooth_sim"] = ols_r2(sub["score"], sub[["smoothness", "similarity"]].to_numpy())
        row["r2_all"] = ols_r2(sub["score"], sub[list(FACTORS)].to_numpy())
        notes = []
        if n < MIN_RECORDS:
            notes.append(f"only {n} checkpoint(s): correlations need at least {MIN_RECORDS}")
        if n <= 3:
            notes.append("R^2_1 needs more than 3 checkpoints (2 factors + intercept)")
        if n <= 5:
            notes.append("R^2_2 needs more than 5 checkpoints (4 factors + intercept)")
        constant = [c for c in FACTORS if sub[c].notna().sum() >= MIN_RECORDS and np.ptp(sub[c].dropna()) == 0]
        if constant:
            notes.append(f"constant across checkpoints: {', '.join(constant)}")
        notes += left_out.get(str(key), [])
        row["note"] = "; ".join(notes)
        rows.append(row)
    cols = ["protocol", "n_checkpoints", *(f"r_{c}" for c in FACTORS), "r2_smooth_sim", "r2_all", "note"]
    return pd.DataFrame(rows, columns=cols)


# --- figures -------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _one_protocol(records: Iterable[Record], what: str) -> tuple[str, list[Record]]:
    groups = by_protocol(records)
    if not groups:
        raise PlotError(f"{what}: no records given; evaluate a surrogate first (transferbench evaluate/demo).")
    if len(groups) > 1:
        raise PlotError(f"{what} needs records of one protocol, got {', '.join(groups)}; pass the records of one "
                        "protocol (leaderboard.export.by_protocol groups them).")  # fmt: skip
    key, recs = next(iter(groups.items()))
    return key, recs


def _fmt_r(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save as PNG or PDF (by suffix), atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "pdf", "svg"):
        raise PlotError(f"cannot save a figure as {path.name!r}; use a .png, .pdf or .svg file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=150, metadata={"Software": None} if fmt == "png" else None)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise StoreError(f"could not write {path} ({e.strerror or e}); nothing was written.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %s", path)
    return path


def asr_vs_eps(
    records: Iterable[Record],
    *,
    attacks: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    asr: str | None = None,
    target: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Transfer ASR (%) against eps, one panel per (mode, attack), one line per surrogate, Wilson error bars.

    Without ``target`` the rate is pooled over targets (successes and denominators summed; for equal
    denominators the mean over targets used by the score) with the Wilson interval of the pooled count,
    which treats (target, image) pairs as independent and is therefore slightly narrow. A seed group's counts
    are summed over seeds too, but its interval is taken at ``n / seeds`` (the seeds attack the same images;
    :func:`leaderboard.export.pooled_interval`). One line per record, deviating runs under their own label.
    """
    key, recs = _one_protocol(records, "asr_vs_eps")
    recs = leaderboard_order(recs)
    shas = [r.content_sha256() for r in recs]
    asr = asr or recs[0].protocol.get("ranking_asr", "target_correct")
    long = long_table(recs)
    long = long[long["summary"] & (long["asr"] == asr)]
    if target is not None:
        if target not in set(long["target"]):
            raise PlotError(f"target {target!r} is not in {key}; targets: {', '.join(sorted(set(long['target'])))}")
        long = long[long["target"] == target]
    attacks = list(attacks or dict.fromkeys(long["attack"]))
    modes = list(modes or [m for m in ("untargeted", "targeted") if m in set(long["mode"])])
    labels = surrogate_labels(recs)
    fig = _figure(3.2 * len(attacks) + 1.5, 2.8 * len(modes))
    axes = fig.subplots(len(modes), len(attacks), squeeze=False, sharey=True)
    smoke = " [SMOKE]" if recs[0].protocol.get("kind") == "smoke" else ""
    for i, mode in enumerate(modes):
        for j, attack in enumerate(attacks):
            ax = axes[i][j]
            sel = long[(long["mode"] == mode) & (long["attack"] == attack)]
            for r, label, sha in zip(recs, labels, shas, strict=True):
                pooled = sel[sel["record_sha256"] == sha].groupby("eps_255")[["k", "n"]].sum().sort_index()
                eps = pooled.index.to_numpy()
                runs = len(r.runs)
                rate = np.array([100 * k / n if n else np.nan for k, n in zip(pooled["k"], pooled["n"], strict=True)])
                ci = np.array([pooled_interval(int(k), int(n), runs) for k, n in zip(pooled["k"], pooled["n"],
                                                                                     strict=True)]) * 100  # fmt: skip
                err = np.vstack([rate - ci[:, 0], ci[:, 1] - rate])
                ax.errorbar(eps, rate, yerr=err, marker="o", capsize=3, label=label)
            ax.set_title(f"{attack}, {mode}", fontsize=9)
            ax.set_xlabel("eps (/255)")
            ax.set_xticks(sorted(set(sel["eps_255"])))
            if j == 0:
                ax.set_ylabel(f"transfer ASR % ({asr})")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8)
    who = f"target {target}" if target else "pooled over targets"
    fig.suptitle(f"{key}{smoke}: ASR vs budget ({who})", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def asr_vs_factors(records: Iterable[Record], *, path: str | os.PathLike | None = None) -> Figure:
    """Score against smoothness and against similarity, one point per checkpoint (:func:`record_factors`);
    Pearson r per panel, joint R^2."""
    key, recs = _one_protocol(records, "asr_vs_factors")
    f = record_factors(recs)
    fig = _figure(8.0, 3.6)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, factor, xlabel in (
        (axes[0], "smoothness", "smoothness\n(mean dominant input-Hessian eigenvalue)"),  # two lines: fits the panel
        (axes[1], "similarity", "gradient similarity\n(mean cosine to the targets)"),
    ):
        ax.scatter(f[factor], f["score"])
        for x, y, lab in zip(f[factor], f["score"], f["surrogate"], strict=True):
            if math.isfinite(x) and math.isfinite(y):
                ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        n = int((f[factor].notna() & f["score"].notna()).sum())
        ax.set_title(f"ASR vs {factor}: Pearson r = {_fmt_r(pearson(f[factor], f['score']))} (n = {n})", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (transfer ASR %)")
    r2 = ols_r2(f["score"], f[["smoothness", "similarity"]].to_numpy())
    smoke = " [SMOKE]" if recs[0].protocol.get("kind") == "smoke" else ""
    fig.suptitle(f"{key}{smoke}: OLS R^2 of score on (smoothness, similarity) = {_fmt_r(r2)}", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def heatmap(
    records: Iterable[Record],
    *,
    cell: str | None = None,
    asr: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Surrogate (rows, leaderboard order, one per record, deviating runs labelled) x target (columns) ASR % at
    ``cell`` (default: the ranking cell)."""
    key, recs = _one_protocol(records, "heatmap")
    recs = leaderboard_order(recs)
    cell = cell or recs[0].protocol.get("ranking_cell", "")
    asr = asr or recs[0].protocol.get("ranking_asr", "target_correct")
    long = long_table(recs)
    long = long[long["summary"] & (long["asr"] == asr) & (long["cell"] == cell)]
    if long.empty:
        raise PlotError(f"no {asr} ASR for cell {cell!r} in {key}; use a cell key such as "
                        f"{recs[0].protocol.get('ranking_cell')!r}.")  # fmt: skip
    targets = sorted(set(long["target"]))
    labels = surrogate_labels(recs)
    values = np.full((len(recs), len(targets)), np.nan)
    index = {r.content_sha256(): i for i, r in enumerate(recs)}  # one row per record, deviating runs included
    for row in long.itertuples(index=False):
        values[index[row.record_sha256], targets.index(row.target)] = 100 * row.rate
    fig = _figure(1.2 * len(targets) + 3.0, 0.45 * len(recs) + 1.8)
    ax = fig.subplots()
    im = ax.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(recs)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(values):
        if math.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    fig.colorbar(im, ax=ax, label=f"ASR % ({asr})")
    smoke = " [SMOKE]" if recs[0].protocol.get("kind") == "smoke" else ""
    ax.set_title(f"{key}{smoke}: {cell}", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def write_plots(records: Iterable[Record], out_dir: str | os.PathLike, *, fmt: str = "png") -> list[Path]:
    """Every figure for every protocol into ``out_dir`` (``<kind>-<protocol key>.<fmt>``); returns the paths."""
    out = Path(out_dir)
    paths = []
    for key, recs in by_protocol(records).items():
        paths.append(save_figure(asr_vs_eps(recs), out / f"asr_vs_eps-{key}.{fmt}"))
        paths.append(save_figure(heatmap(recs), out / f"heatmap-{key}.{fmt}"))
        paths.append(save_figure(asr_vs_factors(recs), out / f"asr_vs_factors-{key}.{fmt}"))
    return paths
