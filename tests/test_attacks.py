"""Our attack loop against torchattacks on the same tiny model and inputs, plus its own invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from conftest import tiny_cifar_model

from bench.attacks import ATTACKS, BudgetViolation, DiverseInputs, LinfBudget, iterative_attack, run_attack
from bench.attacks.external import EXTERNAL_ATTACKS
from bench.attacks.parts import resize_pad

EPS = 8 / 255


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_cifar_model(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right, so untargeted success is meaningful
    return model, x, y


def _ids(n: int) -> torch.Tensor:
    return torch.arange(n)


def _assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    # The two libraries order x + alpha * sign(g) and the clamps differently: float rounding only.
    assert (ours - ref).abs().max().item() < 1e-7


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_without_random_start_equals_torchattacks(setup, targeted: bool) -> None:
    model, x, y = setup
    goal = (y + 1) % 10 if targeted else y
    ours = run_attack("pgd", model, x, goal, EPS, steps=10, targeted=targeted, ids=_ids(16), seed=0,
                      params={"random_start": False, "step_frac": 0.25})  # fmt: skip
    atk = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=10, random_start=False)
    if targeted:
        atk.set_mode_targeted_by_label(quiet=True)
    _assert_same(ours, atk(x, goal))


@pytest.mark.parametrize("targeted", [False, True])
def test_mifgsm_equals_torchattacks(setup, targeted: bool) -> None:
    model, x, y = setup
    goal = (y + 3) % 10 if targeted else y
    ours = run_attack("mifgsm", model, x, goal, EPS, steps=10, targeted=targeted, ids=_ids(16), seed=0)
    atk = torchattacks.MIFGSM(model, eps=EPS, alpha=EPS / 10, steps=10, decay=1.0)
    if targeted:
        atk.set_mode_targeted_by_label(quiet=True)
    _assert_same(ours, atk(x, goal))


def test_dim_without_diversity_equals_torchattacks_difgsm(setup) -> None:
    model, x, y = setup
    ours = run_attack("dim", model, x, y, EPS, steps=10, targeted=False, ids=_ids(16), seed=0, params={"p": 0.0})
    ref = torchattacks.DIFGSM(model, eps=EPS, alpha=EPS / 10, steps=10, decay=1.0, diversity_prob=0.0)(x, y)
    _assert_same(ours, ref)


def test_dim_success_matches_torchattacks_where_randomness_differs() -> None:
    """Different random draws (and torchattacks feeds the 35x35 canvas, we resize back): same success rate."""
    model = tiny_cifar_model(0)
    x = torch.rand(192, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    for eps in (2 / 255,):  # a small budget, where success is partial and differences would show
        ours = run_attack("dim", model, x, y, eps, steps=10, targeted=False, ids=_ids(192), seed=0)
        torch.manual_seed(0)
        ref = torchattacks.DIFGSM(model, eps=eps, alpha=eps / 10, steps=10, decay=1.0, resize_rate=1.1)(x, y)
        mi = run_attack("mifgsm", model, x, y, eps, steps=10, targeted=False, ids=_ids(192), seed=0)
        with torch.no_grad():
            rate = {k: (model(v).argmax(1) != y).float().mean().item() for k, v in
                    {"ours": ours, "ref": ref, "mi": mi}.items()}  # fmt: skip
        assert abs(rate["ours"] - rate["ref"]) <= 0.05, rate
        assert 0.02 < rate["ours"] < 0.98, rate  # not saturated, so the comparison means something
        assert rate["ours"] < rate["mi"], rate  # diversity trades white-box strength for transfer


# Attacks of peer libraries (AutoAttack) have their own tests (tests/test_autoattack.py): on an untrained model
# nothing is fooled, so Square would spend its 5,000 queries on every image here.
LOOP_ATTACKS = [n for n in ATTACKS if n not in EXTERNAL_ATTACKS]


@pytest.mark.parametrize("name", LOOP_ATTACKS)
@pytest.mark.parametrize("targeted", [False, True])
def test_every_attack_stays_in_budget_and_box(setup, name: str, targeted: bool) -> None:
    model, x, y = setup
    x = x.clone()
    x[:2] = 0.0  # images at the box corners exercise the [0, 1] clamp
    x[2:4] = 1.0
    x_adv = run_attack(name, model, x, y, EPS, steps=5, targeted=targeted, ids=_ids(16), seed=3)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any()


@pytest.mark.parametrize("name", LOOP_ATTACKS)
def test_attacks_increase_loss(setup, name: str) -> None:
    model, x, y = setup
    x_adv = run_attack(name, model, x, y, EPS, steps=10, targeted=False, ids=_ids(16), seed=0)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert (adv > clean).all()  # a random tiny model has flat logits: the increase is small but it is everywhere


@pytest.mark.parametrize("name", ["pgd", "dim"])
def test_randomness_is_keyed_by_image_id_not_batch(setup, name: str) -> None:
    """The same image gets the same x_adv whatever batch it is in (random start and diversity are per image)."""
    model, x, y = setup
    ids = torch.arange(100, 116)
    full = run_attack(name, model, x, y, EPS, steps=5, targeted=False, ids=ids, seed=7)
    halves = torch.cat([run_attack(name, model, x[s], y[s], EPS, steps=5, targeted=False, ids=ids[s], seed=7)
                        for s in (slice(0, 5), slice(5, 16))])  # fmt: skip
    assert (full - halves).abs().max() < 1e-6
    other_seed = run_attack(name, model, x, y, EPS, steps=5, targeted=False, ids=ids, seed=8)
    assert (full - other_seed).abs().max() > 1e-4


def test_random_start_fills_the_ball() -> None:
    model = tiny_cifar_model(0)
    x = torch.full((4, 3, 32, 32), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    x0 = iterative_attack(model, x, y, LinfBudget(EPS), steps=1, step_size=1e-9, random_start=True, seed=0)
    delta = (x0 - x).flatten()
    assert delta.abs().max() <= EPS + 1e-6
    assert delta.min() < -0.9 * EPS and delta.max() > 0.9 * EPS  # uniform over the whole ball
    assert abs(delta.mean().item()) < 0.05 * EPS


def test_resize_pad_equals_interpolate_then_pad() -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    size, top, left = torch.tensor([32, 33, 34]), torch.tensor([0, 1, 2]), torch.tensor([3, 0, 1])
    out = resize_pad(x, size, top, left, canvas=35)
    for i in range(3):
        s, t, l = int(size[i]), int(top[i]), int(left[i])  # noqa: E741
        ref = F.pad(F.interpolate(x[i : i + 1], size=(s, s), mode="bilinear", align_corners=False),
                    (l, 35 - s - l, t, 35 - s - t))  # fmt: skip
        assert (out[i : i + 1] - ref).abs().max() < 1e-5


def test_diverse_inputs_probability_and_shape() -> None:
    x = torch.rand(2000, 1, 8, 8)
    out = DiverseInputs(p=0.5, resize_rate=1.25)(x, torch.arange(2000), step=0, seed=0)
    assert out.shape == x.shape
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert 0.4 < changed < 0.6  # ~p of the images are transformed (a size-8 redraw can leave an image unchanged)


def test_diverse_inputs_refuses_a_silent_no_op() -> None:
    with pytest.raises(ValueError, match="unchanged"):
        DiverseInputs(p=0.5, resize_rate=1.1)(torch.rand(2, 1, 8, 8), torch.arange(2), step=0, seed=0)


def test_budget_check_catches_violations() -> None:
    x = torch.full((2, 3, 4, 4), 0.5)
    budget = LinfBudget(EPS)
    budget.check(budget.project(x + 1.0, x), x)  # the projection itself is always valid
    with pytest.raises(BudgetViolation, match="exceeds eps"):
        budget.check(x + 2 * EPS, x)
    with pytest.raises(BudgetViolation, match=r"\[0, 1\]"):
        budget.check(torch.full_like(x, 1.0 + 1e-3), torch.ones_like(x))
    with pytest.raises(BudgetViolation, match="NaN"):
        budget.check(torch.full_like(x, float("nan")), x)
    with pytest.raises(ValueError, match="eps"):
        LinfBudget(8.0)


def test_unknown_attack_suggests_a_name(setup) -> None:
    model, x, y = setup
    with pytest.raises(KeyError, match="Did you mean 'mifgsm'"):
        run_attack("mi-fgsm", model, x, y, EPS, steps=1, targeted=False, ids=_ids(16), seed=0)
