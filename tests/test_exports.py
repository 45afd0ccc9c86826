"""Long/wide tables and their CSV, Markdown and LaTeX exports; plots and the factor analysis; BibTeX citations."""

from __future__ import annotations

import copy
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_leaderboard import make_record

import bench
from bench.metrics.asr import wilson
from bench.protocol import get_protocol
from leaderboard.cite import BENCHMARK_BIBTEX, bib_escape, cite_text, entry_bibtex, seed_bibtex
from leaderboard.consistency import run_scores
from leaderboard.export import (
    ExportError,
    _latex_value,
    by_protocol,
    latex_escape,
    long_table,
    render,
    to_csv,
    to_latex,
    to_markdown,
    wide_table,
)
from leaderboard.plots import (
    PlotError,
    analysis_records,
    analysis_runs,
    analysis_table,
    asr_vs_eps,
    asr_vs_factors,
    heatmap,
    ols_r2,
    record_factors,
    write_plots,
)
from leaderboard.record import Record

SMOKE = get_protocol("smoke-digits")
CIFAR = get_protocol("cifar10")


def _records() -> list[Record]:
    return [
        make_record("alpha", score=0.3),
        make_record("beta_&_co", score=0.6, n_runs=2),
        make_record("gamma", score=0.45),
        make_record("cifar-one", score=0.2, protocol="cifar10"),
    ]


def _varied(n: int) -> list[Record]:
    """``n`` smoke records whose score, smoothness and similarity vary (make_record keeps the latter constant)."""
    rng = np.random.default_rng(5)
    recs = []
    for i in range(n):
        r = make_record(f"s{i}", score=float(rng.uniform(0.1, 0.9)))
        r.runs[0]["smoothness"]["mean"] = float(rng.uniform(0.5, 5.0))
        for t, s in r.runs[0]["similarity"].items():
            s["mean"] = float(rng.uniform(0.0, 0.5)) + 0.01 * len(t)
        recs.append(r)
    return recs


# --- long and wide tables ------------------------------------------------------------------------------------------


def test_long_table_has_every_cell_and_the_records_numbers() -> None:
    recs = _records()
    df = long_table(recs)
    per_record = {"alpha": 1, "beta_&_co": 3, "gamma": 1, "cifar-one": 1}  # runs (+ pooled row for a seed group)
    expected = sum(
        per_record[r.submission["name"]] * len(get_protocol(r.protocol["name"]).cells()) * len(r.targets) * 3
        for r in recs
    )
    assert len(df) == expected
    row = df[(df["surrogate"] == "alpha") & (df["cell"] == SMOKE.ranking_cell) & (df["target"] == "smoke-mlp")
             & (df["asr"] == "target_correct")].iloc[0]  # fmt: skip
    src = recs[0].runs[0]["cells"][SMOKE.ranking_cell]["targets"]["smoke-mlp"]["target_correct"]
    assert (row["k"], row["n"]) == (src["k"], src["n"])
    assert row["rate"] == pytest.approx(src["rate"]) and row["lo"] == pytest.approx(src["lo"])
    assert (row["attack"], row["eps_255"], row["mode"]) == ("pgd", 32, "untargeted")
    assert row["protocol"] == "smoke-digits-v2" and row["protocol_sha256"] == SMOKE.sha256 and bool(row["summary"])
    assert row["recipe"] == "ST" and row["surrogate_sha256"] == recs[0].submission["sha256"]
    pooled = df[(df["surrogate"] == "beta_&_co") & (df["run"] == "pooled") & (df["cell"] == SMOKE.ranking_cell)
                & (df["target"] == "smoke-mlp") & (df["asr"] == "target_correct")].iloc[0]  # fmt: skip
    runs = [r["cells"][SMOKE.ranking_cell]["targets"]["smoke-mlp"]["target_correct"] for r in recs[1].runs]
    assert pooled["k"] == sum(x["k"] for x in runs) and pooled["n"] == sum(x["n"] for x in runs)
    assert pooled["rate"] == pytest.approx(np.mean([x["rate"] for x in runs]))  # equal denominators
    # two seeds on the same images: the interval is over the images of one run (n / 2), not over the summed n
    assert (pooled["lo"], pooled["hi"]) == pytest.approx(wilson(pooled["k"] / 2, pooled["n"] / 2))
    lo_summed, hi_summed = wilson(int(pooled["k"]), int(pooled["n"]))
    assert pooled["hi"] - pooled["lo"] > hi_summed - lo_summed
    assert not df[(df["surrogate"] == "beta_&_co") & (df["run"] != "pooled")]["summary"].any()


