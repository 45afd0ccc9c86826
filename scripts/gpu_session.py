"""The measurements of docs/gpu-runbook.md as numbered steps, each one command with a wall-clock budget.

    python3 scripts/gpu_session.py STEP [--out DIR] [--budget SECONDS] [--quick]

Steps (run them in order on one machine; later steps reuse the surrogate of step 1 from ``runs/``):

1. ``transferbench train st`` (the fast-training floor of #6), then the full ``cifar10`` protocol (#2)
2. ``transferbench benchmark``: attacks (fp32, fp32 in deterministic mode, bf16, bf16 + channels-last) and
   metrics vs torchattacks, then the whole protocol and the bf16-vs-fp32 agreement (#7)
3. the ``cifar10-ext`` and ``cifar10-autoattack`` protocols on the same surrogate (#5)
4. determinism: the ``cifar10`` protocol on a prefix of its images, twice with ``--deterministic`` and twice
   without, then ``compare`` of each pair (how many per-image outcome bits differ; the time it costs). It trains
   a short surrogate first when step 1's is not there.

Budget: the step's commands share ``--budget`` seconds of wall time (default 540, inside a 10-minute call).
A command still running when the budget is spent is stopped (its whole process group) and reported as
``timeout``; the commands after it are reported as ``skipped``; what finished is kept either way. So the
step always ends, packs and prints its table before the call's own limit.

Results: ``<out>/stepN.tar.gz`` holds every command's log and every record and benchmark JSON (full paths
under ``runs/``), and ``<out>/stepN-summary.txt`` the table printed at the end, followed by the end of each
command's log (the leaderboard's table in step 1). Two files, one folder deep: a device machine that returns
only a few files from shallow folders returns both. The exit status is non-zero when any command failed or
timed out.

Data and target weights come from ``.carry/cifar10`` and ``.carry/weights`` (see the runbook); the
leaderboard lives in ``runs/home``. Wheels found in ``.whl/`` (e.g. torchattacks, for steps 2 and 3, on a machine
without it) are installed into ``runs/site`` without network or dependencies and put on ``PYTHONPATH``.

``--quick`` runs the same commands at toy size on a CPU (a small CNN, one epoch, a few images), to check
the script itself before device time is spent on it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
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

    def train_st(size: str) -> tuple[str, list[str]]:  # the surrogate of every step, ``size`` epochs and options
        train = f"train st --out {SURROGATE} --data-dir {DATA} --device {dev} --batch-size 512 --lr 0.2"
        size = "--epochs 1 --warmup-epochs 0" if quick else size
        return "train-st", _tb(*train.split(), *size.split(), *tiny, "--overwrite")

    if step == 1:
        return [
            train_st("--epochs 30 --warmup-epochs 2 --bf16 true --channels-last true"),
            ("evaluate-cifar10", _tb("evaluate", str(SURROGATE), "--protocol", "cifar10", *io, "--overwrite", *limit)),
            ("leaderboard", _tb("leaderboard", "--format", "md")),
        ]
    if step == 2:
        small = "--batch 16 --steps 2 --repeats 1 --warmup 0 --smoothness-images 8 --similarity-images 8"
        small += " --similarity-targets 1"
        settings = ["--settings", "fp32", "fp32+det", "bf16", "bf16+cl"]  # +det: the cost of deterministic mode
        bench = ["benchmark", "--device", dev, "--quiet", *settings, *(tiny + small.split() if quick else [])]
        protocol = f"benchmark --measure protocol agreement --protocol cifar10 --surrogate {SURROGATE}".split()
        # bf16 has no native support on most CPUs (about 18x slower than fp32 there): the quick check times fp32
        # and the channels-last bf16 path only, so it fits its budget on a busy 2-core machine.
        extra = ["--metric-images", "20", *limit, "--settings", "fp32", "bf16+cl"] if quick else []
        return [
            ("benchmark", _tb(*bench, "--out", str(RUNS / "bench.json"))),
            ("benchmark-protocol", _tb(*protocol, *io, *extra, "--out", str(RUNS / "protocol.json"))),
        ]
    if step == 3:
        few = ["--limit", "16"] if quick else []  # PGN and VMI cost 20-40 gradients per step: fewer images on a CPU
        return [
            (f"evaluate-{p}", _tb("evaluate", str(SURROGATE), "--protocol", p, *io, "--overwrite", *few))
            for p in ("cifar10-ext", "cifar10-autoattack")
        ]
    if step == 4:
        prefix = ["--limit", "24" if quick else "512"]
        commands = []
        if not (SURROGATE / "config.json").is_file():  # a fresh machine: a short training run stands in for step 1's
            commands.append(train_st("--epochs 4 --warmup-epochs 1 --bf16 true"))
        for mode, flag in (("det", ["--deterministic"]), ("default", [])):
            for run in ("a", "b"):
                # One batch size for all four: times and bits then differ by the mode alone, not by batch shapes.
                out = ["--batch-size", "256", "--out", str(RUNS / f"{mode}-{run}")]
                cmd = _tb("evaluate", str(SURROGATE), "--protocol", "cifar10", *io, *prefix, *flag, *out, "--overwrite")
                commands.append((f"evaluate-{mode}-{run}", cmd))
        for mode in ("det", "default"):
            pair = [str(RUNS / f"{mode}-a"), str(RUNS / f"{mode}-b")]
            commands.append((f"compare-{mode}", _tb("compare", *pair, "--ranking-cell-only")))
        return commands
    raise SystemExit(f"unknown step {step}; steps are 1, 2, 3, 4 (docs/gpu-runbook.md)")


# Modules a step imports beyond the project's own requirements: checked before anything runs, so that a bare
# machine fails in a second, not minutes into its device time (step 2's comparison and step 3's AutoAttack).
STEP_MODULES = {2: ("torchattacks",), 3: ("torchattacks",)}
TIMEOUT, SKIPPED = "timeout", "skipped"
TAIL_LINES = 12  # lines of each command's log repeated in the summary (leaderboard and compare: all of it)


def _wheels_site(env: dict[str, str]) -> str | None:
    """Install the wheels of ``.whl/`` into ``runs/site`` (no index, no dependencies); the folder, or None."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        return None
    site = RUNS / "site"
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
            "--upgrade", "--target", str(site), *map(str, wheels)]  # fmt: skip
    subprocess.run(argv, check=True, env=env)
    return str(site)


