"""The leaderboard as one self-contained static HTML page (inline CSS and a little vanilla JS, nothing fetched).

One section per protocol (benchmark protocols first, smoke protocols visibly labelled), rows in rank order
(:func:`leaderboard.table.ranked_table`); a protocol whose records were evaluated on other data or against
other target weights gets one ranked table per ranking group, each headed by what differs. Every row has a
``<details>`` element with the provenance of its number (protocol, data and target hashes, surrogate sha256,
package version and git sha, torch/CUDA, device, precision, seed, wall time) and a link to the model card
when the submission came from the Hub (``hf://owner/repo@rev`` -> ``https://huggingface.co/owner/repo/tree/rev``).

Interaction: click a column header to sort (again to reverse), type in the filter box to hide rows, pick a
protocol to show only its table. The state lives in the URL fragment, ``#sort=score&dir=desc&filter=abc&
protocol=cifar10-v1``, which the page applies on load, so a view can be linked (and tested headlessly).

Safety: every string from a record is HTML-escaped, and a Content-Security-Policy allows only the page's
own script (by its sha256), so even a record that slipped past escaping could not run code.
The page is a pure function of the records (no timestamps), so the same records give the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

import bench
from leaderboard.record import Record
from leaderboard.store import atomic_write_text, protocol_key
from leaderboard.table import (
    GROUP_NOTE,
    TIE_NOTE,
    GroupKey,
    group_labels,
    group_notes,
    group_order,
    leaderboard_order,
    ranked_table,
    ranking_groups,
    target_weights,
)

_HF = re.compile(r"hf://(?P<owner>[A-Za-z0-9][\w.-]*)/(?P<repo>[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^\s]+))?")

# (ranked_table column, header, numeric, first-click direction, decimals)
COLUMNS: tuple[tuple[str, str, bool, str, int], ...] = (
    ("rank", "rank", True, "asc", 0),
    ("surrogate", "surrogate", False, "asc", 0),
    ("recipe", "recipe", False, "asc", 0),
    ("type", "type", False, "asc", 0),
    ("runs", "runs", True, "desc", 0),
    ("score", "score %", True, "desc", 2),
    ("clean_acc", "clean acc %", True, "desc", 2),
    ("smoothness", "smoothness", True, "desc", 3),
    ("similarity", "similarity", True, "desc", 3),
    ("data", "data sha256", False, "asc", 0),
    ("sha256", "surrogate sha256", False, "asc", 0),
)

CSS = """
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #fff; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa;
  --smoke: #9a6700; --smokebg: #fff8c5; --part: #8250df; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1; --line: #3d444d;
  --head: #151b23; --smokebg: #3b2e0a; --smoke: #e3b341; --part: #ab7df8; } }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 1.5rem; }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; } h2 { font-size: 1.15rem; margin: 1.8rem 0 .3rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; }
.muted, .cite, .note { color: var(--muted); } .cite code { word-break: break-all; }
.controls { display: flex; gap: 1rem; flex-wrap: wrap; align-items: center; margin: .8rem 0; }
input, select { font: inherit; padding: .2rem .4rem; }
table { border-collapse: collapse; width: 100%; } th, td { border-bottom: 1px solid var(--line);
  padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--head); white-space: nowrap; } th button { all: unset; cursor: pointer; font-weight: 600; }
th[aria-sort=ascending] button::after { content: " \\25B2"; }
th[aria-sort=descending] button::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td code { font-size: .85em; }
details summary { cursor: pointer; } dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .8rem;
  margin: .4rem 0; font-size: .85em; } dt { color: var(--muted); } dd { margin: 0; word-break: break-all; }
.badge { display: inline-block; font-size: .75em; font-weight: 600; padding: 0 .4em; border-radius: .6em;
  border: 1px solid currentColor; margin-left: .3em; } .badge.smoke { color: var(--smoke); }
