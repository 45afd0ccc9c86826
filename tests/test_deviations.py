"""Runs that depart from their protocol (--limit, --precision): kept, shown, never ranked beside canonical ones."""

from __future__ import annotations

import copy
from pathlib import Path

from test_leaderboard import make_record

from leaderboard.cite import entry_bibtex
from leaderboard.export import long_table, surrogate_labels, wide_table
from leaderboard.page import render_page
from leaderboard.record import Record
from leaderboard.store import LocalStore
from leaderboard.table import format_table, ranked_table


def at_precision(rec: Record, precision: str, *, score: float | None = None) -> Record:
    """A copy of ``rec`` as if evaluated with ``--precision precision`` under an fp32 protocol."""
    out = copy.deepcopy(rec)
    matches = precision == "fp32"
    out.provenance.update(precision=precision, protocol_precision="fp32", precision_matches_protocol=matches)
    if score is not None:
        out.score["mean"] = score
    return out


def test_canonical_record_has_no_deviations_and_keeps_its_file_name() -> None:
    rec = at_precision(make_record("sur"), "fp32")
    assert rec.deviations == [] and rec.file_stem == rec.submission_id and not rec.off_protocol_precision
    assert make_record("old-record-without-the-key").deviations == []  # records older than the key stay canonical


def test_deviations_are_named_and_change_the_file_name() -> None:
    bf16 = at_precision(make_record("sur"), "bf16")
    assert bf16.off_protocol_precision
    assert bf16.deviations == ["precision bf16 (the protocol pins fp32)"]
    assert bf16.file_stem == f"{bf16.submission_id}.bf16"
    part = at_precision(make_record("sur", partial=True), "bf16")
    assert part.deviations[0].startswith("partial: ") and len(part.deviations) == 2
    assert part.file_stem == f"{part.submission_id}.limit{part.data['n_images']}.bf16"


def test_store_keeps_other_precision_and_partial_runs_beside_the_canonical_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    fp32 = at_precision(make_record("sur"), "fp32")
    paths = [store.add(fp32), store.add(at_precision(fp32, "bf16")), store.add(make_record("sur", partial=True))]
    assert len(set(paths)) == 3 and all(p.parent == paths[0].parent for p in paths)
    assert store.read(paths[0]).content_sha256() == fp32.content_sha256()  # the canonical record is untouched
    assert sorted(r.provenance["precision"] for r in store.records()) == ["bf16", "fp32", "fp32"]


def test_other_precision_ranks_after_canonical_runs_and_is_marked() -> None:
    fp32 = at_precision(make_record("a", score=0.30), "fp32")
    best_but_bf16 = at_precision(make_record("b", score=0.90), "bf16")
    df = ranked_table([best_but_bf16, fp32, make_record("c", score=0.50)])
    assert list(df["surrogate"]) == ["c", "a", "b"] and list(df["rank"]) == [1, 2, 3]
    assert list(df["precision"]) == ["fp32", "fp32", "bf16*"]
    text = format_table(df)
    assert "bf16*" in text and "* not the protocol's precision" in text
    assert "not the protocol's precision" not in format_table(ranked_table([fp32]))


def test_exports_page_and_citation_tell_the_precisions_apart() -> None:
    fp32 = at_precision(make_record("sur", score=0.3), "fp32")
    bf16 = at_precision(fp32, "bf16", score=0.4)
    records = [bf16, fp32]
    assert surrogate_labels(records) == ["sur (bf16)", "sur"]
    assert set(long_table(records)["precision"]) == {"fp32", "bf16*"}
    wide = wide_table(records)
    assert list(wide.index.get_level_values("surrogate")) == ["sur", "sur (bf16)"]  # canonical first
    assert not wide.isna().all(axis=1).any()  # each row found its own record
    page = render_page(records)
    assert page.count("<tr") >= 3 and "the protocol pins fp32" in page and 'title="not the protocol' in page
    assert "computed in bf16, not the protocol's fp32" in entry_bibtex(bf16)
    assert "computed in" not in entry_bibtex(fp32)


def test_page_rows_match_their_records_when_only_the_precision_differs() -> None:
    fp32 = at_precision(make_record("sur", score=0.3), "fp32")
    bf16 = at_precision(fp32, "bf16", score=0.4)
    rows = [r for r in render_page([bf16, fp32]).split("<tr")[1:] if "data-search" in r]
    assert len(rows) == 2
    canonical, deviating = rows  # canonical first, whatever the input order
    assert ">30.00<" in canonical and "not the protocol" not in canonical
    assert ">40.00<" in deviating and 'title="not the protocol' in deviating and "the protocol pins fp32" in deviating
