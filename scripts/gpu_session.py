"""The measurements of docs/gpu-runbook.md as numbered steps, each one command that fits a 10-minute slot.

    python3 scripts/gpu_session.py STEP [--out DIR] [--quick]

Steps (run them in order on one machine; later steps reuse the surrogate of step 1 from ``runs/``):

1. ``transferbench train st`` (the fast-training floor of #6), then the full ``cifar10`` protocol (#2)
2. ``transferbench benchmark``: attacks and metrics vs torchattacks, then the whole protocol and the
   bf16-vs-fp32 agreement (#7)
3. the ``cifar10-ext`` and ``cifar10-autoattack`` protocols on the same surrogate (#5)

Each command's output goes to ``<out>/stepN-<name>.log``, every record and benchmark JSON is copied to
``<out>``, and a short table of what ran (exit code, seconds) is printed at the end. Data and target weights
come from ``.carry/cifar10`` and ``.carry/weights`` (see the runbook); the leaderboard lives in
``runs/home``. The exit status is non-zero when any command failed.

``--quick`` runs the same commands at toy size on a CPU (a small CNN, one epoch, a few images), to check
the script itself before device time is spent on it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs"
DATA, WEIGHTS = ROOT / ".carry" / "cifar10", ROOT / ".carry" / "weights"
SURROGATE = RUNS / "st"


def _tb(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def step_commands(step: int, quick: bool) -> list[tuple[str, list[str]]]:
    """(name, argv) of each command of ``step``; ``quick`` shrinks every size for a CPU check."""
    if " " in str(ROOT):
        raise SystemExit(f"the checkout path {ROOT} contains a space; move it to a path without one")
    dev = "cpu" if quick else "cuda"
    io = f"--data-dir {DATA} --weights-dir {WEIGHTS} --device {dev} --quiet".split()
    limit = ["--limit", "40"] if quick else []
    tiny = ["--arch", "small_cnn", "--arch-kwargs", '{"in_chans": 3, "width": 8}'] if quick else []
    if step == 1:
        size = "--epochs 1" if quick else "--epochs 30 --bf16 true --channels-last true"
        train = f"train st --out {SURROGATE} --data-dir {DATA} --device {dev} --batch-size 512 --lr 0.2"
        return [
            ("train-st", _tb(*train.split(), "--warmup-epochs", "2", *size.split(), *tiny, "--overwrite")),
            ("evaluate-cifar10", _tb("evaluate", str(SURROGATE), "--protocol", "cifar10", *io, "--overwrite", *limit)),
            ("leaderboard", _tb("leaderboard", "--format", "md")),
        ]
    if step == 2:
        small = "--batch 16 --steps 2 --repeats 1 --warmup 0 --smoothness-images 8 --similarity-images 8"
        small += " --similarity-targets 1"
        bench = ["benchmark", "--device", dev, "--quiet", *(tiny + small.split() if quick else [])]
        protocol = f"benchmark --measure protocol agreement --protocol cifar10 --surrogate {SURROGATE}".split()
        extra = ["--metric-images", "20", *limit] if quick else []
        return [
            ("benchmark", _tb(*bench, "--out", str(RUNS / "bench.json"))),
            ("benchmark-protocol", _tb(*protocol, *io, *extra, "--out", str(RUNS / "protocol.json"))),
        ]
    if step == 3:
        return [
            (f"evaluate-{p}", _tb("evaluate", str(SURROGATE), "--protocol", p, *io, "--overwrite", *limit))
            for p in ("cifar10-ext", "cifar10-autoattack")
        ]
    raise SystemExit(f"unknown step {step}; steps are 1, 2, 3 (docs/gpu-runbook.md)")


def run_step(step: int, out: Path, *, quick: bool = False) -> int:
    """Run the commands of ``step``; logs and result files go to ``out``. Returns the number that failed."""
    for path, what in ((DATA, "CIFAR-10 mirror"), (WEIGHTS, "target weights")):
        if not path.is_dir():
            raise SystemExit(f"{path} is missing: copy the {what} there first (docs/gpu-runbook.md, Preparation)")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TRANSFERBENCH_HOME": str(RUNS / "home"), "PYTHONPATH": str(ROOT)}
    env["TRANSFERBENCH_OFFLINE"] = "1"  # everything comes from .carry; a download attempt is an error
    rows, failed = [], 0
    for name, argv in step_commands(step, quick):
        start = time.perf_counter()
        with open(out / f"step{step}-{name}.log", "w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        rows.append((name, rc, time.perf_counter() - start))
        failed += rc != 0
        if rc != 0 and name.startswith("train"):
            break  # nothing after training can run without its surrogate
    for src in [*(RUNS / "home").rglob("*.json"), *RUNS.glob("*.json")]:
        rel = src.relative_to(RUNS)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out / rel)
    print(f"step {step} ({'quick, CPU' if quick else 'GPU'}); logs and results in {out}")
    print(f"{'command':<28}{'exit':>5}{'seconds':>10}")
    for name, rc, secs in rows:
        print(f"{name:<28}{rc:>5}{secs:>10.1f}")
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", type=int, choices=[1, 2, 3])
    p.add_argument("--out", default=os.environ.get("OUT", str(RUNS / "out")), help="logs and results (default $OUT)")
    p.add_argument("--quick", action="store_true", help="toy sizes on a CPU, to check the script")
    args = p.parse_args(argv)
    return 1 if run_step(args.step, Path(args.out), quick=args.quick) else 0


if __name__ == "__main__":
    sys.exit(main())
