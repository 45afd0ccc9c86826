"""Every number of a set of records as tables, and those tables as CSV, Markdown and LaTeX.

All tables are pure functions of records (nothing is read from disk or the clock), so the same records
always give byte-identical exports. Each export starts with a caption line that names the package version(s)
and git sha(s) that produced the records (not those of the installation that exports them), and per protocol
its key and full sha256, the data sha256s and the sha256 of every target's weights, which is what a reader
needs to cite the numbers: two numbers are comparable only if all these hashes agree.

Tables:

- :func:`long_table`: one row per (record, run, attack, eps, mode, target, ASR definition) with the
  success count ``k``, the denominator ``n``, the rate and its 95% Wilson interval, the weights hash of the
  target, and the provenance of the record (package version, git sha, torch, CUDA, device; ``record_sha256``
  is the record's integrity hash, which tells apart two records of one surrogate). A record with several
  runs (a seed group) has one row per run plus a ``pooled`` row; ``summary`` marks the row that stands for
  the record (its only run, or the pooled row). The pooled row's ``k`` and ``n`` are summed over runs and its
  rate is ``k / n``; for ``target_correct`` and ``all`` every run has the same denominator, so that rate
  equals the mean of the run rates, i.e. the seed-group convention of the ranking score. Its interval is
  not the Wilson interval of the sums: the seeds attack the *same* images, so ``n`` summed over seeds counts
  each image several times and would give an interval about sqrt(seeds) too narrow. It is the Wilson
  interval of the pooled rate at the number of images one run's rate is over (``n`` / runs): images are the
  sampling unit, and seed-to-seed variation is reported by the per-run rows and the score's std.
- :func:`wide_table`: surrogate x target per budget for one attack, mode and ASR definition, in percent,
  with the mean over targets per budget (the ranking score's aggregation).
- :func:`ranked`: :func:`leaderboard.table.ranked_table` with the citation attached; in Markdown and LaTeX a
  protocol whose records fall into several ranking groups (other data, other target weights) gets one table
  per group, captioned with what differs.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

import bench
from bench.metrics.asr import wilson
from bench.protocol import ASR_DEFINITIONS
from leaderboard.record import Record
from leaderboard.store import protocol_key
from leaderboard.table import (
    GROUP_NOTE,
    TIE_NOTE,
    group_labels,
    group_notes,
    leaderboard_order,
    ranked_precision,
    ranked_table,
    target_weights,
)

log = logging.getLogger(__name__)

FORMATS = ("csv", "md", "latex", "html")
TABLES = ("ranked", "long", "wide")
_CELL = re.compile(r"(?P<attack>[^/]+)/linf-(?P<eps>\d+)/(?P<mode>[^/]+)")

LONG_COLUMNS = [
    "protocol", "protocol_sha256", "protocol_kind", "data_sha256", "partial", "precision", "surrogate",
    "surrogate_sha256", "record_sha256", "recipe", "type", "package_version", "git_sha", "numerics", "torch", "cuda",
    "device", "run", "summary", "cell", "attack", "eps_255", "mode", "target", "target_sha256", "asr", "k", "n",
    "rate", "lo", "hi",
]  # fmt: skip


class ExportError(ValueError):
    """A table or export cannot be made as asked; the message names the bad input and the fix."""


# --- grouping and citation -----------------------------------------------------------------------------------------


def by_protocol(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by protocol key (``name-vN``, or ``name-vN-<hash8>`` off the registered hash), sorted."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(protocol_key(r.protocol), []).append(r)
    return dict(sorted(groups.items()))


def parse_cell(key: str) -> tuple[str, int, str]:
    """``pgd/linf-8/untargeted`` -> ``("pgd", 8, "untargeted")``."""
    m = _CELL.fullmatch(key)
    if m is None:
        raise ExportError(
            f"cell key {key!r} is not of the form '<attack>/linf-<eps_255>/<mode>'; the record is damaged."
        )
    return m["attack"], int(m["eps"]), m["mode"]


def citation_info(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Per protocol key what a citation needs: its full sha256 and kind, the data sha256s, the target weights
    (``name:sha256``), and the package versions and git shas recorded by the runs that produced the records."""
    info: dict[str, dict[str, Any]] = {}
    for key, recs in by_protocol(records).items():
        shas = sorted({r.protocol["sha256"] for r in recs})
        info[key] = {
            "sha256": shas[0] if len(shas) == 1 else ",".join(shas),
            "kind": recs[0].protocol.get("kind", ""),
            "data_sha256": sorted({r.data["sha256"] for r in recs}),
            "targets": sorted({f"{name}:{sha}" for r in recs for name, sha in target_weights(r)}),
            "package_version": sorted({str(r.provenance.get("package_version", "")) for r in recs}),
            "git_sha": sorted({str(r.provenance.get("git_sha") or "n/a") for r in recs}),
        }
    return info