def _check_modules(modules: tuple[str, ...], env: dict[str, str]) -> None:
    """Stop with the fix when a module the step needs does not import in the commands' environment (importing
    it, not only finding it: a wheel installed without its dependencies is found but fails on import)."""
    code = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n        importlib.import_module(m)\n"
        "    except Exception as e:\n        sys.exit(f'{m} ({type(e).__name__}: {e})')"
    )
    missing = subprocess.run([sys.executable, "-c", code, *modules], env=env, capture_output=True, text=True)
    if missing.returncode:
        raise SystemExit(
            f"this step needs {missing.stderr.strip()}, which does not import on this machine: put the wheels of "
            "it and of what it lacks in .whl/ (`python3 -m pip download --no-deps --only-binary=:all: -d .whl "
            "torchattacks==3.5.1`, docs/gpu-runbook.md)"
        )


def run_commands(
    commands: list[tuple[str, list[str]]], logs: Path, *, budget: float, env: dict[str, str]
) -> list[tuple[str, int | str, float]]:
    """Run ``commands`` in order within ``budget`` seconds; each writes ``logs/<name>.log``.

    Returns (name, exit code or ``timeout``/``skipped``, seconds) per command. A command past the budget is
    killed with its process group; nothing after a failed training command runs (it has no surrogate).
    """
    logs.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget
    rows: list[tuple[str, int | str, float]] = []
    stop = False
    for name, argv in commands:
        left = deadline - time.monotonic()
        if stop or left <= 0:
            rows.append((name, SKIPPED, 0.0))
            continue
        start = time.perf_counter()
        with open(logs / f"{name}.log", "w") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            try:
                rc: int | str = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the command and anything it started
                proc.wait()
                rc = TIMEOUT
                log.write(f"\n[gpu_session] stopped: the step's budget of {budget:.0f} s was spent\n")
        rows.append((name, rc, time.perf_counter() - start))
        stop = rc != 0 and name.startswith("train")
    return rows


