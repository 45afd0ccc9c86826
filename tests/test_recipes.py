"""Surrogate recipes: every registered recipe trains and saves, and each part does what its paper says."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import ImageSet, load_digits_smoke
from bench.models import build_model
from surrogates import load_surrogate
from surrogates import recipes as recipes_module
from surrogates.augment import (
    AdversarialExamples,
    apply_cutout,
    cutmix,
    cutout_boxes,
    mixup,
    one_hot_targets,
    random_crop_flip,
)
from surrogates.recipes import (
    GRIDS,
    RECIPES,
    ModelSpec,
    RecipeConfig,
    build_parts,
    configure,
    parse_overrides,
    seed_member,
    train_recipe,
    train_seeds,
)
from surrogates.regularizers import Objective, jacobian_sq_frobenius, penalty_form, smoothed_targets
from surrogates.sam import SAM, frozen_bn_stats
from surrogates.submission import SubmissionError
from surrogates.training import TrainConfig, lr_factor, train_classifier

# A few steps on CPU: 128 digits, batches of 64, one epoch; no flip (digits are not mirror-symmetric).
QUICK = {"epochs": 1, "batch_size": 64, "warmup_epochs": 0, "crop_padding": 1, "hflip": False, "lr": 0.05}
EXTRA = {
    "early-stopping": {"epochs": 3, "lr_milestones": "1,2"},
    "lgv": {"lgv_epochs": 1, "lgv_per_epoch": 2},
    "co": {"cutout_size": 3},  # M = 8 would blank an 8x8 digit
}
TINY_ARCH = ("small_cnn", {"width": 4})
LEARN = {"epochs": 15, "batch_size": 16, "lr": 0.1, "crop_padding": 0}  # enough steps to fit the 128 digits


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return load_digits_smoke().subset(list(range(128)))


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY_ARCH[0], 10, (0.3,), (0.4,), **TINY_ARCH[1])


def train_quick(name: str, data: ImageSet, out: Path, **overrides: object) -> Path:
    ov = {**QUICK, **EXTRA.get(name, {}), **overrides}
    return train_recipe(name, data, arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=out, overrides=ov)


# --- the registry -----------------------------------------------------------------------------------------


def test_registry_holds_every_method_of_the_seeds() -> None:
    expected = {"st", "at-l2", "at-linf", "mu", "cm", "co", "ls", "ir", "jr", "er", "sam", "sam-ir", "sam-jr",
                "l-sam", "asam", "early-stopping", "lgv"}  # fmt: skip
    assert expected <= set(RECIPES)


def test_defaults_are_seed_002_table_11() -> None:
    st = RECIPES.get("st").config
    assert (st.epochs, st.batch_size, st.lr, st.schedule, st.warmup_epochs) == (200, 128, 0.1, "cosine", 10)
    at = RECIPES.get("at-l2").config
    assert (at.at_norm, at.at_eps, at.at_steps, at.at_step_frac) == ("l2", 0.03, 10, 0.25)
    assert RECIPES.get("ir").config.lambda_ir == 0.5
    assert RECIPES.get("jr").config.lambda_jr == 1e-4
    assert RECIPES.get("er").config.lambda_er == 0.05
    assert RECIPES.get("sam").config.sam_rho == 0.1
    assert RECIPES.get("l-sam").config.sam_rho > 2 * RECIPES.get("sam").config.sam_rho
    assert GRIDS["at-l2"]["at_eps"] == (0.01, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)
    for name, grid in GRIDS.items():
        for key, values in grid.items():
            assert getattr(RECIPES.get(name).config, key) in values, (name, key)


def test_overrides_from_strings_and_errors() -> None:
    cfg = configure(
        "sam", {"sam-rho": "0.2", "epochs": "5", "warmup-epochs": "1", "hflip": "false", "lr_milestones": "3,4"}
    )
    assert (cfg.sam_rho, cfg.epochs, cfg.hflip, cfg.lr_milestones) == (0.2, 5, False, (3, 4))
    assert parse_overrides(["--sam-rho", "0.2", "--epochs=5"]) == {"sam_rho": "0.2", "epochs": "5"}
    with pytest.raises(ValueError, match="Did you mean sam_rho"):
        configure("sam", {"sam_roh": 1})
    with pytest.raises(ValueError, match="integer"):
        configure("st", {"epochs": 1.5})
    with pytest.raises(ValueError, match="mixup or CutMix"):
        RecipeConfig(mixup_p=0.5, cutmix_p=0.5)
    with pytest.raises(ValueError, match="at_eps"):
        RecipeConfig(at_norm="l2")
    with pytest.raises(ValueError, match="step schedule"):
        configure("early-stopping", {"schedule": "cosine"})
    with pytest.raises(ValueError, match=r"warm-up of 10 epochs leaves no cosine decay in a 5-epoch run"):
        configure("st", {"epochs": 5})  # Table 11's 10 warm-up epochs kept by a shortened run
    assert configure("st", {"epochs": 11}).warmup_epochs == 10 and configure("st", {"epochs": 5, "warmup_epochs": 0})
    with pytest.raises(ValueError, match=r"warm-up is part of the cosine schedule only; set warmup_epochs=0"):
        configure("sam", {"schedule": "step", "lr_milestones": "100"})  # sam's 10 warm-up epochs would be lost
    assert configure("sam", {"schedule": "step", "lr_milestones": "100", "warmup_epochs": 0}).schedule == "step"
    with pytest.raises(ValueError, match=r"milestone plus that must lie within epochs=100 \(milestones \(50, 100\)\)"):
        configure("early-stopping", {"epochs": 100})  # the second decay would leave no epoch after it


# --- every recipe trains and writes a loadable submission ---------------------------------------------------


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_writes_a_loadable_submission(name: str, digits: ImageSet, tmp_path: Path) -> None:
    out = train_quick(name, digits, tmp_path / name)
    sur = load_surrogate(out)
    meta = sur.config.metadata
    assert meta["recipe"] == name and meta["name"] == name
    cfg = configure(name, {**QUICK, **EXTRA.get(name, {})})
    assert meta["hyperparameters"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert 0.0 <= meta["final_train_accuracy"] <= 1.0 and meta["train_time_s"] >= 0
    assert meta["train_data"]["sha256"] == digits.content_sha256()
    assert sur.kind == ("ensemble" if name == "lgv" else "single")
    logits = sur.runs[0](digits.images()[:4])
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


def test_training_learns_and_is_seeded(digits: ImageSet, tmp_path: Path) -> None:
    a = train_quick("st", digits, tmp_path / "a", **LEARN)
    b = train_quick("st", digits, tmp_path / "b", **LEARN)
    assert load_surrogate(a).config.metadata["final_train_accuracy"] > 0.9
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_existing_output_is_not_overwritten(digits: ImageSet, tmp_path: Path) -> None:
    (tmp_path / "st").mkdir()
    with pytest.raises(FileExistsError):
        train_quick("st", digits, tmp_path / "st")


def test_train_seeds_writes_each_seeds_training_and_their_group(digits: ImageSet, tmp_path: Path) -> None:
    def seeds(out: Path, which: list[int], **overrides: object) -> Path:
        ov = {**QUICK, **overrides}
        return train_seeds("st", digits, which, arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=out, overrides=ov)

    group = seeds(tmp_path / "st", [0, 1])
    sur = load_surrogate(group)
    assert sur.kind == "seed-group" and sur.run_names == ["st-s0", "st-s1"]
    assert sur.config.metadata == {"name": "st", "recipe": "st"}
    s0, s1 = seed_member(group, 0), seed_member(group, 1)
    assert s1 == tmp_path / "st-s1" and load_surrogate(s1).config.metadata["hyperparameters"]["seed"] == 1
    alone = train_quick("st", digits, tmp_path / "alone", seed=1)  # a member is that seed's single training
    assert (s1 / "model.safetensors").read_bytes() == (alone / "model.safetensors").read_bytes()
    assert (group / "st-s1" / "model.safetensors").read_bytes() == (alone / "model.safetensors").read_bytes()
    assert (s0 / "model.safetensors").read_bytes() != (s1 / "model.safetensors").read_bytes()

    with pytest.raises(FileExistsError, match="st exists"):  # checked before any training
        seeds(group, [0, 1, 2])
    assert not seed_member(group, 2).exists()
    # Resuming: the group and seed 1 are gone, seed 0 is kept as it is and seed 2 is trained.
    shutil.rmtree(group), shutil.rmtree(s1)
    kept = (s0 / "model.safetensors").stat().st_mtime_ns
    group = seeds(tmp_path / "st", [0, 1, 2])
    assert (s0 / "model.safetensors").stat().st_mtime_ns == kept
    assert load_surrogate(group).run_names == ["st-s0", "st-s1", "st-s2"]
    assert (s1 / "model.safetensors").read_bytes() == (alone / "model.safetensors").read_bytes()
    # A member trained otherwise is never taken into the group.
    shutil.rmtree(group)
    with pytest.raises(FileExistsError, match=r"st-s0 exists but holds another training .*hyperparameter lr"):
        seeds(tmp_path / "st", [0, 1], lr=0.01)
    assert not group.exists()
    # Every member is checked before any seed trains: a bad last member does not cost the missing first seed.
    shutil.rmtree(s0)
    config = json.loads((s1 / "config.json").read_text())
    config["metadata"]["train_data"] = "digits, train split"  # free-form metadata: read as not recorded
    (s1 / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileExistsError, match=r"st-s1 exists but holds another training .*training data.*delete it"):
        seeds(tmp_path / "st", [0, 1])
    assert not s0.exists() and not group.exists()
    with pytest.raises(FileExistsError, match=r"differs in architecture"):
        train_seeds("st", digits, [0, 1], arch="cifar_resnet18", arch_kwargs={"width": 4}, out_dir=group,
                    overrides=QUICK)  # fmt: skip
    assert not group.exists()


def test_train_seeds_on_a_single_trained_checkpoint_says_how_to_make_it_a_member(digits: ImageSet,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    single = train_quick("st", digits, tmp_path / "st", seed=0)
    with pytest.raises(FileExistsError, match=r"st holds a single trained checkpoint, not a seed.*move it to st-s0"):
        train_seeds("st", digits, [0, 1], arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=single,
                    overrides=QUICK)  # fmt: skip
    single.rename(tmp_path / "st-s0")  # as the message says: it is then kept as seed 0's member
    kept = (tmp_path / "st-s0" / "model.safetensors").stat().st_mtime_ns
    group = train_seeds("st", digits, [0, 1], arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=tmp_path / "st",
                        overrides=QUICK)  # fmt: skip
    assert (tmp_path / "st-s0" / "model.safetensors").stat().st_mtime_ns == kept
    assert load_surrogate(group).run_names == ["st-s0", "st-s1"]


@pytest.mark.parametrize(
    ("recipe", "which", "overrides", "message"),
    [
        ("st", [0], {}, "two or more different seeds"),
        ("st", [1, 1], {}, "two or more different seeds"),
        ("st", [0, 1], {"seed": 3}, "with --seeds only"),
        ("lgv", [0, 1], {}, "LGV ensemble per training"),
        ("st", [0, 1], {"no_such": 1}, "unknown hyperparameter"),
        ("st", [0, -1], {}, r"seed must be an integer in \[0, 2\*\*63\): -1"),
        ("st", [0, 1.7], {}, r"seeds must be integers, got \[0, 1.7\]"),
    ],
)
def test_train_seeds_refuses_what_is_no_seed_group(
    recipe: str, which: list[int], overrides: dict[str, object], message: str, digits: ImageSet, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        train_seeds(recipe, digits, which, arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=tmp_path / "g",
                    overrides={**QUICK, **EXTRA.get(recipe, {}), **overrides})  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_train_seeds_resumes_early_stopping_members_and_refuses_incomplete_ones(digits: ImageSet,
                                                                                 tmp_path: Path) -> None:  # fmt: skip
    ov = {**QUICK, **EXTRA["early-stopping"]}

    def seeds(**kwargs: object) -> Path:
        return train_seeds("early-stopping", digits, [0, 1], arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1],
                           out_dir=tmp_path / "es", overrides=ov, **kwargs)  # type: ignore[arg-type]  # fmt: skip

    group = seeds()
    s1 = seed_member(group, 1)
    siblings = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("es-s1"))
    assert siblings == ["es-s1", "es-s1-epoch003", "es-s1-final"]  # the selected checkpoint and the others
    # Cut short after the siblings but before the selected checkpoint (written last): the rerun stops before
    # training anything (not even the missing seed 0), naming the half-written seed and what to delete.
    s0_weights = (seed_member(group, 0) / "model.safetensors").read_bytes()
    shutil.rmtree(group), shutil.rmtree(s1)
    for p in tmp_path.glob("es-s0*"):  # seed 0 never trained
        shutil.rmtree(p)
    with pytest.raises(FileExistsError, match="seed 1: es-s1-final, es-s1-epoch003 exist beside the missing member"):
        seeds()
    assert not seed_member(group, 0).exists()
    for p in tmp_path.glob("es-s1-*"):
        shutil.rmtree(p)
    group = seeds()
    assert load_surrogate(group).run_names == ["es-s0", "es-s1"]
    assert (seed_member(group, 0) / "model.safetensors").read_bytes() == s0_weights  # the same training again
    # A member whose weights file is damaged is never taken into a group.
    shutil.rmtree(group)
    weights = s1 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SubmissionError, match=r"es-s1 is not a complete submission .*delete it to train that seed"):
        seeds()
    assert not group.exists()
    before = (seed_member(group, 0) / "model.safetensors").stat().st_mtime_ns
    group = seeds(overwrite=True)  # every seed trained again, the damaged one repaired
    assert (seed_member(group, 0) / "model.safetensors").stat().st_mtime_ns != before
    assert load_surrogate(group).run_names == ["es-s0", "es-s1"]


# --- the demo's trainer is unchanged ------------------------------------------------------------------------


def reference_demo_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> None:
    """The demo's original trainer, inlined: the shared loop must reproduce it bit for bit."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * -(-len(y) // cfg.batch_size))
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            xb, yb = x[idx].clone().requires_grad_(cfg.input_grad_penalty > 0), y[idx]
            loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            if cfg.input_grad_penalty > 0:
                (gx,) = torch.autograd.grad(loss * len(idx), xb, create_graph=True)
                loss = loss + cfg.input_grad_penalty * gx.pow(2).flatten(1).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@pytest.mark.parametrize("penalty", [0.0, 0.5])
