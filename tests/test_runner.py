"""End-to-end evaluation on the smoke protocol with quickly trained digits models, and on real CIFAR-10."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import trained_digits_model

from bench.checks import ModelCheckError
from bench.cli import main
from bench.data import load_cifar10, load_digits_smoke
from bench.determinism import CUBLAS_WORKSPACE_CONFIG, DeterminismError
from bench.metrics.asr import transfer_rates, unpack_bits
from bench.models import build_model
from bench.numerics import numerics_digest
from bench.protocol import get_protocol
from bench.runner import DEFAULT_BATCH_SIZE, EvaluationError, _check_deterministic, evaluate
from leaderboard.store import LocalStore
from surrogates.submission import load_surrogate, save_group, save_surrogate
from targets.zoo import LoadedTarget, load_target

PROTO = get_protocol("smoke-digits")
LIMIT = 60


def _trained(arch: str, seed: int, **kw: object) -> torch.nn.Module:
    return trained_digits_model(seed, arch, epochs=15, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("world")
    folders = {}
    for name, seed in (("sur-a", 1), ("sur-b", 2)):
        folders[name] = save_surrogate(_trained("small_cnn", seed, width=16), root / name, architecture="small_cnn",
                                       num_classes=10, mean=(0.5,), std=(0.5,), input_size=(1, 8, 8),
                                       arch_kwargs={"width": 16}, metadata={"recipe": "ST"})  # fmt: skip
    targets = {}
    for name, (arch, kw, seed) in {"smoke-cnn-a": ("small_cnn", {"width": 8}, 11), "smoke-cnn-b": ("small_cnn",
                                   {"width": 12}, 12), "smoke-mlp": ("mlp", {"hidden": 32}, 13)}.items():  # fmt: skip
        targets[name] = LoadedTarget(name, _trained(arch, seed, **kw), f"{seed:064x}", "test", "smoke")
    return {"folders": folders, "targets": targets, "root": root, "data": load_digits_smoke()}


def _evaluate(world, folder: Path, **kw):  # type: ignore[no-untyped-def]
    return evaluate(load_surrogate(folder), PROTO, world["data"], world["targets"], limit=LIMIT, progress=False, **kw)


def test_record_is_complete_and_rates_follow_from_the_bits(world) -> None:
    rec = _evaluate(world, world["folders"]["sur-a"])
    run = rec.runs[0]
    assert set(run["cells"]) == {c.key for c in PROTO.cells()}
    assert rec.data["partial"] is True and rec.data["n_images"] == LIMIT
    assert rec.protocol["sha256"] == PROTO.sha256
    assert rec.submission["config_sha256"] == load_surrogate(world["folders"]["sur-a"]).config_sha256
    assert 0.5 < run["clean_accuracy"] <= 1.0
    s_correct = unpack_bits(run["outcomes"]["clean_correct"], LIMIT)
    for key, cell in run["cells"].items():
        s_success = unpack_bits(run["outcomes"]["success"][key]["surrogate"], LIMIT)
        assert cell["fooling_rate"]["k"] == int((s_success & s_correct).sum())
        assert cell["gradient_evals_per_image"] == 10  # the core attacks: one gradient per step
        for t, rates in cell["targets"].items():
            t_correct = unpack_bits(rec.targets[t]["clean_correct"], LIMIT)
            t_success = unpack_bits(run["outcomes"]["success"][key][t], LIMIT)
            expect = transfer_rates(t_correct, t_success, s_correct, s_success)
            assert {d: r["k"] for d, r in rates.items()} == {d: r.k for d, r in expect.items()}
    assert run["smoothness"]["n"] == LIMIT and run["smoothness"]["mean"] > 0
    assert set(run["similarity"]) == set(world["targets"])
    assert all(-1 <= s["mean"] <= 1 for s in run["similarity"].values())
    for key in ("torch", "device", "precision", "seed", "git_sha", "wall_time_s", "package_version"):
        assert key in rec.provenance
    assert rec.provenance["numerics"] == numerics_digest(PROTO) is not None  # reproduced before the run
    assert rec.provenance["numerics_check"] == "reproduced"
    assert rec.score["mean"] == pytest.approx(
        np.mean([t["target_correct"]["rate"] for t in run["cells"][PROTO.ranking_cell]["targets"].values()])
    )


def _mean_asr(run: dict, cell: str) -> float:
    return float(np.mean([t["target_correct"]["rate"] for t in run["cells"][cell]["targets"].values()]))


def test_attacks_work_and_budgets_order_success(world) -> None:
    run = _evaluate(world, world["folders"]["sur-a"]).runs[0]
    lo, hi = min(PROTO.eps_255), max(PROTO.eps_255)
    for attack in ("pgd", "mifgsm", "dim"):
        wb_hi = run["cells"][f"{attack}/linf-{hi}/untargeted"]["fooling_rate"]["rate"]
        assert wb_hi > 0.9  # white-box at the largest budget nearly always succeeds
        mean = {e: _mean_asr(run, f"{attack}/linf-{e}/untargeted") for e in (lo, hi)}
        assert mean[hi] > mean[lo]


def test_evaluation_is_deterministic_and_batch_size_invariant(world) -> None:
    a = _evaluate(world, world["folders"]["sur-a"], batch_size=LIMIT)
    b = _evaluate(world, world["folders"]["sur-a"], batch_size=LIMIT)
    c = _evaluate(world, world["folders"]["sur-a"], batch_size=7)
    assert a.runs[0]["outcomes"] == b.runs[0]["outcomes"]
    bits = [np.concatenate([unpack_bits(v, LIMIT) for d in r.runs[0]["outcomes"]["success"].values()
                            for v in d.values()]) for r in (a, c)]  # fmt: skip
    assert (bits[0] == bits[1]).mean() > 0.995  # only float rounding of batched convolutions may differ


def test_deterministic_mode_is_recorded_restored_and_changes_nothing_on_a_cpu(world) -> None:
    default = _evaluate(world, world["folders"]["sur-a"], batch_size=LIMIT)
    det = _evaluate(world, world["folders"]["sur-a"], batch_size=LIMIT, deterministic=True)
    assert det.runs[0]["outcomes"] == default.runs[0]["outcomes"]
    assert det.provenance["math"]["deterministic_algorithms"] is True
    assert det.provenance["math"]["cublas_workspace_config"] == CUBLAS_WORKSPACE_CONFIG
    assert det.provenance["math"]["cudnn_benchmark"] is False
    assert default.provenance["math"]["deterministic_algorithms"] is False
    assert not torch.are_deterministic_algorithms_enabled()  # switched back off after the run
    auto = _evaluate(world, world["folders"]["sur-a"], deterministic=True)  # no batch size given: a fixed one
    assert auto.provenance["batch_size"] == min(DEFAULT_BATCH_SIZE, LIMIT)
    assert auto.provenance["batch_size_from_memory"] is False


def test_the_determinism_check_names_the_target_that_cannot_run_deterministically(world) -> None:
    class Upsampled(torch.nn.Module):  # a target that resizes its input with F.interpolate
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(F.interpolate(x, size=(12, 12), mode="bilinear")[..., 2:10, 2:10])

    sur = load_surrogate(world["folders"]["sur-a"])
    data = world["data"]
    x, y, ids = data.images()[:2], data.labels[:2], data.ids[:2]
    fine = {n: t.model for n, t in world["targets"].items()}
    _check_deterministic(sur.run_names, sur.runs, sur.runs, fine, PROTO, x, y, ids)
    odd = {**fine, "smoke-mlp": Upsampled(fine["smoke-mlp"])}
    with pytest.raises(DeterminismError, match=r"target smoke-mlp uses aten\.upsample_bilinear2d_backward"):
        _check_deterministic(sur.run_names, sur.runs, sur.runs, odd, PROTO, x, y, ids)


def test_seed_group_reports_mean_and_std(world) -> None:
    group = save_group(world["folders"], world["root"] / "group", kind="seed-group", metadata={"recipe": "ST"})
    rec = _evaluate(world, group)
    assert [r["name"] for r in rec.runs] == ["sur-a", "sur-b"]
    assert rec.score["std"] is not None and rec.score["mean"] == pytest.approx(np.mean(rec.score["per_run"]))
    ens = _evaluate(world, save_group(world["folders"], world["root"] / "ens", kind="ensemble"))
    assert len(ens.runs) == 1 and ens.submission["kind"] == "ensemble"


def test_wrong_num_classes_and_missing_targets_are_refused(world, tmp_path: Path) -> None:
    folder = save_surrogate(build_model("mlp", 5, (0.5,), (0.5,)), tmp_path / "five", architecture="mlp",
                            num_classes=5, mean=(0.5,), std=(0.5,), input_size=(1, 8, 8))  # fmt: skip
    with pytest.raises(EvaluationError, match="5 classes"):
        _evaluate(world, folder)
    with pytest.raises(EvaluationError, match="needs targets"):
        evaluate(load_surrogate(world["folders"]["sur-a"]), PROTO, world["data"], {}, limit=5, progress=False)


def test_nan_logits_fail_loudly_and_nothing_is_written(world, tmp_path: Path) -> None:
    model = _trained("small_cnn", 3, width=16)
    with torch.no_grad():
        model.net.head.bias.fill_(float("nan"))
    folder = save_surrogate(model, tmp_path / "broken", architecture="small_cnn", num_classes=10, mean=(0.5,),
                            std=(0.5,), input_size=(1, 8, 8), arch_kwargs={"width": 16})  # fmt: skip
    with pytest.raises(ModelCheckError, match="NaN"):
        _evaluate(world, folder)
    out = tmp_path / "board"
    assert main(["evaluate", str(folder), "--protocol", "smoke-digits", "--out", str(out), "--quiet"]) == 1
    assert not out.exists() or not any(out.rglob("*.json"))


def test_extra_targets_a_reserved_name_and_a_wrong_input_size_are_refused(world, tmp_path: Path) -> None:
    sur = load_surrogate(world["folders"]["sur-a"])
    one_more = {**world["targets"], "extra": world["targets"]["smoke-mlp"]}
    with pytest.raises(EvaluationError, match=r"not in smoke-digits.*--targets"):
        evaluate(sur, PROTO, world["data"], one_more, limit=5, progress=False)
    folder = save_surrogate(_trained("small_cnn", 4, width=16), tmp_path / "big", architecture="small_cnn",
                            num_classes=10, mean=(0.5,), std=(0.5,), input_size=(1, 16, 16),
                            arch_kwargs={"width": 16})  # fmt: skip
    with pytest.raises(EvaluationError, match=r"input_size \[1, 16, 16\].*\[1, 8, 8\]"):
        _evaluate(world, folder)
    ensemble = save_group({"m": folder}, tmp_path / "ens", kind="ensemble")  # the members' size counts too
    with pytest.raises(EvaluationError, match=r"input_size \[1, 16, 16\].*\[1, 8, 8\]"):
        _evaluate(world, ensemble)


def test_the_score_averages_the_protocols_targets_and_skips_undefined_rates(world, caplog) -> None:
    from bench.runner import score_of

    cell, asr = PROTO.ranking_cell, PROTO.ranking_asr
    run = {"name": "r", "cells": {cell: {"targets": {n: {asr: {"rate": 0.2 * (i + 1)}} for i, n in
                                                      enumerate(PROTO.targets)}}}}  # fmt: skip
    assert score_of(run, PROTO) == pytest.approx(0.4)
    run["cells"][cell]["targets"][PROTO.targets[2]][asr]["rate"] = None
    assert score_of(run, PROTO) == pytest.approx(0.3)
    assert "leaves out" in caplog.text
    del run["cells"][cell]["targets"][PROTO.targets[0]]
    with pytest.raises(EvaluationError, match=r"no .* result for targets"):
        score_of(run, PROTO)


def test_non_finite_metrics_fail_before_the_attack_grid(world, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.runner as runner

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the attack grid must not start")

    real = runner.smoothness

    def nan_smoothness(*args, **kwargs):  # type: ignore[no-untyped-def]
        res = real(*args, **kwargs)
        res.eigenvalues[1] = float("nan")
        return res

    monkeypatch.setattr(runner, "_craft_and_score", broken)
    monkeypatch.setattr(runner, "smoothness", nan_smoothness)
    with pytest.raises(EvaluationError, match=r"not finite on 1 image"):
        _evaluate(world, world["folders"]["sur-a"])


def test_a_target_with_infinite_input_gradients_is_an_error_not_a_dropped_image(world) -> None:
    from bench.metrics.similarity import gradient_similarity

    class SqrtInput(torch.nn.Module):  # finite logits, infinite gradient where a pixel is exactly 0
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.abs().sqrt())

    x = world["data"].images()[:8]
    y = world["data"].labels[:8]
    assert (x == 0).any()
    sur = load_surrogate(world["folders"]["sur-a"]).runs[0]
    with pytest.raises(ValueError, match=r"target .*non-finite input gradient"):
        gradient_similarity(sur, SqrtInput(world["targets"]["smoke-mlp"].model).eval(), x, y)


@pytest.mark.slow
def test_real_cifar10_external_resnets(shared_cifar: Path, shared_weights: Path, tmp_path: Path) -> None:
    """ResNet-20 (trained elsewhere) as surrogate against ResNet-32/44/56 on the JPEG CIFAR-10 copy."""
    proto = get_protocol("cifar10")
    sur = load_target("akamaster-resnet20", weights_dir=shared_weights)
    folder = save_surrogate(sur.model, tmp_path / "r20", architecture="cifar_resnet20", num_classes=10,
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # fmt: skip
    names = ("akamaster-resnet32", "akamaster-resnet44", "akamaster-resnet56")
    tg = {n: load_target(n, weights_dir=shared_weights) for n in names}
    sub = dataclasses.replace(proto, targets=names, attacks=proto.attacks[:1])  # PGD only: CPU time
    rec = evaluate(load_surrogate(folder), sub, load_cifar10("test", shared_cifar), tg, limit=100, progress=False)
    run = rec.runs[0]
    assert 0.7 < run["clean_accuracy"] < 0.95  # 81% on the JPEG copy over all 10,000 (class-balanced 100 here)
    cells = run["cells"]
    mean = {e: np.mean([t["target_correct"]["rate"] for t in cells[f"pgd/linf-{e}/untargeted"]["targets"].values()])
            for e in (4, 8, 16)}  # fmt: skip
    assert mean[4] < mean[8] < mean[16] and mean[16] > 0.7  # same-family transfer is strong
    assert cells["pgd/linf-8/untargeted"]["fooling_rate"]["rate"] > 0.95
    tgt = np.mean([t["target_correct"]["rate"] for t in cells["pgd/linf-16/targeted"]["targets"].values()])
    assert set(cells) == {f"pgd/linf-{e}/{m}" for e in (4, 8, 16) for m in ("untargeted", "targeted")}
    assert tgt < mean[16]  # targeted transfer is harder than untargeted
    assert all(s["mean"] > 0.1 for s in run["similarity"].values())  # same-family gradients align
    assert LocalStore(tmp_path / "lb").add(rec).is_file()


def test_weight_sharpness_is_in_every_run_and_matches_the_metric(world) -> None:
    """smoke-digits v2 pins seed 004's weight-space diagnostic; the record holds exactly what the metric gives."""
    from bench.metrics.sharpness import hessian_top_eigenvalue, hessian_trace
    from bench.runner import balanced_subset, select_images

    sur = load_surrogate(world["folders"]["sur-a"])
    rec = evaluate(sur, PROTO, world["data"], world["targets"], limit=LIMIT, progress=False)
    ws = rec.runs[0]["weight_sharpness"]
    spec = PROTO.weight_sharpness
    images = select_images(PROTO, world["data"], LIMIT)
    sub = balanced_subset(images.labels, spec.images, PROTO.num_classes)
    x, y = images.images()[sub], images.labels[sub]
    eig = hessian_top_eigenvalue(sur.runs[0], x, y, max_iters=spec.max_iters, tol=spec.tol, seed=spec.seed,
                                 batch_size=256)  # fmt: skip
    tr = hessian_trace(sur.runs[0], x, y, probes=spec.probes, seed=spec.seed, batch_size=256)
    assert ws["n"] == min(spec.images, LIMIT) and ws["probes"] == spec.probes
    assert ws["top_eigenvalue"] == pytest.approx(eig.value, rel=1e-4) and ws["top_eigenvalue"] > 0
    assert ws["trace"] == pytest.approx(tr.value, rel=1e-4) and ws["trace_stderr"] > 0


