"""Evaluate one surrogate submission under one protocol and return a provenance-carrying record.

Each adversarial batch is crafted once on the surrogate and scored on every target. Per-image outcomes
are kept as bits so every ASR definition (and later paired comparisons) can be recomputed.

Speed and memory (``docs/performance.md``): attack crafting and the classification passes run at the
evaluation's precision (``bench.precision``: the protocol's, fp32, unless asked otherwise, and then the record
says so); the curvature and gradient metrics always run in fp32. Batches back off on out-of-memory errors and,
without an explicit batch size, are sized from the GPU's free memory (``bench.batching``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench import provenance
from bench.attacks import attack_cost, run_attack
from bench.batching import AdaptiveBatch, fit_batch_size
from bench.checks import check_logits, check_model
from bench.data import ImageSet
from bench.data.sources import DATASETS, load_dataset_for
from bench.determinism import check_deterministic, deterministic_algorithms, refusals_named
from bench.metrics.asr import Rate, pack_bits, transfer_rates
from bench.metrics.sharpness import hessian_top_eigenvalue, hessian_trace
from bench.metrics.similarity import gradient_similarity_many
from bench.metrics.smoothness import hessian_vector_product, smoothness
from bench.models.adapters import RestrictLogits
from bench.numerics import verified_digest
from bench.precision import PRECISIONS, ieee_fp32, math_settings, prepare
from bench.protocol import Cell, Protocol
from leaderboard.record import Record
from surrogates.submission import Surrogate
from targets.zoo import TARGETS, LoadedTarget, check_expected_accuracy

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256  # without an explicit size: off CUDA (free memory is not measured) and in deterministic mode
# Cap of the batch size sized from free GPU memory: issue #7 measures a CIFAR ResNet-18 at 1,024 images per
# batch, where an H100 is busy; larger batches mainly coarsen progress and back-off (docs/performance.md).
MAX_AUTO_BATCH = 2048
_UNPINNED = ("target %s has no pinned clean accuracy for data %s: its weights and preprocessing are not checked "
             "against an expectation (see `transferbench targets verify`)")  # fmt: skip


def check_target_accuracy(name: str, data_sha256: str, accuracy: float) -> None:
    """Compare a zoo target's clean accuracy on a full image list with the zoo's pin (a mismatch is an error).

    Where the weights are pinned but no accuracy is pinned for these data, warn (once per target and run): the
    weights and their preprocessing then go unchecked. Targets outside the zoo and locally built ones (the smoke
    zoo, whose weights are whatever the local recipe produced) have nothing to pin.
    """
    if name not in TARGETS:
        return
    if check_expected_accuracy(name, data_sha256, accuracy) is None and TARGETS.get(name).pinned:
        log.warning(_UNPINNED, name, data_sha256[:12])


class EvaluationError(RuntimeError):
    """The evaluation cannot run as asked; the message says why and what to change."""


def load_protocol_data(protocol: Protocol, data_dir: str | None = None) -> ImageSet:
    """The protocol's data set from ``data_dir`` (else its environment variable, else the Hub), at its input size."""
    if protocol.dataset not in DATASETS:
        raise EvaluationError(f"protocol {protocol.id} uses unknown dataset {protocol.dataset!r}")
    size = protocol.input_size[1]
    return load_dataset_for(
        protocol.dataset, protocol.split, protocol.image_ids, size, data_dir, preparation=protocol.image_preparation
    )


def select_images(protocol: Protocol, data: ImageSet, limit: int | None) -> ImageSet:
    """The protocol's image list in protocol order; with ``limit``, its class-balanced prefix.

    A partial run takes the class-balanced subset of :func:`balanced_subset` (a round robin over the classes in
    list order), so that it stays representative even when a mirror stores a split sorted by class.
    """
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit must be a positive number of images, got {limit}")
    pos = {int(i): p for p, i in enumerate(data.ids.tolist())}
    missing = [i for i in protocol.image_ids if i not in pos]
    if missing:
        raise EvaluationError(f"{data.source} lacks {len(missing)} image ids of {protocol.id} (first: {missing[:5]}).")
    subset = data.subset(torch.tensor([pos[i] for i in protocol.image_ids]))
    if limit is not None and limit < len(subset):
        subset = subset.subset(balanced_subset(subset.labels, limit, protocol.num_classes))
    if tuple(subset.pixels.shape[1:]) != tuple(protocol.input_size):
        raise EvaluationError(
            f"{data.source} images are {tuple(subset.pixels.shape[1:])}, {protocol.id} expects {protocol.input_size}."
        )
    return subset