def summary(step: int, rows: list[tuple[str, int | str, float]], logs: Path, quick: bool) -> str:
    """The table of what ran, then the end of each command's log."""
    lines = [f"step {step} ({'quick, CPU' if quick else 'GPU'})", f"{'command':<28}{'exit':>8}{'seconds':>10}"]
    lines += [f"{name:<28}{rc!s:>8}{secs:>10.1f}" for name, rc, secs in rows]
    for name, rc, _ in rows:
        log = logs / f"{name}.log"
        if rc == SKIPPED or not log.is_file():
            continue
        text = log.read_text(errors="replace").splitlines()
        keep = text[1:] if name == "leaderboard" or name.startswith("compare") else text[-TAIL_LINES:]
        lines += ["", f"--- {name} (exit {rc}) ---", *keep]
    return "\n".join(lines) + "\n"


def pack(step: int, out: Path, logs: Path, text: str) -> list[Path]:
    """``out/stepN.tar.gz`` (logs, records, benchmark JSON) and ``out/stepN-summary.txt``; returns both."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"step{step}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(logs, arcname=f"step{step}/logs")
        records = [*(RUNS / "home").rglob("*.json"), *RUNS.glob("*.json"), *RUNS.glob("*-[ab]/*/*.json")]
        for src in sorted(records):
            tar.add(src, arcname=f"step{step}/{src.relative_to(RUNS)}")
    (out / f"step{step}-summary.txt").write_text(text)
    return [archive, out / f"step{step}-summary.txt"]


def run_step(step: int, out: Path, *, quick: bool = False, budget: float = 540.0) -> int:
    """Run the commands of ``step`` within ``budget`` seconds and pack the results into ``out``.

    Returns the number of commands that failed, timed out or were skipped."""
    for path, what in ((DATA, "CIFAR-10 mirror"), (WEIGHTS, "target weights")):
        if not path.is_dir():
            raise SystemExit(f"{path} is missing: copy the {what} there first (docs/gpu-runbook.md, Preparation)")
    commands = step_commands(step, quick)
    env = {**os.environ, "TRANSFERBENCH_HOME": str(RUNS / "home"), "PYTHONPATH": str(ROOT)}
    env["TRANSFERBENCH_OFFLINE"] = "1"  # everything comes from .carry; a download attempt is an error
    site = _wheels_site(env)
    if site:
        env["PYTHONPATH"] = os.pathsep.join([site, str(ROOT)])
    _check_modules(STEP_MODULES.get(step, ()), env)
    logs = RUNS / f"step{step}-logs"
    shutil.rmtree(logs, ignore_errors=True)
    rows = run_commands(commands, logs, budget=budget, env=env)
    text = summary(step, rows, logs, quick)
    pack(step, out, logs, text)
    print(text + f"results: {out / f'step{step}.tar.gz'}")
    return sum(rc != 0 for _, rc, _ in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", type=int, choices=[1, 2, 3, 4])
    p.add_argument("--out", default=os.environ.get("OUT", str(RUNS / "out")), help="logs and results (default $OUT)")
    p.add_argument("--quick", action="store_true", help="toy sizes on a CPU, to check the script")
    p.add_argument("--budget", type=float, default=540.0, help="seconds of wall time for the step (default 540)")
    args = p.parse_args(argv)
    return 1 if run_step(args.step, Path(args.out), quick=args.quick, budget=args.budget) else 0


if __name__ == "__main__":
    sys.exit(main())
