"""Speed benchmark (issue #7): our attacks against torchattacks on one model, the metrics, a whole protocol.

What is measured, all in one process on one device (``docs/performance.md`` has the commands and results):

- **attacks**: our PGD / MI-FGSM / DIM and torchattacks' PGD / MIFGSM / DIFGSM on the same randomly initialised
  model, the same inputs and the same batch. Throughput is in *image-steps per second*: gradient evaluations
  (one forward and one input-backward pass) per image times images, per second. torchattacks runs once per
  attack in float32 under PyTorch's default math settings (its users' setting: on NVIDIA GPUs cuDNN may use
  TF32 for convolutions by default); ours runs at every requested *setting* (precision, channels_last,
  torch.compile, deterministic mode). Each row gives the ratio to torchattacks and the fraction of the device's
  dense bf16 peak that the throughput implies, with the FLOPs of one image-step counted by ``FlopCounterMode``
  on the model.
  A reference check runs PGD without random start in fp32 in both libraries on the same inputs and reports
  the largest difference of the adversarial images: the two sides compute the same thing.
- **metrics**: input-Hessian smoothness (power iteration, ``tol=0`` so that every iteration runs) and gradient
  similarity against several target models, both in fp32 as in the benchmark.
- **protocol**: ``bench.runner.evaluate`` of one surrogate on a protocol's images (optionally a ``--limit``
  prefix), wall time per setting; with fp32 and another precision among the settings, the **precision
  agreement**: the ranking ASR per cell and target of the fast run against the fp32 run on the same images,
  surrogate and targets, its largest difference in points, and the share of per-image outcomes that differ.

GPU times come from CUDA events around each call; CPU times from ``time.perf_counter``. The median of the
repeats is reported, after warm-up calls that are not timed (cuDNN autotuning, compilation).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import provenance
from bench.attacks import attack_cost, run_attack
from bench.batching import AdaptiveBatch
from bench.determinism import deterministic_algorithms, reserve_cublas_workspace
from bench.metrics.asr import unpack_bits
from bench.metrics.similarity import gradient_similarity_many
from bench.metrics.smoothness import smoothness
from bench.models import build_model
from bench.precision import check_precision as _check_precision
from bench.precision import ieee_fp32, math_settings, prepare
from leaderboard.record import Record

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s, matched against
# torch.cuda.get_device_name in this order. H200 and GH200 carry the H100 SXM chip.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
)
TORCHATTACKS_NAMES = {"pgd": "PGD", "mifgsm": "MIFGSM", "dim": "DIFGSM"}


@dataclass(frozen=True)
class Setting:
    """How our attacks run: a precision plus the channels_last layout, torch.compile and PyTorch's deterministic
    mode (``bench.determinism``), written e.g. ``bf16+cl`` or ``fp32+det``."""

    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False
    deterministic: bool = False

    @classmethod
    def parse(cls, text: str) -> Setting:
        precision, *flags = text.split("+")
        try:
            _check_precision(precision)
        except ValueError as e:
            raise ValueError(f"setting {text!r}: {e} (then optional +cl, +compile, +det)") from None
        unknown = [f for f in flags if f not in ("cl", "compile", "det")]
        if unknown:
            raise ValueError(f"setting {text!r}: unknown part(s) {unknown}; write PRECISION[+cl][+compile][+det]")
        return cls(precision, "cl" in flags, "compile" in flags, "det" in flags)

    @property
    def name(self) -> str:
        flags = ["cl"] * self.channels_last + ["compile"] * self.compiled + ["det"] * self.deterministic
        return "+".join([self.precision, *flags])


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls (CUDA events on GPUs)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def flops_per_image_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one attack gradient evaluation per image: the forward and the backward pass to the *input*.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on a frozen copy of the model (an attack needs no
    weight gradients, and autograd skips them when no weight requires grad). About 2.2 GFLOP for a 32x32
    ResNet-18: twice its forward pass.
    """
    from torch.utils.flop_counter import FlopCounterMode

    frozen = copy.deepcopy(model).requires_grad_(False)
    xb = x.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(frozen(xb), y, reduction="sum").backward()
    return counter.get_total_flops() / len(x)


