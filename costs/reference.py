"""The reference network for the total-FLOPs rule: ResNet-18 on a 32x32 image, counted by this tool.

The CIFAR form of ResNet-18 (He et al. 2016; the 3x3-stem, no-max-pool variant used for CIFAR-10 in the
DAWNBench era): a 64-channel 3x3 stem, four stages of two BasicBlocks (64, 128, 256, 512 channels, stride 2 at
stages 2-4), global average pool, linear. Its conv + linear FLOPs per image define the default budget.
"""

from __future__ import annotations

import functools

from torch import nn


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x):
        return nn.functional.relu(self.body(x) + self.skip(x))


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers).eval()


@functools.lru_cache(maxsize=1)
def resnet18_flops() -> int:
    """Conv + linear FLOPs of one ResNet-18 pass on one 32x32 image (computed, not typed in)."""
    import torch

    from dawnpipe.export.flops import count_torch

    counts = count_torch(resnet18_cifar(), torch.zeros(1, 3, 32, 32))
    return counts["conv"] + counts["linear"]