def partial_images(protocol: Protocol, limit: int | None) -> int | None:
    """The image count of a partial run (``limit`` below the protocol's list length: :func:`select_images` then
    evaluates ``limit`` images), else None. What a record's ``data.partial`` and its file name say."""
    return limit if limit is not None and limit < len(protocol.image_ids) else None


def adapt_to_protocol(name: str, model: nn.Module, num_classes: int, protocol: Protocol) -> nn.Module:
    """The model as the protocol reads it: as it is with K outputs, restricted to the label space with more.

    A protocol with a ``label_space`` (ImageNette inside ImageNet-1k) reads a parent-space classifier on its K
    columns only (``RestrictLogits``); any other class count is an error that names the model.
    """
    if num_classes == protocol.num_classes:
        return model
    space = protocol.label_space
    if space is not None and num_classes == space.parent_classes:
        return RestrictLogits(model, space.indices)
    accepted = f"{protocol.num_classes}" + (f" or {space.parent_classes} ({space.parent})" if space else "")
    raise EvaluationError(
        f"{name} has {num_classes} classes; {protocol.id} accepts {accepted}. Fix num_classes in its config.json "
        "or pick another protocol."
    )


def _check_input_size(surrogate: Surrogate, members: list[nn.Module], protocol: Protocol) -> None:
    """The submission must declare the protocol's input size: images are fed at that size, never resized."""
    declared = [getattr(m, "input_size", None) for m in members]
    if surrogate.kind == "single":
        declared.append(surrogate.config.input_size)
    wrong = sorted({tuple(d) for d in declared if d is not None and tuple(d) != tuple(protocol.input_size)})
    if wrong:
        raise EvaluationError(
            f"surrogate {surrogate.name} declares input_size {list(wrong[0])}, but {protocol.id} feeds "
            f"{list(protocol.input_size)} images in [0, 1]. Train or fine-tune it at that size and set input_size in "
            "config.json, or pick the protocol made for its size."
        )


def _check_target_sizes(targets: dict[str, LoadedTarget], protocol: Protocol) -> None:
    """Every target must have been loaded for the protocol's image size: a zoo entry with another native size
    resizes the protocol's images inside its wrapper (``load_target(input_size=...)``), and without that wrapper
    it would see images of a size it was not trained at, silently changing its accuracy and every ASR."""
    want = tuple(protocol.input_size)[-2:]
    for n, tg in targets.items():
        native = TARGETS.get(n).input_size if n in TARGETS else None
        got = None if tg.input_size is None else tuple(tg.input_size)[-2:]
        if got == want or (got is None and (native is None or tuple(native)[-2:] == want)):
            continue
        built = f"was loaded for {list(got)} images" if got else f"was loaded without an input size (native {native})"
        raise EvaluationError(
            f"target {n} {built}, but {protocol.id} feeds {list(want)}: load it with "
            "targets.load_targets(names, input_size=protocol.input_size) so that it resizes to its native size."
        )


def weight_sharpness(
    model: nn.Module, protocol: Protocol, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int
) -> dict[str, Any] | None:
    """Seed 004's surrogate diagnostic on the protocol's fixed class-balanced batch (None if not in the protocol)."""
    spec = protocol.weight_sharpness
    if spec is None:
        return None
    sub = balanced_subset(y, spec.images, protocol.num_classes)
    xs, ys = x[sub].to(device), y[sub].to(device)
    eig = hessian_top_eigenvalue(
        model, xs, ys, max_iters=spec.max_iters, tol=spec.tol, seed=spec.seed, batch_size=batch_size
    )
    tr = hessian_trace(model, xs, ys, probes=spec.probes, seed=spec.seed, batch_size=batch_size)
    return {
        "top_eigenvalue": eig.value,
        "iterations": eig.count,
        "converged": eig.converged,
        "trace": tr.value,
        "trace_stderr": _finite(tr.stderr),
        "probes": tr.count,
        "n": len(sub),
    }


