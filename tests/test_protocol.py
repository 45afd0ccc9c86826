"""Protocols are frozen: their hashes are pinned here, so any change is caught and needs a new version."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from bench.attacks import ATTACKS
from bench.protocol import PROTOCOLS, Protocol, get_protocol
from bench.registry import Registry, RegistryError
from targets import TARGETS

PINNED = {
    # Changing a protocol changes its hash. Bump its version, then update the pin, never the other way round.
    ("cifar10", 1): "9b9ae5eaeeb6d7037ad4eab288da3a463a2e3651a0e1e54d2db3d58a46b6050c",
    ("cifar10-ext", 2): "9b90b2c2e839db7707f4dc7e0dfb65378132c7ea6c60bed5542ea2dc9e65ce5c",
    ("cifar10-autoattack", 1): "ff4a79ac3448552e543a5c9a1b9ef3c6b29578dca386a9e004b24f0fdb2c0576",
    ("imagenette", 1): "91fcb2be57ead090cbc0a80aa621790eccca5db85cf6d17236334c239fab260c",
    ("imagenet", 1): "2eae80d8de62a822ecc3faf43778d27335c765394940c015ddbd5fac78b6b556",
    ("smoke-digits", 2): "941904fb3b17b8f46aecbdc65935a290e23f9e481a3aec31270552f2a173917d",
}


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_protocol_hash_is_pinned(name: str) -> None:
    p = PROTOCOLS.get(name)
    assert PINNED[(p.name, p.version)] == p.sha256


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_protocol_references_registered_things(name: str) -> None:
    p = PROTOCOLS.get(name)
    assert all(a.attack in ATTACKS for a in p.attacks)
    assert all(t in TARGETS for t in p.targets)
    assert len(p.cells()) == len(p.attacks) * len(p.eps_255) * len(p.modes)
    assert len(set(p.image_ids)) == len(p.image_ids)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_target_labels_are_fixed_and_never_the_true_class(name: str) -> None:
    p = PROTOCOLS.get(name)
    ids = torch.tensor(p.image_ids)
    labels = torch.arange(len(ids)) % p.num_classes
    t = p.target_labels(ids, labels)
    assert (t != labels).all()
    assert torch.equal(t, p.target_labels(ids, labels))
    counts = torch.bincount(t, minlength=p.num_classes)
    if len(ids) >= 20 * p.num_classes:
        assert counts.min() > 0.5 * counts.float().mean()  # every class is a target, roughly evenly
    else:  # few images per class (ImageNet): as many distinct targets as uniform draws give, within 10%
        expected = p.num_classes * (1 - math.exp(-len(ids) / p.num_classes))
        assert abs(int((counts > 0).sum()) - expected) < 0.1 * expected


def test_target_labels_and_attack_draws_follow_the_protocol_seed() -> None:
    """Every registered protocol has seed 0, so the reference numerics cannot see a rule that ignores the seed."""
    from bench.attacks import run_attack

    p = get_protocol("smoke-digits")
    other = dataclasses.replace(p, seed=1)
    ids, labels = torch.tensor(p.image_ids[:200]), torch.arange(200) % p.num_classes
    assert not torch.equal(p.target_labels(ids, labels), other.target_labels(ids, labels))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    runs = [run_attack("dim", model, x, labels[:8], 32 / 255, steps=3, targeted=False, ids=ids[:8], seed=s,
                       params={"resize_rate": 1.25}) for s in (0, 1, 0)]  # fmt: skip
    assert torch.equal(runs[0], runs[2]) and not torch.equal(runs[0], runs[1])


def test_any_field_change_changes_the_hash() -> None:
    p = get_protocol("cifar10")
    for change in ({"seed": 1}, {"eps_255": (4, 8)}, {"smoothness_iters": 21}, {"targets": p.targets[:2]}):
        assert dataclasses.replace(p, **change).sha256 != p.sha256


def test_protocol_validates_its_ranking_rule() -> None:
    p = get_protocol("cifar10")
    with pytest.raises(ValueError, match="ranking cell"):
        dataclasses.replace(p, ranking_cell="pgd/linf-3/untargeted")
    with pytest.raises(ValueError, match="ranking_asr"):
        dataclasses.replace(p, ranking_asr="best")


def test_get_protocol_with_version() -> None:
    assert get_protocol("cifar10-v1") is get_protocol("cifar10")
    with pytest.raises(ValueError, match="version 7 is not available"):
        get_protocol("cifar10-v7")
    with pytest.raises(RegistryError, match="Did you mean 'cifar10'"):
        get_protocol("cifar-10")


def test_json_has_numbers_as_numbers() -> None:
    d = get_protocol("cifar10").to_json()
    assert d["eps_255"] == [4, 8, 16] or d["eps_255"] == (4, 8, 16)
    assert isinstance(d["smoothness_tol"], float) and isinstance(d["seed"], int)
    assert isinstance(Protocol, type)


def test_registry_refuses_duplicates_and_suggests() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("alpha", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("alpha", 2)
    with pytest.raises(RegistryError, match="Did you mean 'alpha'"):
        reg.get("alpah")
    with pytest.raises(KeyError, match="Did you mean 'alpha'"):  # a RegistryError is a KeyError, as for a dict
        reg["alpah"]
    assert list(reg) == ["alpha"] and "alpha" in reg and len(reg) == 1 and reg["alpha"] == 1


def test_the_documented_registry_calls_work() -> None:
    """docs/attacks.md and the attack registry's docstring call ``ATTACK_COST[name](steps, params)``."""
    from bench.attacks import ATTACK_COST, ATTACKS, attack_cost

    assert ATTACK_COST["pgd"](10, {}) == attack_cost("pgd", 10, {}) == 10
    assert ATTACKS["pgd"] is ATTACKS.get("pgd")


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_a_protocol_with_unpinned_targets_is_not_frozen(name: str) -> None:
    """A target without a pinned revision or sha256 may change under a frozen protocol: only provisional ones use it."""
    from targets import unpinned_targets

    p = PROTOCOLS.get(name)
    if p.kind == "benchmark" and unpinned_targets(p.targets):
        assert p.status == "provisional", unpinned_targets(p.targets)