def test_a_parent_label_space_model_is_read_on_the_protocol_classes(world) -> None:
    """With a label space, a 20-class 'parent' target is restricted to its listed columns; other counts fail."""
    import dataclasses

    from bench.models.adapters import RestrictLogits
    from bench.protocol import LabelSpace
    from bench.runner import EvaluationError, adapt_to_protocol

    indices = tuple(range(19, 0, -2))  # protocol class k = parent class 19 - 2k
    proto = dataclasses.replace(PROTO, label_space=LabelSpace("toy-20", 20, indices))
    assert proto.sha256 != PROTO.sha256 and "label_space" in proto.to_json()
    assert "label_space" not in PROTO.to_json()  # absent optional fields keep older hashes

    base = world["targets"]["smoke-mlp"].model

    class Parent(torch.nn.Module):  # 20 logits whose listed columns are the 10-class model's
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.full((len(x), 20), -1e4)
            out[:, list(indices)] = base(x)
            return out

    adapted = adapt_to_protocol("parent", Parent(), 20, proto)
    assert isinstance(adapted, RestrictLogits)
    x = world["data"].images()[:16]
    assert torch.equal(adapted(x), base(x))
    assert adapt_to_protocol("same", base, 10, proto) is base
    with pytest.raises(EvaluationError, match=r"has 20 classes; smoke-digits-v2 accepts 10\b"):
        adapt_to_protocol("parent", Parent(), 20, PROTO)
    with pytest.raises(EvaluationError, match=r"accepts 10 or 20 \(toy-20\)"):
        adapt_to_protocol("odd", base, 7, proto)


