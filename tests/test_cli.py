"""The command line: listings, errors, help texts, the leaderboard command, and one end-to-end demo run."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
import torch

from bench import cli
from bench.cli import build_parser, main
from bench.protocol import PROTOCOLS, get_protocol
from leaderboard.record import Record
from leaderboard.store import LocalStore

# --- protocols ---------------------------------------------------------------------------------------------------


def test_protocols_lists_every_protocol_with_version_and_full_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "sha256" in lines[0]
    assert len(PROTOCOLS) >= 2
    for name, proto in PROTOCOLS.items():
        line = next((ln for ln in lines[1:] if ln.split()[0] == name), None)
        assert line is not None, f"{name} missing from:\n{out}"
        fields = line.split()
        assert fields[1] == str(proto.version)
        assert fields[-1] == proto.sha256
        assert re.fullmatch(r"[0-9a-f]{64}", fields[-1])
        assert str(len(proto.image_ids)) in fields
    assert len(lines) == 1 + len(PROTOCOLS)


@pytest.mark.parametrize("name", ["cifar10", "cifar10-v1", "smoke-digits"])
def test_protocols_show_prints_json(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocols", "--show", name]) == 0
    d = json.loads(capsys.readouterr().out)
    proto = get_protocol(name)
    assert d["version"] == proto.version and type(d["version"]) is int
    assert d["name"] == proto.name
    assert d["ranking_cell"] == proto.ranking_cell
    assert d == json.loads(json.dumps(proto.to_json()))


def test_protocols_show_typo_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocols", "--show", "cifr10"]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Did you mean" in captured.err
    assert "'cifar10'" in captured.err


def test_protocols_show_unknown_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocols", "--show", "cifar10-v7"]) == 1
    assert "version" in capsys.readouterr().err


# --- help and parser ---------------------------------------------------------------------------------------------


EVALUATE_OPTIONS = [
    "path",
    "--protocol",
    "--data-dir",
    "--weights-dir",
    "--targets",
    "--out",
    "--device",
    "--batch-size",
    "--limit",
    "--deterministic",
    "--overwrite",
    "--quiet",
]


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ([], ["protocols", "targets", "evaluate", "leaderboard", "demo", "--verbose"]),
        (["protocols"], ["--show"]),
        (["targets"], ["--help"]),
        (["evaluate"], EVALUATE_OPTIONS),
        (["leaderboard"], ["--protocol", "--dir", "--csv"]),
        (["demo"], ["--out", "--quiet"]),
    ],
)
def test_help_exits_zero_and_mentions_options(
    command: list[str], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: transferbench")
    for opt in options:
        assert opt in out, f"{opt} not in help of {command}"


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        out.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend(_all_actions(sub))
    return out


def test_parser_has_no_type_bool_options() -> None:
    actions = _all_actions(build_parser())
    assert len(actions) > 20  # the walk reached the subcommands
    assert [a.dest for a in actions if a.type is bool] == []
    flags = {a.dest: a for a in actions if isinstance(a, argparse._StoreTrueAction)}
    assert {"overwrite", "quiet", "csv", "verbose"} <= set(flags)
    assert all(a.default is False for a in flags.values())


def test_parser_types() -> None:
    args = build_parser().parse_args(["evaluate", "sub", "--batch-size", "32", "--limit", "10", "--targets", "a", "b"])
    assert args.batch_size == 32 and args.limit == 10 and args.targets == ["a", "b"]
    assert args.func is cli.cmd_evaluate
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "sub", "--batch-size", "lots"])


@pytest.mark.parametrize("option", [["--limit", "0"], ["--limit", "-5"], ["--batch-size", "0"]])
def test_parser_rejects_non_positive_counts(option: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["evaluate", "sub", *option])
    assert info.value.code == 2


# --- targets / evaluate / leaderboard ----------------------------------------------------------------------------


def test_targets_fetch_prints_the_full_sha256_a_zoo_entry_pins(
    shared_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from targets import TARGETS

    assert main(["targets", "fetch", "akamaster-resnet20", "--weights-dir", str(shared_weights)]) == 0
    name, sha, path = capsys.readouterr().out.split()
    assert name == "akamaster-resnet20" and sha == TARGETS.get(name).source.sha256 and len(sha) == 64
    assert Path(path).name == "resnet20-12fca82f.th"


def test_targets_lists_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for depth in (20, 32, 44, 56):
        row = rows[f"akamaster-resnet{depth}"]
        assert f"cifar_resnet{depth}" in row
        assert "external" in row
        assert "https://github.com/akamaster/pytorch_resnet_cifar10" in row
    for name in get_protocol("cifar10").targets + get_protocol("smoke-digits").targets:
        assert name in rows


def test_leaderboard_empty_home(capsys: pytest.CaptureFixture[str], isolated_home: Path) -> None:
    assert main(["leaderboard"]) == 0
    assert "no results" in capsys.readouterr().out
    assert not (isolated_home / "leaderboard").exists()  # reading never creates the store


def test_deterministic_sets_the_cublas_workspace_before_any_work() -> None:
    import os

    from bench.determinism import CUBLAS_WORKSPACE_CONFIG

    assert main(["evaluate", "/nonexistent"]) == 1
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert main(["evaluate", "/nonexistent", "--deterministic"]) == 1  # set even though the run fails early
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG


def test_evaluate_missing_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "/nonexistent"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error:")
    assert "/nonexistent" in captured.err
    assert "Traceback" not in captured.err


def test_evaluate_unknown_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "/nonexistent", "--protocol", "smoke-digit"]) == 1
    assert "Did you mean 'smoke-digits'" in capsys.readouterr().err


def test_evaluate_unknown_target_is_rejected_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "/nonexistent", "--protocol", "smoke-digits", "--targets", "smoke-mlp", "nope"]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and "smoke-cnn-a" in err


@pytest.mark.parametrize(
    ("extra", "suffix"), [([], ""), (["--limit", "20"], ".limit20"), (["--limit", "20", "--precision", "bf16"],
                                                                      ".limit20.bf16")],
)  # fmt: skip
def test_evaluate_refuses_an_existing_record_before_evaluating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], extra: list[str],
    suffix: str,
) -> None:  # fmt: skip
    """A duplicate is named at once, not after the whole grid has run (the store checks again when it writes)."""
    from conftest import tiny_digits_model

    import bench.runner
    from surrogates import load_surrogate, save_surrogate

    folder = save_surrogate(tiny_digits_model(0), tmp_path / "sur", architecture="small_cnn", num_classes=10,
                            mean=(0.5,), std=(0.5,), input_size=(1, 8, 8))  # fmt: skip
    sha = load_surrogate(folder).sha256
    existing = tmp_path / "lb" / "smoke-digits-v2" / f"sur-{sha[:12]}{suffix}.json"
    existing.parent.mkdir(parents=True)
    existing.write_text("{}")

    def not_to_be_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation must not start")

    monkeypatch.setattr(bench.runner, "evaluate", not_to_be_called)
    monkeypatch.setattr(bench.runner, "load_protocol_data", not_to_be_called)
    argv = ["evaluate", str(folder), "--protocol", "smoke-digits", "--out", str(tmp_path / "lb"), *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(existing) in err and "--overwrite" in err


def _copy_record(src: Record, name: str, score: float) -> Record:
    d = json.loads(src.dumps())
    d["submission"]["name"] = name
    d["submission"]["sha256"] = name.encode().hex().ljust(64, "0")[:64]
    d["score"]["mean"] = score
    d.pop("integrity")  # edited on purpose: the builder re-derives the content hash
    return Record.from_json(d)


@pytest.fixture
def stored_records(isolated_home: Path) -> list[Record]:
    """Two valid smoke records in the default store (from the demo's structure, without running it)."""
    tpl = {
        "schema": "transferbench.record",
        "schema_version": 1,
        "submission": {"name": "x", "kind": "single", "sha256": "0" * 64, "metadata": {"recipe": "ST"}},
        "protocol": {
            "name": "smoke-digits",
            "version": get_protocol("smoke-digits").version,
            "sha256": get_protocol("smoke-digits").sha256,
                     "kind": "smoke"},
        "data": {"sha256": "d" * 64, "partial": False},
        "targets": {},
        "runs": [{"clean_accuracy": 0.9, "cells": {}, "smoothness": {"mean": 1.0}, "similarity": {}}],
        "score": {"mean": 0.5, "std": None},
        "provenance": {"package_version": "0", "torch": "2", "device": "cpu", "precision": "fp32", "seed": 0},
    }  # fmt: skip
    base = Record.from_json(tpl)
    recs = [_copy_record(base, "alpha", 0.25), _copy_record(base, "beta", 0.75)]
    store = LocalStore()
    for r in recs:
        store.add(r)
    return recs


def test_leaderboard_lists_stored_records(stored_records: list[Record], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard"]) == 0
    out = capsys.readouterr().out
    assert "smoke-digits-v2" in out and "SMOKE" in out
    assert out.index("beta") < out.index("alpha")  # higher score first
    assert "75.00" in out and "25.00" in out


def test_leaderboard_csv(stored_records: list[Record], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and "sha256" in lines[0]  # the "cite this table" line
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[1:]))))
    assert [r["surrogate"] for r in rows] == ["beta", "alpha"]
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["score"]) == pytest.approx(75.0)