def test_optional_fields_are_validated() -> None:
    from bench.protocol import LabelSpace, WeightSharpnessSpec

    with pytest.raises(ValueError, match="distinct and in"):
        LabelSpace("imagenet-1k", 1000, (0, 0, 5))
    with pytest.raises(ValueError, match="distinct and in"):
        LabelSpace("imagenet-1k", 1000, (0, 1000))
    with pytest.raises(ValueError, match="probes >= 1"):
        WeightSharpnessSpec(images=10, max_iters=5, tol=1e-3, probes=0)
    with pytest.raises(ValueError, match="lists 3 classes, not num_classes=10"):
        dataclasses.replace(get_protocol("imagenette"), label_space=LabelSpace("imagenet-1k", 1000, (0, 1, 2)))


def test_imagenet_protocols_use_the_whole_imagenet_zoo() -> None:
    from bench.protocol import IMAGENET_TARGETS as IN_PROTOCOL
    from targets.imagenet_zoo import IMAGENET_TARGETS as IN_ZOO

    assert tuple(IN_PROTOCOL) == tuple(IN_ZOO)
    assert get_protocol("imagenette").targets == get_protocol("imagenet").targets == tuple(IN_ZOO)


def test_the_protocols_page_lists_every_registered_protocol_with_its_hash() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "protocols.md").read_text()
    for name, proto in PROTOCOLS.items():
        assert f"| `{name}` | {proto.version} | {proto.kind} | {proto.status} | `{proto.sha256}` |" in page, name


@pytest.mark.parametrize(
    ("field", "legacy", "new", "bad"),
    [("smoothness_stop", "rayleigh-change", "residual", "sometimes"), ("smoothness_value", "signed", "magnitude", "x")],
)
def test_smoothness_choices_are_pinned_and_hash_neutral_while_absent(
    field: str, legacy: str, new: str, bad: str
) -> None:
    """Protocols defined before a field keep their hashes and the rule they were measured with."""
    for name in PROTOCOLS:
        assert getattr(get_protocol(name), f"{field}_rule") == legacy
    proto = get_protocol("cifar10")
    changed = dataclasses.replace(proto, **{field: new})
    assert getattr(changed, f"{field}_rule") == new and changed.sha256 != proto.sha256
    assert changed.to_json()[field] == new
    assert dataclasses.replace(proto, **{field: None}).sha256 == proto.sha256
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        dataclasses.replace(proto, **{field: bad})
