"""ResNet-18 for 32x32 inputs, the surrogate architecture of seed 002 (Zhang et al., Table 11).

The common CIFAR adaptation of He et al.'s ImageNet ResNet-18: a 3x3 stem with stride 1 and no max
pool, four stages of 64/128/256/512 channels with two basic blocks each, 1x1 convolution + BN
projection shortcuts, global average pooling and one linear layer (11.2M parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.registry import ARCHS


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        stages = []
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            blocks = [BasicBlock(planes, width * mult, stride), BasicBlock(width * mult, width * mult, 1)]
            planes = width * mult
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) normalized
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, 8w, 4, 4)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@ARCHS.register("cifar_resnet18")
def cifar_resnet18(num_classes: int = 10, in_chans: int = 3, width: int = 64) -> CifarResNet18:
    """ResNet-18 for CIFAR (seed 002's surrogate). ``width`` < 64 gives the tiny variants used in tests."""
    return CifarResNet18(num_classes=num_classes, in_chans=in_chans, width=width)
