"""Gradient similarity (Zhang et al., Def. 2): closed-form cases, a per-image reference, and NaN handling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.metrics.similarity import (
    SimilarityResult,
    cosine_per_image,
    gradient_cosine,
    gradient_similarity,
    gradient_similarity_many,
    input_gradient,
)


def _cnn(seed: int, act: type[nn.Module] = nn.GELU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 2), nn.BatchNorm2d(4), act(), nn.Flatten(), nn.Linear(16, 5)
    ).eval()  # input 2x3x3, 5 classes


def _binary_linear(w0: torch.Tensor, w1: torch.Tensor, bias: tuple[float, float]) -> nn.Module:
    """Two-class linear model on flattened 2x3x3 inputs with class weight vectors w0, w1."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([w0, w1]))
        model[1].bias.copy_(torch.tensor(bias))
    return model.eval()


class _ThresholdNet(nn.Module):
    """Logits of relu(x - 0.5): an image with every pixel below 0.5 has an exactly zero input gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.head = nn.Linear(18, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(x.flatten(1) - 0.5))  # (B, 5)


class _Constant(nn.Module):
    """Logits that ignore the input entirely."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1, 1, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1)  # (B, 5)


def _data(n: int, classes: int = 5, dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, 3, 3, generator=gen, dtype=dtype), torch.randint(0, classes, (n,), generator=gen)


