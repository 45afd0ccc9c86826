"""The multi-family CIFAR-10 architectures (bench/models/cifar_zoo.py) and the family zoo entries built on them:
shapes, parameter counts against published numbers, gradients, determinism, and the structure the papers fix."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

from bench.models import ARCHS, build_architecture, build_model
from bench.models import cifar_zoo as zoo_models
from targets import TARGETS
from targets.cifar10_family import CIFAR10_MEAN, CIFAR10_STD, FAMILY_TARGETS, ZOO_REPO
from targets.zoo import HubWeights

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

ZOO_ARCHS = sorted(n for n, f in ARCHS.items() if getattr(f, "__module__", "") == zoo_models.__name__)

# Parameter counts with 10 classes: ours (exact) and the published figure for the same design, in millions as printed.
PARAMS: dict[str, tuple[int, str, str]] = {
    "cifar_resnet50": (23_520_842, "23.521", "huyvnphan/PyTorch_CIFAR10 README"),
    "cifar_vgg16_bn": (15_253_578, "15.25", "chenyaofo/pytorch-cifar-models README"),
    "cifar_densenet121": (6_956_298, "6.956", "huyvnphan/PyTorch_CIFAR10 README"),
    # The README prints 21.640; its own code (the same modules) counts 21,638,954, which prints as 21.639.
    "cifar_inception_v3": (21_638_954, "21.639", "huyvnphan/PyTorch_CIFAR10 (README: 21.640)"),
    "cifar_mobilenet_v2": (2_236_682, "2.237", "huyvnphan/PyTorch_CIFAR10 README; chenyaofo: 2.24"),
    "cifar_wide_resnet": (36_479_194, "36.5", "Zagoruyko & Komodakis 2016 (WRN-28-10)"),
    # timm ViT-S/16 has 22,050,664 (1000 classes, 197 tokens); with 10 classes (-381,150), 65 tokens (-132 * 384)
    # and a 4x4 instead of a 16x16 patch embedding (-3 * 384 * 240) that is 21,342,346.
    "timm:vit_small_patch16_224": (21_342_346, "21.342346", "timm vit_small_patch16_224, adjusted"),
}

# Tiny members of each family (the kwargs the training tests use), for fast CPU runs.
TINY: dict[str, dict[str, Any]] = {
    "cifar_resnet50": {"width": 4},
    "cifar_vgg16_bn": {"width": 4},
    "cifar_densenet121": {"growth_rate": 2},
    "cifar_inception_v3": {"width": 0.0625},
    "cifar_mobilenet_v2": {"width_mult": 0.25},
    "cifar_wide_resnet": {"depth": 10, "widen_factor": 1},
}


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _entry_kwargs(arch: str) -> dict[str, Any]:
    """The zoo's arch_kwargs for ``arch`` (the ViT's img_size/patch_size), {} for the registered factories."""
    return next(
        (dict(e.arch_kwargs) for e in FAMILY_TARGETS if e.architecture == arch and arch.startswith("timm:")), {}
    )


def _build(arch: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    torch.manual_seed(seed)
    return build_architecture(arch, 10, **{**_entry_kwargs(arch), **kwargs})


def test_every_family_architecture_is_registered_and_counted() -> None:
    assert set(ZOO_ARCHS) == set(TINY) == {a for a in PARAMS if not a.startswith("timm:")}
    assert {e.architecture for e in FAMILY_TARGETS} <= set(PARAMS) | {"cifar_resnet18"}


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_parameter_count_matches_the_published_number(arch: str) -> None:
    ours, published, source = PARAMS[arch]
    n = _n_params(_build(arch))
    assert n == ours
    decimals = len(published.partition(".")[2])
    assert f"{n / 1e6:.{decimals}f}" == published, f"{arch}: {n} vs {published} M ({source})"


@pytest.mark.parametrize("arch", sorted(PARAMS))
def test_full_size_forward_backward_on_32x32(arch: str) -> None:
    net = _build(arch).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = net(x)
    assert out.shape == (2, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient (not in the forward pass): {unused[:5]}"


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_eval_is_deterministic_and_init_is_seeded(arch: str) -> None:
    a, b = _build(arch, seed=3, **TINY[arch]).eval(), _build(arch, seed=3, **TINY[arch]).eval()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, second, other = a(x), a(x), b(x)
    assert torch.equal(first, second) and torch.equal(first, other)
    c = _build(arch, seed=4, **TINY[arch])
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


@pytest.mark.parametrize("arch", ["cifar_vgg16_bn", "cifar_inception_v3", "cifar_mobilenet_v2"])
def test_dropout_acts_in_training_only(arch: str) -> None:
    net = _build(arch, **TINY[arch])
    x = torch.rand(4, 3, 32, 32)
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))  # dropout draws differ (BN batch statistics are the same)
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        assert torch.equal(net(x), net(x))


def test_inception_modules_keep_the_papers_channels_and_the_cifar_grids() -> None:
    net = _build("cifar_inception_v3").eval()
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape[1:]))) for m in net.blocks]
    with torch.no_grad():
        net(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    # Channels of Mixed_5b..Mixed_7c (Szegedy et al. 2016, Table 1 and torchvision), grids 32 / 15 / 7.
    channels = [256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048]
    grids = [32, 32, 32, 15, 15, 15, 15, 15, 7, 7, 7]
    assert shapes == [(c, g, g) for c, g in zip(channels, grids, strict=True)]


def test_mobilenet_v2_residuals_and_downsampling() -> None:
    net = _build("cifar_mobilenet_v2")
    blocks = [m for m in net.modules() if isinstance(m, zoo_models.InvertedResidual)]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10  # paper, Table 2: 17 bottlenecks
    with torch.no_grad():
        assert net.features(torch.rand(1, 3, 32, 32)).shape == (1, 1280, 4, 4)  # 32 -> 16 -> 8 -> 4


def test_wide_resnet_layout_and_state_dict_names() -> None:
    net = _build("cifar_wide_resnet", depth=16, widen_factor=2)
    keys = set(net.state_dict())
    # RobustBench / TRADES parameter names, so their WRN checkpoints load without renaming.
    for key in ("conv1.weight", "block1.layer.0.bn1.running_mean", "block1.layer.0.convShortcut.weight",
                "block3.layer.1.conv2.weight", "bn1.weight", "fc.bias"):  # fmt: skip
        assert key in keys, key
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert len(net.block2.layer) == 2  # (16 - 4) / 6 blocks per stage
    with pytest.raises(ValueError, match=r"6n \+ 4"):
        build_architecture("cifar_wide_resnet", 10, depth=27)


def test_resnet50_and_densenet_downsample_to_4x4() -> None:
    r50, dn = _build("cifar_resnet50", width=8).eval(), _build("cifar_densenet121", growth_rate=4).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = r50.layer4(r50.layer3(r50.layer2(r50.layer1(torch.relu(r50.bn1(r50.conv1(x)))))))
        assert out.shape == (1, 8 * 8 * 4, 4, 4)
        assert dn.features(dn.conv1(x)).shape == (1, 4 * 32, 4, 4)  # 1024 channels at k = 32 = 32 k


# ---------------------------------------------------------------------------------------------------------------------
# The zoo entries


@pytest.mark.parametrize("entry", FAMILY_TARGETS, ids=lambda e: e.name)
def test_family_entry_is_registered_unpinned_and_buildable(entry: Any) -> None:
    spec = TARGETS.get(entry.name)
    assert spec.architecture == entry.architecture and spec.family == entry.family and spec.num_classes == 10
    assert spec.mean == CIFAR10_MEAN and spec.std == CIFAR10_STD
    assert spec.source == HubWeights(ZOO_REPO, f"{entry.name}/model.safetensors", None, None)
    assert not spec.expected_accuracy and not spec.pinned
    assert spec.license and spec.citation and f"transferbench targets train {entry.name}" in spec.notes
    assert re.fullmatch(r"tb-[a-z0-9-]+", entry.name)
    model = build_model(spec.architecture, spec.num_classes, spec.mean, spec.std, **spec.arch_kwargs).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_family_zoo_covers_the_briefs_families() -> None:
    archs = {e.architecture for e in FAMILY_TARGETS}
    assert set(ZOO_ARCHS) <= archs and any(a.startswith("timm:vit") for a in archs)
    assert {e.family for e in FAMILY_TARGETS} == {"cnn", "vit", "adversarially-trained"}
    assert len(FAMILY_TARGETS) >= 8 and len({e.name for e in FAMILY_TARGETS}) == len(FAMILY_TARGETS)