def test_train_classifier_reproduces_the_demo_trainer(digits: ImageSet, penalty: float) -> None:
    cfg = TrainConfig(epochs=2, seed=1, input_grad_penalty=penalty)
    x, y = digits.images(), digits.labels
    ours, ref = tiny_model(1), tiny_model(1)
    train_classifier(ours, x, y, cfg)
    reference_demo_loop(ref, x, y, cfg)
    assert not ours.training
    for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


# --- gradient penalties ---------------------------------------------------------------------------------------


def per_image_input_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, ...) gradient of each image's own CE, one image at a time (independent of the batch trick)."""
    grads = []
    for xi, yi in zip(x, y, strict=True):
        xi = xi[None].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), yi[None]), xi)
        grads.append(g[0])
    return torch.stack(grads)


def test_ir_term_is_lambda_times_squared_input_gradient_norm(digits: ImageSet) -> None:
    model, x, y = tiny_model().eval(), digits.images()[:8], digits.labels[:8]
    gen = torch.Generator().manual_seed(0)
    loss, logits = Objective(lambda_ir=0.5)(model, x, y, gen)
    ce = F.cross_entropy(logits, y)
    expected = 0.5 * per_image_input_grads(model, x, y).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(loss - ce, expected, rtol=1e-5, atol=1e-7)


