"""Precision modes: what fp32 and bf16 mean for the model passes, the attack and the record."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import tiny_cifar_model, trained_digits_model

from bench.attacks import run_attack
from bench.checks import check_eval_mode
from bench.data import load_digits_smoke
from bench.models import build_model
from bench.precision import AtPrecision, check_precision, ieee_fp32, math_settings, prepare
from bench.protocol import WeightSharpnessSpec, get_protocol
from bench.runner import EvaluationError, evaluate
from surrogates.submission import load_surrogate, save_surrogate
from targets.zoo import LoadedTarget

EPS = 8 / 255
LIMIT = 32


@pytest.fixture(scope="module")
def cifar() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_cifar_model(0)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_unknown_precision_is_refused_with_the_choices() -> None:
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match=r"'fp16'.*fp32, bf16"):
        check_precision("fp16")
    with pytest.raises(ValueError, match="fp16"):
        AtPrecision(torch.nn.Identity(), "fp16")


def test_fp32_is_the_model_exactly_even_inside_a_callers_autocast(cifar) -> None:
    model, x, _ = cifar
    wrapped = AtPrecision(model, "fp32")
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(wrapped(x), ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(wrapped(x), ref)  # autocast switched off inside the wrapper


def test_bf16_runs_convolutions_in_bf16_and_keeps_logits_and_input_gradients_fp32(cifar) -> None:
    model, x, y = cifar
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        wrapped = AtPrecision(model, "bf16")
        point = x.clone().requires_grad_(True)
        logits = wrapped(point)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y, reduction="sum"), point)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]
    assert logits.dtype == torch.float32 and grad.dtype == torch.float32
    with torch.no_grad():
        ref = model(x)
    assert not torch.equal(logits.detach(), ref)  # bf16 rounding is there ...
    assert (logits.detach() - ref).abs().max() < 0.05 * ref.abs().max()  # ... and small


def test_bf16_attack_keeps_x_adv_in_fp32_inside_the_budget(cifar) -> None:
    model, x, y = cifar
    x = 0.1 + 0.8 * x  # no pixel within eps of the box, so every move is a whole number of steps
    fast = AtPrecision(model, "bf16")
    ids = torch.arange(len(x))
    kw = {"steps": 10, "targeted": False, "ids": ids, "seed": 0, "params": {"random_start": False}}
    x16 = run_attack("pgd", fast, x, y, EPS, **kw)
    x32 = run_attack("pgd", model, x, y, EPS, **kw)
    assert x16.dtype == torch.float32
    assert (x16 - x).abs().max() <= EPS + 1e-6 and x16.min() >= 0 and x16.max() <= 1
    # Steps of eps/4 taken and projected in fp32: every pixel moved by a whole number of steps.
    k = (x16 - x) / (EPS / 4)
    assert torch.allclose(k, k.round(), atol=1e-3) and k.abs().max().item() == pytest.approx(4, abs=1e-3)
    assert (x16 == x32).float().mean() > 0.5  # same attack; only the gradient's bf16 rounding differs


def test_channels_last_converts_weights_in_place_and_changes_only_rounding(cifar) -> None:
    model, x, y = cifar
    copy_ = copy.deepcopy(model)
    fast = prepare(copy_, "fp32", channels_last=True)
    conv = next(m for m in copy_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    point = x.clone().requires_grad_(True)
    (g_fast,) = torch.autograd.grad(torch.nn.functional.cross_entropy(fast(point), y, reduction="sum"), point)
    point = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(point), y, reduction="sum"), point)
    assert g_fast.shape == x.shape
    assert torch.allclose(g_fast, g_ref, rtol=1e-4, atol=1e-6)


def test_the_wrapper_follows_the_models_mode(cifar) -> None:
    model, _, _ = cifar
    check_eval_mode(AtPrecision(model, "bf16"))
    train_model = build_model("mlp", 10, (0.5,), (0.5,))  # a new module is in training mode
    with pytest.raises(ValueError, match="training mode"):
        check_eval_mode(AtPrecision(train_model, "fp32"))


def test_ieee_fp32_switches_tf32_off_and_restores_the_settings() -> None:
    before = math_settings()
    with ieee_fp32():
        inside = math_settings()
    assert math_settings() == before
    if "cudnn_conv_fp32_precision" in inside:
        assert inside["cudnn_conv_fp32_precision"] == inside["cuda_matmul_fp32_precision"] == "ieee"
        assert before["cudnn_conv_fp32_precision"] != "ieee"  # PyTorch's default allows TF32 for cuDNN convs
    else:
        assert inside["cudnn_allow_tf32"] is False and inside["cuda_matmul_allow_tf32"] is False
    with pytest.raises(KeyError), ieee_fp32():
        raise KeyError("inside")
    assert math_settings() == before  # restored on errors too


def test_math_settings_record_the_determinism_switches() -> None:
    settings = math_settings()
    assert settings["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert settings["cudnn_deterministic"] is bool(torch.backends.cudnn.deterministic)
    assert settings["cudnn_benchmark"] is bool(torch.backends.cudnn.benchmark)


def test_ieee_fp32_also_holds_onednn_cpu_math_at_float32() -> None:
    """After torch.set_float32_matmul_precision("medium") oneDNN would run CPU matmuls in bf16 where it can."""
    if not hasattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision"):
        pytest.skip("this torch has no per-backend fp32_precision settings")
    before, old = math_settings(), torch.get_float32_matmul_precision()
    backends = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.mkldnn.matmul,
                torch.backends.mkldnn.conv]  # fmt: skip
    saved = [b.fp32_precision for b in backends]
    torch.set_float32_matmul_precision("medium")
    try:
        lowered = math_settings()
        assert lowered["mkldnn_matmul_fp32_precision"] == "bf16"
        with ieee_fp32():
            inside = math_settings()
        assert inside["mkldnn_matmul_fp32_precision"] == inside["mkldnn_conv_fp32_precision"] == "ieee"
        assert math_settings() == lowered  # restored
    finally:  # the global switch rewrites the per-backend settings: put every one back for the other tests
        torch.set_float32_matmul_precision(old)
        for b, value in zip(backends, saved, strict=True):
            b.fp32_precision = value
    assert math_settings() == before


# --- the runner at another precision than the protocol's -------------------------------------------------------


def _mlp(seed: int, hidden: int) -> torch.nn.Module:
    return trained_digits_model(seed, "mlp", epochs=8, hidden=hidden)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The smoke protocol cut down to PGD at one budget, with small metric subsets, and quickly trained MLPs."""
    base = get_protocol("smoke-digits")
    proto = dataclasses.replace(
        base, attacks=base.attacks[:1], eps_255=(32,), smoothness_images=16, similarity_images=16,
        weight_sharpness=WeightSharpnessSpec(images=16, max_iters=3, tol=1e-3, probes=2),
    )  # fmt: skip
    folder = save_surrogate(_mlp(1, 32), tmp_path_factory.mktemp("sur") / "sur", architecture="mlp", num_classes=10,
                            mean=(0.5,), std=(0.5,), input_size=(1, 8, 8), arch_kwargs={"hidden": 32})  # fmt: skip
    targets = {n: LoadedTarget(n, _mlp(10 + i, 48), f"{i:064x}", "test", "smoke") for i, n in enumerate(base.targets)}
    return {"proto": proto, "folder": folder, "targets": targets, "data": load_digits_smoke()}