def producer(info: dict[str, dict[str, Any]], *, short: bool = False) -> str:
    """``TransferBench <version(s)> (git <sha(s)>)`` of the records behind ``info``; the installed version when
    there are no records. ``short`` cuts git shas to 12 characters (for captions)."""
    versions = sorted({v for d in info.values() for v in d.get("package_version", [])})
    gits = sorted({g for d in info.values() for g in d.get("git_sha", [])})
    if not versions:
        return f"TransferBench {bench.__version__}"
    if short:
        gits = [g if g == "n/a" else g[:12] + ("+dirty" if g.endswith("+dirty") else "") for g in gits]
    return f"TransferBench {', '.join(versions)} (git {', '.join(gits)})"


def citation_line(info: dict[str, dict[str, Any]], what: str = "") -> str:
    """One line: the records' package version(s) and git sha(s), what the table shows, and per protocol its key,
    sha256, data sha256s and target weights."""
    parts = []
    for key, d in info.items():
        smoke = " [SMOKE: not benchmark results]" if d.get("kind") == "smoke" else ""
        targets = f" targets {','.join(d['targets'])}" if d.get("targets") else ""
        parts.append(f"protocol {key}{smoke} sha256 {d['sha256']} data sha256 {','.join(d['data_sha256'])}{targets}")
    head = producer(info) + (f" | {what}" if what else "")
    return " | ".join([head, *parts]) if parts else f"{head} | no records"


def _attach(df: pd.DataFrame, records: Sequence[Record], what: str, digits: int) -> pd.DataFrame:
    df.attrs["cite"] = citation_info(records)
    df.attrs["what"] = what
    df.attrs["digits"] = digits
    return df


# --- tables ----------------------------------------------------------------------------------------------------------


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _provenance_columns(r: Record) -> dict[str, Any]:
    p = r.provenance
    return {
        "package_version": str(p.get("package_version", "")),
        "git_sha": p.get("git_sha"),
        "numerics": p.get("numerics"),
        "torch": p.get("torch"),
        "cuda": p.get("cuda"),
        "device": p.get("device"),
    }


def pooled_interval(k: int, n: int, runs: int) -> tuple[float, float]:
    """95% interval of a seed group's pooled rate ``k / n`` (counts summed over ``runs`` seeds on the same images):
    the Wilson interval at the images of one run, ``n / runs``, since repeating a seed on the same images adds no
    new images (summing ``n`` would make it about sqrt(runs) too narrow). ``wilson`` is used with the fractional
    count ``k / runs``; its formula only needs the rate and the sample size."""
    return wilson(k / runs, n / runs)  # type: ignore[arg-type]


def _pooled_row(base: dict[str, Any], targets: dict[str, str], cell: str, target: str, asr: str, k: int, n: int,
                runs: int) -> dict[str, Any]:  # fmt: skip
    attack, eps, mode = parse_cell(cell)
    lo, hi = pooled_interval(k, n, runs)
    return {
        **base, "run": "pooled", "summary": True, "cell": cell, "attack": attack, "eps_255": eps, "mode": mode,
        "target": target, "target_sha256": targets.get(target), "asr": asr, "k": k, "n": n,
        "rate": k / n if n else float("nan"), "lo": lo, "hi": hi,
    }  # fmt: skip