def test_leaderboard_protocol_filter_and_dir(
    stored_records: list[Record], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["leaderboard", "--protocol", "cifar10"]) == 0
    assert "no results" in capsys.readouterr().out
    assert main(["leaderboard", "--protocol", "smoke-digits"]) == 0
    assert "alpha" in capsys.readouterr().out
    assert main(["leaderboard", "--dir", str(tmp_path)]) == 0
    assert "no results" in capsys.readouterr().out


def test_leaderboard_protocol_filter_accepts_versioned_id(
    stored_records: list[Record], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["leaderboard", "--protocol", "smoke-digits-v2"]) == 0
    assert "alpha" in capsys.readouterr().out


def test_leaderboard_corrupt_record_is_an_error(
    stored_records: list[Record], capsys: pytest.CaptureFixture[str], isolated_home: Path
) -> None:
    bad = isolated_home / "leaderboard" / "smoke-digits-v2" / "broken.json"
    bad.write_text("{not json")
    assert main(["leaderboard"]) == 1
    assert "broken.json" in capsys.readouterr().err


# --- the demo, end to end (slow: trains five small models, evaluates two surrogates on 599 images) --------------


def _demo_records(home: Path) -> dict[str, Record]:
    folder = home / "leaderboard" / "smoke-digits-v2"
    files = sorted(folder.glob("*.json"))
    assert len(files) == 2, files
    recs = {}
    for f in files:
        rec = LocalStore.read(f)
        assert f.name == f"{rec.submission_id}.json"
        recs[rec.submission["name"]] = rec
    return recs


