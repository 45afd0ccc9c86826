"""Leaderboard records (schema, JSON), the local store (layout, duplicates, atomic writes) and ranked tables."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.metrics.asr import Rate, pack_bits
from bench.protocol import get_protocol
from leaderboard.page import render_page
from leaderboard.record import SCHEMA, SCHEMA_VERSION, Record, RecordError, validate
from leaderboard.store import LocalStore, StoreError
from leaderboard.table import TIE_NOTE, format_table, ranked_table, seed_noise_note

N_IMAGES = 16


def _sha(tag: str) -> str:
    """A deterministic 64-hex string per tag."""
    import hashlib

    return hashlib.sha256(tag.encode()).hexdigest()


def make_record(
    name: str = "sur-a",
    *,
    score: float = 0.5,
    protocol: str = "smoke-digits",
    protocol_sha256: str | None = None,
    partial: bool = False,
    n_runs: int = 1,
    recipe: str = "ST",
    data_sha256: str | None = None,
) -> Record:
    """A record with every field that ``bench.runner.evaluate`` fills, built from small handcrafted outcomes."""
    proto = get_protocol(protocol)
    rng = np.random.default_rng(int(_sha(f"{name}/{protocol}")[:8], 16))
    target_correct = {t: rng.random(N_IMAGES) < 0.8 for t in proto.targets}
    runs = []
    for i in range(n_runs):
        correct = rng.random(N_IMAGES) < 0.9
        success: dict[str, dict[str, str]] = {}
        cells: dict[str, Any] = {}
        for cell in proto.cells():
            s_bits = rng.random(N_IMAGES) < 0.7
            t_bits = {t: rng.random(N_IMAGES) < 0.5 for t in proto.targets}
            success[cell.key] = {"surrogate": pack_bits(s_bits), **{t: pack_bits(b) for t, b in t_bits.items()}}
            per_target = {}
            for t in proto.targets:
                tc, ts = target_correct[t], t_bits[t]
                both = tc & correct
                per_target[t] = {
                    "target_correct": Rate(int((ts & tc).sum()), int(tc.sum())).to_json(),
                    "both_correct": Rate(int((ts & s_bits & both).sum()), int(both.sum())).to_json(),
                    "all": Rate(int(ts.sum()), N_IMAGES).to_json(),
                }
            cells[cell.key] = {
                "fooling_rate": Rate(int((s_bits & correct).sum()), int(correct.sum())).to_json(),
                "targets": per_target,
            }
        runs.append({
            "name": name if n_runs == 1 else f"seed{i}",
            "sha256": _sha(f"{name}/{i}"),
            "clean_accuracy": float(correct.mean()),
            "smoothness": {"mean": 1.5 + i, "max": 4.0, "n": N_IMAGES, "iterations": 20, "n_converged": N_IMAGES},
            "similarity": {t: {"mean": 0.25, "min": -0.1, "n": N_IMAGES} for t in proto.targets},
            "cells": cells,
            "outcomes": {"clean_correct": pack_bits(correct), "success": success},
        })  # fmt: skip
    return Record(
        submission={
            "name": name,
            "kind": "single" if n_runs == 1 else "seed-group",
            "sha256": _sha(name),
            "members": {name: _sha(name)},
            "metadata": {"name": name, "recipe": recipe, "train_config": {"epochs": 30, "lr": 0.05}},
            "source": f"/submissions/{name}",
        },
        protocol={
            "name": proto.name,
            "version": proto.version,
            "sha256": protocol_sha256 or proto.sha256,
            "kind": proto.kind,
            "status": proto.status,
            "ranking_cell": proto.ranking_cell,
            "ranking_asr": proto.ranking_asr,
        },
        data={
            "source": "handcrafted",
            "sha256": data_sha256 or _sha(f"data/{protocol}/{partial}"),
            "full_sha256": _sha(f"data/{protocol}"),
            "n_images": N_IMAGES,
            "partial": partial,
        },
        targets={
            t: {
                "sha256": _sha(t),
                "source": "test",
                "family": "smoke",
                "clean_accuracy": float(c.mean()),
                "clean_correct": pack_bits(c),
            }
            for t, c in target_correct.items()
        },
        runs=runs,
        score={
            "mean": score,
            "std": 0.01 if n_runs > 1 else None,
            "per_run": [score] * n_runs,
        },
        provenance={
            "package": "transferbench",
            "package_version": "0.1.0",
            "git_sha": None,
            "python": "3.11.0",
            "platform": "test",
            "torch": "2.0.0",
            "torchvision": "0.15.0",
            "timm": "1.0.0",
            "cuda": None,
            "cudnn": None,
            "device": "cpu (test)",
            "precision": "fp32",
            "seed": 0,
            "batch_size": 256,
            "wall_time_s": 1.25,
            "created_utc": "2025-01-01T00:00:00+00:00",
        },
    )


def make_hub_record(name: str = "sur-a", *, score: float = 0.5, **kwargs: Any) -> Record:
    """A record the Hub leaderboard accepts: :func:`make_record`'s, with its score recomputed from its own cells
    (``make_record`` sets any score, which ``publish`` and ``pull`` refuse). ``score`` still tells two results
    of one surrogate apart: it goes into the run's wall time."""
    from leaderboard.consistency import run_scores

    rec = make_record(name, **kwargs)
    rec.provenance["wall_time_s"] = 1.0 + score
    scores = run_scores(rec)
    rec.score = {"mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
                 "per_run": scores}  # fmt: skip
    return rec


