"""Residual networks (He et al. 2016) with torchvision's state_dict keys.

One implementation serves the ImageNet models and the small CIFAR ones:

- :func:`resnet18`, :func:`resnet50` — torchvision's ``resnet18`` / ``resnet50`` exactly (module
  names, forward, initialisation), so torchvision weight files (``resnet18-f37072fd.pth``,
  ``resnet50-0676ba61.pth``, ...) load with ``strict=True`` and give the same logits.
- :func:`cifar_resnet` — the CIFAR-10 ResNet-(6n+2) of He et al. (2016, Sec. 4.2): a 3x3 stem
  without max-pool and three stages of widths ``w, 2w, 4w``, here with option-B shortcuts (a
  strided 1x1 convolution + BatchNorm where the shape changes, identity elsewhere).

As in torchvision, each block owns one ``nn.ReLU(inplace=True)`` module that its forward calls
twice (:class:`BasicBlock`) or three times (:class:`Bottleneck`), and the residual is added with
``out += identity``. Every ReLU is an ``nn.ReLU`` module (model surgery can swap them for
Softplus) and the whole forward traces with ``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "cifar_resnet", "resnet18", "resnet50"]

Stem = Literal["imagenet", "cifar"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (torchvision's ``conv3x3``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (torchvision's ``conv1x1``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (He et al. 2016, Fig. 2 left).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with ``shortcut = downsample`` (1x1
    conv + BN) when given, the identity otherwise. Submodule names equal torchvision's.
    """

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output for ``x`` of shape (N, inplanes, H, W)."""
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 conv-BN bottleneck with a shortcut (He et al. 2016, Fig. 5 right).

    The stride sits on the 3x3 convolution (``conv2``), as in torchvision ("ResNet v1.5");
    the output has ``planes * 4`` channels. Submodule names equal torchvision's.
    """

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output for ``x`` of shape (N, inplanes, H, W)."""
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """Residual network (He et al. 2016): stem, ``len(layers)`` stages, global average pool, fc.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each stage; the stages are ``layer1``, ``layer2``, ...
        num_classes: outputs of ``fc`` (logits).
        stem: ``"imagenet"`` — ``conv1`` 7x7 stride 2, ``bn1``, ``relu``, ``maxpool`` 3x3 stride 2
            (torchvision); ``"cifar"`` — ``conv1`` 3x3 stride 1, ``bn1``, ``relu`` and no max-pool
            (``maxpool`` is ``None``).
        width: channels of the stem and of stage 1 (before ``block.expansion``); stage ``i`` has
            ``width * 2**(i-1)`` and, from stage 2 on, starts with stride 2.
        zero_init_residual: start the last BN of each residual branch at weight 0 (torchvision's
            option), so each block starts as the identity.

    Where a block changes the shape, its ``downsample`` is ``nn.Sequential(conv1x1, BatchNorm2d)``
    (option B), as in torchvision's ``_make_layer``. Initialisation is torchvision's: convs
    Kaiming-normal (fan_out, ReLU gain), BatchNorm weight 1 and bias 0, ``fc`` PyTorch's default.
    With ``stem="imagenet"``, ``width=64`` and four stages the state_dict keys equal torchvision's.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        stem: Stem = "imagenet",
        width: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar': {stem!r}")
        if not layers or any(int(n) < 1 for n in layers):
            raise ValueError(f"ResNet: layers must be a non-empty list of positive ints: {layers}")
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.MaxPool2d | None = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else None
        )
        self.num_stages = len(layers)
        for i, blocks in enumerate(layers):
            stage = self._make_layer(block, width * 2**i, int(blocks), stride=1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch ``x`` of shape (N, 3, H, W)."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (He et al. 2016, Table 1), torchvision's ``resnet18``: 11,689,512 parameters.

    Loads torchvision's weight files, e.g.
    ``manipex.models.load("resnet18-f37072fd.pth", resnet18())``.
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (He et al. 2016, Table 1), torchvision's ``resnet50``: 25,557,032 parameters.

    The stride of each downsampling bottleneck is on its 3x3 convolution, as in torchvision
    (both ``IMAGENET1K_V1`` and ``V2`` weight files load).
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def cifar_resnet(depth: int = 8, num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-``depth`` for 32x32 images (He et al. 2016, Sec. 4.2) with option-B shortcuts.

    A 3x3 conv stem (``conv1``, ``bn1``, ``relu``; no max-pool), three stages ``layer1``..
    ``layer3`` of ``(depth - 2) / 6`` :class:`BasicBlock` each with ``width``, ``2 * width`` and
    ``4 * width`` channels, the first block of stages 2 and 3 strided with a 1x1-conv + BatchNorm
    ``downsample``; then ``avgpool``, flatten and ``fc``. ``depth=20, width=16`` is the paper's
    ResNet-20 (with projection instead of zero-padding shortcuts on the two stage changes).

    Raises:
        ValueError: ``depth`` is not of the form 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110,
            ...), or ``width`` is not a positive int.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"cifar_resnet: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...): "
            f"{depth!r}"
        )
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"cifar_resnet: width must be a positive int: {width!r}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), num_classes, stem="cifar", width=width)
