"""Gradient estimators: what gradient a step of the loop uses (a look-ahead, variance-tuned or penalized one).

Each estimator is called once per step with ``grad_fn`` (the objective's gradient at any point, one
evaluation per call), the current x_adv (B, C, H, W) and the step's ``StepContext``; it returns the gradient
that the gradient transform (momentum) then sees. ``evals(step, steps)`` declares how many evaluations it
makes, and the loop checks it.

Penalized estimators ascend J(x) - lam * ||grad J(x)||_2 (J: the attack objective; TPA penalizes the L1 norm
and uses a sign step, see its docstring), whose gradient
grad J - lam * H grad J / ||grad J||_2 needs a Hessian-vector product H v. They replace it by the finite
difference (grad J(x + h v) - grad J(x)) / h, which is exact as h -> 0 (tests check this by double backward).

Random neighbours come from ``bench.rng``'s ``neighbours`` stream: the draws are independent of every other
random choice and keyed by (seed, image id, step, neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench import rng
from bench.attacks.parts import GradFn, StepContext, per_image

NEIGHBOUR_STREAM = "neighbours"
NEIGHBOUR_ID_OFFSET = 0  # a stream of its own: no id offset needed
MAX_NEIGHBOURS = 1 << 12  # neighbour j of step t is keyed t * MAX_NEIGHBOURS + j


def neighbour(x_adv: torch.Tensor, radius: float, ctx: StepContext, j: int) -> torch.Tensor:
    """x_adv + u, u uniform in the L-inf ball of ``radius`` (not clipped to [0, 1], as in the papers).

    Keyed by (seed, image id, step, j): the same image gets the same neighbours in any batch.
    """
    if not 0 <= j < MAX_NEIGHBOURS:
        raise ValueError(f"neighbour index must lie in [0, {MAX_NEIGHBOURS}); got {j}")
    key = ctx.step * MAX_NEIGHBOURS + j
    u = rng.uniform(ctx.seed, NEIGHBOUR_STREAM, ctx.ids + NEIGHBOUR_ID_OFFSET, key, x_adv[0].numel())  # (B, D)
    u = u.to(device=x_adv.device, dtype=x_adv.dtype).view_as(x_adv)
    return x_adv + radius * (2 * u - 1)


def l2_direction(grad: torch.Tensor) -> torch.Tensor:
    """grad / ||grad||_2 per image: the unit vector of a Hessian-vector finite difference."""
    return grad / per_image(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def mean_abs_direction(grad: torch.Tensor) -> torch.Tensor:
    """grad / mean|grad| per image: a step of about one unit per pixel (the NI/PGN authors' normalization)."""
    return grad / per_image(grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12), grad)


def _count(value: float, name: str) -> int:
    """A sample count from a protocol (JSON may hold 20 or 20.0): a positive integer, or ValueError."""
    if value != int(value) or not 1 <= int(value) <= MAX_NEIGHBOURS:
        raise ValueError(f"{name} must be an integer in [1, {MAX_NEIGHBOURS}]; got {value!r}")
    return int(value)


def _non_negative(value: float, name: str) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")