def _walk_numbers(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every leaf."""
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _walk_numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _walk_numbers(v, f"{path}[{i}]")]
    return [(path, obj)]


# --- Record ------------------------------------------------------------------------------------------------------


def test_helper_record_is_valid() -> None:
    validate(make_record().to_json())
    validate(make_record(n_runs=3).to_json())


def test_record_round_trip_through_json() -> None:
    for rec in (make_record(), make_record("group", n_runs=2, partial=True)):
        text = rec.dumps()
        back = Record.from_json(json.loads(text))
        assert back == rec
        assert back.dumps() == text
        assert back.submission_id == rec.submission_id


def test_record_round_trip_keeps_extra() -> None:
    rec = make_record()
    rec.extra = {"note": "hello"}
    back = Record.from_json(json.loads(rec.dumps()))
    assert back.extra == {"note": "hello"}
    assert back == rec


def test_dumps_numbers_stay_numbers_and_no_nan() -> None:
    rec = make_record()
    text = rec.dumps()
    assert "NaN" not in text and "Infinity" not in text
    assert text.endswith("\n")
    d = json.loads(text)
    assert d["schema"] == SCHEMA
    assert d["schema_version"] == SCHEMA_VERSION and type(d["schema_version"]) is int
    assert type(d["protocol"]["version"]) is int
    assert isinstance(d["score"]["mean"], float)
    assert d["score"]["std"] is None
    run = d["runs"][0]
    assert isinstance(run["clean_accuracy"], float)
    cell = run["cells"][get_protocol("smoke-digits").ranking_cell]
    for t in cell["targets"].values():
        for rate in t.values():
            assert type(rate["k"]) is int and type(rate["n"]) is int
            assert rate["rate"] is None or isinstance(rate["rate"], float)
    numeric = {"k", "n", "rate", "lo", "hi", "clean_accuracy", "mean", "max", "min", "std", "iterations",
               "n_converged", "n_images", "version", "seed", "batch_size", "wall_time_s", "schema_version"}  # fmt: skip
    leaves = _walk_numbers(d)
    checked = 0
    for path, value in leaves:
        if path.rsplit(".", 1)[-1] in numeric:
            assert value is None or (type(value) in (int, float) and math.isfinite(value)), (path, value)
            checked += 1
    assert checked > 100


def test_dumps_refuses_nan_instead_of_writing_invalid_json() -> None:
    rec = make_record()
    rec.runs[0]["smoothness"]["mean"] = float("nan")
    with pytest.raises(ValueError):
        rec.dumps()


def test_submission_id_is_a_safe_file_name() -> None:
    rec = make_record("../../etc/pass wd")
    sid = rec.submission_id
    assert "/" not in sid and " " not in sid
    assert sid.endswith(rec.submission["sha256"][:12])
    assert make_record("///").submission_id.startswith("surrogate-")


def _broken(mutate: Any) -> dict[str, Any]:
    d = copy.deepcopy(make_record().to_json())
    mutate(d)
    return d


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("provenance"), "provenance"),
        (lambda d: d.pop("submission"), "submission"),
        (lambda d: d["score"].update(mean="0.5"), "score.mean"),
        (lambda d: d["score"].update(mean=float("nan")), "score.mean"),
        (lambda d: d["score"].update(mean=True), "score.mean"),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.update(schema_version="1"), "schema_version"),
        (lambda d: d.update(schema="something.else"), "schema"),
        (lambda d: d.update(runs=[]), "runs"),
        (lambda d: d["runs"][0].update(clean_accuracy="0.9"), "runs[0].clean_accuracy"),
        (lambda d: d["runs"][0].pop("cells"), "runs[0].cells"),
        (lambda d: d["protocol"].update(version="1"), "protocol.version"),
        (lambda d: d["protocol"].pop("sha256"), "protocol.sha256"),
        (lambda d: d["submission"].update(sha256=None), "submission.sha256"),
        (lambda d: d["data"].pop("sha256"), "data.sha256"),
        (lambda d: d["provenance"].pop("precision"), "provenance.precision"),
        (lambda d: d["provenance"].pop("seed"), "provenance.seed"),
        # what the tables, page and comparisons read must have the type they read it as
        (lambda d: d["protocol"].update(version=True), "protocol.version"),
        (lambda d: d["score"].update(mean=10**400), "score.mean"),  # too large for a float
        (lambda d: d["score"].update(mean=1e300), "score.mean"),  # not a rate
        (lambda d: d["score"].update(std="1"), "score.std"),
        (lambda d: d["score"].update(per_run=["x"]), "score.per_run"),
        (lambda d: d["runs"][0].update(clean_accuracy=-5), "runs[0].clean_accuracy"),
        (lambda d: d["runs"][0].update(smoothness=3), "runs[0].smoothness"),
        (lambda d: d["submission"].update(metadata=["recipe"]), "submission.metadata"),
        (lambda d: d["submission"].update(sha256="Z" * 64), "submission.sha256"),
        (lambda d: d["data"].update(sha256="abc"), "data.sha256"),
        (lambda d: d["targets"].update({"t": "weights"}), "targets entry"),
        (lambda d: d["provenance"].update(precision=None), "provenance.precision"),
    ],
)
def test_validation_errors_name_the_field(mutate: Any, field: str) -> None:
    d = _broken(mutate)
    with pytest.raises(RecordError, match=r"my/file\.json") as info:
        Record.from_json(d, where="my/file.json")
    assert field in str(info.value)


def test_validation_rejects_non_object() -> None:
    with pytest.raises(RecordError, match="JSON object"):
        validate([1, 2, 3])


@pytest.mark.parametrize(
    ("section", "value"),
    [
        pytest.param("score", "0.5"),
        pytest.param("provenance", None),
        pytest.param("submission", "sur-a"),
        pytest.param("runs", ["not-a-run"]),
        pytest.param("data", []),
    ],
)
def test_validation_wrong_section_type_is_a_record_error(section: str, value: Any) -> None:
    d = _broken(lambda d: d.update({section: value}))
    with pytest.raises(RecordError, match=section):
        validate(d)


# --- LocalStore --------------------------------------------------------------------------------------------------


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_default_store_lives_under_transferbench_home(isolated_home: Path) -> None:
    assert LocalStore().root == isolated_home / "leaderboard"


def test_add_writes_protocol_version_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    rec = make_record("sur-a")
    path = store.add(rec)
    assert path == tmp_path / "smoke-digits-v2" / f"{rec.submission_id}.json"
    assert path.is_file()
    assert _files(tmp_path) == [f"smoke-digits-v2/{rec.submission_id}.json"]
    assert path.read_text() == rec.dumps()
    assert LocalStore.read(path) == rec


def test_add_same_surrogate_twice_is_a_duplicate(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    path = store.add(make_record("sur-a", score=0.5))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="overwrite") as info:
        store.add(make_record("sur-a", score=0.7))
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert store.add(make_record("sur-a", score=0.7), overwrite=True) == path
    assert LocalStore.read(path).score["mean"] == 0.7
    assert len(list(store.records())) == 1


def test_different_surrogates_coexist(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.add(make_record("sur-a"))
    store.add(make_record("sur-b"))
    assert sorted(r.submission["name"] for r in store.records()) == ["sur-a", "sur-b"]


def test_add_never_silently_replaces_a_record_under_another_protocol_hash(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    full = make_record("sur-a", score=0.5)
    store.add(full)
    subset = make_record("sur-a", score=0.9, protocol_sha256=_sha("subset protocol"))
    with contextlib.suppress(StoreError):  # refusing is fine; losing the full record is not
        store.add(subset)
    assert full.protocol["sha256"] in {r.protocol["sha256"] for r in store.records()}


def test_records_filters_by_protocol(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.add(make_record("sur-a"))
    store.add(make_record("sur-b"))
    store.add(make_record("sur-c", protocol="cifar10"))
    assert sorted(r.submission["name"] for r in store.records(protocol="smoke-digits")) == ["sur-a", "sur-b"]
    assert [r.submission["name"] for r in store.records(protocol="cifar10")] == ["sur-c"]
    assert list(store.records(protocol="nope")) == []
    assert len(list(store.records())) == 3
    assert (tmp_path / "cifar10-v1").is_dir()


def test_records_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert list(LocalStore(tmp_path / "does-not-exist").records()) == []


@pytest.mark.parametrize("content", ['{"schema": "transferbench.record", "schema_ver', "", "[]", '{"a": 1}'])
def test_corrupt_file_raises_naming_the_file(tmp_path: Path, content: str) -> None:
    store = LocalStore(tmp_path)
    store.add(make_record("sur-a"))
    bad = tmp_path / "smoke-digits-v2" / "zzz-broken.json"
    bad.write_text(content)
    with pytest.raises(RecordError, match=r"zzz-broken\.json"):
        list(store.records())
    with pytest.raises(RecordError, match=r"zzz-broken\.json"):
        LocalStore.read(bad)


def test_binary_garbage_file_raises_record_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "smoke-digits-v2" / "garbage.json"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(RecordError, match=r"garbage\.json"):
        list(LocalStore(tmp_path).records())


def test_records_ignore_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    path = store.add(make_record("sur-a"))
    (path.parent / f".{path.name}.abc123.tmp").write_text("{half a rec")
    assert [r.submission["name"] for r in store.records()] == ["sur-a"]


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_leaves_no_record_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    rec = make_record("sur-a")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StoreError) as info:
        store.add(rec)
    msg = str(info.value)
    assert "full" in msg.lower()
    assert str(store.path_for(rec)) in msg
    assert _files(tmp_path) == []
    assert list(store.records()) == []


def test_full_disk_on_overwrite_keeps_old_record_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    path = store.add(make_record("sur-a", score=0.5))
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StoreError, match=r"(?i)disk is full"):
        store.add(make_record("sur-a", score=0.9), overwrite=True)
    assert path.read_bytes() == before
    assert _files(tmp_path) == [str(path.relative_to(tmp_path))]


def test_full_disk_during_write_keeps_old_record_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the data write itself (the flush), not only from fsync."""
    store = LocalStore(tmp_path)
    path = store.add(make_record("sur-a", score=0.5))
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class _FullFile:
        def __init__(self, f: Any) -> None:
            self._f = f

        def __enter__(self) -> _FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def write(self, text: str) -> int:
            self._f.write(text[: len(text) // 2])
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullFile(real_fdopen(*a, **k)))
    with pytest.raises(StoreError, match=r"(?i)full"):
        store.add(make_record("sur-a", score=0.9), overwrite=True)
    assert path.read_bytes() == before
    assert _files(tmp_path) == [str(path.relative_to(tmp_path))]


def test_full_disk_when_creating_temp_file_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "mkstemp", _enospc)
    with pytest.raises(StoreError, match=r"(?i)full"):
        LocalStore(tmp_path).add(make_record("sur-a"))


def test_other_errors_during_write_leave_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        LocalStore(tmp_path).add(make_record("sur-a"))
    assert _files(tmp_path) == []


def test_record_file_has_normal_permissions(tmp_path: Path) -> None:
    path = LocalStore(tmp_path).add(make_record("sur-a"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# --- ranked_table / format_table ---------------------------------------------------------------------------------


def test_ranked_table_sorted_by_score_with_rank_per_protocol() -> None:
    recs = [
        make_record("s-low", score=0.2),
        make_record("c-mid", score=0.5, protocol="cifar10"),
        make_record("s-high", score=0.9),
        make_record("s-mid", score=0.6),
        make_record("c-high", score=0.7, protocol="cifar10"),
    ]
    df = ranked_table(recs)
    assert list(df.columns[:3]) == ["rank", "protocol", "kind"]
    smoke = df[df["protocol"] == "smoke-digits-v2"]
    cifar = df[df["protocol"] == "cifar10-v1"]
    assert list(smoke["surrogate"]) == ["s-high", "s-mid", "s-low"]
    assert list(smoke["rank"]) == [1, 2, 3]
    assert list(cifar["surrogate"]) == ["c-high", "c-mid"]
    assert list(cifar["rank"]) == [1, 2]
    assert list(smoke["score"]) == pytest.approx([90.0, 60.0, 20.0])
    assert set(smoke["kind"]) == {"smoke"} and set(cifar["kind"]) == {"benchmark"}


def test_ranked_table_is_independent_of_input_order() -> None:
    recs = [make_record(f"s{i}", score=s) for i, s in enumerate([0.3, 0.8, 0.1, 0.5])]
    a = ranked_table(recs)
    b = ranked_table(list(reversed(recs)))
    assert list(a["surrogate"]) == list(b["surrogate"]) == ["s1", "s3", "s0", "s2"]


def test_partial_runs_sorted_after_full_ones() -> None:
    df = ranked_table([
        make_record("full-low", score=0.1),
        make_record("partial-best", score=0.99, partial=True),
        make_record("full-high", score=0.6),
    ])  # fmt: skip
    assert list(df["surrogate"]) == ["full-high", "full-low", "partial-best"]
    assert list(df["partial"]) == [False, False, True]
    assert list(df["rank"]) == [1, 2, 3]


def test_ranked_table_columns_from_record() -> None:
    rec = make_record("grp", score=0.42, n_runs=3, recipe="IR")
    df = ranked_table([rec])
    row = df.iloc[0]
    assert row["rank"] == 1
    assert row["runs"] == 3
    assert row["type"] == "seed-group"
    assert row["recipe"] == "IR"
    assert row["score"] == pytest.approx(42.0)
    assert row["score_std"] == pytest.approx(1.0)
    expected_acc = 100 * sum(r["clean_accuracy"] for r in rec.runs) / 3
    assert row["clean_acc"] == pytest.approx(expected_acc)
    assert row["similarity"] == pytest.approx(0.25)
    assert row["smoothness"] == pytest.approx(2.5)  # mean over the runs (1.5, 2.5, 3.5), like clean_acc
    assert row["sha256"] == rec.submission["sha256"][:12]


def test_format_table_labels_smoke_protocols_only() -> None:
    text = format_table(
        ranked_table([make_record("s-a", score=0.3), make_record("c-a", score=0.4, protocol="cifar10")])
    )
    blocks = text.split("\n\n")
    assert len(blocks) == 2
    cifar_block = next(b for b in blocks if "cifar10-v1" in b)
    smoke_block = next(b for b in blocks if "smoke-digits-v2" in b)
    assert "SMOKE" in smoke_block.splitlines()[0]
    assert "SMOKE" not in cifar_block
    assert "s-a" in smoke_block and "c-a" in cifar_block
    assert "30.00" in smoke_block and "40.00" in cifar_block


def test_empty_input_handled() -> None:
    df = ranked_table([])
    assert df.empty
    text = format_table(df)
    assert "no results" in text
    assert format_table(ranked_table(iter(()))) == text


def test_records_of_different_protocol_hashes_are_not_ranked_together() -> None:
    df = ranked_table([
        make_record("full", score=0.5),
        make_record("subset", score=0.9, protocol_sha256=_sha("subset protocol")),
    ])  # fmt: skip
    by_name = df.set_index("surrogate")
    # either the rows land in different groups, or the subset row at least does not outrank the full result
    assert by_name.loc["full", "protocol"] != by_name.loc["subset", "protocol"] or by_name.loc["full", "rank"] == 1


def _with_target_weights(rec: Record, target: str, tag: str) -> Record:
    """``rec`` measured against other weights of ``target`` (e.g. a re-trained zoo entry)."""
    rec.targets[target]["sha256"] = _sha(tag)
    return rec


def test_records_on_other_data_or_target_weights_rank_separately() -> None:
    target = get_protocol("smoke-digits").targets[-1]
    recs = [
        make_record("base-low", score=0.4),
        make_record("base-high", score=0.5),
        make_record("jpeg-copy", score=0.9, data_sha256=_sha("another copy of the images")),
        _with_target_weights(make_record("retrained", score=0.8), target, "re-trained weights"),
    ]
    df = ranked_table(recs)
    # the two records measured the same way rank together, first (most records); the others alone, each first
    assert list(df["surrogate"][:2]) == ["base-high", "base-low"] and set(df["surrogate"][2:]) == {
        "jpeg-copy",
        "retrained",
    }
    assert list(df["rank"]) == [1, 2, 1, 1]
    groups = df.set_index("surrogate")["group"]
    assert groups["base-high"] == groups["base-low"] != groups["jpeg-copy"]
    assert f"data sha256 {_sha('another copy of the images')[:10]}" in groups["jpeg-copy"]
    assert f"target {target} sha256 {_sha('re-trained weights')[:12]}" in groups["retrained"]
    assert f"target {target} sha256 {_sha(target)[:12]}" in groups["base-high"]  # what sets the base group apart
    text = format_table(df)
    assert text.count("-- ranked separately:") == 3 and "3 ranking groups" in text
    assert list(ranked_table(list(reversed(recs)))["surrogate"]) == list(df["surrogate"])  # order-independent


def test_one_ranking_group_has_no_group_label() -> None:
    df = ranked_table([make_record("a", score=0.4), make_record("b", score=0.5)])
    assert set(df["group"]) == {""} and "ranked separately" not in format_table(df)


def test_a_partial_run_joins_the_group_of_the_full_runs_on_its_data() -> None:
    df = ranked_table([make_record("full", score=0.4), make_record("part", score=0.9, partial=True)])
    assert set(df["group"]) == {""} and list(df["rank"]) == [1, 2]  # one group; the partial run ranks after


def test_equal_shown_scores_share_a_rank_and_ties_list_by_name() -> None:
    recs = [
        make_record("zeta", score=0.5),
        make_record("alpha", score=0.50004),  # 50.004% prints as 50.00: a tie at the shown precision
        make_record("mid", score=0.5),
        make_record("best", score=0.7),
        make_record("last", score=0.4),
    ]
    df = ranked_table(recs)
    assert list(df["surrogate"]) == ["best", "alpha", "mid", "zeta", "last"]
    assert list(df["rank"]) == [1, 2, 2, 2, 5]  # competition ranking: 1, 2, 2, 2, 5
    assert TIE_NOTE in format_table(df)
    assert TIE_NOTE not in format_table(ranked_table([make_record("a", score=0.5), make_record("b", score=0.6)]))


def test_single_seed_rows_carry_the_seed_spread_the_board_measures() -> None:
    singles = [make_record("a", score=0.5), make_record("b", score=0.51)]
    assert "seed-to-seed" not in format_table(ranked_table(singles))  # nothing measured: no number to give
    groups = [make_record("g1", score=0.4, n_runs=2), make_record("g2", score=0.45, n_runs=3)]
    groups[1].score["std"] = 0.03
    assert "seed-to-seed" not in format_table(ranked_table(groups))  # no single-seed row to caution
    text = format_table(ranked_table([*singles, *groups]))
    assert "seed-to-seed std of the score in the 2 seed group(s) here: 1.00 to 3.00 (median 2.00) points" in text
    assert seed_noise_note(ranked_table([*singles, groups[0]])).startswith(
        "seed-to-seed std of the score in the 1 seed group(s) here: 1.00 points; single-seed rows closer"
    )
    page = render_page([*singles, *groups])
    assert "Seed-to-seed std of the score in the 2 seed group(s) here: 1.00 to 3.00 (median 2.00) points" in page


def test_the_seed_spread_of_one_ranking_group_does_not_caution_another() -> None:
    """A seed group on the JPEG copy measures nothing about single rows on other data: the note is per group."""
    single_other_data = make_record("solo", score=0.5, data_sha256="e" * 64)
    recs = [make_record("a", score=0.5), make_record("g", score=0.45, n_runs=2), single_other_data]
    text = format_table(ranked_table(recs))
    assert text.count("seed-to-seed") == 1
    assert text.index("seed-to-seed") < text.index("ranked separately: data sha256 eeeeeeeeee")
    page = render_page(recs)
    assert page.count("Seed-to-seed") == 1


def _with_numerics(rec, digest: str):  # type: ignore[no-untyped-def]
    rec.provenance["numerics"] = digest
    return rec


def test_rows_made_by_code_with_other_reference_numerics_are_named() -> None:
    recs = [_with_numerics(make_record("old", score=0.5), "1" * 64), _with_numerics(make_record("new", score=0.6),
            "2" * 64), _with_numerics(make_record("new2", score=0.55), "2" * 64)]  # fmt: skip
    df = ranked_table(recs)
    assert list(df["numerics"]) == ["22222222", "22222222", "11111111"]
    text = format_table(df)
    assert "reference numerics 22222222: new, new2; 11111111: old" in text
    assert "numerics" not in text.splitlines()[1]  # the note names the rows; the text table has no such column
    assert "Rows made by code that computes this protocol differently" in render_page(recs)
    same = [_with_numerics(make_record(n, score=0.5), "1" * 64) for n in ("a", "b")]
    assert "computes this protocol differently" not in format_table(ranked_table(same))
    older = make_record("c", score=0.4)  # made before records carried the digest
    assert "reference numerics 11111111: a, b; unverified: c" in format_table(ranked_table([*same, older]))
    assert "computes this protocol differently" not in format_table(ranked_table([older, make_record("d")]))


def test_record_file_stem_is_known_before_the_run() -> None:
    """The CLI refuses a duplicate before evaluating; it must name the same file the record will have."""
    from leaderboard.record import record_file_stem

    full, part = make_record("a/b c", score=0.5), make_record("a/b c", score=0.5, partial=True)
    part.provenance.update(precision="bf16", precision_matches_protocol=False)
    sha = full.submission["sha256"]
    assert full.file_stem == record_file_stem("a/b c", sha) == f"a-b-c-{sha[:12]}"
    assert part.file_stem == record_file_stem("a/b c", sha, partial_images=N_IMAGES, other_precision="bf16")
    assert part.file_stem.endswith(f".limit{N_IMAGES}.bf16")


def test_file_stems_are_ascii_and_bounded() -> None:
    """Look-alike letters of other scripts and very long names cannot make files that differ invisibly or that the
    file system refuses."""
    from leaderboard.record import record_file_stem

    sha = "ab" * 32
    assert record_file_stem("\uff2dodel", sha) == f"odel-{sha[:12]}"  # fullwidth M is not the ASCII letter
    assert record_file_stem("caf\u00e9 \u202eevil", sha) == f"caf---evil-{sha[:12]}"  # accents, bidi overrides
    long = record_file_stem("x" * 1000, sha, partial_images=10, other_precision="bf16")
    assert long == "x" * 100 + f"-{sha[:12]}.limit10.bf16" and len(long.encode()) < 255