def long_table(records: Iterable[Record]) -> pd.DataFrame:
    """Every ASR cell of every record in long format (see the module docstring); rates are fractions in [0, 1]."""
    records = list(records)
    rows: list[dict[str, Any]] = []
    for r in records:
        base = {
            "protocol": protocol_key(r.protocol),
            "protocol_sha256": r.protocol["sha256"],
            "protocol_kind": r.protocol.get("kind", ""),
            "data_sha256": r.data["sha256"],
            "partial": bool(r.data.get("partial", False)),
            "precision": ranked_precision(r),
            "surrogate": r.submission["name"],
            "surrogate_sha256": r.submission["sha256"],
            "record_sha256": r.content_sha256(),
            "recipe": str(r.submission.get("metadata", {}).get("recipe", "")),
            "type": r.submission["kind"],
            **_provenance_columns(r),
        }
        targets = dict(target_weights(r))
        pooled: dict[tuple[str, str, str], list[int]] = {}
        for i, run in enumerate(r.runs):
            for cell, content in run["cells"].items():
                attack, eps, mode = parse_cell(cell)
                for target, per_def in content.get("targets", {}).items():
                    for asr, rate in per_def.items():
                        k, n = int(rate.get("k", 0)), int(rate.get("n", 0))
                        acc = pooled.setdefault((cell, target, asr), [0, 0])
                        acc[0] += k
                        acc[1] += n
                        rows.append({
                            **base, "run": str(run.get("name", f"run{i}")), "summary": len(r.runs) == 1,
                            "cell": cell, "attack": attack, "eps_255": eps, "mode": mode, "target": target,
                            "target_sha256": targets.get(target), "asr": asr, "k": k, "n": n,
                            "rate": _num(rate.get("rate")), "lo": _num(rate.get("lo")), "hi": _num(rate.get("hi")),
                        })  # fmt: skip
        if len(r.runs) > 1:
            for (cell, target, asr), (k, n) in pooled.items():
                rows.append(_pooled_row(base, targets, cell, target, asr, k, n, len(r.runs)))
    df = pd.DataFrame(rows, columns=LONG_COLUMNS)
    if not df.empty:
        order = ["protocol", "surrogate", "surrogate_sha256", "partial", "precision", "record_sha256", "run", "attack",
                 "eps_255", "mode", "target", "asr"]  # fmt: skip
        df = df.sort_values(order, kind="stable").reset_index(drop=True)
    return _attach(df, records, "every ASR cell (rates as fractions, 95% Wilson intervals)", 4)


def surrogate_labels(records: Sequence[Record]) -> list[str]:
    """A display name per record, unique within its protocol: the name, plus 'partial', the precision when it is
    not the protocol's, what sets its ranking group apart where the protocol has several (other data or target
    weights, :func:`leaderboard.table.group_labels`), and the sha12 if still needed."""
    groups = group_labels(records)
    labels = [str(r.submission["name"]) + (" (partial)" if r.data.get("partial") else "")
              + (f" ({r.provenance['precision']})" if r.off_protocol_precision else "")
              + (f" [{g}]" if g else "") for r, g in zip(records, groups, strict=True)]  # fmt: skip
    keys = [protocol_key(r.protocol) for r in records]
    seen: dict[tuple[str, str], int] = {}
    for k, lab in zip(keys, labels, strict=True):
        seen[(k, lab)] = seen.get((k, lab), 0) + 1
    return [
        f"{lab} [{r.submission['sha256'][:12]}]" if seen[(k, lab)] > 1 else lab
        for r, k, lab in zip(records, keys, labels, strict=True)
    ]


def wide_table(
    records: Iterable[Record],
    asr: str = "target_correct",
    mode: str = "untargeted",
    attack: str = "pgd",
) -> pd.DataFrame:
    """Surrogate x target ASR in percent, one column group per budget (``eps 8/255``), plus the mean over targets.

    Rows are indexed by (protocol, surrogate) in leaderboard order, one per record (matched by its integrity
    hash, so a canonical and a deviating run of one surrogate keep their own rows and labels); the columns are a
    two-level index (budget, target). Seed groups show their pooled rate (= the mean over seeds for
    ``target_correct``).
    """
    if asr not in ASR_DEFINITIONS:
        raise ExportError(f"unknown ASR definition {asr!r}; use one of {', '.join(ASR_DEFINITIONS)}.")
    records = leaderboard_order(records)
    what = f"ASR % ({asr}), attack {attack}, {mode}; rows surrogates, columns targets per L-inf budget"
    if not records:
        return _attach(pd.DataFrame(), records, what, 2)
    labels = surrogate_labels(records)
    long = long_table(records)
    long = long[long["summary"] & (long["asr"] == asr) & (long["mode"] == mode) & (long["attack"] == attack)]
    if long.empty:
        attacks = sorted({parse_cell(c)[0] for r in records for c in r.runs[0]["cells"]})
        raise ExportError(f"no cells for attack {attack!r} in mode {mode!r}; the records have attacks {attacks} "
                          "and modes untargeted/targeted.")  # fmt: skip
    label_of = {r.content_sha256(): lab for r, lab in zip(records, labels, strict=True)}
    long = long.assign(label=[label_of[k] for k in long["record_sha256"]], value=100 * long["rate"])
    wide = long.pivot_table(index=["protocol", "label"], columns=["eps_255", "target"], values="value",
                            aggfunc="first", dropna=False)  # fmt: skip
    means = long.groupby(["protocol", "label", "eps_255"])["value"].mean().unstack("eps_255")
    for eps in means.columns:
        wide[(eps, "mean")] = means[eps]
    eps_values = sorted({e for e, _ in wide.columns})
    targets = sorted({t for _, t in wide.columns if t != "mean"})
    order = [(e, t) for e in eps_values for t in [*targets, "mean"] if (e, t) in wide.columns]
    wide = wide[order]
    rows = [(protocol_key(r.protocol), lab) for r, lab in zip(records, labels, strict=True)]
    wide = wide.reindex(pd.MultiIndex.from_tuples(rows, names=["protocol", "surrogate"]))
    wide.columns = pd.MultiIndex.from_tuples([(f"eps {e}/255", t) for e, t in wide.columns], names=["budget", "target"])
    wide.attrs["drop_empty"] = True
    return _attach(wide, records, what, 2)