def test_balanced_subset_balances_classes_and_fills_up_uneven_lists() -> None:
    from bench.runner import balanced_subset

    even = torch.arange(40) % 4  # 10 images of each of 4 classes, interleaved
    assert balanced_subset(even, 8, 4).tolist() == list(range(8))  # 2 per class: the first 8 of the list
    by_class = torch.arange(40) // 10  # the same list sorted by class: still 2 per class
    assert balanced_subset(by_class, 8, 4).tolist() == [0, 1, 10, 11, 20, 21, 30, 31]
    # 1,000 classes but 6 images, two of class 7: one per class leaves 5, the earliest unused image fills up
    uneven = torch.tensor([7, 3, 7, 900, 5, 1])
    assert balanced_subset(uneven, 6, 1000).tolist() == [0, 1, 2, 3, 4, 5]
    assert balanced_subset(uneven, 5, 1000).tolist() == [0, 1, 3, 4, 5]  # one per class: no fill-up needed
    assert balanced_subset(uneven, 100, 1000).tolist() == list(range(6))  # never more than the list holds
    skewed = torch.tensor([0] * 8 + [1, 2])  # classes 1 and 2 run short: class 0 takes their share
    assert balanced_subset(skewed, 6, 3).tolist() == [0, 1, 2, 3, 8, 9]
    for n in (5, 25, 37):  # not a multiple of K, on a list sorted by class: counts differ by at most one
        counts = torch.bincount(by_class[balanced_subset(by_class, n, 4)], minlength=4)
        assert counts.sum() == n and counts.max() - counts.min() <= 1, (n, counts.tolist())
    # deep fill-up goes round the classes too: class 0's third image only after class 1's second
    assert balanced_subset(torch.tensor([0, 0, 0, 1, 1]), 4, 2).tolist() == [0, 1, 3, 4]


