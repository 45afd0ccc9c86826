"""Sharpness-aware minimization as an optimizer that wraps any base optimizer (Foret et al., ICLR 2021).

SAM minimizes ``max_{||e||_2 <= rho} L(w + e)`` (seed 002, Sec. 4.1.2). To first order the inner maximum is
at ``e = rho * g / ||g||_2`` with ``g = grad L(w)`` and ``||.||_2`` the global norm over all parameters
(Foret et al., Eq. 2); the update then applies the base optimizer to ``grad L(w + e)``, at ``w``. One step
is two forward/backward passes::

    loss(model(x)).backward(); opt.first_step()    # w <- w + e
    loss(model(x)).backward(); opt.second_step()   # w <- w, then base step with grad L(w + e)

``adaptive=True`` is ASAM (Kwon et al., ICML 2021), one of the sharpness-aware minimizers of seed 004
(Gubri et al.): the neighbourhood is scaled per weight by ``T_w = |w| + eta``, so that
``e = rho * T_w^2 g / ||T_w g||_2`` and ``||T_w^{-1} e||_2 = rho``. l-SAM (seed 004) is SAM with a large rho.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer


class SAM(Optimizer):
    """SAM / ASAM around ``base_optimizer(params, **base_kwargs)``; the two share their param groups.

    Learning-rate schedulers may be attached to ``sam.base_optimizer`` (whose ``step`` is the one called).
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: Callable[..., Optimizer],
        *,
        rho: float,
        adaptive: bool = False,
        eta: float = 0.01,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        if eta < 0:
            raise ValueError(f"ASAM eta must be >= 0, got {eta}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups: lr changes reach both
        self.defaults.update(self.base_optimizer.defaults)

    def _scale(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor | float:
        """ASAM's ``T_w`` for one tensor (1 for plain SAM)."""
        return p.detach().abs() + group["eta"] if group["adaptive"] else 1.0

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """``||T_w g||_2`` over every parameter with a gradient (``||g||_2`` for SAM)."""
        norms = [
            (self._scale(p, group) * p.grad).norm(2)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not norms:
            raise RuntimeError("SAM.first_step: no parameter has a gradient; call loss.backward() first")
        return torch.stack([n.to(norms[0].device) for n in norms]).norm(2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Ascent: move to ``w + e`` and remember ``w`` (restored exactly by :meth:`second_step`)."""
        norm = self.grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["w"] = p.detach().clone()
                t = self._scale(p, group)
                p.add_((t * t) * p.grad * scale.to(p.device))
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to ``w``, then let the base optimizer step with the gradient taken at ``w + e``."""
        for group in self.param_groups:
            for p in group["params"]:
                if "w" in self.state[p]:
                    p.copy_(self.state[p].pop("w"))
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(  # type: ignore[override]
        self, closure: Callable[[], torch.Tensor] | None = None, *, model: nn.Module | None = None
    ) -> torch.Tensor:
        """Both steps; ``closure`` must zero the gradients, compute the loss, call backward and return it.

        Pass the ``model`` so that its BatchNorm running statistics are updated by the first pass only
        (:func:`frozen_bn_stats` around the second); without it both passes update them, as in the reference
        implementation (davda54/sam), whose README leaves that to the caller.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss (or call first_step/second_step)")
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        with torch.enable_grad(), frozen_bn_stats(model) if model is not None else contextlib.nullcontext():
            closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (momentum buffers, ...); SAM keeps nothing between steps."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics stay as they are (momentum 0) during SAM's second pass.

    The second forward pass runs at the perturbed weights ``w + e``; its batch statistics describe a model that
    is never kept, so only the first pass (at ``w``) updates the running averages.
    """
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            tracked = m.num_batches_tracked
            saved[m] = (m.momentum, None if tracked is None else tracked.clone())
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in saved.items():
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)  # a cumulative average (momentum None) must not count it
