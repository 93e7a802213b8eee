"""EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks") with torchvision's state_dict keys.

:func:`efficientnet_b0` is torchvision 0.28's ``efficientnet_b0`` (module names, forward,
BatchNorm defaults, stochastic depth 0.2, dropout 0.2, initialisation): 5,288,548 parameters,
and torchvision's weight file ``efficientnet_b0_rwightman-7f5810bc.pth`` loads with
``strict=True``. :func:`efficientnet` is the same network for any width/depth multipliers (the
compound scaling of Sec. 3.3) or any MBConv table (e.g. a tiny one for tests).

Layout: ``features`` is an ``nn.Sequential`` of the stem (:class:`Conv2dNormActivation`, 3x3
stride 2, SiLU), one ``nn.Sequential`` of :class:`MBConv` blocks per table row (stage), and a
1x1 :class:`Conv2dNormActivation` to ``4 *`` the last width (SiLU); then ``avgpool``,
``torch.flatten`` and ``classifier`` = ``Dropout - Linear``. Only the MBConv family (B0-B7) is
here, not EfficientNetV2's FusedMBConv.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ._blocks import (Conv2dNormActivation, SqueezeExcitation, StochasticDepth, init_conv_norm_linear,
                      make_divisible)

__all__ = ["EfficientNet", "MBConv", "MBConvConfig", "efficientnet", "efficientnet_b0"]

#: One stage of the MBConv table: ``(expand_ratio, kernel, stride, input_channels,
#: out_channels, num_layers)`` (Tan & Le 2019, Table 1).
StageRow = tuple[float, int, int, int, int, int]

# Tan & Le (2019), Table 1: EfficientNet-B0 (torchvision's ``_efficientnet_conf``).
_B0_SETTING: tuple[StageRow, ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class MBConvConfig:
    """One stage's settings (torchvision's ``MBConvConfig``).

    Channels are multiplied by ``width_mult`` and rounded to multiples of 8
    (:meth:`adjust_channels`), the number of layers by ``depth_mult`` and rounded up
    (:meth:`adjust_depth`).
    """

    def __init__(
        self,
        expand_ratio: float,
        kernel: int,
        stride: int,
        input_channels: int,
        out_channels: int,
        num_layers: int,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
    ) -> None:
        self.expand_ratio = expand_ratio
        self.kernel = kernel
        self.stride = stride
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.num_layers = self.adjust_depth(num_layers, depth_mult)

    @staticmethod
    def adjust_channels(channels: float, width_mult: float, min_value: int | None = None) -> int:
        """``channels * width_mult`` rounded to a multiple of 8 (:func:`make_divisible`)."""
        return make_divisible(channels * width_mult, 8, min_value)

    @staticmethod
    def adjust_depth(num_layers: int, depth_mult: float) -> int:
        """``ceil(num_layers * depth_mult)``."""
        return int(math.ceil(num_layers * depth_mult))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation (Tan & Le 2019; Sandler et al. 2018).

    ``block`` is an ``nn.Sequential`` of: a 1x1 expansion :class:`Conv2dNormActivation` to
    ``adjust_channels(input_channels, expand_ratio)`` channels (only when that differs from the
    input), the depthwise one (SiLU), a :class:`SqueezeExcitation` (squeeze to
    ``max(1, input_channels // 4)``, SiLU, Sigmoid) and the linear 1x1 projection. With stride 1
    and equal widths the branch goes through ``stochastic_depth`` (mode ``"row"``) and the input
    is added back.
    """

    def __init__(
        self,
        cnf: MBConvConfig,
        stochastic_depth_prob: float,
        norm_layer: Callable[..., nn.Module],
        se_layer: Callable[..., nn.Module] = SqueezeExcitation,
    ) -> None:
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[nn.Module] = []
        activation_layer = nn.SiLU
        expanded_channels = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        if expanded_channels != cnf.input_channels:  # expand
            layers.append(
                Conv2dNormActivation(
                    cnf.input_channels, expanded_channels, kernel_size=1,
                    norm_layer=norm_layer, activation_layer=activation_layer,
                )
            )  # fmt: skip
        layers.append(  # depthwise
            Conv2dNormActivation(
                expanded_channels, expanded_channels, kernel_size=cnf.kernel, stride=cnf.stride,
                groups=expanded_channels, norm_layer=norm_layer, activation_layer=activation_layer,
            )
        )  # fmt: skip
        squeeze_channels = max(1, cnf.input_channels // 4)
        layers.append(
            se_layer(expanded_channels, squeeze_channels, activation=partial(nn.SiLU, inplace=True))
        )
        layers.append(  # project
            Conv2dNormActivation(
                expanded_channels, cnf.out_channels, kernel_size=1, norm_layer=norm_layer,
                activation_layer=None,
            )
        )  # fmt: skip
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return the block's output for ``input`` (N, input_channels, H, W)."""
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


def _init_linear(m: nn.Linear) -> None:
    """torchvision's EfficientNet classifier init: uniform in +-1/sqrt(out_features), zero bias."""
    init_range = 1.0 / math.sqrt(m.out_features)
    nn.init.uniform_(m.weight, -init_range, init_range)
    nn.init.zeros_(m.bias)


class EfficientNet(nn.Module):
    """EfficientNet (Tan & Le 2019) with torchvision's module names and state_dict keys.

    Args:
        inverted_residual_setting: one :class:`MBConvConfig` per stage; within a stage the
            blocks after the first have stride 1 and ``input_channels = out_channels``.
        dropout: dropout probability before the classifier's linear layer.
        stochastic_depth_prob: block ``i`` (counted over all stages from 0) of ``n`` drops its
            branch with probability ``stochastic_depth_prob * i / n`` in training.
        num_classes: outputs (logits).
        norm_layer: default ``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1), as torchvision's B0-B4.
        last_channel: width of the last 1x1 conv; default ``4 *`` the last stage's width.

    Initialisation is torchvision's: convs Kaiming-normal (fan_out), conv biases 0, BatchNorm
    weight 1 and bias 0, linears uniform in ``±1/sqrt(out_features)`` with bias 0.
    """

    def __init__(
        self,
        inverted_residual_setting: Sequence[MBConvConfig],
        dropout: float,
        stochastic_depth_prob: float = 0.2,
        num_classes: int = 1000,
        norm_layer: Callable[..., nn.Module] | None = None,
        last_channel: int | None = None,
    ) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not all(isinstance(s, MBConvConfig) for s in inverted_residual_setting):
            raise TypeError("The inverted_residual_setting should be List[MBConvConfig]")
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        first = inverted_residual_setting[0].input_channels
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3, first, kernel_size=3, stride=2, norm_layer=norm_layer, activation_layer=nn.SiLU
            )
        ]
        total_stage_blocks = sum(cnf.num_layers for cnf in inverted_residual_setting)
        stage_block_id = 0
        for cnf in inverted_residual_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:  # not the first block of the stage
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                sd_prob = stochastic_depth_prob * float(stage_block_id) / total_stage_blocks
                stage.append(MBConv(block_cnf, sd_prob, norm_layer))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
        lastconv_input_channels = inverted_residual_setting[-1].out_channels
        lastconv_output_channels = (
            last_channel if last_channel is not None else 4 * lastconv_input_channels
        )
        layers.append(
            Conv2dNormActivation(
                lastconv_input_channels, lastconv_output_channels, kernel_size=1,
                norm_layer=norm_layer, activation_layer=nn.SiLU,
            )
        )  # fmt: skip
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(lastconv_output_channels, num_classes),
        )

        init_conv_norm_linear(self, _init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch ``x`` of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def efficientnet(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    dropout: float = 0.2,
    num_classes: int = 1000,
    *,
    stochastic_depth_prob: float = 0.2,
    block_setting: Sequence[Sequence[float]] | None = None,
    last_channel: int | None = None,
    norm_eps: float = 1e-5,
    norm_momentum: float = 0.1,
) -> EfficientNet:
    """An :class:`EfficientNet` scaled by ``width_mult`` / ``depth_mult`` (Tan & Le 2019, Sec. 3.3).

    Args:
        width_mult, depth_mult: multipliers of channels (rounded to multiples of 8) and of the
            number of layers per stage (rounded up). torchvision's B1-B7 use (width, depth,
            dropout) = (1.0, 1.1, 0.2), (1.1, 1.2, 0.3), (1.2, 1.4, 0.3), (1.4, 1.8, 0.4),
            (1.6, 2.2, 0.4), (1.8, 2.6, 0.5), (2.0, 3.1, 0.5), B5-B7 with ``norm_eps=1e-3,
            norm_momentum=0.01``.
        dropout: dropout probability in the classifier.
        num_classes: outputs (logits).
        stochastic_depth_prob: the largest stochastic depth probability (see :class:`EfficientNet`).
        block_setting: the MBConv table, rows ``(expand_ratio, kernel, stride, input_channels,
            out_channels, num_layers)`` (JSON lists work); default B0's (Table 1).
        last_channel: width of the last 1x1 conv; default ``4 *`` the last stage's width.
        norm_eps, norm_momentum: of every ``nn.BatchNorm2d``.

    Example (a tiny network for 32x32 inputs)::

        net = efficientnet(block_setting=[(1, 3, 1, 8, 8, 1), (6, 3, 2, 8, 16, 2)],
                           num_classes=10)
    """
    rows = _B0_SETTING if block_setting is None else block_setting
    setting = [
        MBConvConfig(*row, width_mult=width_mult, depth_mult=depth_mult) for row in rows
    ]
    if (norm_eps, norm_momentum) == (1e-5, 0.1):
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d
    else:
        norm_layer = partial(nn.BatchNorm2d, eps=norm_eps, momentum=norm_momentum)
    return EfficientNet(
        setting,
        dropout,
        stochastic_depth_prob=stochastic_depth_prob,
        num_classes=num_classes,
        norm_layer=norm_layer,
        last_channel=last_channel,
    )


def efficientnet_b0(num_classes: int = 1000, *, dropout: float = 0.2) -> EfficientNet:
    """EfficientNet-B0 (Tan & Le 2019, Table 1), torchvision's ``efficientnet_b0``.

    16 MBConv blocks in 7 stages, stochastic depth up to 0.2, dropout 0.2: 5,288,548 parameters
    for 1000 classes. ``manipex.models.load("efficientnet_b0_rwightman-7f5810bc.pth",
    efficientnet_b0())`` loads torchvision's weights.
    """
    return efficientnet(1.0, 1.0, dropout, num_classes, stochastic_depth_prob=0.2)