def test_target_accuracy_is_checked_and_a_missing_pin_is_named_only_where_one_could_exist(caplog) -> None:
    from bench.runner import check_target_accuracy
    from targets.zoo import TARGETS, TargetError

    data_sha, expected = TARGETS.get("akamaster-resnet20").expected_accuracy[0]
    check_target_accuracy("akamaster-resnet20", data_sha, expected)  # as pinned: silent
    with pytest.raises(TargetError, match="the zoo pins"):
        check_target_accuracy("akamaster-resnet20", data_sha, expected - 0.05)
    assert caplog.text == ""
    check_target_accuracy("akamaster-resnet20", "0" * 64, 0.9)  # pinned weights, data without a pinned accuracy
    assert "akamaster-resnet20 has no pinned clean accuracy for data 000000000000" in caplog.text
    caplog.clear()
    check_target_accuracy("smoke-mlp", "0" * 64, 0.5)  # built locally: nothing could be pinned
    check_target_accuracy("not-a-zoo-entry", "0" * 64, 0.5)
    assert caplog.text == ""


@pytest.mark.parametrize("stop", [None, "residual"])
def test_the_runner_uses_the_protocols_smoothness_stop_rule(world, monkeypatch: pytest.MonkeyPatch, stop) -> None:
    import bench.runner as runner

    seen = []
    real = runner.smoothness

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["stop"])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "smoothness", spy)
    proto = dataclasses.replace(PROTO, smoothness_stop=stop)
    evaluate(load_surrogate(world["folders"]["sur-a"]), proto, world["data"], world["targets"], limit=10,
             progress=False)  # fmt: skip
    assert seen and set(seen) == {stop or "rayleigh-change"}


