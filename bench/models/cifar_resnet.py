"""The CIFAR ResNets of He et al. 2016 (Sec. 4.2): ResNet-20/32/44/56/110.

Three stages of 16/32/64 channels with n basic blocks each, "option A" shortcuts (stride-2 subsampling
and zero-padding of the new channels, no parameters), global average pooling, one linear layer.
Parameter names follow the widely used public checkpoints of this family (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.conv{1,2}``, ``linear``) so that those state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.registry import ARCHS


class _PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad channels (parameter-free)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlockA(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_shortcut = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = _PadShortcut(planes - in_planes) if needs_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes = 16
        stages = []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlockA(planes, width, stride if i == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) normalized
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))  # (B, 64, H/4, W/4)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 64)
        return self.linear(out)


def _register(depth: int) -> None:
    n = (depth - 2) // 6

    def factory(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
        return CifarResNet(n, num_classes=num_classes, in_chans=in_chans)

    factory.__doc__ = f"He et al. CIFAR ResNet-{depth} ({n} blocks per stage, option-A shortcuts)."
    ARCHS.add(f"cifar_resnet{depth}", factory)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
