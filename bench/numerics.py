"""Reference numerics: the pinned output of every attack and metric a protocol uses, on fixed tiny models.

A protocol's sha256 pins *what* is measured (grid, budgets, steps, iteration counts, rules). It cannot see a
code change that alters *how* it is measured: a rounding fix in DIM's resize, a reordered projection, a new
default inside an estimator. Such a change moves every number of a protocol while its hash stays the same, and
records made before and after it stop being comparable without anyone noticing.

This module closes that gap. For every registered protocol it runs each attack cell of the grid, the target-
label rule, smoothness, gradient similarity and (where the protocol has it) weight sharpness on a fixed input
set and fixed tiny models, and reduces each result to a few numbers (:func:`reference_values`). The numbers are
pinned per protocol, with the protocol's sha256, in ``bench/numerics_pins.json``:

- the test suite (``tests/test_numerics.py``) recomputes them, so a change that moves a number fails CI and
  names the protocols it touches: bump their versions (a frozen protocol must; a provisional one says so in
  docs/protocols.md), then regenerate the pins with ``python scripts/numerics_pins.py``;
- ``transferbench selfcheck`` recomputes them on a user's install (a new cluster, another BLAS, an older torch)
  and says whether it reproduces the reference;
- every evaluation first reproduces its protocol's pins (on a CPU, seconds; once per process) and stamps the
  record with their digest (``provenance.numerics``, :func:`verified_digest`), or with null and the reason when
  it cannot; records of one protocol hash made by code that computes differently are thus told apart (``compare``
  warns, the tables name the rows, ``publish`` refuses).

Inputs and weights come from the project's counter-based generator (``bench.rng``), so they are the same on every
torch version and machine. The attacks and the metrics run in float64 (the metrics follow the model's dtype,
``bench.metrics.similarity.metric_dtype``), where the sign of a gradient component or a convergence decision
never depends on the order of a reduction: they are compared at a relative tolerance of 1e-9 (attacks) and 1e-6
(metrics, whose results are rounded to float32). The peer-library attack (AutoAttack) runs in float32, as the
library casts, and is compared at 1e-3 (measured: on a CPU without AVX2 a few of its pixels flip sign; its signed
sums move by up to 2% of themselves but by less than 0.01% of the sum of magnitudes that their tolerance is
relative to). The metrics run in batches of 3 (of 4 images), so that the chunked paths (weight sharpness weighs
its chunks) are pinned too. Data preparation is not pinned here: the protocol's data sha256 is of the prepared
pixels, so a change there is caught at evaluation.

What the reference cannot see: the reference models are random and far from confident (logit margins below 1),
so the float32 safeguards for confident models (the margin form of the cross-entropy) and the later stages of
AutoAttack (every reference image is fooled by its first stage) are tested elsewhere (tests/test_similarity.py,
tests/test_autoattack.py); and every protocol has seed 0.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench import rng
from bench.attacks import external
from bench.attacks.registry import attack_cost, run_attack
from bench.metrics.sharpness import hessian_top_eigenvalue, hessian_trace
from bench.metrics.similarity import gradient_similarity_many
from bench.metrics.smoothness import smoothness
from bench.protocol import PROTOCOLS, Protocol

log = logging.getLogger(__name__)

PINS_FILE = Path(__file__).with_name("numerics_pins.json")
PINS_FORMAT = 1
IMAGES = 4  # reference images per protocol
WIDTH = 8  # channels of the reference models' convolutions
SEED = 0
ATTACK_RTOL = 1e-9  # float64 attacks
EXTERNAL_RTOL = 1e-3  # float32 peer-library attacks (AutoAttack)
METRIC_RTOL = 1e-6  # float64 metrics, results rounded to float32
METRIC_BATCH = 3  # images per metric batch: 4 reference images make a full and a ragged chunk
ABS_TOL = 1e-9

Values = dict[str, float | int | bool]


class PinsError(RuntimeError):
    """The pins file is missing, unreadable or has no entry for a protocol."""


def reference_model(
    input_size: tuple[int, int, int], num_classes: int, seed: int, dtype: torch.dtype = torch.float64
) -> nn.Module:
    """A small CNN with smooth activations (SiLU), its weights drawn from ``bench.rng`` (no torch generator).

    Two convolutions (stride 2 from 32x32 inputs up, so that 224x224 stays cheap on a CPU), a 4x4 average pool and
    a linear head; smooth, so that every input Hessian exists and the power iteration has a well-defined answer.
    """
    channels, stride = input_size[0], 2 if min(input_size[1:]) >= 32 else 1
    model = nn.Sequential(
        nn.Conv2d(channels, WIDTH, 3, stride=stride, padding=1),
        nn.SiLU(),
        nn.Conv2d(WIDTH, WIDTH, 3, stride=stride, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(WIDTH * 16, num_classes),
    )
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            u = rng.uniform(seed, "reference", torch.tensor([i]), 0, p.numel()).reshape(p.shape)
            # weights U(-1, 1) * 3 / sqrt(fan_in), so that logits spread by units; biases small, so that they
            # do not decide the prediction alone
            w = (2 * u - 1) * (3.0 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.1)
            if p.ndim == 4:  # zero-mean filters: features respond to each image's layout, not to its brightness
                w = w - w.mean(dim=(1, 2, 3), keepdim=True)
            p.copy_(w)
    return model.to(dtype).eval()


def reference_images(protocol: Protocol, n: int = IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, C, H, W) in float64, multiples of 1/255, and their protocol ids (the list's first n).

    Each image is a random 4x4 colour layout upsampled to the input size plus pixel noise, so that the models'
    pooled features, and their predictions, differ from image to image as they do on real data.
    """
    c, h, w = protocol.input_size
    ids = torch.tensor(protocol.image_ids[:n])
    coarse = rng.uniform(SEED, "reference", ids + 1000, 1, c * 16).reshape(n, c, 4, 4).double()
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    noise = rng.uniform(SEED, "reference", ids + 1000, 2, c * h * w).reshape(n, c, h, w).double()
    x = torch.round((0.9 * smooth + 0.1 * noise) * 255) / 255
    return x.clamp(0, 1), ids


