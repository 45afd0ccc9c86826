"""Input-Hessian smoothness (Zhang et al., Def. 1) checked against exact Hessians of tiny models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import rng
from bench.metrics.smoothness import (
    SmoothnessResult,
    hessian_vector_product,
    init_vectors,
    input_hessian_top_eigenvalue,
    smoothness,
)


def _tanh_bn_net() -> nn.Module:
    """Smooth net with an eval-mode BatchNorm whose running statistics are not the identity. Input 1x4x4."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 4))
    with torch.no_grad():
        net[2].running_mean.uniform_(-0.3, 0.3)
        net[2].running_var.uniform_(0.5, 2.0)
        net[2].weight.uniform_(0.5, 1.5)
        net[2].bias.uniform_(-0.2, 0.2)
    return net.eval()


def _relu_net() -> nn.Module:
    """Piecewise-linear logits: the input Hessian comes from the softmax alone. Input 2x3x3."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()


class _Quadratic(nn.Module):
    """Two logits (s(x), 0) with s = c/2 * ||x||^2: the CE Hessian has a closed form (see the test)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0.5 * self.c * x.flatten(1).pow(2).sum(dim=1)  # (B,)
        return torch.stack([s, torch.zeros_like(s)], dim=1)  # (B, 2)


class _Constant(nn.Module):
    """Logits that ignore the input: gradient and Hessian are zero."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.1, 0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1)  # (B, 3)


MODELS = {"tanh_bn": (_tanh_bn_net, (1, 4, 4), 4), "relu": (_relu_net, (2, 3, 3), 3)}


def _data(shape: tuple[int, ...], classes: int, n: int, dtype: torch.dtype = torch.float64, seed: int = 2):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen, dtype=dtype), torch.randint(0, classes, (n,), generator=gen)


def _exact_hessians(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Per-image (D, D) Hessians of the single-image CE loss, by torch.autograd.functional.hessian."""
    out = []
    for xi, yi in zip(x, y, strict=True):
        h = torch.autograd.functional.hessian(lambda z, yi=yi: F.cross_entropy(model(z[None]), yi[None]), xi)
        out.append(h.reshape(xi.numel(), xi.numel()))
    return out


def _dominant(h: torch.Tensor) -> tuple[float, float]:
    """Signed eigenvalue of largest magnitude, and |lambda_2| / |lambda_1| (the power-iteration rate)."""
    ev = torch.linalg.eigh(h).eigenvalues
    mags = ev.abs().sort(descending=True).values
    return float(ev[ev.abs().argmax()]), float(mags[1] / mags[0])


