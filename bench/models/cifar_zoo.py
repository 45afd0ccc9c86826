"""The architecture families of the project's own CIFAR-10 target zoo (issue #3), adapted to 32x32 inputs.

Every network keeps the resolution in its stem (a 3x3 convolution with stride 1 and no max pool, the usual CIFAR
adaptation of an ImageNet design) and ends in global average pooling and one linear layer (VGG: three). Parameter
counts at the default widths and 10 classes, checked by ``tests/test_cifar_zoo.py``:

| factory | parameters | published for the same design |
| --- | --- | --- |
| ``cifar_resnet50`` | 23,520,842 | 23.521 M (huyvnphan/PyTorch_CIFAR10, README) |
| ``cifar_vgg16_bn`` | 15,253,578 | 15.25 M (chenyaofo/pytorch-cifar-models, README) |
| ``cifar_densenet121`` | 6,956,298 | 6.956 M (huyvnphan/PyTorch_CIFAR10, README) |
| ``cifar_inception_v3`` | 21,638,954 | 21.640 M (huyvnphan/PyTorch_CIFAR10, README) |
| ``cifar_mobilenet_v2`` | 2,236,682 | 2.237 M (huyvnphan/PyTorch_CIFAR10), 2.24 M (chenyaofo) |
| ``cifar_wide_resnet`` (28, 10) | 36,479,194 | 36.5 M (Zagoruyko & Komodakis 2016) |

The zoo's vision transformer is timm's ``VisionTransformer`` (``timm:vit_small_patch16_224`` with
``img_size=32, patch_size=4``; see ``targets/cifar10_family.py``), so it has no factory here.

Each factory takes a width argument so that tests can build tiny members of the same family on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.registry import ARCHS


def _conv_bn(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0,
             eps: float = 1e-5) -> list[nn.Module]:  # fmt: skip
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False), nn.BatchNorm2d(cout, eps=eps)]


def _kaiming_init(net: nn.Module) -> None:
    """He et al. 2015 initialisation of every convolution (fan-in, ReLU gain).

    Fan-in rather than torchvision's fan-out: for a depthwise convolution torch counts the fan-out as if the
    convolution were dense (channels x 9 instead of 9), which shrinks MobileNetV2's activations about tenfold per
    block, so that an untrained network in eval mode (running BatchNorm statistics) gives the same logits for
    every image. Fan-in keeps the activations at scale in every family here.
    """
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")


def _head(features: torch.Tensor, fc: nn.Module) -> torch.Tensor:
    return fc(F.adaptive_avg_pool2d(features, 1).flatten(1))


# ---------------------------------------------------------------------------------------------------------------------
# ResNet-50 (He et al. 2016): bottleneck blocks [3, 4, 6, 3], stride on the 3x3 convolution ("ResNet v1.5").


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride, 1)
        self.conv3, self.bn3 = _conv_bn(planes, cout, 1)
        project = stride != 1 or cin != cout
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet50(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64, blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, width, 3, 1, 1)
        cin, stages = width, []
        for i, n in enumerate(blocks):
            planes = width * 2**i
            stages.append(nn.Sequential(*(Bottleneck(cin if j == 0 else planes * 4, planes, 2 if i and not j else 1)
                                          for j in range(n))))  # fmt: skip
            cin = planes * Bottleneck.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) normalized
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, 32w, 4, 4)
        return _head(out, self.linear)


@ARCHS.register("cifar_resnet50")
def cifar_resnet50(num_classes: int = 10, width: int = 64) -> CifarResNet50:
    """ResNet-50 for CIFAR: 3x3 stem, no max pool, bottlenecks [3, 4, 6, 3] of 64w..512w planes (23.5M params)."""
    return CifarResNet50(num_classes=num_classes, width=width)


# ---------------------------------------------------------------------------------------------------------------------
# VGG-16 with batch normalization (Simonyan & Zisserman 2015, configuration D); 512-512 classifier for 1x1 maps.

VGG16_LAYOUT = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")  # widths in units of `width`


class CifarVGG(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64, drop_rate: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = width * int(item)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(cin, cin), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(cin, cin), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
            nn.Linear(cin, num_classes),
        )  # fmt: skip
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # features: (B, 8w, 1, 1)


@ARCHS.register("cifar_vgg16_bn")
def cifar_vgg16_bn(num_classes: int = 10, width: int = 64, drop_rate: float = 0.5) -> CifarVGG:
    """VGG-16-BN for CIFAR: 13 conv+BN layers, five 2x2 max pools to 1x1, classifier 512-512-K with dropout."""
    return CifarVGG(num_classes=num_classes, width=width, drop_rate=drop_rate)


# ---------------------------------------------------------------------------------------------------------------------
# DenseNet-121 (Huang et al. 2017): DenseNet-BC, growth k, blocks [6, 12, 24, 16], compression 0.5.


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k); the output is concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CifarDenseNet(nn.Module):
    def __init__(self, num_classes: int = 10, growth_rate: int = 32, blocks: Sequence[int] = (6, 12, 24, 16)) -> None:
        super().__init__()
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)  # no BN here: every dense layer starts with one
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            stages.append(nn.Sequential(*(DenseLayer(channels + j * growth_rate, growth_rate) for j in range(n))))
            channels += n * growth_rate
            if i < len(blocks) - 1:
                stages.append(Transition(channels, channels // 2))
                channels //= 2
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.conv1(x))  # (B, 1024, 4, 4) at k = 32
        return _head(F.relu(self.bn(out)), self.linear)


@ARCHS.register("cifar_densenet121")
def cifar_densenet121(num_classes: int = 10, growth_rate: int = 32) -> CifarDenseNet:
    """DenseNet-121 (BC, k = 32) for CIFAR: 3x3 stem of 2k channels, three transitions to 4x4 (7.0M params)."""
    return CifarDenseNet(num_classes=num_classes, growth_rate=growth_rate)


# ---------------------------------------------------------------------------------------------------------------------
# Inception-v3 (Szegedy et al. 2016) for 32x32 inputs.
#
# Adaptation: the ImageNet stem (five convolutions and two max pools, 299 -> 35 pixels) becomes one 3x3
# convolution to 192 channels with stride 1 and padding 1, the change made by the widely used CIFAR collection
# huyvnphan/PyTorch_CIFAR10; the auxiliary classifier is dropped. The Inception modules are unchanged: the
# 35x35 / 17x17 / 8x8 grids of the paper become 32x32 / 15x15 / 7x7. Modules are written here as tables of
# branches (``_INCEPTION_*``), each branch a sequence of conv-BN-ReLU layers (BN eps 1e-3, as in the paper's code).

Conv = tuple[int, tuple[int, int], int, tuple[int, int]]  # (out channels, kernel, stride, padding)
Branch = tuple[
    str, tuple[Conv, ...]
]  # (kind, convs); kind: "conv", "avg" / "max" (pool first), "split" (last 2 forked)


def _c(cout: int, k: int | tuple[int, int], stride: int = 1, pad: int | tuple[int, int] | None = None) -> Conv:
    kernel = (k, k) if isinstance(k, int) else k
    padding = pad if pad is not None else (kernel[0] // 2, kernel[1] // 2)
    return cout, kernel, stride, (padding, padding) if isinstance(padding, int) else padding


def _module_a(pool: int) -> tuple[Branch, ...]:  # 35x35 module (Fig. 5), here 32x32
    return (("conv", (_c(64, 1),)), ("conv", (_c(48, 1), _c(64, 5))), ("conv", (_c(64, 1), _c(96, 3), _c(96, 3))),
            ("avg", (_c(pool, 1),)))  # fmt: skip


def _module_c(c7: int) -> tuple[Branch, ...]:  # 17x17 module with factorized 7x7 (Fig. 6), here 15x15
    return (("conv", (_c(192, 1),)), ("conv", (_c(c7, 1), _c(c7, (1, 7)), _c(192, (7, 1)))),
            ("conv", (_c(c7, 1), _c(c7, (7, 1)), _c(c7, (1, 7)), _c(c7, (7, 1)), _c(192, (1, 7)))),
            ("avg", (_c(192, 1),)))  # fmt: skip


_REDUCE_A = (("conv", (_c(384, 3, 2, 0),)), ("conv", (_c(64, 1), _c(96, 3), _c(96, 3, 2, 0))), ("max", ()))
_REDUCE_B = (("conv", (_c(192, 1), _c(320, 3, 2, 0))),
             ("conv", (_c(192, 1), _c(192, (1, 7)), _c(192, (7, 1)), _c(192, 3, 2, 0))), ("max", ()))  # fmt: skip
_MODULE_E = (("conv", (_c(320, 1),)), ("split", (_c(384, 1), _c(384, (1, 3)), _c(384, (3, 1)))),
             ("split", (_c(448, 1), _c(384, 3), _c(384, (1, 3)), _c(384, (3, 1)))), ("avg", (_c(192, 1),)))  # fmt: skip
INCEPTION_V3_MODULES = (
    _module_a(32), _module_a(64), _module_a(64), _REDUCE_A,
    _module_c(128), _module_c(160), _module_c(160), _module_c(192), _REDUCE_B, _MODULE_E, _MODULE_E,
)  # fmt: skip


def _conv_bn_relu(cin: int, conv: Conv, width: float) -> tuple[nn.Sequential, int]:
    cout, kernel, stride, padding = conv
    cout = max(1, round(cout * width))
    return nn.Sequential(*_conv_bn(cin, cout, kernel, stride, padding, eps=1e-3), nn.ReLU(inplace=True)), cout


class InceptionBranch(nn.Module):
    """One branch of an Inception module: optional 3x3 pooling, convolutions, optionally a final 1x3 | 3x1 fork."""

    def __init__(self, cin: int, kind: str, convs: Sequence[Conv], width: float) -> None:
        super().__init__()
        self.pool = {"avg": nn.AvgPool2d(3, 1, 1), "max": nn.MaxPool2d(3, 2)}.get(kind, nn.Identity())
        chain, fork = (convs[:-2], convs[-2:]) if kind == "split" else (convs, ())
        layers = []
        self.out_channels = cin
        for conv in chain:
            layer, self.out_channels = _conv_bn_relu(self.out_channels, conv, width)
            layers.append(layer)
        self.convs = nn.Sequential(*layers)
        forked = [_conv_bn_relu(self.out_channels, conv, width) for conv in fork]
        self.fork = nn.ModuleList(layer for layer, _ in forked)
        if forked:
            self.out_channels = sum(c for _, c in forked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(self.pool(x))
        return torch.cat([f(out) for f in self.fork], 1) if len(self.fork) else out


class InceptionModule(nn.Module):
    def __init__(self, cin: int, branches: Sequence[Branch], width: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList(InceptionBranch(cin, kind, convs, width) for kind, convs in branches)
        self.out_channels = sum(b.out_channels for b in self.branches)  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


class CifarInceptionV3(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.stem, cin = _conv_bn_relu(3, _c(192, 3), width)
        modules = []
        for branches in INCEPTION_V3_MODULES:
            modules.append(InceptionModule(cin, branches, width))
            cin = modules[-1].out_channels
        self.blocks = nn.Sequential(*modules)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))  # (B, 2048, 7, 7) at width 1
        return self.fc(self.dropout(F.adaptive_avg_pool2d(out, 1).flatten(1)))


@ARCHS.register("cifar_inception_v3")
def cifar_inception_v3(num_classes: int = 10, width: float = 1.0, drop_rate: float = 0.5) -> CifarInceptionV3:
    """Inception-v3 for 32x32: a 3x3 stride-1 stem of 192 channels, the paper's 11 modules, no auxiliary head."""
    return CifarInceptionV3(num_classes=num_classes, width=width, drop_rate=drop_rate)