def _reference_cosines(f: nn.Module, g: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One image at a time: cos(grad_x CE_f, grad_x CE_g) with plain autograd on a (1, C, H, W) input."""
    out = []
    for i in range(x.shape[0]):
        grads = []
        for model in (f, g):
            xi = x[i : i + 1].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)
            grads.append(grad.flatten())
        out.append(F.cosine_similarity(grads[0], grads[1], dim=0))
    return torch.stack(out)


def test_model_with_itself_has_cosine_one() -> None:
    x, y = _data(8)
    result = gradient_similarity(_cnn(0), _cnn(0), x, y)
    torch.testing.assert_close(result.cosines, torch.ones(8), rtol=0, atol=1e-6)
    assert result.n_valid == 8


def test_input_gradient_is_per_image_and_has_no_side_effects() -> None:
    model = _cnn(0).double()
    x, y = _data(6, dtype=torch.float64)
    grad = input_gradient(model, x, y)
    for i in range(6):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)
        torch.testing.assert_close(grad[i : i + 1], ref, rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in model.parameters())


def test_matches_single_image_reference() -> None:
    f, g = _cnn(0).double(), _cnn(1, nn.ReLU).double()
    x, y = _data(10, dtype=torch.float64)
    cos = gradient_cosine(f, g, x, y)
    assert cos.dtype == torch.float32 and cos.shape == (10,) and cos.device.type == "cpu"
    torch.testing.assert_close(cos, _reference_cosines(f, g, x, y).float(), rtol=0, atol=1e-6)
    assert cos.abs().max() < 0.999, "the two models must actually disagree for this test to mean anything"


@pytest.mark.parametrize(("scale", "expected"), [(3.0, 1.0), (0.2, 1.0), (-1.5, -1.0)])
def test_two_class_linear_models_have_closed_form_cosine(scale: float, expected: float) -> None:
    # With two classes, p - e_y = (1 - p_y) (e_other - e_y), so grad_x CE = (1 - p_y) (w_other - w_y): its
    # direction is set by w_1 - w_0 alone. Scaling the weights by c (any bias) keeps it for c > 0, flips it for c < 0.
    torch.manual_seed(4)
    w0, w1 = torch.randn(18), torch.randn(18)
    target = _binary_linear(w0, w1, (0.1, -0.2))
    surrogate = _binary_linear(scale * w0, scale * w1, (0.7, 0.3))
    x, y = _data(6, classes=2)
    cos = gradient_cosine(surrogate, target, x, y)
    torch.testing.assert_close(cos, torch.full((6,), expected), rtol=0, atol=1e-6)


def test_two_class_linear_models_with_orthogonal_weight_gaps_have_cosine_zero() -> None:
    a, b = torch.zeros(18), torch.zeros(18)
    a[:9], b[9:] = torch.linspace(0.5, 2.0, 9), torch.linspace(-1.0, 1.5, 9)  # w_1 - w_0 = a resp. b, a . b = 0
    x, y = _data(6, classes=2)
    cos = gradient_cosine(_binary_linear(torch.zeros(18), a, (0, 0)), _binary_linear(torch.zeros(18), b, (0, 0)), x, y)
    torch.testing.assert_close(cos, torch.zeros(6), rtol=0, atol=1e-6)


def test_zero_gradient_gives_nan_excluded_from_aggregates() -> None:
    x, y = _data(6)
    x[[1, 4]] *= 0.45  # every pixel below 0.5: the threshold net's gradient is exactly zero there
    surrogate, target = _ThresholdNet().eval(), _cnn(2)
    result = gradient_similarity(surrogate, target, x, y, batch_size=4)
    nan = torch.isnan(result.cosines)
    assert nan.tolist() == [False, True, False, False, True, False]
    finite = result.cosines[~nan]
    assert result.n_valid == 4
    assert result.mean == pytest.approx(float(finite.mean())) and result.min == float(finite.min())
    reference = _reference_cosines(surrogate, target, x[~nan], y[~nan])
    torch.testing.assert_close(finite, reference, rtol=0, atol=1e-6)


def test_input_independent_target_is_all_nan() -> None:
    x, y = _data(3)
    result = gradient_similarity(_cnn(0), _Constant().eval(), x, y)
    assert torch.isnan(result.cosines).all() and result.n_valid == 0
    assert math.isnan(result.mean) and math.isnan(result.min)


def test_many_targets_equal_one_call_per_target() -> None:
    x, y = _data(9)
    surrogate = _cnn(0)
    targets = {"relu": _cnn(1, nn.ReLU), "gelu": _cnn(2), "threshold": _ThresholdNet().eval()}
    many = gradient_similarity_many(surrogate, targets, x, y, batch_size=4)
    assert list(many) == list(targets)
    for name, target in targets.items():
        single = gradient_similarity(surrogate, target, x, y, batch_size=4)
        assert torch.equal(many[name].cosines, single.cosines)


def test_batch_size_does_not_change_the_result() -> None:
    x, y = _data(11)
    f, g = _cnn(0), _cnn(1, nn.ReLU)
    whole = gradient_similarity(f, g, x, y)
    for batch_size in (1, 3, 5):
        torch.testing.assert_close(gradient_similarity(f, g, x, y, batch_size=batch_size).cosines, whole.cosines)


def test_train_mode_raises() -> None:
    x, y = _data(2)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        gradient_cosine(_cnn(0).train(), _cnn(1), x, y)
    target = _cnn(1)
    target[1].train()  # only the BatchNorm: still couples the images of a batch
    with pytest.raises(ValueError, match=r"submodule '1' \(BatchNorm2d\)"):
        gradient_similarity_many(_cnn(0), {"t": target}, x, y)


def test_bad_inputs_name_the_problem() -> None:
    x, y = _data(4)
    with pytest.raises(ValueError, match="labels must have shape"):
        gradient_similarity(_cnn(0), _cnn(1), x, y[:3])
    with pytest.raises(ValueError, match="integer tensor"):
        input_gradient(_cnn(0), x, y.float())
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        gradient_similarity(_cnn(0), _cnn(1), x, y, batch_size=0)


def test_result_aggregates_over_finite_values() -> None:
    result = SimilarityResult(torch.tensor([1.0, math.nan, -0.5, 0.25]))
    assert result.n_valid == 3
    assert result.mean == pytest.approx(0.25) and result.min == -0.5
    empty = gradient_similarity(_cnn(0), _cnn(1), torch.empty(0, 2, 3, 3), torch.empty(0, dtype=torch.long))
    assert empty.cosines.shape == (0,) and empty.n_valid == 0


def test_margin_cross_entropy_is_cross_entropy_with_a_float32_exact_gradient() -> None:
    """On confidently classified images (1 - p_y below float32's resolution) F.cross_entropy's input gradient
    loses its p_y - 1 term; the metrics' loss keeps it, matching a float64 reference."""
    from bench.metrics.similarity import margin_cross_entropy

    logits = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(margin_cross_entropy(logits, y), F.cross_entropy(logits, y, reduction="sum"))
    model = _cnn(3, nn.Tanh)
    with torch.no_grad():  # scale the head: logit margins of ~20-60, 1 - p_y from 1e-8 down to 1e-25
        model[-1].weight.mul_(200)
    x = torch.rand(12, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    # reference: J^T g in float64 with dCE/dz = p - e_y written as p_j (j != y) and -sum_{j != y} p_j at y
    x64 = x.double().requires_grad_(True)
    z = copy.deepcopy(model).double()(x64)
    p = z.detach().softmax(1)
    g = p.scatter(1, y[:, None], 0.0)
    g = g.scatter(1, y[:, None], -g.sum(1, keepdim=True))
    (reference,) = torch.autograd.grad(z, x64, grad_outputs=g)
    assert (1 - p.max(1).values < 6e-8).sum() >= 6  # confident beyond float32's resolution
    ours = input_gradient(model, x, y)
    assert cosine_per_image(ours, reference).min() > 1 - 1e-4  # (F.cosine_similarity's eps breaks at 1e-25)
    xg = x.clone().requires_grad_(True)  # what plain float32 cross-entropy gives on the same images
    (plain,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    assert cosine_per_image(plain, reference).min() < 0.9