def test_input_penalty_norm_is_seed_002s_plain_norm_for_ir_and_jr(digits: ImageSet) -> None:
    """``input_penalty="norm"``: lambda * mean ||g_i|| (Sec. 4.1.1's equations) in place of the squared norm."""
    model, x, y = tiny_model().eval(), digits.images()[:8], digits.labels[:8]
    loss, logits = Objective(lambda_ir=0.5, input_penalty="norm")(model, x, y, torch.Generator())
    expected = 0.5 * per_image_input_grads(model, x, y).flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(loss - F.cross_entropy(logits, y), expected, rtol=1e-5, atol=1e-7)
    net, xj = jr_net(), torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    yj = torch.tensor([0, 1, 2])
    loss, logits = Objective(lambda_jr=1e-2, input_penalty="norm")(net, xj, yj, torch.Generator().manual_seed(5))
    xg = xj.clone().requires_grad_(True)
    est = jacobian_sq_frobenius(xg, net(xg), 1, torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss - F.cross_entropy(logits, yj), 1e-2 * est.sqrt().mean())
    zero = torch.zeros(3, requires_grad=True)  # the root stays differentiable where a norm is exactly 0
    (g,) = torch.autograd.grad(penalty_form(zero, "norm").sum(), zero)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="input_penalty must be squared or norm"):
        configure("ir", {"input_penalty": "cubed"})


