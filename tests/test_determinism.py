"""Deterministic mode: matrix resampling equals F.interpolate, and no attack, metric, recipe or registered
architecture dispatches an op that lacks a deterministic CUDA kernel (checked on the CPU, where the dispatched
ops are those of a GPU, attention kernels aside)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_cifar_model
from torch import nn

from bench.attacks import ATTACKS, LinfBudget
from bench.attacks.parts import DiverseInputs
from bench.determinism import (
    CUBLAS_WORKSPACE_CONFIG,
    DeterminismError,
    audit_ops,
    check_deterministic,
    cuda_nondeterministic_ops,
    deterministic_algorithms,
    deterministic_error,
)
from bench.metrics.sharpness import hessian_top_eigenvalue
from bench.metrics.similarity import gradient_similarity_many
from bench.metrics.smoothness import hessian_vector_product, smoothness
from bench.models import ARCHS, build_model
from bench.resample import resize, resize_matrix
from surrogates.recipes import RECIPES


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    xg = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xg), y), xg)


MODES = [("nearest", False), ("bilinear", False), ("bicubic", False), ("bilinear", True), ("bicubic", True)]


@pytest.mark.parametrize("mode,antialias", MODES)
@pytest.mark.parametrize("size", [(45, 45), (13, 13), (45, 20), (20, 45), (31, 31)])
def test_resize_equals_interpolate(mode: str, antialias: bool, size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, 31, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = {} if mode == "nearest" else {"align_corners": False, "antialias": antialias}
    ref = F.interpolate(x, size=size, mode=mode, **kw)
    assert (resize(x, size, mode, antialias) - ref).abs().max() < 1e-12
    assert (resize(x.float(), size, mode, antialias).double() - ref).abs().max() < 1e-5


def test_resize_ignores_a_bf16_autocast_region_and_refuses_unknown_modes() -> None:
    x = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = resize(x, (24, 24))
    assert out.dtype == torch.float32 and torch.allclose(out, resize(x, (24, 24)))
    with pytest.raises(ValueError, match="mode must be one of"):
        resize_matrix(4, 5, "area")


def test_the_audit_flags_interpolation_and_adaptive_pooling_but_not_their_replacements() -> None:
    x = torch.rand(2, 3, 8, 8, requires_grad=True)

    def backward(f) -> None:  # type: ignore[no-untyped-def]
        torch.autograd.grad(f(x).square().sum(), x)

    assert cuda_nondeterministic_ops(lambda: backward(lambda t: F.interpolate(t, size=(9, 9), mode="bilinear"))) == {
        "aten.upsample_bilinear2d_backward"
    }
    assert cuda_nondeterministic_ops(lambda: backward(lambda t: resize(t, (9, 9)))) == set()
    assert cuda_nondeterministic_ops(lambda: backward(lambda t: F.adaptive_avg_pool2d(t, 2))) == {
        "aten._adaptive_avg_pool2d_backward"
    }
    assert "aten.mean" in audit_ops(lambda: backward(lambda t: F.adaptive_avg_pool2d(t, 1))).ops
    assert cuda_nondeterministic_ops(lambda: backward(lambda t: F.adaptive_avg_pool2d(t, 1))) == set()
    grid = torch.zeros(2, 8, 8, 2)
    assert cuda_nondeterministic_ops(lambda: backward(lambda t: F.grid_sample(t, grid, align_corners=False))) == {
        "aten.grid_sampler_2d_backward"
    }


def test_input_diversity_under_bf16_autocast_and_caches_built_in_inference_mode() -> None:
    x = torch.rand(2, 3, 12, 12)
    ids = torch.arange(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DiverseInputs(p=1.0, resize_rate=1.5)(x, ids, 0, 0)  # the resampling runs in float32 regardless
    assert out.dtype == torch.float32 and torch.equal(out, DiverseInputs(p=1.0, resize_rate=1.5)(x, ids, 0, 0))
    with torch.inference_mode():  # the first use of these sizes fills the caches here
        resize(torch.rand(1, 3, 11, 11), (17, 17))
        DiverseInputs(p=1.0, resize_rate=1.7)(torch.rand(2, 3, 11, 11), ids, 0, 0)
    xg = torch.rand(2, 3, 11, 11, requires_grad=True)
    (resize(xg, (17, 17)).sum() + DiverseInputs(p=1.0, resize_rate=1.7)(xg, ids, 0, 0).sum()).backward()
    assert xg.grad is not None


def test_resize_pad_cuts_off_an_image_larger_than_the_canvas() -> None:
    from bench.attacks.parts import resize_pad

    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    out = resize_pad(x, torch.tensor([12]), torch.tensor([1]), torch.tensor([2]), canvas=10)
    ref = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    expect = torch.zeros(1, 3, 10, 10, dtype=torch.float64)
    expect[..., 1:, 2:] = ref[..., :9, :8]
    assert (out - expect).abs().max() < 1e-12


def test_ops_that_raise_only_with_some_arguments_are_flagged_only_then() -> None:
    v, i = torch.rand(8), torch.tensor([0, 1, 1, 3])
    assert cuda_nondeterministic_ops(lambda: v.median()) == set()  # no indices
    assert cuda_nondeterministic_ops(lambda: v.median(dim=0)) == {"aten.median"}
    assert cuda_nondeterministic_ops(lambda: torch.bincount(i)) == set()
    assert cuda_nondeterministic_ops(lambda: torch.bincount(i, weights=torch.ones(4))) == {"aten.bincount"}
    logits, target = torch.rand(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    assert cuda_nondeterministic_ops(lambda: F.cross_entropy(logits, target, reduction="none")) == set()
    assert cuda_nondeterministic_ops(lambda: F.cross_entropy(logits, target)) == {"aten.nll_loss2d_forward"}
    assert cuda_nondeterministic_ops(lambda: F.cross_entropy(logits[:, :, 0, 0], target[:, 0, 0])) == set()
    src = torch.rand(4)
    assert cuda_nondeterministic_ops(lambda: torch.zeros(4).scatter_reduce(0, i, src, "sum")) == set()
    assert cuda_nondeterministic_ops(lambda: torch.ones(4).scatter_reduce(0, i, src, "prod")) == {"aten.scatter_reduce"}


def test_input_diversity_is_resize_pad_resize_and_deterministic() -> None:
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(4)
    out = DiverseInputs(p=1.0, resize_rate=1.1)(x, ids, step=3, seed=5)
    # the reference, image by image, from the draws DiverseInputs makes (bench.rng keyed by id and step)
    from bench import rng

    draws = rng.randint(5, "diversity", ids, 3, 3, 0, 1 << 30)
    canvas = 35
    for i in range(4):
        s = 32 + int(draws[i, 0]) % 3
        top, left = int(draws[i, 1]) % (canvas - s + 1), int(draws[i, 2]) % (canvas - s + 1)
        ref = F.interpolate(x[i : i + 1], size=(s, s), mode="bilinear", align_corners=False)
        ref = F.pad(ref, (left, canvas - s - left, top, canvas - s - top))
        ref = F.interpolate(ref, size=(32, 32), mode="bilinear", align_corners=False)
        assert (out[i : i + 1] - ref).abs().max() < 1e-12
    xg = x.float().requires_grad_(True)
    found = cuda_nondeterministic_ops(lambda: DiverseInputs(p=1.0)(xg, ids, 0, 0).sum().backward())
    assert found == set()


def test_input_diversity_in_float32_is_within_1e_6_of_exact_at_imagenet_size() -> None:
    x = torch.rand(3, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ids = torch.arange(3)
    exact = DiverseInputs(p=1.0)(x, ids, step=0, seed=0)  # float64: F.interpolate's to 1e-12 (test above)
    assert (DiverseInputs(p=1.0)(x.float(), ids, step=0, seed=0).double() - exact).abs().max() < 1e-6


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_every_registered_attack_is_free_of_nondeterministic_ops(attack: str) -> None:
    if attack == "autoattack":
        pytest.importorskip("torchattacks")
    model = tiny_cifar_model()
    x = torch.rand(2, 3, 32, 32)
    y = model(x).argmax(1)  # correctly classified, so that every attack runs its steps
    run = ATTACKS.get(attack)
    audit = audit_ops(
        lambda: run(model, x, y, LinfBudget(8 / 255), steps=2, targeted=False, ids=torch.arange(2), seed=0)
    )
    assert "aten.convolution_backward" in audit.ops  # the audit saw the backward passes
    assert audit.flagged == set()


def test_the_metrics_are_free_of_nondeterministic_ops() -> None:
    model, other = tiny_cifar_model(0), tiny_cifar_model(1)
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])

    def metrics() -> None:
        smoothness(model, x, y, iters=3)
        gradient_similarity_many(model, {"other": other}, x, y)
        hessian_top_eigenvalue(model, x, y, max_iters=2)

    assert cuda_nondeterministic_ops(metrics) == set()


def _arch_input(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name in ("small_cnn", "mlp"):
        return build_model(name, 10, (0.5,), (0.5,)).eval(), torch.rand(2, 1, 8, 8)
    return build_model(name, 10, (0.5,) * 3, (0.25,) * 3).eval(), torch.rand(2, 3, 32, 32)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_registered_architecture_is_free_of_nondeterministic_ops(name: str) -> None:
    model, x = _arch_input(name)
    y = torch.tensor([3, 4])

    def passes() -> None:
        _input_grad(model, x, y)
        hessian_vector_product(model, x, y, torch.ones_like(x))  # the smoothness metric's double backward

    assert cuda_nondeterministic_ops(passes) == set()


def test_deterministic_algorithms_switches_on_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)  # fmt: skip
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
        with pytest.raises(RuntimeError, match="does not have a deterministic implementation"):
            torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))  # refused on CPU too
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)  # fmt: skip
    assert after == before and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_algorithms():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # a user's own setting is kept
    with deterministic_algorithms(enabled=False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_pytorchs_refusal_becomes_an_error_naming_the_model_and_the_fix() -> None:
    with deterministic_algorithms(), pytest.raises(RuntimeError) as info:
        torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))
    err = deterministic_error(info.value, "target tv-odd")
    assert isinstance(err, DeterminismError)
    assert "target tv-odd uses put_ (no deterministic CUDA kernel)" in str(err)
    assert "without --deterministic" in str(err)
    several = deterministic_error(RuntimeError("median CUDA with indices output does not have a deterministic "
                                               "implementation, but you set ..."), "surrogate s")  # fmt: skip
    assert "surrogate s uses median CUDA with indices output (no" in str(several)
    assert deterministic_error(RuntimeError("CUDA out of memory"), "x") is None
    assert deterministic_error(ValueError("does not have a deterministic implementation"), "x") is None


class _Upsampling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(40, 40), mode="bilinear").mean((2, 3))[:, :2]


def test_check_deterministic_names_a_model_with_such_an_op_and_passes_a_clean_one() -> None:
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    check_deterministic("surrogate clean", lambda: _input_grad(tiny_cifar_model(), x, y))
    with pytest.raises(DeterminismError, match=r"target odd uses aten\.upsample_bilinear2d_backward"):
        check_deterministic("target odd", lambda: _input_grad(_Upsampling(), x, y))
    with deterministic_algorithms(), pytest.raises(DeterminismError, match="surrogate bad uses put_"):
        check_deterministic("surrogate bad", lambda: torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0])))
    with pytest.raises(ZeroDivisionError):  # any other error passes through unchanged
        check_deterministic("surrogate odd", lambda: 1 / 0)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_training_recipe_is_free_of_nondeterministic_ops(recipe: str, tmp_path) -> None:
    from bench.data import load_digits_smoke
    from surrogates.recipes import train_recipe

    overrides = {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "crop_padding": 1, "hflip": True, "lr": 0.05,
                 **{"early-stopping": {"epochs": 2, "lr_milestones": "1"}, "lgv": {"lgv_epochs": 1, "lgv_per_epoch": 2},
                    "co": {"cutout_size": 3}}.get(recipe, {})}  # fmt: skip
    data = load_digits_smoke().subset(list(range(64)))

    def train() -> None:
        train_recipe(recipe, data, arch="small_cnn", arch_kwargs={"width": 4}, out_dir=tmp_path / recipe,
                     overrides=overrides)  # fmt: skip

    audit = audit_ops(train)
    assert "aten.convolution_backward" in audit.ops
    assert audit.flagged == set()