def balanced_subset(labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Indices (sorted) of ``min(n, len(labels))`` images: the subset rule of metrics and partial runs.

    Round robin over the classes in list order: every class's first image (by position in the list), then every
    class's second image, and so on; the first ``n`` of that order. Class counts differ by at most one while
    each class has images left, whatever the list's order (a list sorted by class included), and classes that
    run short leave their share to the others. When ``n`` is a multiple of K and every class has ``n / K``
    images, this is the first ``n / K`` images of each class, the subsets of every protocol's metrics.
    """
    m = len(labels)
    rank = torch.zeros(m, dtype=torch.long)  # (N,) position of each image within its class
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        rank[members] = torch.arange(len(members))
    order = torch.argsort(rank * m + torch.arange(m))  # by (rank within class, position in the list)
    return torch.sort(order[: min(n, m)]).values


@dataclass
class _Batches:
    """The images of one evaluation and the two adaptive batch sizes it runs them in."""

    x: torch.Tensor  # (N, C, H, W) float in [0, 1], CPU
    y: torch.Tensor  # (N,)
    t: torch.Tensor  # (N,) target labels
    ids: torch.Tensor  # (N,)
    attack: AdaptiveBatch  # crafting and classification passes
    metric: AdaptiveBatch  # smoothness, similarity, weight sharpness (second derivatives: more memory per image)

    @property
    def batch_size(self) -> int:
        """Images per progress step (the initial attack batch size; back-off splits a step, never merges)."""
        return self.attack.initial

    def __iter__(self):  # type: ignore[no-untyped-def]
        for s in range(0, len(self.y), self.batch_size):
            yield slice(s, min(s + self.batch_size, len(self.y)))

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)


@torch.no_grad()
def predictions(
    name: str, model: nn.Module, x: torch.Tensor, device: torch.device, num_classes: int, batch_size: int
) -> torch.Tensor:
    """Predicted classes (N,) on CPU for images x (N, C, H, W) in [0, 1], checking every batch of logits."""
    out = []
    for s in range(0, len(x), batch_size):
        logits = model(x[s : s + batch_size].to(device))
        check_logits(name, logits, num_classes)
        out.append(logits.argmax(1).cpu())
    return torch.cat(out)


def _craft_batch(
    model: nn.Module, scorers: dict[str, nn.Module], protocol: Protocol, cell: Cell, b: _Batches, sl: slice,
    device: torch.device,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Craft one batch of ``cell`` on the surrogate and score it: success bits (CPU) per model."""
    x, y, t, ids = b.x[sl].to(device), b.y[sl].to(device), b.t[sl].to(device), b.ids[sl]
    spec = protocol.attack_spec(cell.attack)
    goal = t if cell.mode == "targeted" else y
    x_adv = run_attack(cell.attack, model, x, goal, cell.eps, steps=spec.steps, targeted=cell.mode == "targeted",
                       ids=ids, seed=protocol.seed, params=spec.kwargs)  # fmt: skip
    out = {}
    with torch.no_grad():
        for name, m in {"surrogate": model, **scorers}.items():
            logits = m(x_adv)
            check_logits(name, logits, protocol.num_classes)
            out[name] = cell.success(logits.argmax(1), y, t).cpu()
    return out


def _craft_and_score(
    model: nn.Module,
    protocol: Protocol,
    b: _Batches,
    scorers: dict[str, nn.Module],
    device: torch.device,
    bar: tqdm,
) -> dict[str, dict[str, np.ndarray]]:
    """Success bits per cell and model ('surrogate' + every target).

    ``model`` and ``scorers`` are the surrogate and the targets at the evaluation's precision. Each crafted
    batch backs off on out-of-memory errors (``b.attack``); per-image results do not depend on the batch.
    """
    cells = protocol.cells()
    bits: dict[str, dict[str, list[torch.Tensor]]] = {c.key: {} for c in cells}
    for sl in b:
        for cell in cells:
            parts = b.attack.map(
                lambda s, cell=cell: _craft_batch(model, scorers, protocol, cell, b, s, device), sl.start, sl.stop
            )
            for part in parts:
                for name, success in part.items():
                    bits[cell.key].setdefault(name, []).append(success)
            bar.update(1)
    return {k: {n: torch.cat(v).numpy() for n, v in d.items()} for k, d in bits.items()}


def _run_result(
    name: str,
    sha: str,
    model: nn.Module,
    fast: nn.Module,
    protocol: Protocol,
    b: _Batches,
    targets: dict[str, LoadedTarget],
    scorers: dict[str, nn.Module],
    target_correct: dict[str, np.ndarray],
    device: torch.device,
    bar: tqdm,
) -> dict[str, Any]:
    """One run's record entry. ``fast``/``scorers``: at the evaluation's precision; ``model``/``targets``: fp32."""
    check_model(name, model, b.x[: min(8, len(b.y))].to(device), protocol.num_classes)
    # Metrics before the grid: a model whose curvature or gradients overflow fails before the costly part.
    metrics = _surrogate_metrics(name, model, protocol, b, targets, device)
    correct = (_predict(name, fast, b, device, protocol) == b.y).numpy()
    success = _craft_and_score(fast, protocol, b, scorers, device, bar)
    cells: dict[str, Any] = {}
    for cell in protocol.cells():
        key, per_model = cell.key, success[cell.key]
        s_bits = per_model["surrogate"]
        spec = protocol.attack_spec(cell.attack)
        cells[key] = {
            "gradient_evals_per_image": attack_cost(cell.attack, spec.steps, spec.kwargs),
            "fooling_rate": Rate(int((s_bits & correct).sum()), int(correct.sum())).to_json(),
            "targets": {
                n: {d: r.to_json() for d, r in transfer_rates(target_correct[n], per_model[n], correct, s_bits).items()}
                for n in targets
            },
        }
    return {
        "name": name,
        "sha256": sha,
        "clean_accuracy": float(correct.mean()),
        **metrics,
        "cells": cells,
        "outcomes": {
            "clean_correct": pack_bits(correct),
            "success": {k: {n: pack_bits(v) for n, v in d.items()} for k, d in success.items()},
        },
    }


def _surrogate_metrics(
    name: str, model: nn.Module, protocol: Protocol, b: _Batches, targets: dict[str, LoadedTarget], device: torch.device
) -> dict[str, Any]:
    """Smoothness, gradient similarity to every target and (if the protocol has it) weight sharpness, in fp32.

    A non-finite value is an error naming the images: one broken Hessian-vector product would otherwise turn
    the mean into NaN and fail only when the record is stored, after the whole grid has been paid for.
    """
    sub = balanced_subset(b.y, protocol.smoothness_images, protocol.num_classes)
    sm = b.metric.call(
        lambda bs: smoothness(model, b.x[sub], b.y[sub], batch_size=bs, iters=protocol.smoothness_iters,
                              tol=protocol.smoothness_tol, device=device, ids=b.ids[sub],
                              stop=protocol.smoothness_stop_rule),
        len(sub),
    ).reported(protocol.smoothness_value_rule)  # fmt: skip
    bad = ~torch.isfinite(sm.eigenvalues)
    if bad.any():
        raise EvaluationError(
            f"surrogate {name}: the input-Hessian eigenvalue is not finite on {int(bad.sum())} image(s) (ids "
            f"{b.ids[sub][bad][:5].tolist()}): the model's loss or its gradients overflow there. Check the checkpoint "
            "(evaluate it in fp32 on these images) before submitting."
        )
    sim_sub = balanced_subset(b.y, protocol.similarity_images, protocol.num_classes)
    sims = b.metric.call(
        lambda bs: gradient_similarity_many(model, {n: t.model for n, t in targets.items()}, b.x[sim_sub],
                                            b.y[sim_sub], batch_size=bs, device=device),
        len(sim_sub),
    )  # fmt: skip
    ws_images = protocol.weight_sharpness.images if protocol.weight_sharpness is not None else None
    ws = b.metric.call(lambda bs: weight_sharpness(model, protocol, b.x, b.y, device, bs), ws_images)
    if ws is not None and not all(np.isfinite(ws[k]) for k in ("top_eigenvalue", "trace")):
        raise EvaluationError(
            f"surrogate {name}: weight sharpness is not finite (top eigenvalue {ws['top_eigenvalue']}, trace "
            f"{ws['trace']}): the loss overflows at these weights. Check the checkpoint before submitting."
        )
    return {
        **({"weight_sharpness": ws} if ws is not None else {}),
        "smoothness": {
            "mean": sm.mean,
            "max": sm.max,
            "n": len(sm.eigenvalues),
            "iterations": sm.iterations,
            "n_converged": sm.n_converged,
        },
        "similarity": {n: {"mean": _finite(s.mean), "min": _finite(s.min), "n": s.n_valid} for n, s in sims.items()},
    }


def _check_deterministic(
    run_names: list[str], members: list[nn.Module], fast: list[nn.Module], targets: dict[str, nn.Module],
    protocol: Protocol, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
) -> None:  # fmt: skip
    """``DeterminismError`` naming the first model whose passes on images ``x`` use an op that has no
    deterministic CUDA kernel: each run of the surrogate through one step of every attack of the protocol and
    an input-Hessian-vector product, each target through an input gradient (gradient similarity)."""
    attacks = {c.attack: c.eps for c in protocol.cells()}

    def surrogate_passes(model: nn.Module, fast_model: nn.Module) -> None:
        for name, eps in attacks.items():
            run_attack(name, fast_model, x, y, eps, steps=1, targeted=False, ids=ids, seed=protocol.seed,
                       params=protocol.attack_spec(name).kwargs)  # fmt: skip
        hessian_vector_product(model, x, y, torch.ones_like(x))

    def input_gradient(model: nn.Module) -> None:
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y), xg)

    for name, model, fast_model in zip(run_names, members, fast, strict=True):
        check_deterministic(f"surrogate {name}", lambda m=model, f=fast_model: surrogate_passes(m, f))
    for name, target in targets.items():
        check_deterministic(f"target {name}", lambda m=target: input_gradient(m))