def test_hvp_matches_exact_hessian_blocks_with_eval_batchnorm() -> None:
    model = _tanh_bn_net().double()
    x, y = _data((1, 4, 4), 4, n=5)
    v = torch.randn_like(x)
    hv = hessian_vector_product(model, x, y, v)  # (5, 1, 4, 4)
    for i, h in enumerate(_exact_hessians(model, x, y)):
        torch.testing.assert_close(hv[i].flatten(), h @ v[i].flatten(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_top_eigenvalue_matches_exact_hessian(name: str) -> None:
    make, shape, classes = MODELS[name]
    model = make().double()
    x, y = _data(shape, classes, n=6)
    result = input_hessian_top_eigenvalue(model, x, y, iters=500, tol=1e-12)
    assert result.converged.all()
    for i, h in enumerate(_exact_hessians(model, x, y)):
        expected, rate = _dominant(h)
        assert rate < 0.95, "test data must have a well-separated dominant eigenvalue"
        assert result.eigenvalues[i].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_settings_are_accurate_in_float32(name: str) -> None:
    make, shape, classes = MODELS[name]
    model = make()
    x, y = _data(shape, classes, n=6)
    exact = [_dominant(h)[0] for h in _exact_hessians(copy.deepcopy(model).double(), x, y)]
    result = smoothness(model, x.float(), y)  # iters=20, tol=1e-3, float32
    torch.testing.assert_close(result.eigenvalues, torch.tensor(exact, dtype=torch.float32), rtol=5e-3, atol=0)
    assert result.n_converged >= 4  # tanh_bn: two images with |lambda_2 / lambda_1| > 0.7 need about 30 iterations
    for value, ok, e in zip(result.eigenvalues.tolist(), result.converged.tolist(), exact, strict=True):
        if ok:  # the flag's guarantee: within tol (relative) of an eigenvalue, here the dominant one
            assert value == pytest.approx(e, rel=1e-3)


@pytest.mark.parametrize(("label", "sign"), [(0, -1.0), (1, 1.0)])
def test_signed_eigenvalue_matches_closed_form(label: int, sign: float) -> None:
    # CE with logits (s, 0): label 1 gives softplus(s), label 0 softplus(-s). With p = sigmoid(s), q = 1 - p:
    # H = p q c^2 x x^T + c p I (label 1) and H = p q c^2 x x^T - c q I (label 0). For label 0 and small x the
    # dominant eigenvalue is -c q (directions orthogonal to x); for label 1 it is c p + p q c^2 ||x||^2 along x.
    c = 2.0
    x = 0.3 * _data((1, 3, 3), 2, n=4)[0]
    y = torch.full((4,), label)
    s = 0.5 * c * x.flatten(1).pow(2).sum(1)
    p, q, r2 = torch.sigmoid(s), torch.sigmoid(-s), x.flatten(1).pow(2).sum(1)
    expected = -c * q if label == 0 else c * p + p * q * c**2 * r2
    result = input_hessian_top_eigenvalue(_Quadratic(c).eval(), x, y, iters=300, tol=1e-12)
    assert (torch.sign(result.eigenvalues) == sign).all()
    torch.testing.assert_close(result.eigenvalues, expected.float(), rtol=1e-6, atol=0)


def test_result_does_not_depend_on_batch_when_ids_are_given() -> None:
    model = _tanh_bn_net()
    x, y = _data((1, 4, 4), 4, n=7, dtype=torch.float32)
    ids = torch.tensor([11, 3, 42, 7, 0, 99, 5])
    whole = smoothness(model, x, y, ids=ids, batch_size=7, tol=1e-5, iters=100)
    batched = smoothness(model, x, y, ids=ids, batch_size=3, tol=1e-5, iters=100)
    torch.testing.assert_close(batched.eigenvalues, whole.eigenvalues, rtol=1e-5, atol=0)
    for i in range(7):
        alone = smoothness(model, x[i : i + 1], y[i : i + 1], ids=ids[i : i + 1], tol=1e-5, iters=100)
        torch.testing.assert_close(alone.eigenvalues, whole.eigenvalues[i : i + 1], rtol=1e-5, atol=0)
        assert alone.converged.item() == whole.converged[i].item()


def test_default_init_is_the_rng_stream_of_arange_ids() -> None:
    model = _relu_net()
    x, y = _data((2, 3, 3), 3, n=4, dtype=torch.float32)
    init = rng.uniform(seed=0, stream="smoothness_init", ids=torch.arange(4), step=0, n=18) - 0.5
    torch.testing.assert_close(init_vectors(torch.arange(4), x), init.reshape(x.shape))
    default = input_hessian_top_eigenvalue(model, x, y, iters=3, tol=0.0)
    explicit = input_hessian_top_eigenvalue(model, x, y, iters=3, tol=0.0, init=init.reshape(x.shape))
    assert torch.equal(default.eigenvalues, explicit.eigenvalues)


def test_iteration_count_and_convergence_flags() -> None:
    model = _tanh_bn_net()
    x, y = _data((1, 4, 4), 4, n=5, dtype=torch.float32)
    loose = input_hessian_top_eigenvalue(model, x, y, tol=1e9)  # any residual passes: done after one product
    assert loose.iterations == 1 and loose.n_converged == 5
    one = input_hessian_top_eigenvalue(model, x, y, iters=1)
    assert one.iterations == 1 and one.n_converged == 0
    strict = input_hessian_top_eigenvalue(model, x, y, iters=3, tol=0.0)
    assert strict.iterations == 3 and strict.n_converged < 5
    assert strict.eigenvalues.dtype == torch.float32 and strict.eigenvalues.device.type == "cpu"


def test_a_stalled_rayleigh_quotient_is_not_taken_for_convergence() -> None:
    """Eigenvalues +1 and -1 of equal magnitude: the Rayleigh quotient stays at 0 from one iteration to the next
    (a test on its change would pass at once), but the residual ||Hv - lambda v|| shows v is no eigenvector."""
    from bench.metrics.smoothness import _power_step

    h = torch.diag(torch.tensor([1.0, -1.0, 0.1], dtype=torch.float64))
    v = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64) / math.sqrt(2)  # (1, 3)
    lam, converged, idx = (
        torch.full((1,), math.nan, dtype=torch.float64),
        torch.zeros(1, dtype=torch.bool),
        torch.arange(1),
    )
    for _ in range(5):
        _power_step(v, v @ h, lam, converged, idx, 1e-3)
        assert lam.item() == pytest.approx(0.0, abs=1e-12) and not converged.item()
    v = torch.tensor([[1.0, 1e-4, 1e-4]], dtype=torch.float64)  # nearly the top eigenvector: residual ~1.4e-4
    v = v / v.norm()
    _power_step(v, v @ h, lam, converged, idx, 1e-3)
    assert converged.item() and lam.item() == pytest.approx(1.0, rel=1e-6)
    # the legacy rule of the protocols defined before the residual one passes the stalled quotient at once
    v = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64) / math.sqrt(2)
    lam, converged = torch.full((1,), math.nan, dtype=torch.float64), torch.zeros(1, dtype=torch.bool)
    for _ in range(2):
        _power_step(v, v @ h, lam, converged, idx, 1e-3, "rayleigh-change")
    assert converged.item() and lam.item() == pytest.approx(0.0, abs=1e-12)  # 0 is no eigenvalue of h