def peak_bf16_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Dense bf16 peak of ``device`` in FLOP/s (``override_tflops`` wins); None when unknown (CPUs)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def ours(name: str, model: nn.Module, eps: float, steps: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Our registered attack ``name`` with its default (paper) hyperparameters, untargeted, seed 0."""

    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ids = torch.arange(len(x))
        return run_attack(name, model, x, y, eps, steps=steps, targeted=False, ids=ids, seed=0)

    return attack


def torchattacks_attack(name: str, model: nn.Module, eps: float, steps: int) -> Callable[..., torch.Tensor]:
    """torchattacks' counterpart of our ``name`` with the same hyperparameters (step sizes, momentum, diversity)."""
    import torchattacks

    if name == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    if name == "mifgsm":
        return torchattacks.MIFGSM(model, eps=eps, alpha=eps / steps, steps=steps, decay=1.0)
    if name == "dim":
        return torchattacks.DIFGSM(
            model, eps=eps, alpha=eps / steps, steps=steps, decay=1.0, resize_rate=1.1, diversity_prob=0.5
        )
    raise ValueError(f"no torchattacks counterpart for {name!r}; choose from {sorted(TORCHATTACKS_NAMES)}")


def reference_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> dict[str, Any]:
    """Largest |x_adv difference| of PGD without random start, ours vs torchattacks, fp32 on the same inputs."""
    import torchattacks

    with ieee_fp32():
        mine = run_attack(
            "pgd",
            model,
            x,
            y,
            eps,
            steps=steps,
            targeted=False,
            ids=torch.arange(len(x)),
            seed=0,
            params={"random_start": False, "step_frac": 0.25},
        )
        theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=False)(x, y)
    return {
        "attack": "pgd without random start, fp32",
        "images": len(x),
        "max_abs_diff": float((mine - theirs).abs().max()),
    }


def bench_attacks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks: Sequence[str],
    settings: Sequence[Setting],
    eps: float,
    steps: int,
    warmup: int,
    repeats: int,
    with_torchattacks: bool = True,
    flops: float | None = None,
    peak: float | None = None,
) -> list[dict[str, Any]]:
    """One row per (attack, implementation, setting): seconds per call, image-steps/s, ratio, share of the bound.

    ``model`` is left as it is: every setting runs on its own copy (channels_last converts weights in place).
    ``x``, ``y`` must be on the model's device.
    """
    device = x.device
    rows: list[dict[str, Any]] = []
    for name in attacks:
        evals = attack_cost(name, steps)
        ref_rate = None
        if with_torchattacks:
            atk = torchattacks_attack(name, copy.deepcopy(model), eps, steps)
            secs = time_call(lambda atk=atk: atk(x, y), device, warmup=warmup, repeats=repeats)
            row = _row(name, "torchattacks", "fp32 (torch defaults)", secs, len(x), steps, evals, None, flops, peak)
            ref_rate = row["image_steps_per_s"]
            rows.append(row)
        for setting in settings:
            fast = prepare(
                copy.deepcopy(model), setting.precision, channels_last=setting.channels_last, compiled=setting.compiled
            )
            attack = ours(name, fast, eps, steps)
            with ieee_fp32(), deterministic_algorithms(setting.deterministic):
                # a compiled model compiles on its first two calls (forward, then backward graphs): never timed
                warm = max(warmup, 2 * setting.compiled)
                secs = time_call(lambda attack=attack: attack(x, y), device, warmup=warm, repeats=repeats)
                rows.append(
                    _row(name, "transferbench", setting.name, secs, len(x), steps, evals, ref_rate, flops, peak)
                )
    return rows


def _row(
    attack: str,
    impl: str,
    setting: str,
    secs: list[float],
    batch: int,
    steps: int,
    evals: int,
    ref_rate: float | None,
    flops: float | None,
    peak: float | None,
) -> dict[str, Any]:
    median = statistics.median(secs)
    rate = batch * evals / median
    return {
        "attack": attack,
        "implementation": impl,
        "setting": setting,
        "batch": batch,
        "steps": steps,
        "evals_per_image": evals,
        "seconds": secs,
        "median_s": median,
        "image_steps_per_s": rate,
        "vs_torchattacks": None if ref_rate is None else rate / ref_rate,
        "fraction_of_bf16_bound": None if flops is None or peak is None else rate * flops / peak,
        "math": math_settings(),
    }