def test_wide_table_pivots_surrogate_by_target_per_budget() -> None:
    recs = [r for r in _records() if r.protocol["name"] == "smoke-digits"]
    wide = wide_table(recs)
    assert list(wide.index.get_level_values("surrogate")) == ["beta_&_co", "gamma", "alpha"]  # leaderboard order
    assert list(dict.fromkeys(wide.columns.get_level_values(0))) == [f"eps {e}/255" for e in SMOKE.eps_255]
    alpha = recs[0].runs[0]["cells"]["pgd/linf-16/untargeted"]["targets"]
    got = wide.loc[("smoke-digits-v2", "alpha")]
    for t in SMOKE.targets:
        assert got[("eps 16/255", t)] == pytest.approx(100 * alpha[t]["target_correct"]["rate"])
    assert got[("eps 16/255", "mean")] == pytest.approx(100 * np.mean([alpha[t]["target_correct"]["rate"]
                                                                       for t in SMOKE.targets]))  # fmt: skip
    targeted = wide_table(recs, asr="all", mode="targeted", attack="dim")
    dim = recs[0].runs[0]["cells"]["dim/linf-64/targeted"]["targets"]["smoke-cnn-a"]["all"]["rate"]
    assert targeted.loc[("smoke-digits-v2", "alpha"), ("eps 64/255", "smoke-cnn-a")] == pytest.approx(100 * dim)
    with pytest.raises(ExportError, match="unknown ASR"):
        wide_table(recs, asr="nope")
    with pytest.raises(ExportError, match="attack 'fgsm'"):
        wide_table(recs, attack="fgsm")


def test_same_surrogate_names_get_distinct_labels() -> None:
    full, part = make_record("same", score=0.5), make_record("same", score=0.4, partial=True)
    wide = wide_table([part, full])
    assert list(wide.index.get_level_values("surrogate")) == ["same", "same (partial)"]


def test_a_canonical_and_a_deviating_run_of_one_surrogate_keep_their_own_rows() -> None:
    full, part = make_record("same", score=0.5), make_record("same", score=0.4, partial=True)
    long = long_table([full, part])
    assert set(long["record_sha256"]) == {full.content_sha256(), part.content_sha256()}
    wide = wide_table([full, part])
    col = ("eps 32/255", SMOKE.targets[0])
    for rec, label in ((full, "same"), (part, "same (partial)")):
        rate = rec.runs[0]["cells"][SMOKE.ranking_cell]["targets"][SMOKE.targets[0]]["target_correct"]["rate"]
        assert wide.loc[("smoke-digits-v2", label), col] == pytest.approx(100 * rate)


def test_long_table_rows_carry_target_weights_and_the_records_provenance() -> None:
    rec = make_record("old", score=0.5)
    rec.provenance.update(package_version="0.0.9", git_sha="f" * 40, torch="2.3.1", cuda="12.1", device="NVIDIA H100")
    df = long_table([rec])
    assert set(zip(df["target"], df["target_sha256"], strict=True)) == {(t, rec.targets[t]["sha256"]) for t in
                                                                        SMOKE.targets}  # fmt: skip
    assert set(df["package_version"]) == {"0.0.9"} and set(df["git_sha"]) == {"f" * 40}
    assert set(df["device"]) == {"NVIDIA H100"} and set(df["cuda"]) == {"12.1"} and set(df["torch"]) == {"2.3.1"}
    caption = to_csv(df).splitlines()[0]
    # the version and git sha that produced the numbers, not those of the installation exporting them
    assert caption.startswith(f"# TransferBench 0.0.9 (git {'f' * 40})")
    for t in SMOKE.targets:
        assert f"{t}:{rec.targets[t]['sha256']}" in caption
    assert f"TransferBench 0.0.9 (git {'f' * 12})" in to_latex(df)  # the LaTeX caption shortens the git sha