def test_the_legacy_stop_rule_compares_successive_quotients() -> None:
    model = _tanh_bn_net()
    x, y = _data((1, 4, 4), 4, n=5, dtype=torch.float32)
    loose = input_hessian_top_eigenvalue(model, x, y, tol=1e9, stop="rayleigh-change")
    assert loose.iterations == 2 and loose.n_converged == 5  # the first change exists at iteration 2
    with pytest.raises(ValueError, match="stop must be one of"):
        smoothness(model, x, y, stop="never")


def test_zero_hessian_gives_zero_eigenvalue_converged_at_once() -> None:
    x, y = _data((1, 2, 2), 3, n=3, dtype=torch.float32)
    result = input_hessian_top_eigenvalue(_Constant().eval(), x, y)
    assert result.iterations == 1 and result.converged.all()
    assert torch.equal(result.eigenvalues, torch.zeros(3))


def test_train_mode_raises() -> None:
    model = _tanh_bn_net()
    x, y = _data((1, 4, 4), 4, n=2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        input_hessian_top_eigenvalue(model.train(), x, y)
    model.eval()
    model[2].train()  # a BatchNorm left in train mode inside an eval model couples the batch just the same
    with pytest.raises(ValueError, match="submodule '2'"):
        smoothness(model, x, y)
    with pytest.raises(ValueError, match="training mode"):
        hessian_vector_product(model, x, y, torch.ones_like(x))


def test_no_side_effects_and_works_under_no_grad() -> None:
    model = _relu_net()
    x, y = _data((2, 3, 3), 3, n=3, dtype=torch.float32)
    with torch.no_grad():
        result = smoothness(model, x, y)
    assert result.n_converged == 3
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_name_the_problem() -> None:
    model = _relu_net()
    x, y = _data((2, 3, 3), 3, n=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="labels must have shape"):
        smoothness(model, x, y[:2])
    with pytest.raises(ValueError, match="init must have the shape"):
        input_hessian_top_eigenvalue(model, x, y, init=torch.ones(3, 18))
    with pytest.raises(ValueError, match="iters must be a positive int"):
        input_hessian_top_eigenvalue(model, x, y, iters=0)
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        smoothness(model, x, y, ids=torch.arange(2))


def test_result_properties_and_empty_set() -> None:
    result = SmoothnessResult(torch.tensor([1.0, -3.0, 2.0]), torch.tensor([True, False, True]), 4)
    assert result.mean == pytest.approx(0.0) and result.max == 2.0 and result.n_converged == 2
    empty = smoothness(_relu_net(), torch.empty(0, 2, 3, 3), torch.empty(0, dtype=torch.long))
    assert empty.eigenvalues.shape == (0,) and empty.iterations == 0 and math.isnan(empty.mean)


def test_the_magnitude_value_is_the_spectral_norm() -> None:
    result = SmoothnessResult(torch.tensor([1.0, -3.0, 2.0]), torch.tensor([True, False, True]), 4)
    magnitude = result.reported("magnitude")
    assert magnitude.eigenvalues.tolist() == [1.0, 3.0, 2.0] and magnitude.max == 3.0
    assert magnitude.mean == pytest.approx(2.0) and magnitude.n_converged == 2 and magnitude.iterations == 4
    assert result.reported("signed").eigenvalues.tolist() == [1.0, -3.0, 2.0]
    with pytest.raises(ValueError, match="smoothness value must be one of"):
        result.reported("absolute")


def test_the_studys_jacobian_spectrum_is_the_exact_hessian_spectrum_of_a_relu_net() -> None:
    """scripts/metric_study.py takes ``A^(1/2) J J^T A^(1/2)`` as the exact reference for ReLU networks."""
    study = _metric_study()
    model = _relu_net().double()
    x, y = _data((2, 3, 3), 3, n=5)
    spectrum = study.exact_spectrum(copy.deepcopy(model), x, y)  # (5, 3) descending
    for i, h in enumerate(_exact_hessians(model, x, y)):
        full = torch.linalg.eigvalsh(h).flip(0)  # (18,) descending: 3 at most non-zero
        torch.testing.assert_close(spectrum[i], full[:3], rtol=1e-9, atol=1e-12)
        assert full[3:].abs().max() < 1e-12


def test_the_studys_full_hessian_is_autograds_and_its_extremes_keep_the_sign() -> None:
    """scripts/metric_study.py's reference for smooth activations (forward-over-reverse) = autograd's Hessian."""
    study = _metric_study()
    model = _tanh_bn_net()
    x, y = _data((1, 4, 4), 4, n=3)
    for i, h in enumerate(_exact_hessians(model.double(), x.double(), y)):
        got = study.exact_hessian(model, x[i], y[i], chunk=5)  # chunks that do not divide d = 16
        torch.testing.assert_close(got, h, rtol=1e-9, atol=1e-12)
    top_magnitude, top, ratio = study.hessian_extremes(torch.diag(torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64)))
    assert (top_magnitude, top, ratio) == (-4.0, 2.0, 0.5)


