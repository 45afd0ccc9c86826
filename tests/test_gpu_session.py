"""scripts/gpu_session.py: every command it would run parses with the CLI it calls (GPU and quick modes)."""

from __future__ import annotations

import importlib.util
import sys
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
@pytest.mark.parametrize("step", [1, 2, 3])
def test_every_command_parses(session: ModuleType, step: int, quick: bool) -> None:
    commands = session.step_commands(step, quick)
    assert commands and len({name for name, _ in commands}) == len(commands)
    for name, argv in commands:
        assert argv[:3] == [sys.executable, "-m", "bench.cli"]
        args, extra = build_parser().parse_known_args(argv[3:])
        if args.command == "train":
            cfg = configure(args.recipe, parse_overrides(extra))  # the overrides are real hyperparameters
            assert cfg.epochs == (1 if quick else 30) and cfg.bf16 is not quick
        else:
            assert extra == [], f"{name}: unknown options {extra}"
        assert getattr(args, "device", "cuda" if not quick else "cpu") in (("cpu",) if quick else ("cuda",))
        if args.command == "evaluate":
            assert (args.limit is not None) is quick  # full protocols on the GPU, toy prefixes in the check


def test_unknown_step_and_missing_data_are_named(session: ModuleType, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with pytest.raises(SystemExit, match="unknown step 4"):
        session.step_commands(4, False)
    monkeypatch.setattr(session, "DATA", tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="nowhere is missing: copy the CIFAR-10 mirror"):
        session.run_step(1, tmp_path / "out")
    assert not (tmp_path / "out").exists()
