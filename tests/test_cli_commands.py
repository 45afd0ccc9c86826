"""The CLI commands over the leaderboard, Hub and recipes: thin, but their exit codes are a contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_server import running_hub
from test_hub import REPO, TOKEN
from test_leaderboard import make_hub_record, make_record

from bench.cli import main
from leaderboard.store import LocalStore
from surrogates import load_surrogate


def _stored(tmp_path: Path, *records) -> list[Path]:  # type: ignore[no-untyped-def]
    store = LocalStore(tmp_path / "board")
    return [store.add(r) for r in records]


def test_compare_exit_codes(tmp_path: Path) -> None:
    a, _ = _stored(tmp_path, make_record("sur-a", score=0.5), make_record("sur-b", score=0.5))
    assert main(["compare", str(a), str(a)]) == 0  # a record never regresses against itself
    other = LocalStore(tmp_path / "other").add(make_record("sur-c", data_sha256="e" * 64))
    assert main(["compare", str(a), str(other)]) == 2  # different data: not paired, not comparable
    assert main(["compare", str(a), str(tmp_path / "missing.json")]) == 2


def test_leaderboard_exports_to_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _stored(tmp_path, make_record("sur-a", score=0.25), make_record("sur-b", score=0.75))
    board = str(tmp_path / "board")
    for fmt, marker in (("csv", "sha256"), ("md", "| rank |"), ("latex", "\\toprule"), ("html", "<table")):
        out = tmp_path / f"board.{fmt}"
        assert main(["leaderboard", "--dir", board, "--format", fmt, "--out", str(out)]) == 0
        text = out.read_text()
        assert marker in text and "sur-b" in text
    assert main(["leaderboard", "--dir", board, "--format", "csv", "--table", "long"]) == 0
    assert "target_correct" in capsys.readouterr().out


def test_cite_prints_bibtex_for_a_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (path,) = _stored(tmp_path, make_record("sur-a"))
    assert main(["cite", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("@") >= 3 and "sur-a" in out and "Little Robustness" in out
    assert "reference numerics unverified" in out  # the record carries no digest
    rec = make_record("sur-b")
    rec.provenance["numerics"] = "ab" * 32
    (path,) = _stored(tmp_path / "b", rec)
    assert main(["cite", str(path)]) == 0
    assert "reference numerics abababababababab" in capsys.readouterr().out


def test_publish_and_pull_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    (path,) = _stored(tmp_path, make_hub_record("sur-a"))
    with running_hub() as hub:
        hub_args = ["--repo", REPO, "--endpoint", hub.endpoint]
        assert main(["publish", str(path), *hub_args]) == 0
        assert main(["publish", str(path), *hub_args]) == 0  # already published: skipped, not an error
        assert main(["publish", *hub_args]) == 1  # neither files nor --all
        fresh = tmp_path / "fresh"
        assert main(["pull", "--dir", str(fresh), *hub_args]) == 0
    pulled = list(fresh.rglob("*.json"))
    assert len(pulled) == 1 and pulled[0].read_bytes() == path.read_bytes()


def test_publish_without_a_hub_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (path,) = _stored(tmp_path, make_record("sur-a"))
    assert main(["publish", str(path)]) == 1
    assert "TRANSFERBENCH_HUB_REPO" in capsys.readouterr().err


def test_train_a_recipe_on_digits(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "ir"
    args = ["train", "ir", "--data", "digits", "--arch", "small_cnn", "--arch-kwargs", json.dumps({"width": 4}),
            "--out", str(out), "--device", "cpu", "--epochs", "1", "--warmup-epochs", "0", "--crop-padding", "0",
            "--hflip", "false", "--deterministic"]  # fmt: skip
    assert main(args) == 0
    sur = load_surrogate(out)
    assert sur.config.metadata["recipe"] == "ir" and sur.config.input_size == (1, 8, 8)
    assert sur.config.metadata["math"]["deterministic_algorithms"] is True  # trained in deterministic mode
    assert not torch.are_deterministic_algorithms_enabled()
    assert main(["train", "ir", "--out", str(tmp_path / "x"), "--data", "digits", "--no-such-field", "1"]) == 1


def test_train_seeds_writes_a_seed_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "st", "--data", "digits", "--arch", "small_cnn", "--arch-kwargs", json.dumps({"width": 4}),
            "--device", "cpu", "--epochs", "1", "--warmup-epochs", "0", "--crop-padding", "0",
            "--hflip", "false"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "st"), "--seeds", "0, 2"]) == 0
    assert "seed group of 2 trainings written to" in capsys.readouterr().out
    group = load_surrogate(tmp_path / "st")
    assert group.kind == "seed-group" and group.run_names == ["st-s0", "st-s2"]
    assert [load_surrogate(tmp_path / f"st-s{k}").config.metadata["hyperparameters"]["seed"] for k in (0, 2)] == [0, 2]
    assert main([*args, "--out", str(tmp_path / "bad"), "--seeds", "0,one"]) == 1
    assert "--seeds '0,one': give integers separated by commas" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "twice"), "--seeds", "0,1", "--seed", "4"]) == 1
    assert "with --seeds only" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st", "st-s0", "st-s2"]
    assert main([*args, "--out", str(tmp_path / "one"), "--seed", "4"]) == 0  # the hyperparameter, not --seeds
    # Refused before any data is read: no CIFAR-10 mirror is needed to learn that one seed is no group.
    nowhere = ["train", "st", "--data-dir", str(tmp_path / "no-mirror"), "--out", str(tmp_path / "g")]
    assert main([*nowhere, "--seeds", "0"]) == 1
    assert "two or more different seeds, got [0]" in capsys.readouterr().err
    assert main([*nowhere[:-1], str(tmp_path / "st"), "--seeds", "0,1"]) == 1
    assert "st exists: delete it to assemble the group again" in capsys.readouterr().err
    assert load_surrogate(tmp_path / "one").config.metadata["hyperparameters"]["seed"] == 4


def test_targets_train_writes_a_zoo_target_and_pins_need_the_full_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`targets train` on a tiny CIFAR-10 mirror; `targets pins` refuses a mirror without the protocol's images."""
    from test_data import _labels, _random_images, _write_parquet

    mirror = tmp_path / "cifar"
    _write_parquet(mirror / "train.parquet", _random_images(40, seed=1), _labels(40))
    _write_parquet(mirror / "test.parquet", _random_images(20, seed=2), _labels(20))
    out = tmp_path / "mnv2"
    args = ["targets", "train", "tb-mobilenet-v2", "--out", str(out), "--data-dir", str(mirror), "--device", "cpu",
            "--epochs", "1", "--arch_width_mult", "0.25", "--batch_size", "20"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "cifar_mobilenet_v2" and cfg["metadata"]["target"] == "tb-mobilenet-v2"
    assert cfg["metadata"]["provenance"]["math"]["deterministic_algorithms"] is False  # no --deterministic given
    assert load_surrogate(out).num_classes == 10
    capsys.readouterr()
    assert main(["targets", "pins", str(out), "--data-dir", str(mirror), "--device", "cpu"]) == 1
    assert "lacks 9980 image ids of cifar10-v1" in capsys.readouterr().err
    assert main(["targets", "train", "tb-nope", "--out", str(tmp_path / "n"), "--data-dir", str(mirror)]) == 1
    assert "tb-" in capsys.readouterr().err


def test_unknown_options_are_refused_outside_train() -> None:
    with pytest.raises(SystemExit) as e:
        main(["protocols", "--bogus"])
    assert e.value.code == 2


def test_compare_refuses_mixed_precisions_unless_allowed(tmp_path: Path) -> None:
    fp32 = make_record("sur-a")
    bf16 = make_record("sur-b")
    bf16.provenance.update(precision="bf16", protocol_precision="fp32", precision_matches_protocol=False)
    a, b = _stored(tmp_path, fp32, bf16)
    assert b.name.endswith(".bf16.json")
    assert main(["compare", str(a), str(b)]) == 2
    assert main(["compare", str(a), str(b), "--allow-precision-mismatch"]) == 0


def test_deviating_runs_stay_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    bf16 = make_hub_record("sur-a")
    bf16.provenance.update(precision="bf16", protocol_precision="fp32", precision_matches_protocol=False)
    canonical, other, partial = _stored(
        tmp_path, make_hub_record("sur-a"), bf16, make_hub_record("sur-b", partial=True)
    )
    with running_hub() as hub:
        hub_args = ["--repo", REPO, "--endpoint", hub.endpoint]
        assert main(["publish", str(other), *hub_args]) == 1  # named explicitly: refused with the reason
        assert "precision bf16 (the protocol pins fp32)" in capsys.readouterr().err
        assert main(["publish", str(partial), *hub_args]) == 1
        assert "--limit" in capsys.readouterr().err
        assert main(["publish", "--all", "--dir", str(tmp_path / "board"), *hub_args]) == 0  # skips them
        out = capsys.readouterr().out
        assert out.count("skipped") == 2 and out.count("published") == 1
        fresh = tmp_path / "fresh"
        assert main(["pull", "--dir", str(fresh), *hub_args]) == 0
    pulled = list(fresh.rglob("*.json"))
    assert len(pulled) == 1 and pulled[0].read_bytes() == canonical.read_bytes()


def test_submit_refuses_another_precision_before_evaluating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(tmp_path / "never-read"), "--protocol", "smoke-digits", "--precision", "bf16"]) == 1
    assert "protocol's precision (fp32)" in capsys.readouterr().err