def ranked(records: Iterable[Record]) -> pd.DataFrame:
    """The leaderboard's ranked table (:func:`leaderboard.table.ranked_table`) with the citation attached."""
    records = list(records)
    df = ranked_table(records)
    what = "ranked by score (mean transfer ASR %, ranking cell)"
    if not df.empty and df.duplicated(["protocol", "group", "rank"]).any():
        what += f"; {TIE_NOTE.removeprefix('= ')}"
    return _attach(df, records, what, 2)


def table(records: Iterable[Record], which: str = "ranked", **kwargs: Any) -> pd.DataFrame:
    """``ranked``, ``long`` or ``wide`` (``kwargs`` go to :func:`wide_table`)."""
    if which == "ranked":
        return ranked(records)
    if which == "long":
        return long_table(records)
    if which == "wide":
        return wide_table(records, **kwargs)
    raise ExportError(f"unknown table {which!r}; use one of {', '.join(TABLES)}.")


# --- renderers -------------------------------------------------------------------------------------------------------


def _flat(df: pd.DataFrame, sep: str = ": ") -> pd.DataFrame:
    """Index moved into columns, multi-level column names joined, so every renderer sees one header row."""
    out = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = [sep.join(str(p) for p in c if str(p)) for c in out.columns]
    out.attrs = dict(df.attrs)
    return out