tr.smoke td { background: var(--smokebg); } .badge.partial { color: var(--part); }
"""

JS = """
(function () {
  "use strict";
  var state = {sort: "", dir: "", filter: "", protocol: ""};
  var filterBox = document.getElementById("tb-filter");
  var protoSel = document.getElementById("tb-protocol");
  function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
  function value(row, idx, numeric) {
    var v = row.cells[idx] ? row.cells[idx].getAttribute("data-value") : null;
    if (numeric) { var x = parseFloat(v); return isNaN(x) ? null : x; }
    return v === null || v === "" ? null : v.toLowerCase();
  }
  function sortTable(table, key, dir) {
    var ths = table.tHead.rows[0].cells, idx = -1, numeric = false, sign = dir === "asc" ? 1 : -1;
    for (var i = 0; i < ths.length; i++) {
      ths[i].removeAttribute("aria-sort");
      if (ths[i].getAttribute("data-key") === key) { idx = i; numeric = ths[i].getAttribute("data-type") === "num"; }
    }
    if (idx < 0) { return; }
    ths[idx].setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, idx, numeric), y = value(b, idx, numeric);
      if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
      return x < y ? -sign : (x > y ? sign : 0);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function apply() {
    var q = state.filter.toLowerCase();
    all("table.tb").forEach(function (t) { if (state.sort) { sortTable(t, state.sort, state.dir || "asc"); } });
    all("table.tb tbody tr").forEach(function (r) {
      r.hidden = q !== "" && (r.getAttribute("data-search") || "").indexOf(q) < 0;
    });
    all("section.protocol").forEach(function (s) {
      s.hidden = state.protocol !== "" && s.getAttribute("data-protocol") !== state.protocol;
      var shown = s.querySelectorAll("tbody tr:not([hidden])").length;
      var out = s.querySelector(".shown");
      if (out) { out.textContent = shown + " of " + s.querySelectorAll("tbody tr").length + " shown"; }
    });
    filterBox.value = state.filter;
    protoSel.value = state.protocol;
  }
  function readHash() {
    var p = new URLSearchParams(location.hash.replace(/^#/, ""));
    state.sort = p.get("sort") || ""; state.dir = p.get("dir") === "desc" ? "desc" : (p.get("sort") ? "asc" : "");
    state.filter = p.get("filter") || ""; state.protocol = p.get("protocol") || "";
  }
  function writeHash() {
    var p = new URLSearchParams();
    Object.keys(state).forEach(function (k) { if (state[k]) { p.set(k, state[k]); } });
    try { history.replaceState(null, "", "#" + p.toString()); } catch (e) { /* file:// in some browsers */ }
  }
  all("table.tb thead th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      if (state.sort === key) { state.dir = state.dir === "asc" ? "desc" : "asc"; }
      else { state.sort = key; state.dir = th.getAttribute("data-dir") || "asc"; }
      apply(); writeHash();
    });
  });
  filterBox.addEventListener("input", function () { state.filter = filterBox.value; apply(); writeHash(); });
  protoSel.addEventListener("change", function () { state.protocol = protoSel.value; apply(); writeHash(); });
  window.addEventListener("hashchange", function () { readHash(); apply(); });
  readHash(); apply();
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def _e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def model_card_url(source: str | None) -> str | None:
    """``hf://owner/repo@rev`` -> ``https://huggingface.co/owner/repo/tree/rev`` (rev defaults to main); else None."""
    m = _HF.fullmatch(source or "")
    if m is None:
        return None
    rev = m["rev"] or "main"
    return f"https://huggingface.co/{m['owner']}/{m['repo']}/tree/{quote(rev, safe='')}"


def _num(v: Any, decimals: int) -> tuple[str, str]:
    """(data-value, shown text) of a number; missing values sort last and show as an en dash."""
    if v is None or pd.isna(v):
        return "", "–"
    return repr(float(v)), f"{float(v):.{decimals}f}" if decimals else str(int(v))


def _provenance(r: Record) -> list[tuple[str, str]]:
    """(label, already-escaped HTML) pairs for the details list of one record."""
    p, d, s = r.provenance, r.data, r.submission
    meta = s.get("metadata", {}) or {}
    wall = p.get("wall_time_s")
    url = model_card_url(s.get("source"))
    source = _e(s.get("source", ""))
    if url:
        source = f'<a href="{_e(url)}" rel="noopener noreferrer">{source}</a> (model card)'
    scores = ", ".join(f"{100 * float(x):.2f}" for x in r.score.get("per_run", []) or [])
    items = [
        ("protocol", f"{_e(protocol_key(r.protocol))} ({_e(r.protocol.get('status', ''))})"),
        ("protocol sha256", f"<code>{_e(r.protocol['sha256'])}</code>"),
        ("ranking", f"{_e(r.protocol.get('ranking_asr', ''))} ASR at {_e(r.protocol.get('ranking_cell', ''))}"),
        ("data", f"{_e(d.get('source', ''))}, {_e(d.get('n_images', ''))} images"
                 + (" (partial: --limit run)" if d.get("partial") else "")),
        ("data sha256", f"<code>{_e(d['sha256'])}</code>"),
        ("target sha256", "<br>".join(f"{_e(n)} <code>{_e(sha)}</code>" for n, sha in target_weights(r))),
        ("surrogate sha256", f"<code>{_e(s['sha256'])}</code>"),
        ("source", source),
        ("kind", _e(s.get("kind", "")) + (f", {len(r.runs)} runs (scores % {_e(scores)})" if len(r.runs) > 1 else "")),
    ]  # fmt: skip
    for key in ("recipe", "paper", "authors", "description"):
        if meta.get(key):
            items.append((key, _e(meta[key])))
    items += [
        ("package", f"{_e(p.get('package', 'transferbench'))} {_e(p.get('package_version', ''))}"),
        ("git sha", f"<code>{_e(p.get('git_sha') or 'n/a')}</code>"),
        ("python / torch", f"{_e(p.get('python', ''))} / {_e(p.get('torch', ''))}"),
        ("CUDA / cuDNN", f"{_e(p.get('cuda') or 'none')} / {_e(p.get('cudnn') or 'none')}"),
        ("device", _e(p.get("device", ""))),
        (
            "precision",
            _e(p.get("precision", ""))
            + (f" (the protocol pins {_e(p.get('protocol_precision', ''))})" if r.off_protocol_precision else ""),
        ),
        ("seed", _e(p.get("seed", ""))),
        ("batch size", _e(p.get("batch_size", ""))),
        ("wall time", f"{float(wall):.1f} s" if isinstance(wall, (int, float)) else "n/a"),
        ("created (UTC)", _e(p.get("created_utc", ""))),
        ("record sha256", f"<code>{_e(r.content_sha256())}</code>"),
    ]
    return items


def _row(row: pd.Series, r: Record) -> str:
    smoke = r.protocol.get("kind") == "smoke"
    partial = bool(r.data.get("partial"))
    off = r.off_protocol_precision
    words = (
        r.submission["name"],
        row["recipe"],
        row["type"],
        r.submission["sha256"],
        r.submission.get("source", ""),
        "smoke" if smoke else "",
        "partial" if partial else "",
        r.provenance["precision"] if off else "",
    )
    search = " ".join(str(x) for x in words).lower()
    cells = []
    for col, _, numeric, _, decimals in COLUMNS:
        if col == "surrogate":
            badges = (
                ('<span class="badge smoke">SMOKE</span>' if smoke else "")
                + ('<span class="badge partial">partial</span>' if partial else "")
                + (f'<span class="badge partial" title="not the protocol\'s precision">{_e(r.provenance["precision"])}'
                   "</span>" if off else "")
            )  # fmt: skip
            dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in _provenance(r))
            cells.append(f'<td data-value="{_e(r.submission["name"])}"><details><summary>'
                         f'<span class="name">{_e(r.submission["name"])}</span>{badges}</summary><dl>{dl}</dl>'
                         "</details></td>")  # fmt: skip
        elif numeric:
            value, text = _num(row[col], decimals)
            if col == "score" and not pd.isna(row.get("score_std")):
                text += f" ± {float(row['score_std']):.2f}"
            cells.append(f'<td class="num" data-value="{_e(value)}">{_e(text)}</td>')
        else:
            text = "" if pd.isna(row[col]) else str(row[col])
            shown = f"<code>{_e(text)}</code>" if col in ("data", "sha256") else _e(text)
            cells.append(f'<td data-value="{_e(text)}">{shown}</td>')
    cls = " ".join(c for c in ("smoke" if smoke else "", "partial" if partial or off else "") if c)
    attrs = f' class="{cls}"' if cls else ""
    return f'<tr{attrs} data-search="{_e(search)}">' + "".join(cells) + "</tr>"