def test_group_assembles_seeds_of_one_recipe_and_refuses_a_mix(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from test_submission import _save_digits

    def member(folder: str, seed: int, recipe: str = "st") -> Path:
        meta = {"recipe": recipe, "hyperparameters": {"epochs": 3, "seed": seed}}
        return _save_digits(tmp_path / folder, seed=seed, metadata=meta)

    s0, s1 = member("st-s0", 0), member("st-s1", 1)
    assert main(["group", str(tmp_path / "st-group"), str(s0), str(s1)]) == 0
    group = load_surrogate(tmp_path / "st-group")
    assert group.kind == "seed-group" and group.run_names == ["st-s0", "st-s1"]
    assert group.config.metadata == {"name": "st-group", "recipe": "st"}
    assert "seed-group of 2 members written to" in capsys.readouterr().out
    sam = member("sam-s0", 2, recipe="sam")
    assert main(["group", str(tmp_path / "mixed"), str(s0), str(sam)]) == 1
    assert "different recipes ('st' vs 'sam')" in capsys.readouterr().err and not (tmp_path / "mixed").exists()
    assert main(["group", str(tmp_path / "ens"), str(s0), str(sam), "--kind", "ensemble", "--name", "two"]) == 0
    ens = load_surrogate(tmp_path / "ens")
    assert ens.kind == "ensemble" and ens.config.metadata == {"name": "two"} and len(ens.runs) == 1
    (tmp_path / "other").mkdir()
    twin = _save_digits(tmp_path / "other" / "st-s0", seed=3)
    assert main(["group", str(tmp_path / "twins"), str(s0), str(twin)]) == 1
    assert "share a name" in capsys.readouterr().err and not (tmp_path / "twins").exists()