def test_ir_lowers_the_input_gradient_norm_vs_st(digits: ImageSet, tmp_path: Path) -> None:
    norms = {}
    for name in ("st", "ir"):
        out = train_quick(name, digits, tmp_path / name, **LEARN, **({"lambda_ir": 1.0} if name == "ir" else {}))
        model = load_surrogate(out).runs[0]
        norms[name] = per_image_input_grads(model, digits.images()[:32], digits.labels[:32]).flatten(1).norm(dim=1)
    assert norms["ir"].mean() < 0.8 * norms["st"].mean()  # measured: 0.65 vs 0.93


def jr_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()


def test_jr_projection_estimate_is_unbiased_for_the_frobenius_norm() -> None:
    model, x = jr_net(), torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = torch.stack([torch.autograd.functional.jacobian(model, xi).pow(2).sum() for xi in x])  # (3,)
    xg = x.clone().requires_grad_(True)
    n = 4000
    est = jacobian_sq_frobenius(xg, model(xg), n, torch.Generator().manual_seed(0), create_graph=False)
    torch.testing.assert_close(est, exact, rtol=0.05, atol=0)


def test_jr_term_uses_the_projection_estimate() -> None:
    model, x = jr_net(), torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    loss, logits = Objective(lambda_jr=1e-4, jr_projections=2)(model, x, y, torch.Generator().manual_seed(5))
    xg = x.clone().requires_grad_(True)
    est = jacobian_sq_frobenius(xg, model(xg), 2, torch.Generator().manual_seed(5))
    torch.testing.assert_close(loss - F.cross_entropy(logits, y), 1e-4 * est.mean())


