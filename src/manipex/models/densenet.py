"""DenseNet-BC (Huang et al. 2017) with torchvision's state_dict keys.

:func:`densenet121` is torchvision's ``densenet121`` (module names, forward, initialisation), so
torchvision's weight file ``densenet121-a639ec97.pth`` loads with :func:`manipex.models.load`
(which also renames that file's legacy ``norm.1``-style keys, as torchvision does).

Two differences from torchvision, neither adding a state_dict key: the ReLU after ``norm5`` is an
``nn.ReLU`` module (``self.relu``), not ``F.relu``, so model surgery can swap it for Softplus, and
the global pooling is an ``nn.AdaptiveAvgPool2d`` module (``self.avgpool``). The forward has no
checkpointing and no TorchScript annotations; it traces with ``torch.fx.symbolic_trace``, with
one ``torch.cat`` node per dense layer's input and one per block's output.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition", "densenet121"]


class DenseLayer(nn.Module):
    """Bottleneck layer ``BN-ReLU-Conv(1x1)-BN-ReLU-Conv(3x3)`` (Huang et al. 2017, "DenseNet-B").

    Its input is the list of all earlier feature maps of the block, concatenated along channels
    (``torch.cat(inputs, 1)``, torchvision's ``bn_function``); it returns ``growth_rate`` new
    channels. Submodule names (``norm1``, ``relu1``, ``conv1``, ``norm2``, ``relu2``, ``conv2``)
    equal torchvision's.
    """

    def __init__(
        self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False
        )
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = float(drop_rate)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Return the new feature maps for the list ``inputs`` of earlier maps (N, C_i, H, W)."""
        concated_features = torch.cat(inputs, 1)
        bottleneck_output = self.conv1(self.relu1(self.norm1(concated_features)))
        new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class DenseBlock(nn.ModuleDict):
    """Dense block (Huang et al. 2017, Sec. 3): layer ``l`` sees the maps of all layers before it.

    Holds ``denselayer1``, ``denselayer2``, ...; returns the block input and every layer's output
    concatenated along channels.
    """

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            in_features = num_input_features + i * growth_rate
            layer = DenseLayer(in_features, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        """Return ``cat([x, h_1, ..., h_L], 1)`` for the block input ``x``."""
        features = [init_features]
        for layer in self.values():
            features = [*features, layer(features)]
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """Transition layer ``BN-ReLU-Conv(1x1)-AvgPool(2x2)`` between dense blocks (Huang et al. 2017).

    Submodule names ``norm``, ``relu``, ``conv``, ``pool`` as in torchvision.
    """

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("norm", nn.BatchNorm2d(num_input_features)),
                    ("relu", nn.ReLU(inplace=True)),
                    (
                        "conv",
                        nn.Conv2d(
                            num_input_features,
                            num_output_features,
                            kernel_size=1,
                            stride=1,
                            bias=False,
                        ),
                    ),
                    ("pool", nn.AvgPool2d(kernel_size=2, stride=2)),
                ]
            )
        )


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al. 2017) with torchvision's module names and state_dict keys.

    ``features`` is ``conv0`` (7x7 stride 2), ``norm0``, ``relu0``, ``pool0`` (3x3 max-pool
    stride 2), then ``denseblock{i}`` separated by ``transition{i}`` (compression 0.5), then
    ``norm5``; ``forward`` is ``features -> relu -> avgpool -> flatten -> classifier``.

    Args:
        growth_rate: channels each dense layer adds (``k`` in the paper).
        block_config: number of layers in each dense block.
        num_init_features: channels of ``conv0``.
        bn_size: the bottleneck has ``bn_size * growth_rate`` channels.
        drop_rate: dropout after each dense layer (0: none).
        num_classes: outputs of ``classifier`` (logits).

    Initialisation is torchvision's: convs Kaiming-normal (fan_in), BatchNorm weight 1 and bias 0,
    classifier bias 0.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(int(num_layers), num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += int(num_layers) * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(
                    f"transition{i + 1}", Transition(num_features, num_features // 2)
                )
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch ``x`` of shape (N, 3, H, W)."""
        features = self.features(x)
        out = self.relu(features)
        out = self.avgpool(out)
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


def densenet121(num_classes: int = 1000) -> DenseNet:
    """DenseNet-121 (Huang et al. 2017, Table 1), torchvision's ``densenet121``.

    Growth rate 32, blocks (6, 12, 24, 16), bottleneck size 4, 64 initial features, no dropout:
    7,978,856 parameters. ``manipex.models.load("densenet121-a639ec97.pth", densenet121())``
    loads torchvision's weights.
    """
    return DenseNet(32, (6, 12, 24, 16), 64, bn_size=4, drop_rate=0.0, num_classes=num_classes)