@pytest.mark.parametrize("value", [None, "magnitude"])
def test_the_runner_reports_the_protocols_smoothness_value(world, monkeypatch: pytest.MonkeyPatch, value) -> None:
    """A negative dominant eigenvalue (possible with smooth activations) enters the mean signed, or as |lambda|."""
    import bench.runner as runner
    from bench.metrics.smoothness import SmoothnessResult

    def negative(model, images, labels, **kwargs):  # type: ignore[no-untyped-def]
        n = len(labels)
        values = torch.where(torch.arange(n) % 2 == 0, -4.0, 2.0)
        return SmoothnessResult(values, torch.ones(n, dtype=torch.bool), 3)

    monkeypatch.setattr(runner, "smoothness", negative)
    proto = dataclasses.replace(PROTO, smoothness_value=value)
    record = evaluate(load_surrogate(world["folders"]["sur-a"]), proto, world["data"], world["targets"], limit=10,
                      progress=False)  # fmt: skip
    sm = record.runs[0]["smoothness"]
    if value is None:
        assert sm["max"] == 2.0 and sm["mean"] < 0
    else:
        assert sm["max"] == 4.0 and sm["mean"] > 2.0
    assert record.protocol["sha256"] == proto.sha256  # the hash names the rule: the field is in the canonical JSON