@pytest.mark.slow
def test_demo_end_to_end(
    isolated_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proto = get_protocol("smoke-digits")
    t0 = time.perf_counter()
    assert main(["demo", "--quiet"]) == 0
    first_s = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "smoke-st" in out and "smoke-ir" in out
    assert "SMOKE" in out
    assert "smoke-digits-v2" in out
    assert str(isolated_home / "leaderboard") in out

    recs = _demo_records(isolated_home)
    assert set(recs) == {"smoke-st", "smoke-ir"}
    for rec in recs.values():
        prov = rec.provenance
        assert prov["torch"] == torch.__version__
        assert isinstance(prov["device"], str) and prov["device"].startswith("cpu")
        assert prov["precision"] == "fp32"
        assert prov["seed"] == proto.seed and type(prov["seed"]) is int
        assert rec.protocol["sha256"] == proto.sha256
        assert rec.protocol["kind"] == "smoke"
        assert rec.data["n_images"] == len(proto.image_ids) and rec.data["partial"] is False
        assert set(rec.targets) == set(proto.targets)
        assert len(rec.runs) == 1
        run = rec.runs[0]
        assert set(run["cells"]) == {c.key for c in proto.cells()}
        assert set(run["outcomes"]) == {"clean_correct", "success"}
        assert 0.5 < run["clean_accuracy"] <= 1.0  # trained models, not chance
        assert 0.0 <= rec.score["mean"] <= 1.0
        assert rec.submission["metadata"]["recipe"] in ("ST", "IR")

    assert main(["leaderboard"]) == 0
    board = capsys.readouterr().out
    assert "smoke-st" in board and "smoke-ir" in board and "SMOKE" in board

    # Second run: the cached targets and surrogates are reused (no training), and the evaluation is deterministic.
    demo_dir = isolated_home / "demo"
    cached = {p: p.read_bytes() for p in demo_dir.rglob("*.safetensors")}
    assert len(cached) == 5  # three targets, two surrogates

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo retrained a cached model")

    monkeypatch.setattr("bench.demo.train_classifier", no_training)
    t0 = time.perf_counter()
    assert main(["demo", "--quiet"]) == 0
    second_s = time.perf_counter() - t0
    assert "smoke-st" in capsys.readouterr().out
    assert second_s < first_s
    assert {p: p.read_bytes() for p in demo_dir.rglob("*.safetensors")} == cached

    again = _demo_records(isolated_home)
    for name, rec in recs.items():
        rec2 = again[name]
        assert rec2.submission["sha256"] == rec.submission["sha256"]
        assert {n: t["sha256"] for n, t in rec2.targets.items()} == {n: t["sha256"] for n, t in rec.targets.items()}
        assert rec2.score == rec.score
        assert rec2.runs[0]["cells"] == rec.runs[0]["cells"]
        assert rec2.runs[0]["outcomes"] == rec.runs[0]["outcomes"]
