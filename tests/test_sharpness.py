"""Weight-space sharpness (seed 004): power iteration and Hutchinson against the exact Hessian of tiny models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bench.metrics.sharpness import hessian_top_eigenvalue, hessian_trace, weight_hvp

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tanh_net(seed: int = 0) -> nn.Module:
    """4 -> 3 -> 3 two-layer tanh network, 27 parameters, float64 (exact comparisons)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(P, P) Hessian of the mean CE w.r.t. the flattened parameters, by torch.autograd.functional.hessian."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = theta[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_hvp_matches_exact_hessian_and_ignores_batch_size() -> None:
    model, (x, y) = tanh_net(), batch()
    h = exact_hessian(model, x, y)
    v = [torch.randn_like(p) for p in model.parameters()]
    flat_v = torch.cat([t.flatten() for t in v])
    for batch_size in (None, 5):
        hv = torch.cat([t.flatten() for t in weight_hvp(model, x, y, v, batch_size=batch_size)])
        torch.testing.assert_close(hv, h @ flat_v, rtol=1e-10, atol=1e-12)


def test_top_eigenvalue_matches_exact() -> None:
    model, (x, y) = tanh_net(), batch()
    eigs = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    dominant = float(eigs[eigs.abs().argmax()])  # power iteration finds the largest magnitude
    assert dominant == float(eigs.max()), "test premise: the top eigenvalue dominates"
    est = hessian_top_eigenvalue(model, x, y, max_iters=2000, tol=1e-9, seed=0)
    assert est.converged and 1 < est.count <= 2000
    assert abs(est.value - dominant) <= 1e-3 * abs(dominant)


def test_top_eigenvalue_is_seeded_and_restores_mode() -> None:
    model, (x, y) = tanh_net(), batch()
    model.train()
    a = hessian_top_eigenvalue(model, x, y, max_iters=5, seed=3)
    b = hessian_top_eigenvalue(model, x, y, max_iters=5, seed=3)
    assert a == b and model.training


def test_hutchinson_trace_within_a_few_percent() -> None:
    model, (x, y) = tanh_net(), batch()
    h = exact_hessian(model, x, y)
    exact = float(torch.trace(h))
    # Rademacher probes: Var(z^T H z) = 2 * sum_{i != j} H_ij^2, so the expected error is known.
    sd = math.sqrt(2 * float((h**2).sum() - (torch.diagonal(h) ** 2).sum()) / 3000)
    est = hessian_trace(model, x, y, probes=3000, seed=0)
    assert est.count == 3000
    assert abs(est.value - exact) <= max(4 * sd, 1e-9)
    assert abs(est.value - exact) <= 0.05 * abs(exact)
    assert est.stderr == pytest.approx(sd, rel=0.2)


class Diagonal(nn.Module):
    """logits = w * x (elementwise): with the loss 0.5 * sum(logits^2) the weight Hessian is diag(sum_n x^2)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def test_hutchinson_exact_on_a_diagonal_hessian() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.int64)

    def quadratic(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return 0.5 * logits.pow(2).sum(1).mean()

    exact = float(x.pow(2).mean(0).sum())  # diag entries mean_n x_ni^2
    for seed in range(3):
        est = hessian_trace(Diagonal(), x, y, probes=1, seed=seed, loss_fn=quadratic)
        assert est.value == pytest.approx(exact, rel=1e-12)  # every Rademacher probe is exact: z_i^2 = 1


def test_bad_arguments() -> None:
    model, (x, y) = tanh_net(), batch()
    with pytest.raises(ValueError, match="probes"):
        hessian_trace(model, x, y, probes=0)
    with pytest.raises(ValueError, match="max_iters"):
        hessian_top_eigenvalue(model, x, y, max_iters=0)