def bench_metrics(
    model: nn.Module,
    targets: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    smoothness_images: int,
    smoothness_iters: int,
    similarity_images: int,
    batch: int,
    warmup: int,
) -> dict[str, Any]:
    """Wall time of smoothness (every one of ``smoothness_iters`` iterations runs) and of similarity, in fp32.

    ``x``/``y`` live on CPU like the runner's images; the metrics move each batch to the model's device.
    """
    device = next(model.parameters()).device
    xs, ys = x[:smoothness_images], y[:smoothness_images]
    xg, yg = x[:similarity_images], y[:similarity_images]
    out: dict[str, Any] = {}
    with ieee_fp32():
        for _ in range(warmup):  # cuDNN autotuning and allocator warm-up on a few images
            smoothness(model, xs[:8], ys[:8], batch_size=8, iters=2, tol=0.0)
        sm = _timed_metric(
            "smoothness",
            lambda bs: smoothness(model, xs, ys, batch_size=bs, iters=smoothness_iters, tol=0.0),
            len(xs), batch, device,
        )  # fmt: skip
        out["smoothness"] = {"images": len(xs), "iterations": sm.pop("result").iterations, **sm}
        sim = _timed_metric(
            "similarity",
            lambda bs: gradient_similarity_many(model, targets, xg, yg, batch_size=bs),
            len(xg), batch, device,
        )  # fmt: skip
        sim.pop("result")
        out["similarity"] = {"images": len(xg), "targets": len(targets), **sim}
    return out


def _timed_metric(label: str, fn: Callable[[int], Any], n: int, batch: int, device: torch.device) -> dict[str, Any]:
    """One timed call of ``fn(batch_size)`` that backs off on out-of-memory errors; timed again if it did."""
    sizer = AdaptiveBatch(batch, device=device, label=label)
    box: dict[str, Any] = {}

    def call() -> None:
        box["result"] = sizer.call(fn, n)

    [secs] = time_call(call, device, warmup=0, repeats=1)
    if sizer.events:  # the first call included failed attempts: time the size that fits
        [secs] = time_call(call, device, warmup=0, repeats=1)
    return {
        "seconds": secs,
        "batch": min(sizer.batch_size, n),
        "oom_backoffs": [e.to_json() for e in sizer.events],
        "precision": "fp32",
        "result": box["result"],
    }


def precision_agreement(reference: Record, other: Record) -> dict[str, Any]:
    """ASR of ``other`` against ``reference`` (an fp32 record of the same images, surrogate and targets).

    Per cell, on the protocol's ranking ASR: the largest |difference| over targets, in points (the issue's
    criterion: at most 0.5); the signed difference of the mean over targets (a bias would show here, noise
    averages out); the share of per-image success bits that differ; and what one image is worth in points
    there (the resolution of the comparison). Plus the difference of the ranking scores.
    """
    if reference.data["sha256"] != other.data["sha256"] or reference.protocol["sha256"] != other.protocol["sha256"]:
        raise ValueError("precision agreement needs two records of the same protocol and images")
    asr, n = reference.protocol["ranking_asr"], reference.data["n_images"]
    cells: dict[str, Any] = {}
    for run_a, run_b in zip(reference.runs, other.runs, strict=True):
        for key in run_a["cells"]:
            label = key if len(reference.runs) == 1 else f"{run_a['name']}:{key}"
            cells[label] = _cell_agreement(run_a, run_b, key, asr, n)
    worst = max((c["max_abs_diff_points"] for c in cells.values() if c["max_abs_diff_points"] is not None), default=0.0)
    return {
        "reference": reference.provenance["precision"],
        "other": other.provenance["precision"],
        "other_channels_last": other.provenance.get("channels_last", False),
        "other_deterministic": bool(other.provenance.get("math", {}).get("deterministic_algorithms", False)),
        "asr": asr,
        "n_images": n,
        "max_abs_diff_points": worst,
        "within_half_point": worst <= 0.5,
        "score_diff_points": 100 * (other.score["mean"] - reference.score["mean"]),
        "clean_accuracy_diff_points": [
            100 * (b["clean_accuracy"] - a["clean_accuracy"]) for a, b in zip(reference.runs, other.runs, strict=True)
        ],
        # the fast path classifies clean images at its precision too: a flipped clean prediction of a target
        # moves the denominator of its target_correct ASR
        "target_clean_accuracy_diff_points": {
            t: 100 * (other.targets[t]["clean_accuracy"] - info["clean_accuracy"])
            for t, info in reference.targets.items()
        },
        "cells": cells,
    }