def test_er_penalty_is_half_lambda_times_squared_weight_gradient_norm(digits: ImageSet) -> None:
    model, x, y = tiny_model().double(), digits.images()[:16].double(), digits.labels[:16]
    loss, logits = Objective(lambda_er=0.05)(model, x, y, torch.Generator())
    ce = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(ce, list(model.parameters()))
    expected = 0.5 * 0.05 * sum(g.pow(2).sum() for g in grads)
    torch.testing.assert_close(loss - F.cross_entropy(logits, y), expected, rtol=1e-5, atol=1e-9)


def test_label_smoothing_is_seed_002s_p_over_m_minus_1(digits: ImageSet) -> None:
    model, x, y = tiny_model(), digits.images()[:16], digits.labels[:16]
    cfg = configure("ls", {"label_smoothing": 0.3})
    objective = build_parts(cfg, model, steps_per_epoch=1, num_classes=10).objective
    loss, logits = objective(model, x, y, torch.Generator())
    logp = logits.log_softmax(1)
    true = logp.gather(1, y[:, None])[:, 0]
    manual = -(0.7 * true + 0.3 / 9 * (logp.sum(1) - true)).mean()  # 1 - p on the label, p/(m-1) on the others
    torch.testing.assert_close(loss, manual)
    assert not torch.allclose(loss, F.cross_entropy(logits, y, label_smoothing=0.3))  # torch spreads p/m
    t = smoothed_targets(y[:2], 10, 0.3)
    assert torch.allclose(t.sum(1), torch.ones(2)) and float(t.max()) == pytest.approx(0.7)
    assert float(t.min()) == pytest.approx(0.3 / 9)
    soft, _ = objective(model, x, one_hot_targets(y, 10), torch.Generator())  # mixed labels take the same path
    torch.testing.assert_close(soft, loss)
    mixed = 0.5 * one_hot_targets(y, 10) + 0.5 * one_hot_targets(y.roll(1), 10)
    assert torch.allclose(smoothed_targets(mixed, 10, 0.3).sum(1), torch.ones(16))


# --- SAM ------------------------------------------------------------------------------------------------------


def sam_setup(adaptive: bool = False, lr: float = 0.0) -> tuple[nn.Module, SAM, torch.Tensor, torch.Tensor]:
    model = jr_net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=lr)
    x = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return model, opt, x, torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(3))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_ascent_has_norm_rho_and_second_step_restores(adaptive: bool) -> None:
    model, opt, x, y = sam_setup(adaptive)
    w0 = flat(model)
    F.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    opt.first_step(zero_grad=True)
    e = flat(model) - w0
    t = w0.abs() + 0.01 if adaptive else torch.ones_like(w0)  # ASAM measures e in the metric T_w^-1
    assert float((e / t).norm()) == pytest.approx(0.1, rel=1e-9)
    expected_dir = t * t * g
    assert float(F.cosine_similarity(e, expected_dir, dim=0)) == pytest.approx(1.0, abs=1e-12)
    F.cross_entropy(model(x), y).backward()
    opt.second_step()  # base lr 0: exactly back at w
    assert torch.equal(flat(model), w0)