# ---------------------------------------------------------------------------------------------------------------------
# MobileNetV2 (Sandler et al. 2018). CIFAR strides: the stem and the first 24-channel stage keep stride 1, so the
# network downsamples 32 -> 16 -> 8 -> 4 (as in the CIFAR collections of kuangliu, chenyaofo and huyvnphan).

# (expansion t, channels c, repeats n, first stride s) of the paper's Table 2, with s = 1 for the 24-channel stage.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))  # fmt: skip


def _round_channels(channels: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor``, never more than 10% below ``channels`` (the paper's width rounding)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class InvertedResidual(nn.Module):
    """1x1 expansion (ReLU6), 3x3 depthwise (ReLU6), linear 1x1 projection; identity shortcut when shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), *_conv_bn(hidden, cout, 1)]  # fmt: skip
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, drop_rate: float = 0.2) -> None:
        super().__init__()
        cin = _round_channels(32 * width_mult)
        layers: list[nn.Module] = [*_conv_bn(3, cin, 3, 1, 1), nn.ReLU6(inplace=True)]
        for t, c, n, s in MOBILENET_V2_STAGES:
            cout = _round_channels(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _round_channels(1280 * max(1.0, width_mult))  # the paper keeps 1280 for multipliers below 1
        layers += [*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(drop_rate)
        self.linear = nn.Linear(last, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)  # (B, 1280, 4, 4)
        return self.linear(self.dropout(F.adaptive_avg_pool2d(out, 1).flatten(1)))


@ARCHS.register("cifar_mobilenet_v2")
def cifar_mobilenet_v2(num_classes: int = 10, width_mult: float = 1.0, drop_rate: float = 0.2) -> CifarMobileNetV2:
    """MobileNetV2 (width 1.0: 2.2M params) with CIFAR strides (stride-1 stem and first 24-channel stage)."""
    return CifarMobileNetV2(num_classes=num_classes, width_mult=width_mult, drop_rate=drop_rate)


# ---------------------------------------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis 2016): pre-activation basic blocks, depth d = 6n + 4, widths 16k/32k/64k.
# Parameter names follow the public robust CIFAR checkpoints of this family (RobustBench's WideResNet: conv1,
# block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc), so those state dicts load without renaming.


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        project = stride != 1 or cin != cout
        self.convShortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)  # projections see the activated input
        out = F.relu(self.bn2(self.conv1(act)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut


class WideStage(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate)
                                     for i in range(n)))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, num_classes: int = 10, depth: int = 28, widen_factor: int = 10, drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        n, widths = (depth - 4) // 6, [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = WideStage(n, 16, widths[0], 1, drop_rate)
        self.block2 = WideStage(n, widths[0], widths[1], 2, drop_rate)
        self.block3 = WideStage(n, widths[1], widths[2], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.fc = nn.Linear(widths[2], num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))  # (B, 64k, 8, 8)
        return _head(F.relu(self.bn1(out)), self.fc)


@ARCHS.register("cifar_wide_resnet")
def cifar_wide_resnet(num_classes: int = 10, depth: int = 28, widen_factor: int = 10,
                      drop_rate: float = 0.0) -> WideResNet:  # fmt: skip
    """WRN-depth-k (default WRN-28-10, 36.5M params); ``drop_rate`` is the dropout between the block's convs."""
    return WideResNet(num_classes=num_classes, depth=depth, widen_factor=widen_factor, drop_rate=drop_rate)