def _cell_agreement(run_a: dict[str, Any], run_b: dict[str, Any], key: str, asr: str, n: int) -> dict[str, Any]:
    diffs, flips, resolution = [], 0, 0.0
    targets = run_a["cells"][key]["targets"]
    for t, rates in targets.items():
        a, b = rates[asr], run_b["cells"][key]["targets"][t][asr]
        if a["rate"] is not None and b["rate"] is not None:
            diffs.append(100 * (b["rate"] - a["rate"]))
            resolution = max(resolution, 100 / max(min(a["n"], b["n"]), 1))
        bits_a = unpack_bits(run_a["outcomes"]["success"][key][t], n)
        bits_b = unpack_bits(run_b["outcomes"]["success"][key][t], n)
        flips += int((bits_a != bits_b).sum())
    return {
        "max_abs_diff_points": max(abs(d) for d in diffs) if diffs else None,
        "mean_diff_points": float(np.mean(diffs)) if diffs else None,
        "flipped_outcomes": flips / (n * len(targets)) if targets and n else 0.0,
        "points_per_image": resolution,
    }


def _surrogate_folder(args: argparse.Namespace, protocol: Any, root: Path) -> Path | str:
    """The surrogate to evaluate: a submission (path or hf://), a zoo entry (``zoo:NAME``) or a random ``--arch``."""
    from surrogates.submission import save_surrogate
    from targets import TARGETS, load_target

    if args.surrogate and not args.surrogate.startswith("zoo:"):
        return args.surrogate
    if args.surrogate:
        name = args.surrogate[len("zoo:") :]
        spec = TARGETS.get(name)
        model = load_target(name, weights_dir=args.weights_dir).model
        return save_surrogate(
            model,
            root / name,
            architecture=spec.architecture,
            num_classes=spec.num_classes,
            mean=spec.mean,
            std=spec.std,
            input_size=protocol.input_size,
            arch_kwargs=dict(spec.arch_kwargs),
            metadata={"name": f"zoo-{name}"},
        )
    log.warning("no --surrogate: a randomly initialised %s times the protocol; its ASRs mean nothing", args.arch)
    channels = protocol.input_size[0]
    torch.manual_seed(args.seed)
    model = build_model(args.arch, protocol.num_classes, (0.5,) * channels, (0.25,) * channels, **args.arch_kwargs)
    return save_surrogate(
        model,
        root / "random",
        architecture=args.arch,
        num_classes=protocol.num_classes,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        input_size=protocol.input_size,
        arch_kwargs=args.arch_kwargs,
        metadata={"name": f"random-{args.arch}"},
    )


