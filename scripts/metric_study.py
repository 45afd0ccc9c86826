"""Accuracy studies of the surrogate metrics on real CIFAR-10 models (results in docs/results.md).

``smoothness``: how accurate is the smoothness metric's power iteration, under each stopping rule? For a network
that is piecewise linear in its input (ReLU, max/avg pooling, BatchNorm in eval mode, linear layers), the input
Hessian of the cross-entropy at label y is exactly ``H = J^T A J`` with J the (K, d) logit Jacobian and
``A = diag(p) - p p^T``, since every second derivative of the network itself is zero where it is defined. Its
non-zero eigenvalues are those of the K x K matrix ``A^(1/2) J J^T A^(1/2)``: an exact reference from K backward
passes. The study compares what ``bench.metrics.smoothness`` reports, in float32 as the protocols run it, with
that reference, for each stopping rule (``STOP_RULES``) and iteration cap; one table row per (model, rule, cap).

``hessian``: the same comparison for any network, smooth activations (GELU, SiLU) included, where the Hessian
is no longer ``J^T A J`` and can have negative eigenvalues: the reference is the full (d, d) input Hessian of
each image, built in float64 by forward-over-reverse differentiation (``torch.func``), and its eigenvalues of
largest magnitude (the one power iteration finds) and largest value. Models are submission folders
(``--surrogates``) or zoo targets.

``trace``: how many Hutchinson probes does the weight-Hessian trace (seed 004's sharpness diagnostic) need? It
draws ``--probes`` Rademacher probes (``bench.metrics.sharpness.hessian_trace``, one seed each) and reports the
trace and the relative standard error an estimate with n probes would have (sample sd over sqrt(n)).

    python3 scripts/metric_study.py smoothness --weights-dir ../shared/weights/cifar10-resnet-akamaster \
        --data-dir ../shared/data/cifar10-jpeg --images 200 --iters 10 20
    python3 scripts/metric_study.py hessian --surrogates runs/act-relu runs/act-gelu runs/act-silu \
        --data-dir ../shared/data/cifar10-jpeg --images 50 --iters 20 50
    python3 scripts/metric_study.py trace --weights-dir ../shared/weights/cifar10-resnet-akamaster \
        --data-dir ../shared/data/cifar10-jpeg --images 200 --probes 100 --models akamaster-resnet20

Both use the protocols' class-balanced subset of the test split and write JSON with per-image values and
provenance (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.checks import check_eval_mode
from bench.data.cifar10 import load_cifar10
from bench.metrics import smoothness as smoothness_module
from bench.metrics.sharpness import hessian_trace
from bench.metrics.similarity import margin_cross_entropy
from bench.metrics.smoothness import STOP_RULES, SmoothnessResult, smoothness
from bench.provenance import collect
from bench.runner import balanced_subset
from surrogates.submission import load_surrogate
from targets.zoo import load_target


class HvpCounter:
    """Counts image-Hessian-vector products (the metric's unit of work, independent of machine load) by wrapping
    the module's HVP helper for the duration of a ``with`` block."""

    def __init__(self) -> None:
        self.count = 0
        self._original = smoothness_module._hvp_from_graph

    def __enter__(self) -> HvpCounter:
        def counted(x: torch.Tensor, grad: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.count += v.shape[0]
            return self._original(x, grad, v)

        smoothness_module._hvp_from_graph = counted
        return self

    def __exit__(self, *exc: object) -> None:
        smoothness_module._hvp_from_graph = self._original


def exact_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K) eigenvalues, descending, of each image's input Hessian of CE, for a piecewise-linear model (float64)."""
    model = copy.deepcopy(model).double()  # the caller's model stays as it is (float32)
    x = x.double().requires_grad_(True)  # (B, C, H, W)
    logits = model(x)  # (B, K)
    k = logits.shape[1]
    rows = []
    for j in range(k):
        (g,) = torch.autograd.grad(logits[:, j].sum(), x, retain_graph=j < k - 1)  # (B, C, H, W)
        rows.append(g.flatten(1))
    jac = torch.stack(rows, dim=1)  # (B, K, d)
    p = logits.detach().softmax(dim=1)  # (B, K)
    a = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # (B, K, K), PSD
    evals, evecs = torch.linalg.eigh(a)
    root = evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.transpose(1, 2)  # (B, K, K)
    gram = jac @ jac.transpose(1, 2)  # (B, K, K)
    spectrum = torch.linalg.eigvalsh(root @ gram @ root)  # (B, K) ascending
    return spectrum.flip(1)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(d, d) float64 input Hessian of CE at (x, y) for one image x (C, H, W), any differentiable model.

    Forward-over-reverse with ``torch.func`` (a JVP of the gradient per unit vector, ``chunk`` at a time): an
    independent computation from the metric's own reverse-over-reverse Hessian-vector products. ``chunk`` 64
    is the fastest measured on a 2-core CPU for ResNet-20 (25-30 s per image, against 46 s at 256 and 90 s at
    1024); for the three-convolution ``small_cnn`` the chunk makes no difference.
    """
    check_eval_mode(model)
    model = copy.deepcopy(model).double().requires_grad_(False)  # derivatives in x only: no graph over weights
    x = x.double()
    target = y.reshape(1)

    def loss(z: torch.Tensor) -> torch.Tensor:  # the metric's loss (exact on confident images too)
        return margin_cross_entropy(model(z.unsqueeze(0)), target)

    basis = torch.eye(x.numel(), dtype=torch.float64).view(-1, *x.shape)  # (d, C, H, W)
    column = torch.func.vmap(lambda v: torch.func.jvp(torch.func.grad(loss), (x,), (v,))[1], chunk_size=chunk)
    h = column(basis).reshape(x.numel(), x.numel())
    return (h + h.T) / 2  # symmetric up to float64 rounding


def hessian_extremes(h: torch.Tensor) -> tuple[float, float, float]:
    """(largest-magnitude eigenvalue with its sign, largest eigenvalue, |second| / |first| by magnitude) of h."""
    evals = torch.linalg.eigvalsh(h)  # ascending
    by_magnitude = evals[evals.abs().argsort(descending=True)]
    ratio = float(by_magnitude[1].abs() / by_magnitude[0].abs()) if by_magnitude[0] != 0 else 0.0
    return float(by_magnitude[0]), float(evals[-1]), ratio


def hessian_study(args: argparse.Namespace) -> None:
    idx, x, y = _images(args)
    models = [(Path(p).name, load_surrogate(p).runs[0].eval()) for p in args.surrogates]
    models += [(n, load_target(n, weights_dir=args.weights_dir).model) for n in args.models or []]
    rows, per_image = [], {}
    for name, model in models:
        start = time.perf_counter()
        extremes = [hessian_extremes(exact_hessian(model, x[i], y[i])) for i in range(len(y))]
        ref_seconds = time.perf_counter() - start
        top_mag = torch.tensor([e[0] for e in extremes], dtype=torch.float64)
        top_val = torch.tensor([e[1] for e in extremes], dtype=torch.float64)
        gap = torch.tensor([e[2] for e in extremes], dtype=torch.float64)
        negative = int((top_mag < 0).sum())
        per_image[name] = {"largest_magnitude": top_mag.tolist(), "largest": top_val.tolist(),
                           "ratio_second_first": gap.tolist(), "runs": {}}  # fmt: skip
        print(f"{name}: exact reference in {ref_seconds:.0f} s; mean of the largest-magnitude eigenvalue "
              f"{top_mag.mean():.4g} (of |.| {top_mag.abs().mean():.4g}); negative on {negative} of {len(y)} images; "
              f"median |l2|/|l1| {gap.quantile(0.5):.3f}, > 0.9 on {int((gap > 0.9).sum())}")  # fmt: skip
        for row, res in _power_iteration_runs(name, model, x, y, idx, top_mag, args.iters, per_image[name]["runs"]):
            row["n_exact_negative"] = negative
            row["n_sign_wrong"] = int((torch.sign(res.eigenvalues.double()) != torch.sign(top_mag)).sum())
            rows.append(row)
    _print_table(rows, extra=("magnitude_mean_rel_error", "n_exact_negative", "n_sign_wrong"))
    _write(args.out, {"rows": rows, "per_image": per_image, "images": idx.tolist()})


def _power_iteration_runs(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, exact: torch.Tensor,
    caps: list[int], runs: dict[str, Any],
) -> list[tuple[dict[str, Any], SmoothnessResult]]:  # fmt: skip
    """The metric under each stopping rule and iteration cap against ``exact``: (table row, result) each; the
    per-image eigenvalues and flags go into ``runs`` under "<rule>/<cap>"."""
    out = []
    for stop in STOP_RULES:
        for iters in caps:
            start = time.perf_counter()
            with HvpCounter() as counter:
                res = smoothness(model, x, y, batch_size=100, iters=iters, tol=1e-3, ids=idx, stop=stop)
            row = _row(name, stop, iters, res.eigenvalues, res.converged, exact, res.iterations, counter.count,
                       time.perf_counter() - start)  # fmt: skip
            runs[f"{stop}/{iters}"] = {"eigenvalues": res.eigenvalues.tolist(), "converged": res.converged.tolist()}
            out.append((row, res))
    return out


def _print_table(rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> None:
    header = ("model", "stop", "iters", "n_flagged_converged", "flagged_above_tol", "flagged_max_rel_error",
              "n_above_1pct", "all_max_rel_error", "mean_rel_error", "hvps_per_image", *extra, "seconds")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        cells = [r[h] for h in header]
        print(
            "| "
            + " | ".join(f"{c:.2e}" if isinstance(c, float) and not math.isnan(c) else str(c) for c in cells)
            + " |"
        )


def _row(name: str, stop: str, iters: int, got: torch.Tensor, flagged: torch.Tensor, exact: torch.Tensor,
         ran: int, hvps: int, seconds: float) -> dict[str, Any]:  # fmt: skip
    rel = (got.double() - exact).abs() / exact.abs()  # (N,)
    return {
        "model": name,
        "stop": stop,
        "iters": iters,
        "iterations_run": ran,
        "hvps_per_image": hvps / got.numel(),
        "seconds": round(seconds, 2),
        "n": int(got.numel()),
        "n_flagged_converged": int(flagged.sum()),
        "flagged_max_rel_error": float(rel[flagged].max()) if bool(flagged.any()) else None,
        "flagged_above_tol": int((rel[flagged] > 1e-3).sum()),
        "all_median_rel_error": float(rel.median()),
        "all_max_rel_error": float(rel.max()),
        "n_above_1pct": int((rel > 1e-2).sum()),
        "mean_rel_error": float(abs(got.double().mean() - exact.mean()) / exact.mean().abs()),
        "magnitude_mean_rel_error": float(abs(got.double().abs().mean() - exact.abs().mean()) / exact.abs().mean()),
    }


def _images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, images, labels) of the protocols' class-balanced prefix of the CIFAR-10 test split."""
    data = load_cifar10("test", args.data_dir)
    idx = balanced_subset(data.labels, args.images, 10)
    return idx, data.images(idx), data.labels[idx]


def _write(path: str, payload: dict[str, Any]) -> None:
    """``payload`` and the provenance of the run (the studies run on the CPU, in fp32) as JSON at ``path``."""
    payload = {**payload, "provenance": collect(torch.device("cpu"), precision="fp32", seed=0)}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))


