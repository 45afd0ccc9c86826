"""Architectures: every registered name builds and runs, the [0, 1] wrapper normalizes, errors are helpful,
and the He et al. CIFAR ResNets reproduce the external akamaster checkpoints (slow, needs ../shared)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.models import ARCHS, NormalizedModel, build_architecture, build_model, known_architecture
from bench.registry import RegistryError

# Architectures of the 8x8 grey-scale smoke protocol; every other registered name takes 3x32x32 CIFAR images.
DIGITS_ARCHS = {"small_cnn": {"in_chans": 1}, "mlp": {"in_features": 64}}
SMALL_KWARGS = {"cifar_resnet18": {"width": 8}}  # keep the 11M-parameter ResNet-18 tiny on CPU


def _arch_case(name: str) -> tuple[dict[str, object], tuple[int, int, int]]:
    """Constructor kwargs and input shape (C, H, W) for a registered architecture."""
    if name in DIGITS_ARCHS:
        return dict(DIGITS_ARCHS[name]), (1, 8, 8)
    return dict(SMALL_KWARGS.get(name, {})), (3, 32, 32)


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# On a shared 2-core machine, two OpenMP threads competing with other processes made a ResNet-110 forward
# pass 200x slower (18 s instead of 0.08 s).
pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


# ----------------------------------------------------------------------------------------------------------------------
# Every registered architecture
# ----------------------------------------------------------------------------------------------------------------------


def test_registry_holds_the_documented_architectures() -> None:
    expected = {"small_cnn", "mlp", "cifar_resnet18"} | {f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110)}
    assert expected <= set(ARCHS)


@pytest.mark.parametrize("name", list(ARCHS))
def test_architecture_forward_shape_finite_and_differentiable(name: str) -> None:
    kwargs, (c, h, w) = _arch_case(name)
    torch.manual_seed(0)
    net = build_architecture(name, num_classes=10, **kwargs).eval()
    assert _n_params(net) > 0
    x = torch.rand(2, c, h, w, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Different images give different logits (the network is not constant) ...
    assert not torch.allclose(out[0], out[1])
    # ... and attacks need a finite, non-zero input gradient.
    out[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(ARCHS))
def test_build_model_wraps_and_normalizes(name: str) -> None:
    kwargs, (c, h, w) = _arch_case(name)
    mean = tuple(0.3 + 0.1 * i for i in range(c))
    std = tuple(0.2 + 0.05 * i for i in range(c))
    torch.manual_seed(1)
    model = build_model(name, 7, mean, std, **kwargs).eval()
    assert isinstance(model, NormalizedModel)
    assert known_architecture(name)
    x = torch.rand(2, c, h, w)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        wrapped = model(x)
        direct = model.net((x - m) / s)
        raw = model.net(x)
    assert wrapped.shape == (2, 7)
    torch.testing.assert_close(wrapped, direct)
    assert not torch.allclose(wrapped, raw)  # the normalization really happens
    # mean/std are not part of the checkpoint: the state dict keeps the bare network's names.
    assert set(model.state_dict()) == {f"net.{k}" for k in model.net.state_dict()}


def test_normalized_model_rejects_bad_mean_std() -> None:
    net = nn.Identity()
    with pytest.raises(ValueError, match="differ in length"):
        NormalizedModel(net, (0.5, 0.5), (0.5,))
    with pytest.raises(ValueError, match="std must be positive"):
        NormalizedModel(net, (0.5,), (0.0,))


# ----------------------------------------------------------------------------------------------------------------------
# timm, unknown names, num_classes validation
# ----------------------------------------------------------------------------------------------------------------------


def test_timm_resnet18_builds_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.models._builder

    def no_pretrained(*args: object, **kwargs: object) -> None:
        raise AssertionError("build_architecture asked timm for pretrained weights (a download)")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_pretrained)
    net = build_architecture("timm:resnet18", num_classes=10).eval()
    assert known_architecture("timm:resnet18")
    assert net.get_classifier().out_features == 10
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_unknown_timm_name_raises_with_similar_names() -> None:
    assert not known_architecture("timm:resnet1")
    with pytest.raises(ValueError, match=r"unknown timm architecture 'resnet1'; similar names: \[") as err:
        build_architecture("timm:resnet1", 10)
    assert re.search(r"similar names: \['\w+", str(err.value)), "no suggestion given"


def test_timm_typo_suggests_the_intended_model() -> None:
    with pytest.raises(ValueError, match="unknown timm architecture") as err:
        build_architecture("timm:resnet18x", 10)
    assert "'resnet18'" in str(err.value)


@pytest.mark.parametrize(
    ("typo", "intended"), [("cifar_resnet2O", "cifar_resnet20"), ("cifar_resnet18x", "cifar_resnet18")]
)
def test_unknown_registry_name_suggests_close_match(typo: str, intended: str) -> None:
    assert not known_architecture(typo)
    with pytest.raises(RegistryError, match="Did you mean") as err:
        build_architecture(typo, 10)
    msg = str(err.value)
    assert f"'{typo}'" in msg
    assert f"'{intended}'" in msg.split("Did you mean", 1)[1].split("?", 1)[0]


def test_unrelated_registry_name_has_no_suggestion_but_lists_registered() -> None:
    with pytest.raises(RegistryError) as err:
        build_architecture("zzzz", 10)
    assert "Did you mean" not in str(err.value)
    assert "small_cnn" in str(err.value)


def test_duplicate_architecture_registration_is_an_error() -> None:
    with pytest.raises(RegistryError, match="already registered"):
        ARCHS.add("small_cnn", lambda num_classes=10: nn.Identity())


@pytest.mark.parametrize("bad", [0, 1, -3, "10", 10.0, None])
@pytest.mark.parametrize("name", ["small_cnn", "cifar_resnet20", "timm:resnet18"])
def test_num_classes_validation(name: str, bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_architecture(name, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        build_model(name, bad, (0.5,), (0.5,))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# He et al. 2016 CIFAR ResNets
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "params"),
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)],
)
def test_cifar_resnet_parameter_counts_match_he_et_al(depth: int, params: int) -> None:
    # He et al. 2016, Table 6: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M (option A shortcuts have no parameters).
    n = _n_params(build_architecture(f"cifar_resnet{depth}", 10))
    assert n == params
    paper = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}[depth]
    assert abs(n - paper) / paper < 0.02


def test_cifar_resnet_state_dict_names_follow_the_public_checkpoints() -> None:
    keys = set(build_architecture("cifar_resnet20", 10).state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer3.2.bn2.weight", "linear.weight"):
        assert k in keys
    assert not any("shortcut" in k for k in keys)  # option A: parameter-free shortcuts


AKAMASTER_ACC = {20: 81.0, 32: 82.6, 44: 82.7, 56: 83.2}  # ../shared/weights/README.md, JPEG q75 copy, full 10k


@pytest.fixture(scope="module")
def cifar_test_stratified() -> tuple[torch.Tensor, torch.Tensor]:
    """Every 5th image of the JPEG CIFAR-10 test split (2,000 images, 200 per class).

    The split is stored sorted by class, so its first 2,000 images are airplanes and automobiles only
    (ResNet-20 scores 76.2% on those vs 81.0% on all 10k); a stride keeps all classes.
    """
    from conftest import SHARED_CIFAR

    from bench.data import load_cifar10

    if not (SHARED_CIFAR / "test.parquet").is_file():
        pytest.skip(f"real CIFAR-10 mirror not present at {SHARED_CIFAR}")
    test = load_cifar10("test", SHARED_CIFAR).subset(torch.arange(0, 10_000, 5))
    assert len(test) == 2000 and torch.bincount(test.labels).tolist() == [200] * 10
    return test.images(), test.labels


@pytest.mark.slow
@pytest.mark.parametrize("depth", sorted(AKAMASTER_ACC))
def test_akamaster_resnets_reach_published_accuracy(
    depth: int, shared_weights: Path, cifar_test_stratified: tuple[torch.Tensor, torch.Tensor]
) -> None:
    from targets import load_target

    target = load_target(f"akamaster-resnet{depth}", weights_dir=shared_weights)
    model = target.model
    assert not model.training
    assert _n_params(model) == {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}[depth]
    x, y = cifar_test_stratified
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    acc = 100.0 * (pred == y).float().mean().item()
    assert abs(acc - AKAMASTER_ACC[depth]) <= 3.0, f"ResNet-{depth}: {acc:.1f}% vs {AKAMASTER_ACC[depth]}%"
