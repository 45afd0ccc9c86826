"""How many Hutchinson probes does the weight-Hessian trace (seed 004's sharpness diagnostic) need on real models?

Draws ``--probes`` Rademacher probes once (``bench.metrics.sharpness.hessian_trace``) on a class-balanced set of
CIFAR-10 test images and reports, for each model, the trace and the relative standard error an estimate with
n probes would have (the sample standard deviation over sqrt(n)), for the 10 probes that the protocols defined so
far pin and for more.

    python3 scripts/trace_probes_study.py --weights-dir ../shared/weights/cifar10-resnet-akamaster \
        --data-dir ../shared/data/cifar10-jpeg --images 200 --probes 100 --out runs/trace-probes-study.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench.data.cifar10 import load_cifar10
from bench.metrics.sharpness import hessian_trace
from bench.provenance import collect
from bench.runner import balanced_subset
from targets.zoo import load_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights-dir", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--models", nargs="+", default=["akamaster-resnet20", "akamaster-resnet56"])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--out", default="runs/trace-probes-study.json")
    args = ap.parse_args()
    data = load_cifar10("test", args.data_dir)
    idx = balanced_subset(data.labels, args.images, 10)  # the protocols' subset rule
    x, y = data.images(idx), data.labels[idx]
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    provenance = collect(torch.device("cpu"), precision="fp32", seed=0)
    out.write_text(json.dumps({"rows": rows, "images": idx.tolist(), "provenance": provenance}, indent=1))


if __name__ == "__main__":
    main()