def test_asam_recipe_scales_weights_and_leaves_biases_at_plain_sam() -> None:
    model = jr_net()
    opt = build_parts(configure("asam"), model, steps_per_epoch=1, num_classes=4).optimizer
    assert isinstance(opt, SAM)
    named = dict(model.named_parameters())
    adaptive = {
        n for n, p in named.items() for g in opt.param_groups if g["adaptive"] and any(p is q for q in g["params"])
    }
    assert adaptive == {n for n in named if n.endswith("weight")} and any(n.endswith("bias") for n in named)
    w0 = {n: p.detach().clone() for n, p in named.items()}
    F.cross_entropy(model(torch.randn(8, 6, dtype=torch.float64)), torch.arange(8) % 4).backward()
    grads = {n: p.grad.detach().clone() for n, p in named.items()}
    opt.first_step(zero_grad=True)
    t = {n: (w0[n].abs() + 0.01 if n in adaptive else torch.ones_like(w0[n])) for n in named}
    e = {n: p.detach() - w0[n] for n, p in named.items()}
    assert float(torch.cat([(e[n] / t[n]).flatten() for n in named]).norm()) == pytest.approx(0.5, rel=1e-9)
    for n in named:  # e = rho T^2 g / ||T g||: the same factor for every tensor, T = 1 on biases
        ratio = e[n] / (t[n] ** 2 * grads[n])
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-6)


def test_sam_descends_with_the_gradient_at_the_perturbed_weights() -> None:
    model, opt, x, y = sam_setup(lr=0.5)
    w0 = flat(model)
    F.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    opt.first_step(zero_grad=True)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    g_adv = torch.cat([t.flatten() for t in grads])
    loss.backward()
    opt.second_step()
    torch.testing.assert_close(flat(model), w0 - 0.5 * g_adv)
    assert not torch.allclose(g_adv, g)


def test_sam_closure_step_and_frozen_bn_stats() -> None:
    model, opt, x, y = sam_setup(lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    w0 = flat(model)
    opt.step(closure)
    assert not torch.equal(flat(model), w0)
    bn = nn.BatchNorm1d(3).train()
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    with frozen_bn_stats(bn):
        bn(torch.randn(5, 3))
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert bn.momentum == 0.1


def test_sam_closure_step_with_the_model_updates_batchnorm_stats_once() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).train()
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    reference = copy.deepcopy(net)
    with torch.no_grad():
        reference(x)  # one forward pass at w: the statistics SAM's step should leave
    opt = SAM(net.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    opt.step(closure, model=net)
    bn, ref = net[1], reference[1]
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)


# --- augmentations ---------------------------------------------------------------------------------------------


def images(b: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.9 + 0.1  # no natural zeros


@pytest.mark.parametrize("fn", [mixup, cutmix])
def test_mixing_weights_sum_to_one_and_images_are_the_stated_mixtures(fn) -> None:  # type: ignore[no-untyped-def]
    x, y = images(), torch.arange(16) % 10
    t = one_hot_targets(y, 10)
    m = fn(x, t, p=1.0, alpha=1.0, gen=torch.Generator().manual_seed(4))
    assert m.perm is not None and 0.0 <= m.lam <= 1.0
    torch.testing.assert_close(m.targets.sum(1), torch.ones(16))
    torch.testing.assert_close(m.targets, m.lam * t + (1 - m.lam) * t[m.perm])
    if fn is mixup:
        torch.testing.assert_close(m.x, m.lam * x + (1 - m.lam) * x[m.perm])
    else:
        top, bottom, left, right = m.box
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(m.x[:, :, inside], x[m.perm][:, :, inside])
        assert torch.equal(m.x[:, :, ~inside], x[:, :, ~inside])
        assert m.lam == pytest.approx(1 - inside.sum().item() / 64)
    unmixed = fn(x, t, p=0.0, alpha=1.0, gen=torch.Generator())
    assert unmixed.perm is None and torch.equal(unmixed.x, x)


def test_cutout_zeros_exactly_an_m_by_m_square_clipped_at_the_borders() -> None:
    x, size = images(64), 4
    boxes = cutout_boxes(64, 8, 8, size, torch.Generator().manual_seed(0))
    out = apply_cutout(x, boxes)
    clipped = 0
    for img, (top, bottom, left, right) in zip(out, boxes.tolist(), strict=True):
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[top:bottom, left:right] = True
        assert torch.equal(img == 0, expected.expand(3, 8, 8))
        assert bottom - top <= size and right - left <= size
        full = (bottom - top, right - left) == (size, size)
        clipped += not full
        if not full:
            assert top == 0 or bottom == 8 or left == 0 or right == 8  # only the border shrinks it
    assert 0 < clipped < 64  # centres are uniform over the image, so some squares hang over the edge


def test_crop_and_flip_are_seeded_windows_of_the_padded_image() -> None:
    x = images(8)
    a = random_crop_flip(x, 2, True, torch.Generator().manual_seed(7))
    b = random_crop_flip(x, 2, True, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(8):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(2)) for w in windows)
    flips = random_crop_flip(x, 0, True, torch.Generator().manual_seed(1))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flips, x, strict=True))