def test_markdown_and_latex_rank_each_group_in_its_own_table() -> None:
    recs = [make_record("a", score=0.4), make_record("b", score=0.5),
            make_record("jpeg", score=0.9, data_sha256="e" * 64)]  # fmt: skip
    md = render(recs, "md")
    captions = [ln for ln in md.splitlines() if ln.startswith("Table:")]
    assert len(captions) == 2 and all("ranked separately" in c for c in captions)
    assert any(f"data sha256 {'e' * 10}" in c for c in captions)
    assert "| 1 | b |" in md and "| 2 | a |" in md and "| 1 | jpeg |" in md  # ranked within each group
    latex = render(recs, "latex")
    assert latex.count(r"\begin{table}") == 2 and r"\label{tab:transferbench-2}" in latex


def test_ranked_exports_say_when_ranks_are_shared() -> None:
    tied = render([make_record("a", score=0.5), make_record("b", score=0.5)], "md")
    assert "share a rank" in tied.splitlines()[0] and "| 1 | a |" in tied and "| 1 | b |" in tied
    assert "share a rank" not in render([make_record("a", score=0.5), make_record("b", score=0.6)], "md")


def test_ranked_exports_carry_the_seed_spread_for_single_seed_rows() -> None:
    recs = [make_record("a", score=0.5), make_record("g", score=0.45, n_runs=2)]  # g: std 1.00 point
    md = render(recs, "md")
    assert "seed-to-seed std of the score in the 1 seed group(s) here: 1.00 points" in md.splitlines()[0]
    assert "seed-to-seed" not in render([make_record("a", score=0.5), make_record("b", score=0.6)], "md")
    caption = next(ln for ln in render(recs, "latex").splitlines() if ln.startswith(r"\caption"))
    assert "train -{}-seeds, compare -{}-level recipe" in caption  # two hyphens in print, not an en dash
    assert latex_escape("a--b---c") == "a-{}-b-{}-{}-c" and latex_escape("at-l2") == "at-l2"
    assert _latex_value(math.nan, 2) == "--" and _latex_value(None, 2) == "--"  # missing: an en dash in print
    assert _latex_value("", 2) == "" and _latex_value("a--b", 2) == "a-{}-b" and _latex_value(0.5, 2) == "0.50"


def test_ranked_exports_name_rows_made_by_code_with_other_reference_numerics() -> None:
    a, b = make_record("a", score=0.5), make_record("b", score=0.6)
    a.provenance["numerics"], b.provenance["numerics"] = "1" * 64, "2" * 64
    md = render([a, b], "md")
    assert "reference numerics 22222222: b; 11111111: a" in md.splitlines()[0]
    assert "numerics |" not in md  # named by the note; no column in a paper's table
    assert "| numerics |" in render([a, b], "md", which="long")  # no note there: the column stays
    long = long_table([a, b])
    assert set(long["numerics"]) == {"1" * 64, "2" * 64}


# --- exports -------------------------------------------------------------------------------------------------------


def test_csv_starts_with_the_protocol_hash_and_parses_back() -> None:
    recs = _records()
    df = long_table(recs)
    text = to_csv(df)
    first = text.splitlines()[0]
    assert first.startswith("# TransferBench " + bench.__version__)
    assert f"protocol smoke-digits-v2 [SMOKE: not benchmark results] sha256 {SMOKE.sha256}" in first
    assert f"protocol cifar10-v1 sha256 {CIFAR.sha256}" in first
    assert recs[0].data["sha256"] in first
    back = pd.read_csv(io.StringIO(text), skiprows=1)
    assert list(back.columns) == list(df.columns) and len(back) == len(df)
    assert np.allclose(back["rate"].to_numpy(), df["rate"].to_numpy(), equal_nan=True, rtol=0, atol=1e-12)
    assert (back["k"].to_numpy() == df["k"].to_numpy()).all()
    assert set(back["surrogate"]) == {"alpha", "beta_&_co", "gamma", "cifar-one"}
    wide_back = pd.read_csv(io.StringIO(to_csv(wide_table(recs[:3]))), skiprows=1)
    col = f"eps 32/255 | {SMOKE.targets[0]}"
    alpha_rate = recs[0].runs[0]["cells"][SMOKE.ranking_cell]["targets"][SMOKE.targets[0]]["target_correct"]["rate"]
    assert wide_back.set_index("surrogate").loc["alpha", col] == pytest.approx(100 * alpha_rate)