def _finite(v: float) -> float | None:
    return v if np.isfinite(v) else None


def _predict(name: str, model: nn.Module, b: _Batches, device: torch.device, protocol: Protocol) -> torch.Tensor:
    """Clean predictions of ``model`` on every image, in attack batches that back off on out-of-memory errors."""
    return b.attack.call(lambda bs: predictions(name, model, b.x, device, protocol.num_classes, bs), len(b.y))


def _batch_sizes(
    batch_size: int | None, fast: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[int, int]:
    """(attack, metric) batch sizes: ``batch_size`` for both, or, when None, what fits the device's free memory.

    The probes do the most memory-hungry work per image of each kind: one gradient evaluation of an attack
    step at the evaluation's precision, and one fp32 input-Hessian-vector product (double backward).
    Off CUDA the size is ``DEFAULT_BATCH_SIZE``; either way at most the number of images.
    """
    if batch_size is not None:
        return batch_size, batch_size
    cap = min(MAX_AUTO_BATCH if device.type == "cuda" else DEFAULT_BATCH_SIZE, len(y))

    def attack_probe(n: int) -> None:
        xb = x[:n].to(device).requires_grad_(True)
        loss = F.cross_entropy(fast(xb), y[:n].to(device), reduction="sum")
        torch.autograd.grad(loss, xb)

    def metric_probe(n: int) -> None:
        xb = x[:n].to(device)
        hessian_vector_product(model, xb, y[:n].to(device), torch.ones_like(xb))

    return (
        fit_batch_size(attack_probe, device, requested=cap, label="attack batches"),
        fit_batch_size(metric_probe, device, requested=cap, label="metric batches"),
    )


def _classes_of(name: str, target: LoadedTarget, protocol: Protocol) -> int:
    """Output count of a target: its zoo entry's, else the model's ``num_classes``, else the protocol's K
    (the logits check on the first batch then catches a model that gives another count)."""
    if name in TARGETS:
        return TARGETS.get(name).num_classes
    n = getattr(target.model, "num_classes", None)
    return n if isinstance(n, int) else protocol.num_classes


def score_of(run: dict[str, Any], protocol: Protocol) -> float:
    """Ranking number of one run: mean over the protocol's targets of the ranking ASR in the ranking cell.

    A target whose rate is undefined (no image it classifies correctly, possible only in a small partial run)
    is left out with a warning.
    """
    per_target = run["cells"][protocol.ranking_cell]["targets"]
    missing = [n for n in protocol.targets if n not in per_target]
    if missing:
        raise EvaluationError(f"run {run.get('name')!r} has no {protocol.ranking_cell} result for targets {missing}")
    rates = {n: per_target[n][protocol.ranking_asr]["rate"] for n in protocol.targets}
    undefined = [n for n, r in rates.items() if r is None]
    if undefined:
        log.warning("score of %s leaves out %s: no image they classify correctly", run.get("name"), undefined)
    defined = [r for r in rates.values() if r is not None]
    if not defined:
        raise EvaluationError(f"no target has a defined {protocol.ranking_asr} ASR in {protocol.ranking_cell}")
    return float(np.mean(defined))


def evaluate(
    surrogate: Surrogate,
    protocol: Protocol,
    data: ImageSet,
    targets: dict[str, LoadedTarget],
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    precision: str | None = None,
    channels_last: bool = False,
    deterministic: bool = False,
) -> Record:
    """Run the protocol's whole grid on every run of the surrogate; nothing is written here.

    ``precision``: that of attack crafting and classification passes (``bench.precision``); None means the
    protocol's. Another precision than the protocol's is allowed (speed, or checking that it changes nothing)
    and the record says so: ``provenance.precision`` is the one used and ``precision_matches_protocol`` is
    False. Smoothness, similarity and weight sharpness run in fp32 regardless. The whole evaluation runs with
    TF32 off (``ieee_fp32``), so fp32 means IEEE float32 on GPUs too.
    ``batch_size``: images per batch, or None to size batches from the GPU's free memory (off CUDA:
    ``DEFAULT_BATCH_SIZE``). Either way a batch that runs out of memory is retried at half the size.
    ``channels_last``: run the models on NHWC tensors (their weights are converted in place).
    ``deterministic``: PyTorch's deterministic mode (``bench.determinism``), so that two runs on one GPU give
    identical bits; on CUDA every model is first checked on two images for ops that cannot run deterministically
    (a ``DeterminismError`` naming it). Batch shapes change float rounding, so the batch size is then fixed
    (``batch_size``, else ``DEFAULT_BATCH_SIZE``) and an out-of-memory error ends the run instead of backing off.
    CPU runs are deterministic either way. ``provenance.math`` records it.
    Once the arguments are checked, the protocol's reference numerics are reproduced on the CPU (``bench.numerics``;
    seconds, once per process): ``provenance.numerics`` is their digest where this install reproduces them, else
    null, and ``provenance.numerics_check`` says why.
    """
    used = protocol.precision if precision is None else precision
    if used not in PRECISIONS:
        raise EvaluationError(f"unknown precision {used!r}; use one of {', '.join(PRECISIONS)}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise EvaluationError(f"batch_size must be a positive int or None (sized from free memory), got {batch_size!r}")
    # refusals_named: an op refused by deterministic mode that the check on two images did not meet
    refused = refusals_named(f"the evaluation of {surrogate.name} (surrogate or a target)")
    with ieee_fp32(), deterministic_algorithms(deterministic), refused:
        return _evaluate(surrogate, protocol, data, targets, device=torch.device(device), batch_size=batch_size,
                         limit=limit, progress=progress, precision=used, channels_last=channels_last,
                         deterministic=deterministic)  # fmt: skip


def _evaluate(
    surrogate: Surrogate,
    protocol: Protocol,
    data: ImageSet,
    targets: dict[str, LoadedTarget],
    *,
    device: torch.device,
    batch_size: int | None,
    limit: int | None,
    progress: bool,
    precision: str,
    channels_last: bool,
    deterministic: bool,
) -> Record:
    start = time.perf_counter()
    members = [
        adapt_to_protocol(f"surrogate {surrogate.name}", m, surrogate.num_classes, protocol) for m in surrogate.runs
    ]
    targets = {
        n: dataclasses.replace(
            tg, model=adapt_to_protocol(f"target {n}", tg.model, _classes_of(n, tg, protocol), protocol)
        )
        for n, tg in targets.items()
    }
    missing = [n for n in protocol.targets if n not in targets]
    if missing:
        raise EvaluationError(f"{protocol.id} needs targets {missing}; load them with targets.load_targets().")
    extra = [n for n in targets if n not in protocol.targets]
    if extra:
        raise EvaluationError(
            f"targets {extra} are not in {protocol.id}: their ASRs would enter the score under the protocol's hash. "
            "Evaluate another target set with a protocol restricted to it (`--targets`, which changes the hash)."
        )
    if "surrogate" in targets:
        raise EvaluationError("a target may not be named 'surrogate': records use that name for the surrogate's bits")
    _check_input_size(surrogate, members, protocol)
    _check_target_sizes(targets, protocol)
    verified_digest(protocol)  # the reference numerics, reproduced on the CPU (once per process and protocol)
    images = select_images(protocol, data, limit)
    torch.manual_seed(protocol.seed)  # nothing should draw from it; set so that anything that does is repeatable
    fast = [prepare(m, precision, channels_last=channels_last) for m in members]
    scorers = {n: prepare(tg.model, precision, channels_last=channels_last) for n, tg in targets.items()}
    x, y = images.images(), images.labels
    if deterministic and device.type == "cuda":  # before anything else runs the models
        _check_deterministic(surrogate.run_names, members, fast, {n: tg.model for n, tg in targets.items()}, protocol,
                             x[:2].to(device), y[:2].to(device), images.ids[:2])  # fmt: skip
    if deterministic:  # same shapes in every run: a fixed batch size, never sized from free memory nor backed off
        attack_bs = metric_bs = min(batch_size or DEFAULT_BATCH_SIZE, len(y))
    else:
        attack_bs, metric_bs = _batch_sizes(batch_size, fast[0], members[0], x, y, device)
    b = _Batches(
        x, y, protocol.target_labels(images.ids, y), images.ids,
        attack=AdaptiveBatch(attack_bs, device=device, label="attack batches", backoff=not deterministic),
        metric=AdaptiveBatch(metric_bs, device=device, label="metric batches", backoff=not deterministic),
    )  # fmt: skip
    target_correct = {}
    target_info = {}
    data_sha = images.content_sha256()
    for n, tg in targets.items():
        check_model(n, tg.model, b.x[: min(8, len(b.y))].to(device), protocol.num_classes)
        target_correct[n] = (_predict(n, scorers[n], b, device, protocol) == b.y).numpy()
        if limit is None:  # the zoo pins accuracy on full image lists only
            check_target_accuracy(n, data_sha, float(target_correct[n].mean()))
        target_info[n] = {
            "sha256": tg.sha256,
            "source": tg.source,
            "family": tg.family,
            "clean_accuracy": float(target_correct[n].mean()),
            "clean_correct": pack_bits(target_correct[n]),
        }
    total = len(surrogate.runs) * len(b) * len(protocol.cells())
    runs = []
    with tqdm(total=total, desc=f"{surrogate.name} @ {protocol.id}", disable=not progress, unit="batch") as bar:
        for name, model, fast_model in zip(surrogate.run_names, members, fast, strict=True):
            sha = surrogate.member_sha256.get(name, surrogate.sha256)
            runs.append(
                _run_result(name, sha, model, fast_model, protocol, b, targets, scorers, target_correct, device, bar)
            )
    scores = [score_of(r, protocol) for r in runs]
    return Record(
        submission={
            "name": surrogate.name,
            "kind": surrogate.kind,
            "sha256": surrogate.sha256,
            "config_sha256": surrogate.config_sha256,
            "members": surrogate.member_sha256,
            "metadata": surrogate.config.metadata,
            "source": surrogate.source,
        },
        protocol={
            "name": protocol.name,
            "version": protocol.version,
            "sha256": protocol.sha256,
            "kind": protocol.kind,
            "status": protocol.status,
            "ranking_cell": protocol.ranking_cell,
            "ranking_asr": protocol.ranking_asr,
        },
        data={
            "source": data.source,
            "sha256": data_sha,
            "full_sha256": data.content_sha256(),
            "n_images": len(images),
            "partial": partial_images(protocol, limit) is not None,
        },
        targets=target_info,
        runs=runs,
        score={
            "mean": float(np.mean(scores)),
            "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
            "per_run": scores,
        },
        provenance={
            **provenance.collect(device, precision=precision, seed=protocol.seed),
            "numerics": verified_digest(protocol)[0],
            "numerics_check": verified_digest(protocol)[1],
            "protocol_precision": protocol.precision,
            "precision_matches_protocol": precision == protocol.precision,
            "channels_last": channels_last,
            "math": math_settings(),
            "batch_size": b.attack.initial,
            "metric_batch_size": b.metric.initial,
            "batch_size_from_memory": batch_size is None and not deterministic,
            "oom_backoffs": [e.to_json() for e in b.attack.events + b.metric.events],
            "wall_time_s": time.perf_counter() - start,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