def _evaluate(world, **kw):  # type: ignore[no-untyped-def]
    return evaluate(load_surrogate(world["folder"]), world["proto"], world["data"], world["targets"], limit=LIMIT,
                    progress=False, batch_size=LIMIT, **kw)  # fmt: skip


def test_a_bf16_record_says_so_and_its_metrics_stay_fp32(world) -> None:
    ref, fast = _evaluate(world), _evaluate(world, precision="bf16")
    assert ref.provenance["precision"] == "fp32" and ref.provenance["precision_matches_protocol"] is True
    assert fast.provenance["precision"] == "bf16" and fast.provenance["protocol_precision"] == "fp32"
    assert fast.provenance["precision_matches_protocol"] is False
    assert fast.protocol["sha256"] == ref.protocol["sha256"] == world["proto"].sha256  # the protocol is unchanged
    for rec in (ref, fast):
        math = rec.provenance["math"]
        assert math.get("cudnn_conv_fp32_precision", "ieee") == "ieee" and math.get("cudnn_allow_tf32") is not True
    run_ref, run_fast = ref.runs[0], fast.runs[0]
    assert run_fast["smoothness"] == run_ref["smoothness"]  # second derivatives: fp32 whatever the attack runs in
    assert run_fast["similarity"] == run_ref["similarity"]
    assert run_fast["weight_sharpness"] == run_ref["weight_sharpness"]
    assert set(run_fast["cells"]) == set(run_ref["cells"])


def test_channels_last_is_recorded_and_unknown_precisions_are_refused(world) -> None:
    rec = _evaluate(world, channels_last=True)
    assert rec.provenance["channels_last"] is True and rec.provenance["precision_matches_protocol"] is True
    with pytest.raises(EvaluationError, match=r"unknown precision 'fp16'"):
        _evaluate(world, precision="fp16")
    with pytest.raises(EvaluationError, match="batch_size"):
        evaluate(load_surrogate(world["folder"]), world["proto"], world["data"], world["targets"], batch_size=0)
