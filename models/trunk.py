"""A ResNet trunk cut after layer3, written here because there is no CPU torchvision.

layer2 has stride 2 and layer3 is dilated (stride 1, dilation 2), so the trunk's output
stride is 8 (321 -> 41), as in CaNet. ``forward`` returns the layer2 and layer3 features.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with a residual connection (ResNet-50's block)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResNetTrunk(nn.Module):
    """Stem + layer1..layer3 of a ResNet; returns (layer2, layer3) features at stride 8."""

    def __init__(
        self,
        block: str,
        stem_width: int,
        blocks: tuple[int, int, int],
        widths: tuple[int, int, int],
    ) -> None:
        super().__init__()
        block_type = Bottleneck if block == "bottleneck" else BasicBlock
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        channels = stem_width
        layers = []
        strides, dilations = (1, 2, 1), (1, 1, 2)  # layer3 dilated: output stride 8
        for count, width, stride, dilation in zip(blocks, widths, strides, dilations, strict=True):
            stage = []
            for index in range(count):
                stage.append(
                    block_type(channels, width, stride if index == 0 else 1, dilation)
                )
                channels = width * block_type.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.layer2_channels = widths[1] * block_type.expansion
        self.layer3_channels = widths[2] * block_type.expansion

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer1(self.stem(images))
        mid = self.layer2(x)
        return mid, self.layer3(mid)
