"""AutoAttack-crafted transfer examples (seed 002 Table 13): torchattacks' components in the standard composition."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchattacks
from conftest import trained_digits_model

from bench.attacks import ATTACKS, LinfBudget, attack_cost, run_attack
from bench.attacks.external import autoattack
from bench.data import load_digits_smoke
from bench.protocol import AttackSpec, get_protocol

EPS = 32 / 255


def _trained(seed: int, arch: str = "small_cnn", **kw: int) -> torch.nn.Module:
    return trained_digits_model(seed, arch, epochs=20, **kw)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = _trained(0, width=8)
    data = load_digits_smoke()
    x, y = data.images()[0:36:3], data.labels[0:36:3]
    with torch.no_grad():
        keep = model(x).argmax(1) == y  # images the model gets right, so every success is a real flip
    return model, x[keep], y[keep]


def test_with_ten_steps_it_is_torchattacks_autoattack_standard(setup, one_thread) -> None:
    """torchattacks' AutoAttack leaves APGD/FAB at 10 iterations: our composition with steps=10 is identical."""
    model, x, y = setup
    ours = autoattack(model, x, y, LinfBudget(EPS), steps=10, targeted=False, ids=torch.arange(len(y)), seed=5)
    ref = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=5)(x, y)
    assert torch.equal(ours, ref)


def test_in_budget_deterministic_and_leaves_the_global_generator_alone(setup, one_thread) -> None:
    model, x, y = setup
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = run_attack("autoattack", model, x, y, EPS, steps=20, targeted=False, ids=torch.arange(len(y)), seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = run_attack("autoattack", model, x, y, EPS, steps=20, targeted=False, ids=torch.arange(len(y)), seed=0)
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= EPS + 1e-6 and a.min() >= 0 and a.max() <= 1


def test_it_fools_at_least_as_many_images_as_pgd(setup, one_thread) -> None:
    """An ensemble that only replaces images its earlier stages failed on cannot do worse than its APGD-CE stage,
    and on an undefended model it should match or beat 10-step PGD."""
    model, x, y = setup
    ids = torch.arange(len(y))
    aa = run_attack("autoattack", model, x, y, 16 / 255, steps=20, targeted=False, ids=ids, seed=0)
    pgd = run_attack("pgd", model, x, y, 16 / 255, steps=10, targeted=False, ids=ids, seed=0)
    with torch.no_grad():
        fooled_aa = (model(aa).argmax(1) != y).sum()
        fooled_pgd = (model(pgd).argmax(1) != y).sum()
    assert fooled_aa >= fooled_pgd and fooled_aa > 0


def test_refuses_targeted_mode_and_a_wrong_class_count(setup) -> None:
    model, x, y = setup
    with pytest.raises(ValueError, match="untargeted attack"):
        run_attack("autoattack", model, x, y, EPS, steps=10, targeted=True, ids=torch.arange(len(y)), seed=0)
    with pytest.raises(ValueError, match="configured for 100 classes but the model gives 10"):
        run_attack("autoattack", model, x, y, EPS, steps=10, targeted=False, ids=torch.arange(len(y)), seed=0,
                   params={"num_classes": 100})  # fmt: skip


def test_cost_is_the_gradient_bound_of_the_standard_composition() -> None:
    assert "autoattack" in ATTACKS
    assert attack_cost("autoattack", 100, {"num_classes": 10}) == 101 * (1 + 2 * 9)
    assert attack_cost("autoattack", 100) == attack_cost("autoattack", 100, {"num_classes": 10})
    assert attack_cost("autoattack", 100, {"num_classes": 1000}) == attack_cost("autoattack", 100)  # 9 targets
    assert attack_cost("autoattack", 100, {"num_classes": 3}) == 101 * (1 + 2 * 2)


def test_targeted_stages_attack_nine_classes_as_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchattacks defaults APGD-T/FAB-T to all K-1 classes; with K=20 we must set the original's 9."""
    seen = []
    real = torchattacks.MultiAttack

    def spy(parts):  # type: ignore[no-untyped-def]
        seen.extend(getattr(p, "n_target_classes", None) for p in parts)
        return real(parts)

    monkeypatch.setattr(torchattacks, "MultiAttack", spy)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 20)).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    run_attack("autoattack", model, x, torch.tensor([0, 1]), EPS, steps=1, targeted=False, ids=torch.arange(2), seed=0)
    assert seen == [None, 9, 9, None]


def test_an_autoattack_cell_runs_through_the_runner(one_thread) -> None:
    """A protocol cell names it by registry key like any other attack; the record carries its cost bound."""
    from bench.runner import evaluate
    from surrogates.submission import Surrogate, SurrogateConfig
    from targets.zoo import LoadedTarget

    proto = dataclasses.replace(
        get_protocol("smoke-digits"),
        name="smoke-digits-aa",
        attacks=(AttackSpec("autoattack", steps=5, params=(("num_classes", 10),)),),
        modes=("untargeted",),
        eps_255=(32,),
        ranking_cell="autoattack/linf-32/untargeted",
        weight_sharpness=None,
        targets=("smoke-mlp",),
    )
    model = _trained(1, width=8)
    model.num_classes = 10  # what load_surrogate sets from config.json
    cfg = SurrogateConfig(kind="single", architecture="small_cnn", num_classes=10, input_size=(1, 8, 8),
                          arch_kwargs={"width": 8})  # fmt: skip
    sur = Surrogate(name="s", kind="single", sha256="0" * 64, config=cfg, runs=[model], run_names=["s"],
                    member_sha256={}, source="test")  # fmt: skip
    targets = {"smoke-mlp": LoadedTarget("smoke-mlp", _trained(2, "mlp", hidden=16), "1" * 64, "t", "smoke")}
    rec = evaluate(sur, proto, load_digits_smoke(), targets, limit=40, progress=False)
    cell = rec.runs[0]["cells"]["autoattack/linf-32/untargeted"]
    assert cell["gradient_evals_per_image"] == 6 * (1 + 2 * 9)
    assert cell["fooling_rate"]["n"] > 0 and cell["fooling_rate"]["rate"] > 0.5
