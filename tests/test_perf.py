"""The speed benchmark on a CPU with tiny models and sizes: it runs, compares like with like, and records it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_cifar_model
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from bench import perf
from bench.data import load_digits_smoke
from bench.models import build_model
from bench.perf import Setting
from bench.protocol import WeightSharpnessSpec, get_protocol
from bench.runner import evaluate
from surrogates.submission import load_surrogate, save_surrogate
from surrogates.training import TrainConfig, train_classifier
from targets.zoo import LoadedTarget


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    perf.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_settings_parse_and_name_themselves() -> None:
    s = Setting.parse("bf16+cl+compile")
    assert (s.precision, s.channels_last, s.compiled) == ("bf16", True, True) and s.name == "bf16+cl+compile"
    assert Setting.parse("fp32") == Setting() and Setting.parse("fp32+cl").name == "fp32+cl"
    det = Setting.parse("fp32+det")
    assert det.deterministic and not det.channels_last and det.name == "fp32+det"
    with pytest.raises(ValueError, match=r"setting 'fp16'.*fp32, bf16"):
        Setting.parse("fp16")
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['nhwc'\]"):
        Setting.parse("bf16+nhwc")
    assert _args().settings == [Setting("fp32"), Setting("bf16"), Setting("bf16", channels_last=True)]
    assert _args("--settings", "bf16+cl").settings == [Setting("bf16", channels_last=True)]


def test_ours_and_torchattacks_give_the_same_pgd_on_the_same_inputs() -> None:
    model = tiny_cifar_model(0)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    check = perf.reference_check(model, x, y, 8 / 255, steps=5)
    assert check["images"] == 8 and check["max_abs_diff"] < 1e-7


def test_an_image_step_costs_a_forward_and_an_input_backward() -> None:
    model = tiny_cifar_model(0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    forward = counter.get_total_flops() / 2
    assert perf.flops_per_image_step(model, x, y) == pytest.approx(2 * forward, rel=1e-3)
    assert all(p.requires_grad for p in model.parameters())  # the count ran on a frozen copy
    full = build_model("cifar_resnet18", 10, (0.5,) * 3, (0.25,) * 3).eval()
    assert 2.1e9 < perf.flops_per_image_step(full, x, y) < 2.3e9  # issue #7's 2.2 GFLOP for CIFAR ResNet-18


def test_timing_warms_up_then_times_each_repeat() -> None:
    calls = []
    secs = perf.time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and len(secs) == 3 and all(s >= 0 for s in secs)
    with pytest.raises(ValueError, match="repeats"):
        perf.time_call(lambda: None, torch.device("cpu"), warmup=0, repeats=0)


def test_peak_flops_of_known_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert perf.peak_bf16_flops(torch.device("cpu")) is None
    assert perf.peak_bf16_flops(torch.device("cpu"), override_tflops=100.0) == 1e14
    for name, tflops in (("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4),
                         ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA GeForce GTX 1080", None)):  # fmt: skip
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        got = perf.peak_bf16_flops(torch.device("cuda"))
        assert got == (None if tflops is None else pytest.approx(tflops * 1e12)), name


def test_the_attack_benchmark_runs_and_records_everything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "perf.json"
    args = _args("--device", "cpu", "--arch-kwargs", '{"width": 4}', "--batch", "8", "--steps", "2",
                 "--warmup", "0", "--repeats", "2", "--attacks", "pgd", "dim", "--settings", "fp32", "bf16+cl",
                 "--smoothness-images", "8", "--smoothness-iters", "3", "--similarity-images", "8",
                 "--similarity-targets", "2", "--out", str(out))  # fmt: skip
    assert perf.run(args) == 0
    printed = capsys.readouterr().out
    assert "x torchattacks" in printed and "bf16+cl" in printed and "smoothness: 8 images" in printed
    result = json.loads(out.read_text())
    for key in ("git_sha", "torch", "device", "precision", "math_outside_runs", "created_utc"):
        assert key in result["provenance"], key
    assert result["options"]["settings"] == ["fp32", "bf16+cl"] and result["options"]["batch"] == 8
    assert result["reference_check"]["max_abs_diff"] < 1e-7
    rows = result["attacks"]
    expected = (("torchattacks", "fp32 (torch defaults)"), ("transferbench", "fp32"), ("transferbench", "bf16+cl"))
    assert [(r["attack"], r["implementation"], r["setting"]) for r in rows] == [
        (a, impl, s) for a in ("pgd", "dim") for impl, s in expected
    ]
    for r in rows:
        assert len(r["seconds"]) == 2 and r["image_steps_per_s"] == pytest.approx(8 * 2 / r["median_s"])
        assert (r["vs_torchattacks"] is None) == (r["implementation"] == "torchattacks")
        assert r["fraction_of_bf16_bound"] is None  # no known peak on a CPU
    ours_fp32 = next(r for r in rows if r["setting"] == "fp32" and r["attack"] == "pgd")
    assert ours_fp32["math"].get("cudnn_conv_fp32_precision", "ieee") == "ieee"  # ours runs with TF32 off
    assert result["flops_per_image_step"] > 0
    sm, sim = result["metrics"]["smoothness"], result["metrics"]["similarity"]
    assert sm["images"] == 8 and 1 <= sm["iterations"] <= 3 and sim["targets"] == 2 and sim["seconds"] > 0
    assert sm["batch"] == sim["batch"] == 8 and sm["oom_backoffs"] == [] and result["torchattacks"]


def test_without_torchattacks_ours_is_timed_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "_torchattacks_version", lambda: None)
    args = _args("--device", "cpu", "--arch-kwargs", '{"width": 4}', "--batch", "4", "--steps", "1", "--warmup", "0",
                 "--repeats", "1", "--attacks", "pgd", "--settings", "fp32", "fp32+det",
                 "--measure", "attacks")  # fmt: skip
    result = perf.measure(args)
    assert result["torchattacks"] is None and "reference_check" not in result
    rows = result["attacks"]
    assert [(r["implementation"], r["vs_torchattacks"]) for r in rows] == [("transferbench", None)] * 2
    assert [r["math"]["deterministic_algorithms"] for r in rows] == [False, True]  # +det: timed in that mode
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_metric_that_runs_out_of_memory_is_timed_at_the_size_that_fits() -> None:
    sizes: list[int] = []

    def metric(bs: int) -> int:
        sizes.append(bs)
        if bs > 10:
            raise torch.OutOfMemoryError("injected")
        return bs

    timed = perf._timed_metric("smoothness", metric, 64, 1024, torch.device("cpu"))
    assert timed["batch"] == 8 and timed["result"] == 8 and timed["seconds"] >= 0
    assert [e["failed"] for e in timed["oom_backoffs"]] == [64, 32, 16]
    assert sizes == [64, 32, 16, 8, 8]  # the successful size is timed once more on its own


def _mlp(hidden: int, seed: int) -> torch.nn.Module:
    data = load_digits_smoke()
    keep = torch.tensor([i % 3 != 0 for i in data.ids.tolist()])  # the smoke protocol holds out every third image
    torch.manual_seed(seed)
    net = build_model("mlp", 10, (0.5,), (0.5,), hidden=hidden)
    return train_classifier(net, data.images()[keep], data.labels[keep], TrainConfig(epochs=6, seed=seed))


def _surrogate(folder: Path) -> Path:
    return save_surrogate(_mlp(32, 1), folder, architecture="mlp", num_classes=10, mean=(0.5,), std=(0.5,),
                          input_size=(1, 8, 8), arch_kwargs={"hidden": 32})  # fmt: skip


def test_protocol_mode_times_each_setting_and_measures_the_precision_agreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """smoke-digits with one quickly trained MLP target (in the demo's place) and an MLP surrogate."""
    weights = Path(os.environ["TRANSFERBENCH_HOME"]) / "demo" / "targets" / "smoke-mlp.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in _mlp(128, 103).net.state_dict().items()}, str(weights))
    out = tmp_path / "protocol.json"
    args = _args("--device", "cpu", "--measure", "agreement", "--settings", "bf16", "fp32+det",
                 "--protocol", "smoke-digits", "--limit", "40", "--targets", "smoke-mlp",
                 "--surrogate", str(_surrogate(tmp_path / "sur")), "--metric-images", "8", "--quiet",
                 "--out", str(out))  # fmt: skip
    assert perf.run(args) == 0
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # set before any work, for the +det setting
    assert "agreement fp32+det vs fp32" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["settings"] == ["fp32", "bf16", "fp32+det"]  # agreement adds the fp32 reference
    runs = result["protocol"]["runs"]
    assert [r["setting"] for r in runs] == ["fp32", "bf16", "fp32+det"]
    assert all(r["n_images"] == 40 and r["cells"] == 18 and r["seconds"] > 0 for r in runs)
    assert runs[0]["extrapolated_full_s"] == pytest.approx(runs[0]["seconds"] * 599 / 40)
    base = get_protocol("smoke-digits")
    small = dataclasses.replace(base, targets=("smoke-mlp",), smoothness_images=8, similarity_images=8,
                                weight_sharpness=dataclasses.replace(base.weight_sharpness, images=8))  # fmt: skip
    assert runs[0]["protocol_sha256"] == runs[1]["protocol_sha256"] == small.sha256  # --targets, --metric-images
    agreement, det = result["protocol"]["agreement"]
    assert (det["other"], det["other_deterministic"], det["max_abs_diff_points"]) == ("fp32", True, 0)  # on a CPU
    assert agreement["other_deterministic"] is False
    assert all(c["flipped_outcomes"] == 0 for c in det["cells"].values())
    assert (agreement["reference"], agreement["other"], agreement["n_images"]) == ("fp32", "bf16", 40)
    assert len(agreement["cells"]) == 18 and set(agreement["target_clean_accuracy_diff_points"]) == {"smoke-mlp"}
    worst = max(c["max_abs_diff_points"] for c in agreement["cells"].values() if c["max_abs_diff_points"] is not None)
    assert agreement["max_abs_diff_points"] == worst and agreement["within_half_point"] == (worst <= 0.5)
    assert all(
        0 <= c["flipped_outcomes"] <= 1 and c["points_per_image"] >= 100 / 40 for c in agreement["cells"].values()
    )


def test_agreement_of_a_record_with_itself_is_exact_and_other_images_are_refused(tmp_path: Path) -> None:
    base = get_protocol("smoke-digits")
    proto = dataclasses.replace(base, attacks=base.attacks[:1], eps_255=(32,), smoothness_images=8,
                                similarity_images=8, weight_sharpness=WeightSharpnessSpec(8, 2, 1e-3, 2))  # fmt: skip
    folder = _surrogate(tmp_path / "sur")
    targets = {n: LoadedTarget(n, _mlp(48, 10 + i), f"{i:064x}", "test", "smoke") for i, n in enumerate(base.targets)}
    data = load_digits_smoke()
    a = evaluate(load_surrogate(folder), proto, data, targets, limit=20, progress=False)
    agreement = perf.precision_agreement(a, a)
    assert agreement["max_abs_diff_points"] == 0 and agreement["within_half_point"]
    assert all(c["flipped_outcomes"] == 0 for c in agreement["cells"].values())
    b = evaluate(load_surrogate(folder), proto, data, targets, limit=30, progress=False)
    with pytest.raises(ValueError, match="same protocol and images"):
        perf.precision_agreement(a, b)