def _metric_study():  # type: ignore[no-untyped-def]
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "metric_study.py"
    spec = importlib.util.spec_from_file_location("metric_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


@pytest.mark.slow
def test_the_metric_studies_run_on_a_real_resnet(shared_cifar, shared_weights, tmp_path, monkeypatch) -> None:
    import json
    import sys

    study = _metric_study()
    common = ["--weights-dir", str(shared_weights), "--data-dir", str(shared_cifar), "--images", "10",
              "--models", "akamaster-resnet20"]  # fmt: skip
    runs = {"smoothness": ["--iters", "20"], "trace": ["--probes", "3"], "hessian": ["--iters", "20"]}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.json"
        # the exact float64 Hessian of ResNet-20 costs about half a minute per image on two cores: one image
        args = [*common, *extra] if name != "hessian" else [*common[:4], "--images", "1", *common[6:], *extra]
        monkeypatch.setattr(sys, "argv", ["metric_study.py", name, *args, "--out", str(out)])
        study.main()
        result = json.loads(out.read_text())
        rows = result["rows"]
        assert len(rows) == (1 if name == "trace" else len(study.STOP_RULES))
        if name == "smoothness":  # a ReLU ResNet: 20 iterations give the mean to well under 1 %
            assert all(r["mean_rel_error"] < 1e-2 and r["n_flagged_converged"] >= 8 for r in rows), rows
        elif name == "hessian":  # the full Hessian's top eigenvalue is the Jacobian spectrum's (a ReLU net)
            smooth = json.loads((tmp_path / "smoothness.json").read_text())
            jacobian = dict(zip(smooth["images"], smooth["per_image"]["akamaster-resnet20"]["exact"], strict=True))
            top = result["per_image"]["akamaster-resnet20"]["largest_magnitude"]
            assert top == pytest.approx([jacobian[i] for i in result["images"]], rel=1e-8)
            assert all(r["n_exact_negative"] == 0 and r["n_sign_wrong"] == 0 for r in rows), rows
        else:
            assert rows[0]["trace"] > 0 and len(rows[0]["samples"]) == 3