def smoothness_study(args: argparse.Namespace) -> None:
    idx, x, y = _images(args)
    rows, per_image = [], {}
    for name in args.models:
        target = load_target(name, weights_dir=args.weights_dir)
        spectrum = exact_spectrum(target.model, x, y)  # (N, K)
        exact = spectrum[:, 0]
        gap = spectrum[:, 1] / spectrum[:, 0]  # power iteration's error shrinks like gap^t
        per_image[name] = {"exact": exact.tolist(), "ratio_l2_l1": gap.tolist(), "runs": {}}
        runs = _power_iteration_runs(name, target.model, x, y, idx, exact, args.iters, per_image[name]["runs"])
        rows += [row for row, _ in runs]
        psd = bool((spectrum >= -1e-9 * spectrum[:, :1]).all())
        close = int((gap > 0.9).sum())
        print(f"{name}: exact mean {exact.mean():.4g}, all eigenvalues >= 0: {psd}, "
              f"median lambda2/lambda1 {gap.median():.3f}, lambda2/lambda1 > 0.9: {close} images")  # fmt: skip
    _print_table(rows)
    _write(args.out, {"rows": rows, "per_image": per_image, "images": idx.tolist()})


def trace_study(args: argparse.Namespace) -> None:
    idx, x, y = _images(args)
    rows = []
    print("| model | trace (mean of all probes) | probe sd / trace | rel. stderr, 10 probes | rel. stderr, 100 probes |"
          " probes for 5% | seconds per probe |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        model = load_target(name, weights_dir=args.weights_dir).model
        samples = []
        start = time.perf_counter()
        for seed in range(args.probes):  # one probe per seed keeps every sample (hessian_trace returns the mean)
            samples.append(hessian_trace(model, x, y, probes=1, seed=seed, batch_size=100).value)
        per_probe = (time.perf_counter() - start) / args.probes
        values = torch.tensor(samples, dtype=torch.float64)
        trace, sd = float(values.mean()), float(values.std(unbiased=True))
        rel = sd / abs(trace)
        row = {
            "model": name,
            "trace": trace,
            "probe_sd": sd,
            "rel_stderr_10": rel / math.sqrt(10),
            "rel_stderr_100": rel / math.sqrt(100),
            "probes_for_5pct": math.ceil((rel / 0.05) ** 2),
            "seconds_per_probe": round(per_probe, 2),
            "samples": samples,
        }
        rows.append(row)
        print(f"| {name} | {trace:.4g} | {rel:.3f} | {row['rel_stderr_10']:.3f} | {row['rel_stderr_100']:.3f} | "
              f"{row['probes_for_5pct']} | {per_probe:.2f} |")  # fmt: skip
    _write(args.out, {"rows": rows, "images": idx.tolist()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="study", required=True)
    studies = {"smoothness": smoothness_study, "hessian": hessian_study, "trace": trace_study}
    for name in studies:
        p = sub.add_parser(name)
        p.add_argument("--data-dir", required=True)
        p.add_argument("--out", default=f"runs/{name}-study.json")
        if name == "hessian":
            p.add_argument("--surrogates", nargs="*", default=[], help="submission folders")
            p.add_argument("--models", nargs="*", default=[], help="zoo targets (need --weights-dir)")
            p.add_argument("--weights-dir")
            p.add_argument("--images", type=int, default=50)
        else:
            p.add_argument("--weights-dir", required=True)
            p.add_argument("--models", nargs="+", default=["akamaster-resnet20", "akamaster-resnet56"])
            p.add_argument("--images", type=int, default=200)
        if name in ("smoothness", "hessian"):
            p.add_argument("--iters", nargs="+", type=int, default=[20, 50, 100])
        else:
            p.add_argument("--probes", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(0)
    studies[args.study](args)


if __name__ == "__main__":
    main()