def test_markdown_has_a_caption_line_and_one_table_per_protocol() -> None:
    text = render(_records(), "md")
    lines = text.splitlines()
    assert lines[0].startswith("Table: TransferBench") and CIFAR.sha256 in lines[0]
    captions = [ln for ln in lines if ln.startswith("Table:")]
    assert len(captions) == 2 and SMOKE.sha256 in captions[1] and "SMOKE" in captions[1]
    assert CIFAR.sha256 not in captions[1]
    assert "| rank | surrogate |" in text and "|---:|:---|" in text
    assert "| 1 | beta_&_co |" in text and "60.00" in text and "1.00" in text  # score and its std
    assert "| 1 | cifar-one |" in text and "20.00" in text
    wide = to_markdown(wide_table([r for r in _records() if r.protocol["name"] == "smoke-digits"]))
    assert wide.startswith("Table: TransferBench") and SMOKE.sha256 in wide.splitlines()[0]
    header = wide.splitlines()[2]
    assert header.startswith("| surrogate | eps 16/255: smoke-cnn-a |") and header.endswith("eps 64/255: mean |")
    assert wide.count("\n| ") == 4  # header + 3 rows


def test_latex_is_booktabs_with_escaped_text_and_hash_comment() -> None:
    text = to_latex(wide_table([r for r in _records() if r.protocol["name"] == "smoke-digits"]))
    lines = text.splitlines()
    assert lines[0].startswith("% TransferBench") and SMOKE.sha256 in lines[0]
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr)", r"\multicolumn{4}{c}{eps 16/255}"):
        assert rule in text
    assert r"beta\_\&\_co" in text and "beta_&_co" not in text.split("\n", 1)[1]
    assert r"target\_correct" in text and text.count(r"\begin{table}") == 1
    alpha = next(ln for ln in lines if ln.startswith("alpha &"))
    cells = [c.strip() for c in alpha.removesuffix(r"\\").split("&")]
    rate = _records()[0].runs[0]["cells"]["pgd/linf-16/untargeted"]["targets"][SMOKE.targets[0]]
    assert cells[1] == f"{100 * rate['target_correct']['rate']:.2f}"
    both = render(_records(), "latex")
    assert both.count(r"\begin{table}") == 2 and both.count(r"\toprule") == 2
    assert r"\label{tab:transferbench-1}" in both and r"\label{tab:transferbench-2}" in both


def test_exports_are_pure_functions_of_the_records() -> None:
    recs = _records()
    for fmt in ("csv", "md", "latex", "html"):
        assert render(recs, fmt) == render(list(reversed(recs)), fmt)
    assert render(recs, "csv", which="long") == render(recs[::-1], "csv", which="long")
    with pytest.raises(ExportError, match="unknown format 'xlsx'"):
        render(recs, "xlsx")
    with pytest.raises(ExportError, match="unknown table"):
        render(recs, "csv", which="tall")
    assert "<!DOCTYPE html>" in render(recs, "html")


def test_empty_exports_still_carry_a_caption() -> None:
    assert to_csv(long_table([])).startswith("# TransferBench")
    assert "no records" in render([], "md").splitlines()[0]
    assert r"\toprule" in render([], "latex")


# --- plots and analysis --------------------------------------------------------------------------------------------