def bench_protocol(args: argparse.Namespace, settings: Sequence[Setting], device: torch.device) -> dict[str, Any]:
    """``evaluate`` once per setting (fresh models each time), wall time, and the precision agreement vs fp32."""
    from bench.numerics import verified_digest
    from bench.protocol import get_protocol
    from bench.runner import load_protocol_data

    protocol = get_protocol(args.protocol)
    if args.targets:
        protocol = dataclasses.replace(protocol, targets=tuple(args.targets))
    if args.metric_images:  # the attack grid is untouched; the smaller metric subsets change the protocol hash
        ws = protocol.weight_sharpness
        protocol = dataclasses.replace(
            protocol, smoothness_images=args.metric_images, similarity_images=args.metric_images,
            weight_sharpness=None if ws is None else dataclasses.replace(ws, images=args.metric_images),
        )  # fmt: skip
    if any(s.compiled for s in settings):
        raise ValueError("the protocol measurement runs bench.runner.evaluate, which does not compile; drop +compile")
    data = load_protocol_data(protocol, args.data_dir)
    verified_digest(protocol)  # evaluate's reference-numerics check (once per process): outside the timed runs
    runs, records = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _surrogate_folder(args, protocol, Path(tmp))
        for setting in settings:
            run, records[setting] = _protocol_run(args, protocol, data, folder, setting, device)
            runs.append(run)
    fp32 = records.get(Setting("fp32"))
    agreement = [precision_agreement(fp32, r) for r in records.values() if fp32 is not None and r is not fp32]
    return {"runs": runs, "agreement": agreement}