@dataclass(frozen=True)
class Nesterov:
    """NI-FGSM look-ahead (Lin et al. 2020, Eq. 7): the gradient at x_t + alpha * mu * g_t.

    g_t is the accumulated momentum of the ``Momentum`` transform in the same loop. The look-ahead uses it in
    the normalization of the authors' code (each gradient divided by its *mean* absolute value, i.e. our
    L1-normalized momentum times the pixel count), so it reaches about one step ahead, as intended; with the
    L1 sum written in the paper it would move by alpha / D, i.e. nowhere.
    """

    mu: float = 1.0

    def __call__(self, grad_fn: GradFn, x_adv: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if ctx.step == 0:
            return grad_fn(x_adv)  # g_0 = 0: the look-ahead point is x_adv itself
        momentum = ctx.state.get("momentum")
        if momentum is None:
            raise ValueError("Nesterov reads the momentum of the Momentum grad transform: use it in the same loop")
        return grad_fn(x_adv + (ctx.step_size * self.mu * x_adv[0].numel()) * momentum)

    def evals(self, step: int, steps: int) -> int:
        return 1


@dataclass(frozen=True)
class VarianceTuning:
    """VMI-FGSM (Wang & He 2021, Eq. 4 and Alg. 1): use grad J(x_t) + v_t, with the gradient variance
    v_{t+1} = mean_i grad J(x_t + r_i) - grad J(x_t), r_i uniform in the beta * eps ball, i = 1..n.

    v_0 = 0, and the variance of the last step is never used, so it is not computed (no change in results).
    """

    n: int = 20
    beta: float = 1.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count(self.n, "VMI n"))
        _non_negative(self.beta, "VMI beta")

    def __call__(self, grad_fn: GradFn, x_adv: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        grad = grad_fn(x_adv)  # (B, C, H, W)
        variance = ctx.state.get("variance")
        tuned = grad if variance is None else grad + variance
        if ctx.step < ctx.steps - 1:
            total = torch.zeros_like(grad)
            for j in range(self.n):
                total += grad_fn(neighbour(x_adv, self.beta * ctx.eps, ctx, j))
            ctx.state["variance"] = total / self.n - grad
        return tuned

    def evals(self, step: int, steps: int) -> int:
        return 1 + self.n if step < steps - 1 else 1


@dataclass(frozen=True)
class PGN:
    """PGN (Ge et al. NeurIPS 2023, Alg. 1): penalized gradients averaged over n random neighbours.

    For each neighbour x' = x_t + u, u uniform in the zeta-ball (zeta = zeta_frac * eps): g' = grad J(x'),
    the predicted point x* = x' - alpha * g' / mean|g'| (alpha: the attack's step size; mean-|.| normalization
    as in the authors' code), g* = grad J(x*), and the estimate is mean over neighbours of
    (1 - delta) g' + delta g*. Since g' - g* ~ h H g'/||g'||_2 with h = ||x' - x*||_2, this is the gradient of
    J - delta * h * ||grad J||_2 (Eq. 10-11): a finite-difference gradient-norm penalty.
    delta = 0, zeta_frac = 0, n = 1 is exactly MI-FGSM's gradient.
    """

    n: int = 20
    delta: float = 0.5
    zeta_frac: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count(self.n, "PGN n"))
        _non_negative(self.delta, "PGN delta")
        _non_negative(self.zeta_frac, "PGN zeta_frac")

    def __call__(self, grad_fn: GradFn, x_adv: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        total: torch.Tensor | None = None
        for j in range(self.n):
            near = neighbour(x_adv, self.zeta_frac * ctx.eps, ctx, j)
            g = grad_fn(near)  # (B, C, H, W)
            if self.delta != 0:
                g_star = grad_fn(near - ctx.step_size * mean_abs_direction(g))
                g = (1 - self.delta) * g + self.delta * g_star
            total = g if total is None else total + g
        assert total is not None  # n >= 1
        return total / self.n

    def evals(self, step: int, steps: int) -> int:
        return 2 * self.n if self.delta != 0 else self.n


GNP_PAPER_DIM = 3 * 299 * 299  # the input size for which Wu et al. chose r = 0.01


@dataclass(frozen=True)
class GNP:
    """GNP (Wu, Luo & Wunsch, ICIP 2023): (1 + beta) grad J(x) - beta grad J(x + r g / ||g||_2), g = grad J(x).

    The gradient of J - lam ||grad J||_2 with the Hessian-vector product replaced by a forward difference of
    length r along g / ||g||_2, and beta = lam / r. beta = 0 is exactly MI-FGSM's gradient (one evaluation).

    ``r`` is an L2 length, so its per-pixel size is r / sqrt(d). ``r=None`` scales the paper's r = 0.01 on
    299 x 299 images to the input: ``0.01 * sqrt(d / GNP_PAPER_DIM)`` (0.00107 on 32 x 32 CIFAR-10). The
    unscaled 0.01 is ten times the paper's per-pixel step there, and on a confident CIFAR-10 model the
    curvature along g makes ||g(x + r v)|| > (1 + beta)/beta ||g(x)|| for most images, so the combined
    direction points downhill (white-box success 30% instead of MI-FGSM's 100% on a ResNet-20, eps 8/255).
    """

    r: float | None = None
    beta: float = 0.8

    def __post_init__(self) -> None:
        if self.r is not None and not self.r > 0:
            raise ValueError(f"GNP r (finite-difference length) must be > 0; got {self.r!r}")
        _non_negative(self.beta, "GNP beta")

    def length(self, x: torch.Tensor) -> float:
        """The finite-difference length for inputs like ``x``: ``r``, or the paper's scaled to their size."""
        return self.r if self.r is not None else 0.01 * (x[0].numel() / GNP_PAPER_DIM) ** 0.5

    def __call__(self, grad_fn: GradFn, x_adv: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        grad = grad_fn(x_adv)  # (B, C, H, W)
        if self.beta == 0:
            return grad
        ahead = grad_fn(x_adv + self.length(x_adv) * l2_direction(grad))
        return (1 + self.beta) * grad - self.beta * ahead

    def evals(self, step: int, steps: int) -> int:
        return 1 if self.beta == 0 else 2


@dataclass(frozen=True)
class TPA:
    """TPA, the flatness-aware attack of Fan et al. (arXiv 2311.06423, NeurIPS 2024; "FAA" in its v1; seed 001).

    The estimator of the authors' released code (``TAEFEP`` in fmy266/TPA)::

        (1 - alpha) g(x) + alpha / n * sum_i g(x_i - k sign(g(x_i))),   x_i = x + u_i,  u_i ~ U(-b, b)^d

    with g = grad J. To first order in k, g(x_i - k sign g_i) = g_i - k grad ||grad J(x_i)||_1, so the
    direction is the gradient of ``(1 - alpha) J(x) + alpha / n * sum_i [J(x_i) - k ||grad J(x_i)||_1]``: the
    loss averaged over a neighbourhood with a flatness penalty of weight alpha * k on the L1 norm of the
    gradient (the dual norm of the L-inf budget), the paper's regularizer (Eq. 5) with its Hessian-vector
    product replaced by a first-order difference (tests check the limit by double backward). alpha = 0 is
    exactly MI-FGSM's gradient (one evaluation). b and k are absolute, in [0, 1] pixel units.
    """

    alpha: float = 0.8
    b: float = 28.6 / 255
    k: float = 2.9 / 255
    n: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", _count(self.n, "TPA n"))
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"TPA alpha (weight of the neighbourhood term) must lie in [0, 1]; got {self.alpha!r}")
        _non_negative(self.b, "TPA b")
        if not self.k > 0:
            raise ValueError(f"TPA k (finite-difference step) must be > 0; got {self.k!r}")

    def __call__(self, grad_fn: GradFn, x_adv: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        # The centre gradient comes first (a gradient's draws, e.g. input diversity, are keyed by its call
        # index); with alpha = 1 its weight is 0 and it is not evaluated.
        grad = grad_fn(x_adv) if self.alpha < 1 else None  # (B, C, H, W)
        if self.alpha == 0:
            return grad
        ahead = torch.zeros_like(x_adv)  # sum_i g(x_i - k sign g_i)
        for j in range(self.n):
            near = neighbour(x_adv, self.b, ctx, j)
            ahead += grad_fn(near - self.k * grad_fn(near).sign())
        if grad is None:
            return ahead / self.n
        return (1 - self.alpha) * grad + (self.alpha / self.n) * ahead

    def evals(self, step: int, steps: int) -> int:
        if self.alpha == 0:
            return 1
        return 2 * self.n + (0 if self.alpha == 1 else 1)