@pytest.mark.parametrize(("norm", "eps"), [("l2", 0.5), ("linf", 8 / 255), ("l2", 0.03)])
def test_at_examples_stay_in_budget_and_increase_the_loss(norm: str, eps: float, digits: ImageSet) -> None:
    model, x, y = tiny_model().train(), digits.images()[:32], digits.labels[:32]
    x_adv = AdversarialExamples(norm, eps, steps=10, step_size=0.25 * eps)(model, x, y)  # type: ignore[arg-type]
    assert model.training  # restored after the attack ran in eval mode
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)
    assert float(size.max()) <= eps * (1 + 1e-5) and float(size.max()) > 0.5 * eps
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


# --- schedules, early stopping, LGV ------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("l2", 0.5)])
def test_random_start_is_uniform_in_the_ball_seeded_and_kept_in_range(norm: str, eps: float) -> None:
    x = 0.2 + 0.6 * torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # far from 0 and 1
    attack = AdversarialExamples(norm, eps, steps=1, step_size=0.25 * eps, random_start=True)  # type: ignore[arg-type]
    delta = attack.start(x, torch.Generator().manual_seed(1))
    assert torch.equal(delta, attack.start(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(delta, attack.start(x, torch.Generator().manual_seed(2)))
    flat = delta.flatten(1)
    if norm == "linf":  # uniform on [-eps, eps]: mean 0, mean |u| = eps / 2, every value inside the cube
        assert float(flat.abs().max()) <= eps and abs(float(flat.mean())) < 0.02 * eps
        assert abs(float(flat.abs().mean()) - eps / 2) < 0.02 * eps
    else:  # uniform in the 64-dimensional ball: P(radius < 0.9 eps) = 0.9^64 ~ 0.1%; isotropic directions
        radius = flat.norm(dim=1)
        assert float(radius.max()) <= eps * (1 + 1e-6) and float((radius < 0.9 * eps).float().mean()) < 0.02
        assert float((flat / radius[:, None]).mean(0).norm()) < 0.2  # |mean of 256 unit vectors| ~ 1/16
    edge = torch.zeros(4, 1, 8, 8)  # at 0 half of the start is clipped away: x + delta stays in [0, 1]
    assert float((edge + attack.start(edge, torch.Generator().manual_seed(3))).min()) >= 0
    assert torch.equal(AdversarialExamples(norm, eps).start(x, None), torch.zeros_like(x))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs a torch\.Generator"):
        attack.start(x, None)


def test_at_with_random_start_trains_seeded_and_differs_from_a_zero_start(digits: ImageSet, tmp_path: Path) -> None:
    runs = {
        name: train_quick("at-linf", digits, tmp_path / name, at_random_start=start, at_steps=2)
        for name, start in (("zero", False), ("random", True), ("random-again", True))
    }
    weights = {k: (v / "model.safetensors").read_bytes() for k, v in runs.items()}
    assert weights["random"] == weights["random-again"] and weights["random"] != weights["zero"]
    meta = load_surrogate(runs["random"]).config.metadata
    assert meta["hyperparameters"]["at_random_start"] is True


def test_lr_factors() -> None:
    cos = lr_factor("cosine", total_steps=100, steps_per_epoch=10, warmup_steps=20)
    assert cos(0) == pytest.approx(1 / 20) and cos(19) == 1.0 and cos(20) == 1.0
    assert cos(60) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    step = lr_factor("step", total_steps=100, steps_per_epoch=10, milestones=(2, 5), gamma=0.1)
    assert [step(t) for t in (0, 19, 20, 49, 50)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_early_stopping_keeps_the_weights_right_after_each_decay(digits: ImageSet, tmp_path: Path) -> None:
    out = train_quick("early-stopping", digits, tmp_path / "es", epochs=4, lr_milestones="1,3")
    meta = load_surrogate(out).config.metadata["early_stopping"]
    assert (meta["epoch"], meta["lr"]) == (2, pytest.approx(0.005))  # one epoch after the decay at epoch 1
    later = load_surrogate(tmp_path / "es-epoch004").config.metadata["early_stopping"]
    assert (later["epoch"], later["lr"]) == (4, pytest.approx(0.0005))
    assert load_surrogate(tmp_path / "es-final").config.metadata["early_stopping"]["epoch"] == 4
    # A run stopped at epoch 2 under the same (step) schedule ends with exactly those weights.
    short = train_quick("early-stopping", digits, tmp_path / "short", epochs=2, lr_milestones="1")
    assert (out / "model.safetensors").read_bytes() == (short / "model.safetensors").read_bytes()


def test_an_early_stopping_overwrite_replaces_the_whole_previous_run(
    digits: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No checkpoint of the previous run stays beside the new one: neither a -epochNNN of other milestones nor,
    when the new run is cut short while saving, the previous selected checkpoint."""
    first = train_quick("early-stopping", digits, tmp_path / "es", epochs=4, lr_milestones="1,3")
    assert (tmp_path / "es-epoch004").is_dir()
    ov = {**QUICK, "epochs": 3, "lr_milestones": "1,2"}
    train_recipe("early-stopping", digits, arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=first, overrides=ov,
                 overwrite=True)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["es", "es-epoch003", "es-final"]
    spec_save = ModelSpec.save

    def cut_short(self, model, out, meta, overwrite):  # type: ignore[no-untyped-def]
        if out.name == "es-final":
            raise KeyboardInterrupt
        return spec_save(self, model, out, meta, overwrite)

    monkeypatch.setattr(ModelSpec, "save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        train_recipe("early-stopping", digits, arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=first,
                     overrides=ov, overwrite=True)  # fmt: skip
    assert not first.exists()  # the old selected checkpoint is gone: a rerun sees the leftovers, not a member


def test_lgv_collects_k_distinct_members_and_continues_a_given_model(digits: ImageSet, tmp_path: Path) -> None:
    base = train_quick("st", digits, tmp_path / "base", epochs=2)
    out = train_quick("lgv", digits, tmp_path / "lgv", lgv_epochs=2, lgv_per_epoch=2, lgv_init=str(base))
    sur = load_surrogate(out)
    assert sur.kind == "ensemble" and len(sur.config.members) == 4
    assert sur.config.metadata["lgv"]["base_sha256"] == load_surrogate(base).sha256
    weights = {(out / m / "model.safetensors").read_bytes() for m in sur.config.members}
    assert len(weights) == 4
    steps = [load_surrogate(out / m).config.metadata["lgv"]["step"] for m in sur.config.members]
    assert steps == [1, 2, 3, 4]  # 2 steps per epoch, 2 checkpoints per epoch


def test_channels_last_runs_on_cpu(digits: ImageSet, tmp_path: Path) -> None:
    out = train_quick("sam", digits, tmp_path / "cl", channels_last=True)
    assert load_surrogate(out).config.metadata["hyperparameters"]["channels_last"] is True


@pytest.mark.gpu
def test_gpu_options_on_cuda(digits: ImageSet, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    out = train_recipe("sam-jr", digits, arch=TINY_ARCH[0], arch_kwargs=TINY_ARCH[1], out_dir=tmp_path / "g",
                       overrides={**QUICK, "bf16": True, "channels_last": True}, device="cuda")  # fmt: skip
    assert math.isfinite(load_surrogate(out).config.metadata["final_train_accuracy"])


def test_an_architecture_that_does_not_fit_the_data_is_refused_before_training(
    digits: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rgb = dataclasses.replace(digits, pixels=digits.pixels.expand(-1, 3, -1, -1).contiguous())
    with pytest.raises(ValueError, match=r"'small_cnn'.*shape \(3, 8, 8\).*--arch-kwargs"):
        train_quick("st", rgb, tmp_path / "rgb")
    assert not (tmp_path / "rgb").exists()
    spec = ModelSpec("small_cnn", {"width": 4}, 10, (1, 8, 8), (0.5,), (0.5,))
    assert spec.build(0)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    monkeypatch.setattr(recipes_module, "build_model", lambda *a, **k: nn.Sequential(nn.Flatten(), nn.Linear(64, 7)))
    with pytest.raises(ValueError, match=r"logits of shape \(7,\) for 10 classes"):
        spec.build(0)