def _protocol_run(
    args: argparse.Namespace, protocol: Any, data: Any, folder: Path | str, setting: Setting, device: torch.device
) -> tuple[dict[str, Any], Record]:
    """One timed ``evaluate`` at ``setting`` on freshly loaded models (channels_last converts weights in place)."""
    from bench.runner import evaluate
    from surrogates.submission import load_surrogate
    from targets import load_targets

    surrogate = load_surrogate(folder, device=device)
    targets = load_targets(
        list(protocol.targets), weights_dir=args.weights_dir, device=device, input_size=protocol.input_size
    )
    synchronize(device)
    t0 = time.perf_counter()
    rec = evaluate(surrogate, protocol, data, targets, device=device, batch_size=args.protocol_batch,
                   limit=args.limit, progress=not args.quiet, precision=setting.precision,
                   channels_last=setting.channels_last, deterministic=setting.deterministic)  # fmt: skip
    synchronize(device)
    wall = time.perf_counter() - t0
    n = rec.data["n_images"]
    run = {
        "setting": setting.name,
        "protocol": protocol.id,
        "protocol_sha256": protocol.sha256,
        "surrogate": rec.submission["name"],
        "n_images": n,
        "cells": len(protocol.cells()),
        "targets": len(protocol.targets),
        "seconds": wall,
        "extrapolated_full_s": wall * len(protocol.image_ids) / n,  # linear in images: a rough guide only
        "batch_size": rec.provenance["batch_size"],
        "oom_backoffs": rec.provenance["oom_backoffs"],
        "score": rec.score["mean"],
    }
    return run, rec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``transferbench benchmark``."""
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument(
        "--measure",
        nargs="+",
        choices=["attacks", "metrics", "protocol", "agreement"],
        default=["attacks", "metrics"],
        help="what to time; 'protocol' and 'agreement' need --protocol (agreement adds fp32)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[Setting("fp32"), Setting("bf16"), Setting("bf16", channels_last=True)],
        type=_setting,
        help="our settings: PRECISION[+cl][+compile][+det], PRECISION in fp32, bf16 (+det: deterministic mode)",
    )
    parser.add_argument("--attacks", nargs="+", choices=sorted(TORCHATTACKS_NAMES), default=["pgd", "mifgsm", "dim"])
    parser.add_argument("--no-torchattacks", action="store_true", help="time ours only")
    parser.add_argument("--arch", default="cifar_resnet18", help="architecture timed (random init)")
    parser.add_argument("--arch-kwargs", type=json.loads, default={}, help="JSON object, e.g. '{\"width\": 8}'")
    parser.add_argument("--input-size", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch", type=_positive, default=1024, help="images per attack call")
    parser.add_argument("--steps", type=_positive, default=10)
    parser.add_argument("--eps-255", type=float, default=8.0, help="L-inf budget in pixel levels (8 = 8/255)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (autotuning, compilation)")
    parser.add_argument("--repeats", type=_positive, default=5, help="timed calls; the median is reported")
    parser.add_argument("--smoothness-images", type=_positive, default=1000)
    parser.add_argument("--smoothness-iters", type=_positive, default=20)
    parser.add_argument("--similarity-images", type=_positive, default=1000)
    parser.add_argument("--similarity-targets", type=_positive, default=4, help="random models of --arch")
    parser.add_argument("--metric-batch", type=_positive, help="batch of the metrics (default: --batch)")
    parser.add_argument("--protocol", help="protocol for --measure protocol/agreement")
    parser.add_argument("--limit", type=_positive, help="only the protocol's first N images (class-balanced)")
    parser.add_argument("--targets", nargs="+", help="only these targets of the protocol")
    parser.add_argument("--surrogate", help="submission folder, hf://..., or zoo:NAME (default: random --arch)")
    parser.add_argument(
        "--metric-images",
        type=_positive,
        help="protocol mode: smoothness/similarity/weight-sharpness subsets of N images (changes the protocol hash; "
        "the attack grid is unchanged), for agreement runs on slow devices",
    )
    parser.add_argument("--protocol-batch", type=_positive, help="evaluate's batch size (default: from free memory)")
    parser.add_argument("--data-dir", help="local data mirror")
    parser.add_argument("--weights-dir", help="local mirror of target weights")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: known GPUs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model and inputs")
    parser.add_argument("--out", help="write every number with full provenance to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _setting(text: str) -> Setting:
    try:
        return Setting.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``args`` asks for, as one JSON-ready dict (also what ``--out`` holds)."""
    device = resolve_device(args.device)
    settings = list(dict.fromkeys(args.settings))
    if "agreement" in args.measure and Setting("fp32") not in settings:
        settings.insert(0, Setting("fp32"))
    if {"protocol", "agreement"} & set(args.measure) and not args.protocol:
        raise ValueError("--measure protocol/agreement needs --protocol NAME (see `transferbench protocols`)")
    torch.manual_seed(args.seed)
    model = (
        build_model(
            args.arch, args.num_classes, (0.5,) * args.input_size[0], (0.25,) * args.input_size[0], **args.arch_kwargs
        )
        .eval()
        .to(device)
    )
    gen = torch.Generator().manual_seed(args.seed)
    n = max(args.batch, args.smoothness_images, args.similarity_images) if "metrics" in args.measure else args.batch
    x = torch.rand(n, *args.input_size, generator=gen)  # (N, C, H, W): speed does not depend on the content
    y = torch.randint(0, args.num_classes, (n,), generator=gen)
    eps = args.eps_255 / 255
    with_torchattacks = not args.no_torchattacks and _torchattacks_version() is not None
    if not args.no_torchattacks and not with_torchattacks:
        log.warning("torchattacks is not installed: timing ours only (pip install torchattacks for the reference)")
    out: dict[str, Any] = {
        "benchmark": "transferbench.perf",
        "options": _options(args),
        "settings": [s.name for s in settings],
        "provenance": {
            **provenance.collect(device, precision=",".join(s.name for s in settings), seed=args.seed),
            "math_outside_runs": math_settings(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    if "attacks" in args.measure:
        xa, ya = x[: args.batch].to(device), y[: args.batch].to(device)
        flops = flops_per_image_step(model, xa[:2], ya[:2])
        peak = peak_bf16_flops(device, args.peak_tflops)
        out["flops_per_image_step"], out["peak_bf16_flops"] = flops, peak
        out["torchattacks"] = _torchattacks_version() if with_torchattacks else None
        if with_torchattacks:
            out["reference_check"] = reference_check(model, xa[:64], ya[:64], eps, args.steps)
        out["attacks"] = bench_attacks(
            model,
            xa,
            ya,
            attacks=args.attacks,
            settings=settings,
            eps=eps,
            steps=args.steps,
            warmup=args.warmup,
            repeats=args.repeats,
            with_torchattacks=with_torchattacks,
            flops=flops,
            peak=peak,
        )
    if "metrics" in args.measure:
        targets = {}
        for i in range(args.similarity_targets):
            torch.manual_seed(args.seed + 1 + i)
            targets[f"random-{i}"] = (
                build_model(
                    args.arch,
                    args.num_classes,
                    (0.5,) * args.input_size[0],
                    (0.25,) * args.input_size[0],
                    **args.arch_kwargs,
                )
                .eval()
                .to(device)
            )
        out["metrics"] = bench_metrics(
            model,
            targets,
            x,
            y,
            smoothness_images=args.smoothness_images,
            smoothness_iters=args.smoothness_iters,
            similarity_images=args.similarity_images,
            batch=args.metric_batch or args.batch,
            warmup=min(args.warmup, 1),
        )
    if {"protocol", "agreement"} & set(args.measure):
        out["protocol"] = bench_protocol(args, settings, device)
    return out


def _torchattacks_version() -> str | None:
    """torchattacks' version, or None where it is not installed (it is a test dependency only)."""
    try:
        return importlib.metadata.version("torchattacks")
    except importlib.metadata.PackageNotFoundError:
        return None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options as JSON values (settings by name; callables a command line wires in are left out)."""
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, list) and v and all(isinstance(s, Setting) for s in v):
            out[k] = [s.name for s in v]
        elif not callable(v):
            out[k] = v
    return out


def format_table(result: dict[str, Any]) -> str:
    """The short text summary ``run`` prints."""
    lines = [f"device: {result['provenance']['device']}"]
    if "attacks" in result:
        flops = result["flops_per_image_step"]
        lines.append(
            f"one image-step: {flops / 1e9:.3f} GFLOP (FlopCounterMode); bf16 peak: "
            + (f"{result['peak_bf16_flops'] / 1e12:.0f} TFLOP/s" if result["peak_bf16_flops"] else "unknown")
        )
        if "reference_check" in result:
            lines.append(
                f"reference check (PGD, no random start, fp32): max |ours - torchattacks| = "
                f"{result['reference_check']['max_abs_diff']:.2e}"
            )
        lines.append(
            f"{'attack':<8}{'implementation':<15}{'setting':<22}{'img-steps/s':>13}{'x torchattacks':>16}"
            f"{'% bf16 bound':>14}"
        )
        for r in result["attacks"]:
            ratio = "-" if r["vs_torchattacks"] is None else f"{r['vs_torchattacks']:.2f}"
            bound = "-" if r["fraction_of_bf16_bound"] is None else f"{100 * r['fraction_of_bf16_bound']:.1f}"
            lines.append(
                f"{r['attack']:<8}{r['implementation']:<15}{r['setting']:<22}{r['image_steps_per_s']:>13,.0f}"
                f"{ratio:>16}{bound:>14}"
            )
    if "metrics" in result:
        sm, sim = result["metrics"]["smoothness"], result["metrics"]["similarity"]
        lines.append(
            f"smoothness: {sm['images']} images x {sm['iterations']} iterations in {sm['seconds']:.2f} s; "
            f"similarity: {sim['images']} images x {sim['targets']} targets in {sim['seconds']:.2f} s"
        )
    for r in result.get("protocol", {}).get("runs", []):
        lines.append(
            f"protocol {r['protocol']} [{r['setting']}]: {r['n_images']} images, {r['cells']} cells, "
            f"{r['targets']} targets in {r['seconds']:.1f} s (full list: ~{r['extrapolated_full_s']:.0f} s)"
        )
    for a in result.get("protocol", {}).get("agreement", []):
        res = max((c["points_per_image"] for c in a["cells"].values()), default=0.0)
        other = a["other"] + ("+cl" if a["other_channels_last"] else "") + ("+det" if a["other_deterministic"] else "")
        lines.append(
            f"agreement {other} vs {a['reference']} ({a['asr']} ASR, {a['n_images']} images): max |diff| "
            f"{a['max_abs_diff_points']:.2f} points over cells and targets (one image = up to {res:.2f} points); "
            f"score diff {a['score_diff_points']:+.2f} points"
        )
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``result`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def run(args: argparse.Namespace) -> int:
    """``transferbench benchmark``: measure, print the table, write ``--out``. Returns the exit code."""
    if any(s.deterministic for s in args.settings):  # cuBLAS reads it when it creates its workspace: set it first
        reserve_cublas_workspace()
    result = measure(args)
    print(format_table(result))
    if args.out:
        print(f"wrote {write_json(result, args.out)}")
    return 0
