"""scripts/gpu_session.py: every command it would run parses with the CLI it calls (GPU and quick modes); the
step keeps to its time budget and packs its results into two shallow files."""

from __future__ import annotations

import importlib.util
import os
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType

import pytest

from bench.cli import build_parser
from surrogates.recipes import configure, parse_overrides

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_session.py"


@pytest.fixture(scope="module")
def session() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_every_command_parses(session: ModuleType, step: int, quick: bool) -> None:
    commands = session.step_commands(step, quick)
    assert commands and len({name for name, _ in commands}) == len(commands)
    for name, argv in commands:
        assert argv[:3] == [sys.executable, "-m", "bench.cli"]
        args, extra = build_parser().parse_known_args(argv[3:])
        if args.command == "train":
            cfg = configure(args.recipe, parse_overrides(extra))  # the overrides are real hyperparameters
            assert cfg.epochs == (1 if quick else 30 if step == 1 else 4) and cfg.bf16 is not quick
        else:
            assert extra == [], f"{name}: unknown options {extra}"
        assert getattr(args, "device", "cuda" if not quick else "cpu") in (("cpu",) if quick else ("cuda",))
        if args.command == "evaluate" and step != 4:
            assert (args.limit is not None) is quick  # full protocols on the GPU, toy prefixes in the check


def test_the_determinism_step_runs_each_mode_twice_and_compares_the_pairs(
    session: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "SURROGATE", tmp_path / "st")
    names = [name for name, _ in session.step_commands(4, False)]
    assert names[0] == "train-st"  # no surrogate from step 1 on this machine: a short one is trained
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "config.json").write_text("{}")
    commands = dict(session.step_commands(4, False))
    assert "train-st" not in commands
    for mode in ("det", "default"):
        for run in ("a", "b"):
            argv = commands[f"evaluate-{mode}-{run}"]
            assert ("--deterministic" in argv) is (mode == "det")
            assert argv[argv.index("--out") + 1] == str(session.RUNS / f"{mode}-{run}")
        assert commands[f"compare-{mode}"][3:6] == ["compare", str(session.RUNS / f"{mode}-a"),
                                                   str(session.RUNS / f"{mode}-b")]  # fmt: skip


def test_unknown_step_and_missing_data_are_named(session: ModuleType, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with pytest.raises(SystemExit, match="unknown step 5"):
        session.step_commands(5, False)
    monkeypatch.setattr(session, "DATA", tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="nowhere is missing: copy the CIFAR-10 mirror"):
        session.run_step(1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_module_the_step_needs_is_checked_before_anything_runs(
    session: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert session.STEP_MODULES[2] == session.STEP_MODULES[3] == ("torchattacks",)  # comparison, AutoAttack
    monkeypatch.setattr(session, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(session, "ROOT", tmp_path)  # no .whl/ here
    # present, so the module check is what stops the step (a clean checkout has no .carry)
    for name in ("DATA", "WEIGHTS"):
        (tmp_path / name).mkdir()
        monkeypatch.setattr(session, name, tmp_path / name)
    monkeypatch.setitem(session.STEP_MODULES, 1, ("json", "transferbench_no_such_module"))
    with pytest.raises(SystemExit, match=r"needs transferbench_no_such_module \(ModuleNotFoundError: No module named"):
        session.run_step(1, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()  # nothing ran, nothing packed
    session._check_modules(("json", "torch"), dict(os.environ))  # present: no error
    broken = tmp_path / "site" / "tb_broken_wheel.py"  # found, but its own import fails (a missing dependency)
    broken.parent.mkdir()
    broken.write_text("import transferbench_missing_dependency\n")
    env = {**os.environ, "PYTHONPATH": str(broken.parent)}
    with pytest.raises(SystemExit, match=r"needs tb_broken_wheel \(ModuleNotFoundError: .*transferbench_missing_dep"):
        session._check_modules(("tb_broken_wheel",), env)


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_command_past_the_budget_is_stopped_and_the_rest_skipped(session: ModuleType, tmp_path: Path) -> None:
    """The step always ends inside its budget, with what finished kept: a device call's limit never hits first."""
    commands = [
        ("fast", _py("print('fast done')")),
        ("slow", _py("import subprocess, sys, time; print('started', flush=True); "
                     "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")),
        ("after", _py("print('never')")),
    ]  # fmt: skip
    start = time.monotonic()
    rows = session.run_commands(commands, tmp_path / "logs", budget=3.0, env=dict(os.environ))
    assert time.monotonic() - start < 15  # the sleeping command and its child were killed, not waited for
    assert [(n, rc) for n, rc, _ in rows] == [("fast", 0), ("slow", "timeout"), ("after", "skipped")]
    slow_log = (tmp_path / "logs" / "slow.log").read_text()
    assert "started" in slow_log and "budget of 3 s was spent" in slow_log
    assert not (tmp_path / "logs" / "after.log").exists()


def test_a_failed_training_skips_what_needs_its_surrogate(session: ModuleType, tmp_path: Path) -> None:
    commands = [("train-st", _py("raise SystemExit(3)")), ("evaluate-cifar10", _py("print('x')"))]
    rows = session.run_commands(commands, tmp_path / "logs", budget=60.0, env=dict(os.environ))
    assert [(n, rc) for n, rc, _ in rows] == [("train-st", 3), ("evaluate-cifar10", "skipped")]


def test_results_are_two_shallow_files_with_every_log_and_record(
    session: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    record = runs / "home" / "leaderboard" / "cifar10-v1" / "st-0123.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"score": 1}')
    (runs / "bench.json").write_text("{}")
    monkeypatch.setattr(session, "RUNS", runs)
    logs = runs / "step1-logs"
    rows = session.run_commands(
        [("train-st", _py("print('epoch 30: test acc 0.93')")), ("leaderboard", _py("print('| 1 | st | 80.00 |')"))],
        logs, budget=60.0, env=dict(os.environ),
    )  # fmt: skip
    text = session.summary(1, rows, logs, quick=False)
    files = session.pack(1, tmp_path / "out", logs, text)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["step1-summary.txt", "step1.tar.gz"]
    assert [p.parent for p in files] == [tmp_path / "out"] * 2
    summary = (tmp_path / "out" / "step1-summary.txt").read_text()
    assert "train-st" in summary and "epoch 30: test acc 0.93" in summary and "| 1 | st | 80.00 |" in summary
    with tarfile.open(files[0]) as tar:
        names = set(tar.getnames())
    assert {"step1/logs/train-st.log", "step1/logs/leaderboard.log", "step1/bench.json",
            "step1/home/leaderboard/cifar10-v1/st-0123.json"} <= names  # fmt: skip