def _table(df: pd.DataFrame, recs: list[Record], head: str) -> str:
    """One ranked table; ``df`` is :func:`ranked_table` of ``recs`` (one ranking group), whose rows are the
    records in :func:`leaderboard.table.leaderboard_order`."""
    rows = [_row(row, r) for (_, row), r in zip(df.iterrows(), leaderboard_order(recs), strict=True)]
    return f'<table class="tb"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _section(key: str, recs: list[Record]) -> str:
    """One protocol: its citation, then one ranked table per ranking group (one in the common case)."""
    smoke = any(r.protocol.get("kind") == "smoke" for r in recs)
    shas = sorted({r.protocol["sha256"] for r in recs})
    datas = sorted({r.data["sha256"] for r in recs})
    targets = sorted({(n, sha) for r in recs for n, sha in target_weights(r)})
    r0 = recs[0]
    label = ' <span class="badge smoke">SMOKE: not benchmark results</span>' if smoke else ""
    head = "".join(
        f'<th data-key="{_e(col)}" data-type="{"num" if numeric else "text"}" data-dir="{d}" scope="col">'
        f'<button type="button">{_e(title)}</button></th>'
        for col, title, numeric, d, _ in COLUMNS
    )
    keys, labels = ranking_groups(recs), group_labels(recs)
    order = group_order(keys)
    groups: dict[GroupKey, list[Record]] = {}
    for r, k in sorted(zip(recs, keys, strict=True), key=lambda rk: order[rk[1]]):
        groups.setdefault(k, []).append(r)
    label_of = dict(zip(keys, labels, strict=True))
    tables, tie = [], False
    for k, members in groups.items():
        df = ranked_table(members)
        tie = tie or bool(df["rank"].duplicated().any())
        sub = f"<h3>Ranked separately: {_e(label_of[k])}</h3>" if len(groups) > 1 else ""
        notes_here = "".join(f'<p class="note">{_e(n[0].upper() + n[1:])}.</p>' for n in group_notes(df))
        tables.append(sub + _table(df, members, head) + notes_here)
    notes = f" {len(groups)} ranking groups: {_e(GROUP_NOTE)}." if len(groups) > 1 else ""
    notes += f" {_e(TIE_NOTE.removeprefix('= ').capitalize())}." if tie else ""
    target_list = ", ".join(f"{_e(n)} <code>{_e(sha)}</code>" for n, sha in targets)
    return (
        f'<section class="protocol" data-protocol="{_e(key)}">'
        f"<h2>{_e(key)}{label}</h2>"
        f'<p class="cite">Cite as {_e(key)} (protocol sha256 <code>{_e(", ".join(shas))}</code>; data sha256 '
        f"<code>{_e(', '.join(datas))}</code>; target sha256 {target_list}). Score: mean over targets of the "
        f"{_e(r0.protocol.get('ranking_asr', 'target_correct'))} transfer ASR at "
        f"{_e(r0.protocol.get('ranking_cell', ''))}, in %; seed groups: mean ± std over seeds.{notes} "
        f'<span class="shown"></span></p>'
        f"{''.join(tables)}</section>"
    )