def _fmt(v: Any, digits: int, missing: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _split(df: pd.DataFrame) -> list[tuple[dict[str, dict[str, Any]], pd.DataFrame, str]]:
    """One block per protocol (a table never mixes protocols in Markdown/LaTeX), protocol columns dropped; a ranked
    table gets one block per ranking group where a protocol has several, with what sets the group apart."""
    cite = df.attrs.get("cite", {})
    flat = _flat(df)
    if "protocol" not in flat.columns or flat.empty:
        return [(cite, flat, "")]
    blocks = []
    for key in sorted(flat["protocol"].unique()):
        ranked = {"runs", "score_std"} <= set(flat.columns)
        hidden = ("protocol", "kind", "group", "protocol_sha256", "protocol_kind", *(("numerics",) if ranked else ()))
        drop = [c for c in hidden if c in flat.columns]  # numerics: a ranked table's note names the rows instead
        sub = flat[flat["protocol"] == key]
        groups = list(dict.fromkeys(sub["group"])) if "group" in sub.columns else [""]
        for group in groups:
            whole = sub[sub["group"] == group] if "group" in sub.columns else sub
            part = whole.drop(columns=drop)
            if df.attrs.get("drop_empty"):  # wide tables: another protocol's targets and budgets are not this one's
                part = part.dropna(axis=1, how="all")
            note = f"ranked separately ({GROUP_NOTE}): {group}" if len(groups) > 1 else ""
            if ranked:
                note = "; ".join(filter(None, [note, *group_notes(whole)]))
            blocks.append(({key: cite[key]} if key in cite else {}, part.reset_index(drop=True), note))
    return blocks


def _what(df: pd.DataFrame, note: str) -> str:
    what = str(df.attrs.get("what", ""))
    return f"{what}; {note}" if note and what else note or what


def to_csv(df: pd.DataFrame) -> str:
    """CSV with a leading ``# <citation line>``; read it back with ``pandas.read_csv(path, skiprows=1)``."""
    head = "# " + citation_line(df.attrs.get("cite", {}), df.attrs.get("what", "")) + "\n"
    return head + _flat(df, sep=" | ").to_csv(index=False, lineterminator="\n")


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub/pandoc pipe tables, one per protocol, each preceded by a ``Table:`` caption with the protocol hash."""
    digits = int(df.attrs.get("digits", 4))
    out = []
    for cite, sub, note in _split(df):
        lines = ["Table: " + citation_line(cite, _what(df, note)).replace("\n", " "), ""]
        if sub.empty:
            lines.append("(no rows)")
        else:
            numeric = [pd.api.types.is_numeric_dtype(sub[c]) and not pd.api.types.is_bool_dtype(sub[c])
                       for c in sub.columns]  # fmt: skip
            lines.append("| " + " | ".join(_md_cell(str(c)) for c in sub.columns) + " |")
            lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
            for row in sub.itertuples(index=False):
                lines.append("| " + " | ".join(_md_cell(_fmt(v, digits, "–")) for v in row) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
}  # fmt: skip


def _latex_value(v: Any, digits: int) -> str:
    """One LaTeX table cell: the value escaped, or an en dash (``--``, unescaped) where it is missing."""
    missing = "\x00"  # a marker no value formats to
    text = _fmt(v, digits, missing)
    return "--" if text == missing else latex_escape(text)


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX document (every special character escaped, newlines as spaces, and ``--`` kept
    as two hyphens, as in a command-line option, not the en dash LaTeX would print)."""
    out = "".join(_LATEX_SPECIAL.get(c, c) for c in str(text).replace("\n", " "))
    return out.replace("--", "-{}-").replace("--", "-{}-")  # twice: "---" overlaps itself


def _latex_block(cite: dict[str, dict[str, Any]], sub: pd.DataFrame, df: pd.DataFrame, label: str, note: str) -> str:
    digits = int(df.attrs.get("digits", 4))
    what = _what(df, note)
    short = "; ".join(f"protocol \\texttt{{{latex_escape(k)}}} (sha256 \\texttt{{{d['sha256'][:16]}}}\\ldots)"
                      for k, d in cite.items())  # fmt: skip
    caption = f"{latex_escape(producer(cite, short=True))}: {latex_escape(what)}. {short}."
    lines = ["% " + citation_line(cite, what).replace("\n", " "), r"\begin{table}[t]", r"\centering",
             rf"\caption{{{caption}}}", rf"\label{{{label}}}"]  # fmt: skip
    if sub.empty:
        lines += [r"\begin{tabular}{l}", r"\toprule", r"(no rows) \\", r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines)
    cols = list(sub.columns)
    numeric = [pd.api.types.is_numeric_dtype(sub[c]) and not pd.api.types.is_bool_dtype(sub[c]) for c in cols]
    lines.append(r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}")
    lines.append(r"\toprule")
    groups = [c.split(": ", 1) if ": " in c else ["", c] for c in cols]
    if any(g for g, _ in groups):
        spans: list[tuple[str, int, int]] = []  # (group, first column, last column), 1-based
        for i, (g, _) in enumerate(groups, start=1):
            if spans and spans[-1][0] == g:
                spans[-1] = (g, spans[-1][1], i)
            else:
                spans.append((g, i, i))
        cells = [rf"\multicolumn{{{b - a + 1}}}{{c}}{{{latex_escape(g)}}}" if g else " & ".join([""] * (b - a + 1))
                 for g, a, b in spans]  # fmt: skip
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{a}-{b}}}" for g, a, b in spans if g))
        lines.append(" & ".join(latex_escape(name) for _, name in groups) + r" \\")
    else:
        lines.append(" & ".join(latex_escape(c) for c in cols) + r" \\")
    lines.append(r"\midrule")
    for row in sub.itertuples(index=False):
        lines.append(" & ".join(_latex_value(v, digits) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def to_latex(df: pd.DataFrame, *, label: str = "tab:transferbench") -> str:
    """booktabs tables (``\\toprule``/``\\midrule``/``\\bottomrule``), one ``table`` float per protocol.

    Each block starts with a ``%`` comment line carrying the protocol key and full sha256; the caption
    repeats the key with a shortened hash. Needs ``\\usepackage{booktabs}`` in the document.
    """
    blocks = _split(df)
    return "\n\n".join(
        _latex_block(cite, sub, df, label if len(blocks) == 1 else f"{label}-{i + 1}", note)
        for i, (cite, sub, note) in enumerate(blocks)
    ) + "\n"  # fmt: skip


def render(
    records: Iterable[Record], fmt: str, *, which: str = "ranked", title: str | None = None, **kwargs: Any
) -> str:
    """The leaderboard as text in one of :data:`FORMATS` (``html`` is the static page of :mod:`leaderboard.page`)."""
    records = list(records)
    if fmt == "html":
        from leaderboard.page import render_page

        return render_page(records, **({"title": title} if title else {}))
    df = table(records, which, **kwargs)
    if fmt == "csv":
        return to_csv(df)
    if fmt == "md":
        return to_markdown(df)
    if fmt == "latex":
        return to_latex(df)
    raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