def test_asr_vs_eps_has_one_line_per_surrogate_per_panel(tmp_path: Path) -> None:
    recs = [r for r in _records() if r.protocol["name"] == "smoke-digits"]
    fig = asr_vs_eps(recs, path=tmp_path / "eps.png")
    assert len(fig.axes) == len(SMOKE.modes) * len(SMOKE.attacks)
    for ax in fig.axes:
        assert len(ax.containers) == len(recs)
        for container in ax.containers:
            assert list(container.lines[0].get_xdata()) == list(SMOKE.eps_255)
    assert (tmp_path / "eps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pgd = next(ax for ax in fig.axes if ax.get_title() == "pgd, untargeted")
    alpha_line = pgd.containers[2].lines[0]  # leaderboard order: beta, gamma, alpha
    cells = recs[0].runs[0]["cells"]
    for eps, y in zip(SMOKE.eps_255, alpha_line.get_ydata(), strict=True):
        per_t = cells[f"pgd/linf-{eps}/untargeted"]["targets"].values()
        k, n = sum(t["target_correct"]["k"] for t in per_t), sum(t["target_correct"]["n"] for t in per_t)
        assert y == pytest.approx(100 * k / n)
    one = asr_vs_eps(recs, attacks=["pgd"], modes=["untargeted"], target="smoke-mlp")
    assert len(one.axes) == 1
    with pytest.raises(PlotError, match="one protocol"):
        asr_vs_eps(_records())
    with pytest.raises(PlotError, match="no records"):
        asr_vs_eps([])


def test_scatter_titles_print_numpy_pearson_r_and_joint_r2(tmp_path: Path) -> None:
    recs = _varied(6)
    fig = asr_vs_factors(recs, path=tmp_path / "factors.pdf")
    assert (tmp_path / "factors.pdf").read_bytes()[:5] == b"%PDF-"
    score = np.array([100 * r.score["mean"] for r in recs])
    smooth = np.array([r.runs[0]["smoothness"]["mean"] for r in recs])
    sim = np.array([np.mean([s["mean"] for s in r.runs[0]["similarity"].values()]) for r in recs])
    for ax, x in zip(fig.axes[:2], (smooth, sim), strict=True):
        assert len(ax.collections[0].get_offsets()) == len(recs)
        printed = float(re.search(r"Pearson r = (-?\d+\.\d+)", ax.get_title()).group(1))
        assert printed == pytest.approx(np.corrcoef(x, score)[0, 1], abs=5e-4)
    design = np.column_stack([np.ones(len(recs)), smooth, sim])
    fitted = design @ np.linalg.lstsq(design, score, rcond=None)[0]
    r2 = 1 - ((score - fitted) ** 2).sum() / ((score - score.mean()) ** 2).sum()
    assert float(re.search(r"= (-?\d+\.\d+)$", fig.get_suptitle()).group(1)) == pytest.approx(r2, abs=5e-4)


def test_heatmap_is_surrogates_by_targets_at_the_ranking_cell() -> None:
    recs = [r for r in _records() if r.protocol["name"] == "smoke-digits"]
    fig = heatmap(recs)
    values = np.asarray(fig.axes[0].images[0].get_array())
    assert values.shape == (len(recs), len(SMOKE.targets))
    gamma = recs[2].runs[0]["cells"][SMOKE.ranking_cell]["targets"]
    assert values[1] == pytest.approx([100 * gamma[t]["target_correct"]["rate"] for t in sorted(SMOKE.targets)])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["beta_&_co", "gamma", "alpha"]
    with pytest.raises(PlotError, match="cell"):
        heatmap(recs, cell="pgd/linf-8/untargeted")


def test_analysis_table_correlations_and_r2() -> None:
    recs = _varied(7)
    row = analysis_table(recs).iloc[0]
    assert row["protocol"] == "smoke-digits-v2" and row["n_checkpoints"] == 7
    score = np.array([100 * r.score["mean"] for r in recs])
    smooth = np.array([r.runs[0]["smoothness"]["mean"] for r in recs])
    sim = np.array([np.mean([s["mean"] for s in r.runs[0]["similarity"].values()]) for r in recs])
    acc = np.array([100 * r.runs[0]["clean_accuracy"] for r in recs])
    fool = np.array([100 * r.runs[0]["cells"][SMOKE.ranking_cell]["fooling_rate"]["rate"] for r in recs])
    for col, x in (("r_smoothness", smooth), ("r_similarity", sim), ("r_clean_acc", acc), ("r_fooling_rate", fool)):
        assert row[col] == pytest.approx(np.corrcoef(x, score)[0, 1])
    # R^2 of two predictors from the correlation matrix (independent of the least-squares code)
    r_xy = np.array([np.corrcoef(smooth, score)[0, 1], np.corrcoef(sim, score)[0, 1]])
    r_xx = np.corrcoef(smooth, sim)[0, 1]
    expected = r_xy @ np.linalg.inv(np.array([[1, r_xx], [r_xx, 1]])) @ r_xy
    assert row["r2_smooth_sim"] == pytest.approx(expected)
    assert row["r2_smooth_sim"] <= row["r2_all"] <= 1
    assert row["note"] == ""


def test_analysis_table_needs_enough_records() -> None:
    two = analysis_table(_varied(2)).iloc[0]
    assert math.isnan(two["r_smoothness"]) and math.isnan(two["r2_smooth_sim"]) and math.isnan(two["r2_all"])
    assert "at least 3" in two["note"]
    four = analysis_table(_varied(4)).iloc[0]
    assert not math.isnan(four["r_smoothness"]) and not math.isnan(four["r2_smooth_sim"])
    assert math.isnan(four["r2_all"]) and "more than 5" in four["note"]
    constant = analysis_table([make_record(f"c{i}", score=0.1 * (i + 1)) for i in range(3)]).iloc[0]
    assert math.isnan(constant["r_similarity"]) and "constant" in constant["note"]
    both = analysis_table(_records())
    assert list(both["protocol"]) == ["cifar10-v1", "smoke-digits-v2"]


def test_the_factor_analysis_counts_each_surrogate_once_from_its_main_group() -> None:
    recs = _varied(6)
    extra = [
        make_record("s0", score=0.99, partial=True),  # a partial run of s0
        make_record("jpeg", score=0.95, data_sha256="e" * 64),  # other data: another ranking group
    ]
    extra[0].submission["sha256"] = recs[0].submission["sha256"]
    kept, notes = analysis_records(recs + extra)
    assert {r.submission["name"] for r in kept} == {f"s{i}" for i in range(6)}
    assert sorted(notes["smoke-digits-v2"]) == ["left out 1 partial or other-precision run(s)",
                                                "left out 1 record(s) on other data or target weights"]  # fmt: skip
    row = analysis_table(recs + extra).iloc[0]
    assert row["n_checkpoints"] == 6 and "left out 1 partial" in row["note"]
    assert row["r_smoothness"] == pytest.approx(analysis_table(recs).iloc[0]["r_smoothness"])


def test_the_factor_analysis_has_one_point_per_checkpoint_and_counts_a_seed_once() -> None:
    """A seed group's runs are points of their own (each with its own score); a seed evaluated alone and again
    inside its group is one checkpoint, counted once."""
    recs = _varied(4)
    group = make_record("grp", score=0.5, n_runs=3)
    group.score["per_run"] = [0.2, 0.5, 0.8]
    for i, run in enumerate(group.runs):
        run["smoothness"]["mean"], run["clean_accuracy"] = 1.0 + i, 0.5 + 0.1 * i
    alone = make_record("grp-seed1", score=0.3)  # seed 1 of the group, submitted on its own too
    alone.runs[0]["sha256"] = group.runs[1]["sha256"]
    f = record_factors([*recs, group, alone])
    assert len(f) == 4 + 3
    rows = f[f["surrogate"].str.startswith("grp")].set_index("surrogate")
    assert list(rows.index) == ["grp: seed0", "grp: seed1", "grp: seed2"]  # the group first in leaderboard order
    assert list(rows["score"]) == pytest.approx([20.0, 50.0, 80.0])
    assert list(rows["smoothness"]) == [1.0, 2.0, 3.0] and list(rows["clean_acc"]) == pytest.approx([50, 60, 70])
    row = analysis_table([*recs, group, alone]).iloc[0]
    assert row["n_checkpoints"] == 7 and "counted once: 1 run(s) of a checkpoint another record holds" in row["note"]
    points, _ = analysis_runs([*recs, alone])  # without the group, the seed's own record is its point
    assert [(r.submission["name"], i) for r, i in points if r is alone] == [("grp-seed1", 0)]
    del group.score["per_run"]  # an older record: each run's score recomputed from its cells
    rescored = record_factors([group]).set_index("surrogate")["score"]
    assert list(rescored) == pytest.approx([100 * v for v in run_scores(group)])


def test_a_protocol_with_only_partial_runs_is_analysed_on_one_image_subset(tmp_path: Path) -> None:
    """A pilot study of --limit runs: no full run exists, so the analysis (and its scatter plot) uses the partial
    runs on the subset most of them share; runs on another subset or at another precision stay out."""
    recs = _varied(5)
    for r in recs:
        r.data["partial"] = True  # one --limit value: one subset, one data hash
        r.data["sha256"] = "a" * 64
    other = make_record("other-limit", partial=True, data_sha256="b" * 64)  # another --limit: other images
    bf16 = copy.deepcopy(make_record("bf16", partial=True, data_sha256="a" * 64))
    bf16.provenance.update(precision="bf16", precision_matches_protocol=False)
    kept, notes = analysis_records([*recs, other, bf16])
    assert {r.submission["name"] for r in kept} == {f"s{i}" for i in range(5)}
    assert notes["smoke-digits-v2"][0] == f"no full run: partial runs on one subset of {recs[0].data['n_images']} " \
        "images (data sha256 aaaaaaaaaaaa)"  # fmt: skip
    assert sorted(notes["smoke-digits-v2"][1:]) == ["left out 1 partial or other-precision run(s)",
                                                    "left out 1 record(s) on other data or target weights"]  # fmt: skip
    row = analysis_table([*recs, other, bf16]).iloc[0]
    assert row["n_checkpoints"] == 5 and not math.isnan(row["r_smoothness"]) and "no full run" in row["note"]
    assert len(write_plots([*recs, other], tmp_path)) == 3  # the factor figure included (it used to crash)
    full = make_record("full")  # one full run: the analysis is of full runs again, the partial ones left out
    kept, notes = analysis_records([*recs, full])
    assert [r.submission["name"] for r in kept] == ["full"] and not any(
        "no full run" in n for n in notes["smoke-digits-v2"]
    )
    assert math.isnan(ols_r2([], np.empty((0, 2))))


def test_write_plots_writes_every_figure_per_protocol(tmp_path: Path) -> None:
    recs = _records()
    paths = write_plots(recs, tmp_path, fmt="png")
    assert len(paths) == 3 * len(by_protocol(recs))
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(PlotError, match=r"\.png, \.pdf or \.svg"):
        write_plots(recs, tmp_path, fmt="gif")


# --- citations -----------------------------------------------------------------------------------------------------


def _balanced(text: str) -> bool:
    depth = 0
    for c in text:
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


def test_entry_bibtex_carries_protocol_hash_score_and_data_hash() -> None:
    rec = make_record("weird {name}_&%", score=0.4321, n_runs=2)
    rec.submission["source"] = "hf://someone/surrogate@v2"
    rec.submission["metadata"]["paper"] = "A paper about 50% of {things}"
    entry = entry_bibtex(rec)
    assert entry.startswith("@misc{tb-weird-name-") and _balanced(entry)
    assert SMOKE.sha256 in entry and rec.data["sha256"] in entry and rec.submission["sha256"] in entry
    assert "smoke-digits-v2" in entry and "43.21" in entry and "Recipe: ST" in entry
    assert "url          = {https://huggingface.co/someone/surrogate/tree/v2}" in entry
    assert r"weird \textbraceleft{}name\textbraceright{}\_\&\%" in entry and "not a benchmark result" in entry
    assert bib_escape("a\\b") == r"a\textbackslash{}b"
    for t in SMOKE.targets:  # the weights every ASR was measured on
        assert f"{t} {rec.targets[t]['sha256']}" in entry
    assert (
        "Computed with TransferBench 0.1.0 (git n/a, reference numerics unverified), torch 2.0.0, CUDA none, on cpu"
        in entry
    )


def test_benchmark_and_seed_bibtex() -> None:
    assert BENCHMARK_BIBTEX.startswith("@misc{") and _balanced(BENCHMARK_BIBTEX)
    assert "year         = {2026}" in BENCHMARK_BIBTEX and bench.__version__ in BENCHMARK_BIBTEX
    assert "https://huggingface.co/datasets/transferbench/leaderboard" in BENCHMARK_BIBTEX
    seed = seed_bibtex()
    assert seed.startswith("@inproceedings{") and _balanced(seed)
    assert "Why Does Little Robustness Help?" in seed and "2024" in seed and "Security and Privacy" in seed
    text = cite_text([make_record("a")])
    assert text.index("@misc{tb-a-") < text.index("@misc{transferbench") < text.index("@inproceedings")