def render_page(records: Iterable[Record], *, title: str = "TransferBench leaderboard") -> str:
    """The whole page as one HTML string (a pure function of the records and the title)."""
    records = list(records)
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(protocol_key(r.protocol), []).append(r)
    order = sorted(groups, key=lambda k: (groups[k][0].protocol.get("kind") == "smoke", k))
    sections = [_section(k, groups[k]) for k in order]
    options = "".join(f'<option value="{_e(k)}">{_e(k)}</option>' for k in order)
    body = "".join(sections) or '<p class="muted">No results yet: run <code>transferbench demo</code>.</p>'
    script_hash = base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; img-src data:"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{_e(title)}</h1>"
        f'<p class="muted">{len(records)} record(s) in {len(order)} protocol(s); generated by TransferBench '
        f"{_e(bench.__version__)}. Numbers are comparable only within a protocol (same sha256). "
        "Click a header to sort; open a name for its provenance.</p>"
        '<div class="controls"><label>Protocol <select id="tb-protocol"><option value="">all</option>'
        f"{options}</select></label>"
        '<label>Filter <input id="tb-filter" type="search" placeholder="name, recipe, type, sha256"></label>'
        "<noscript>(sorting and filtering need JavaScript)</noscript></div></header>\n"
        f"<main>{body}</main>\n<script>{JS}</script>\n</body></html>\n"
    )


def write_page(records: Iterable[Record], path: str | os.PathLike, *, title: str = "TransferBench leaderboard") -> Path:
    """Render and write the page atomically (readers see the old page or the new one, never a part)."""
    out = Path(path)
    atomic_write_text(out, render_page(records, title=title))
    return out