def _delta_summary(prefix: str, x_adv: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> Values:
    """Four sums of the perturbation in pixel levels (d = 255 (x_adv - x)): a change to any pixel moves one."""
    d = (x_adv.double() - x.double()) * 255
    return {
        f"{prefix}.sum": float(d.sum()),
        f"{prefix}.abs_sum": float(d.abs().sum()),
        f"{prefix}.sq_sum": float((d * d).sum()),
        f"{prefix}.weighted_sum": float((d * weights).sum()),
    }


def _attack_values(protocol: Protocol, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> Values:
    weights = 2 * rng.uniform(SEED, "reference", ids + 2000, 3, x[0].numel()).reshape(x.shape).double() - 1
    t = protocol.target_labels(ids, y)
    out: Values = {f"target_label[{i}]": int(v) for i, v in enumerate(t)}
    model32 = copy.deepcopy(model).float()  # peer-library attacks run in float32 (the library casts)
    for cell in protocol.cells():
        spec = protocol.attack_spec(cell.attack)
        external_attack = cell.attack in external.EXTERNAL_ATTACKS
        m, xs = (model32, x.float()) if external_attack else (model, x)
        targeted = cell.mode == "targeted"
        x_adv = run_attack(cell.attack, m, xs, t if targeted else y, cell.eps, steps=spec.steps, targeted=targeted,
                           ids=ids, seed=protocol.seed, params=spec.kwargs)  # fmt: skip
        with torch.no_grad():
            success = cell.success(m(x_adv).argmax(1), y, t)
        out.update(_delta_summary(cell.key, x_adv, x, weights))
        out.update({f"{cell.key}.success[{i}]": bool(s) for i, s in enumerate(success)})
        out[f"{cell.key}.gradient_evals"] = attack_cost(cell.attack, spec.steps, spec.kwargs)
    return out


def _metric_values(
    protocol: Protocol, model: nn.Module, targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
    ids: torch.Tensor,
) -> Values:  # fmt: skip
    bs = METRIC_BATCH
    sm = smoothness(model, x, y, batch_size=bs, iters=protocol.smoothness_iters, tol=protocol.smoothness_tol,
                    ids=ids, stop=protocol.smoothness_stop_rule).reported(protocol.smoothness_value_rule)  # fmt: skip
    out: Values = {f"smoothness.eigenvalue[{i}]": float(v) for i, v in enumerate(sm.eigenvalues)}
    out.update({f"smoothness.converged[{i}]": bool(c) for i, c in enumerate(sm.converged)})
    out["smoothness.iterations"] = sm.iterations
    for name, s in gradient_similarity_many(model, targets, x, y, batch_size=bs).items():
        out.update({f"similarity.{name}[{i}]": float(v) for i, v in enumerate(s.cosines)})
    spec = protocol.weight_sharpness
    if spec is not None:
        eig = hessian_top_eigenvalue(model, x, y, max_iters=spec.max_iters, tol=spec.tol, seed=spec.seed, batch_size=bs)
        tr = hessian_trace(model, x, y, probes=spec.probes, seed=spec.seed, batch_size=bs)
        out.update({
            "weight_sharpness.top_eigenvalue": eig.value, "weight_sharpness.iterations": eig.count,
            "weight_sharpness.converged": eig.converged, "weight_sharpness.trace": tr.value,
            "weight_sharpness.trace_stderr": tr.stderr,
        })  # fmt: skip
    return out


def reference_values(protocol: Protocol) -> Values:
    """Every pinned number of ``protocol``: target labels, per cell the perturbation sums, success bits and cost,
    and the metrics (smoothness, similarity to two reference targets, weight sharpness if the protocol has it).

    Deterministic and machine-independent up to the tolerances of :func:`tolerance`. A CPU function: it sets no
    global state and leaves the caller's thread count and generators alone.
    """
    size, k = protocol.input_size, protocol.num_classes
    x, ids = reference_images(protocol)
    model = reference_model(size, k, SEED)
    with torch.no_grad():
        y = model(x).argmax(1)  # the surrogate is right on every reference image
    values = _attack_values(protocol, model, x, y, ids)
    targets = {f"target{s}": reference_model(size, k, s) for s in (1, 2)}
    values.update(_metric_values(protocol, model, targets, x, y, ids))
    return values


def tolerance(key: str) -> float:
    """Relative tolerance of one pinned value (exact for integers and flags)."""
    head = key.split(".", 1)[0]
    if head in ("smoothness", "similarity", "weight_sharpness"):
        return METRIC_RTOL
    if head.split("/", 1)[0] in external.EXTERNAL_ATTACKS:
        return EXTERNAL_RTOL
    return ATTACK_RTOL


def _close(key: str, pinned: Any, got: Any, scale: float) -> bool:
    if isinstance(pinned, bool) or isinstance(got, bool) or (isinstance(pinned, int) and isinstance(got, int)):
        return pinned == got
    if pinned is None or got is None:
        return pinned is got
    rtol = tolerance(key)
    return math.isclose(float(pinned), float(got), rel_tol=rtol, abs_tol=max(ABS_TOL, rtol * scale))


def _scale(key: str, pinned: Values) -> float:
    """The magnitude a value's tolerance is relative to: a signed sum of the perturbation can cancel to near zero,
    so its tolerance is relative to the sum of magnitudes (``abs_sum``) of the same cell."""
    prefix, _, stat = key.rpartition(".")
    if stat in ("sum", "weighted_sum"):
        return abs(float(pinned.get(f"{prefix}.abs_sum") or 0.0))
    return 0.0


@dataclass(frozen=True)
class Drift:
    """One pinned value that the code no longer reproduces (``got`` None: no longer computed)."""

    protocol: str  # e.g. "cifar10-v1"
    key: str
    pinned: Any
    got: Any

    def describe(self) -> str:
        return f"{self.protocol} {self.key}: pinned {self.pinned!r}, now {self.got!r}"


def compare(protocol_id: str, pinned: Values, got: Values) -> list[Drift]:
    """The values of ``got`` that differ from ``pinned`` beyond their tolerance, and keys only one side has."""
    drifts = [Drift(protocol_id, k, pinned.get(k), got.get(k)) for k in sorted(pinned.keys() | got.keys())
              if k not in pinned or k not in got or not _close(k, pinned[k], got[k], _scale(k, pinned))]  # fmt: skip
    return drifts


def _json_safe(values: Values) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def digest(values: Values) -> str:
    """sha256 of a protocol's pinned values (canonical JSON): the ``provenance.numerics`` of its records."""
    canonical = json.dumps(_json_safe(values), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_RESTORE = (
    "The file ships with the package: reinstall transferbench, or restore it from the repository (git "
    "checkout bench/numerics_pins.json). Never regenerate it to make a check pass; a developer regenerates it "
    "after an intended change with `python scripts/numerics_pins.py` (CONTRIBUTING.md)."
)


def load_pins(path: Path = PINS_FILE) -> dict[str, Any]:
    """The pins file as ``{protocol id: {"sha256": ..., "values": {...}}}``."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise PinsError(f"{path}: the reference numerics are missing. {_RESTORE}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise PinsError(f"{path}: unreadable ({e}). {_RESTORE}") from e
    if not isinstance(data, dict) or data.get("format") != PINS_FORMAT or not isinstance(data.get("protocols"), dict):
        raise PinsError(f"{path}: not a format-{PINS_FORMAT} pins file. {_RESTORE}")
    return data["protocols"]


def pinned_entry(protocol: Protocol, pins: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pins of ``protocol``; a :class:`PinsError` if it has none or they were made for another hash."""
    pins = load_pins() if pins is None else pins
    entry = pins.get(protocol.id)
    if entry is None:
        raise PinsError(f"{protocol.id} has no reference numerics in {PINS_FILE.name}: run "
                        "`python scripts/numerics_pins.py` and commit the file")  # fmt: skip
    if entry.get("sha256") != protocol.sha256:
        raise PinsError(f"the reference numerics of {protocol.id} were made for protocol hash "
                        f"{str(entry.get('sha256'))[:12]}…, not {protocol.sha256[:12]}… (the protocol changed): run "
                        "`python scripts/numerics_pins.py` and commit the file")  # fmt: skip
    return entry


def numerics_digest(protocol: Protocol) -> str | None:
    """The digest of the numerics this code pins for ``protocol``; None where it has no pins (a protocol defined
    outside this package, or one changed since the pins were made). Whether the code reproduces them on this
    machine is :func:`verified_digest`'s question."""
    try:
        return str(pinned_entry(protocol)["digest"])
    except (PinsError, KeyError):
        return None


_VERIFIED: dict[str, tuple[str | None, str]] = {}


def verified_digest(protocol: Protocol) -> tuple[str | None, str]:
    """``(digest, how)`` for a record's provenance: the pins' digest if this code reproduces ``protocol``'s pins
    here (on the CPU), else None; ``how`` says which: "reproduced", "no pins for this protocol hash",
    "N values moved" or "not checked: <reason>". Computed once per process and protocol hash: a process whose code
    changes while it runs (a notebook that reloads modules) must clear ``_VERIFIED``. The check runs the CPU's
    kernels; a GPU run's own rounding is not part of it."""
    if protocol.sha256 not in _VERIFIED:
        _VERIFIED[protocol.sha256] = _verify(protocol)
    return _VERIFIED[protocol.sha256]


def _verify(protocol: Protocol) -> tuple[str | None, str]:
    """:func:`verified_digest` without its cache (the pins file is read once)."""
    try:
        pins = load_pins()
    except PinsError as e:
        log.warning("the reference numerics cannot be checked: %s", e)
        return None, f"not checked: {e}"
    try:
        pinned = str(pinned_entry(protocol, pins)["digest"])
    except (PinsError, KeyError):
        return None, "no pins for this protocol hash"
    try:
        drifts = check([protocol], pins)
    except external.OptionalDependencyError as e:  # AutoAttack's torchattacks is not installed
        return None, f"not checked: {e}"
    if drifts:
        log.warning("%s: this install does not reproduce the protocol's reference numerics; the record is stamped "
                    "without them.\n%s", protocol.id, drift_report(drifts))  # fmt: skip
        return None, f"{len(drifts)} values moved"
    return pinned, "reproduced"


def check(protocols: Iterable[Protocol] | None = None, pins: dict[str, Any] | None = None) -> list[Drift]:
    """Recompute the reference numerics of ``protocols`` (default: all registered) and list every drift."""
    pins = load_pins() if pins is None else pins
    drifts: list[Drift] = []
    for protocol in protocols if protocols is not None else [PROTOCOLS.get(n) for n in PROTOCOLS]:
        entry = pinned_entry(protocol, pins)
        drifts += compare(protocol.id, entry["values"], _json_safe(reference_values(protocol)))
    return drifts


def pins_for(protocols: Iterable[Protocol]) -> dict[str, Any]:
    """A pins file's content for ``protocols`` (what ``scripts/numerics_pins.py`` writes)."""
    entries = {}
    for protocol in protocols:
        values = _json_safe(reference_values(protocol))
        entries[protocol.id] = {"sha256": protocol.sha256, "digest": digest(values), "values": values}
    return {"format": PINS_FORMAT, "torch": torch.__version__, "protocols": entries}


def drift_report(drifts: list[Drift], limit: int = 5) -> str:
    """What moved, per protocol (its first ``limit`` values), and what to do about it."""
    by_protocol: dict[str, list[Drift]] = {}
    for d in drifts:
        by_protocol.setdefault(d.protocol, []).append(d)
    lines = []
    for pid, ds in by_protocol.items():
        proto = PROTOCOLS.get(pid.rsplit("-v", 1)[0])
        lines.append(f"{pid} ({proto.status}): {len(ds)} reference value(s) moved, e.g.")
        lines += [f"  {d.key}: pinned {d.pinned!r}, now {d.got!r}" for d in ds[:limit]]
    lines.append(
        "The code now computes other numbers than the ones these protocols were pinned with, under unchanged "
        "protocol hashes. If the change is unintended, it is a bug: find it. If it is intended, a frozen protocol "
        "needs a new version (records of the old one must not rank beside new ones); a provisional one needs a "
        "line in docs/protocols.md saying what moved. Then regenerate the pins: python scripts/numerics_pins.py. "
        "On a user's install, a moved value means this machine or library stack does not reproduce the reference."
    )
    return "\n".join(lines)
