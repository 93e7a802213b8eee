"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3") with torchvision's state_dict keys.

:func:`mobilenet_v3_small` is torchvision 0.28's ``mobilenet_v3_small`` (module names, forward,
BatchNorm ``eps=0.001, momentum=0.01``, initialisation): 2,542,856 parameters, and torchvision's
weight file ``mobilenet_v3_small-047dcff4.pth`` loads with ``strict=True``.
:func:`mobilenet_v3` builds the same network from any table of bottleneck settings (e.g. a tiny
one for tests).

Layout: ``features`` is an ``nn.Sequential`` of the stem (:class:`Conv2dNormActivation`, 3x3
stride 2, Hardswish), one :class:`InvertedResidual` per table row, and a 1x1
:class:`Conv2dNormActivation` to ``6 *`` the last width (Hardswish); then ``avgpool``,
``torch.flatten`` and ``classifier`` = ``Linear - Hardswish - Dropout - Linear``. Every
activation is a module (``nn.ReLU``, ``nn.Hardswish``, ``nn.Hardsigmoid``), the in-place ones
where torchvision has them; the residual is added with ``result += input``; the whole forward
traces with ``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ._blocks import Conv2dNormActivation, SqueezeExcitation, init_conv_norm_linear, make_divisible

__all__ = [
    "InvertedResidual",
    "InvertedResidualConfig",
    "MobileNetV3",
    "mobilenet_v3",
    "mobilenet_v3_small",
]

#: One row of a bottleneck table: ``(input_channels, kernel, expanded_channels, out_channels,
#: use_se, activation, stride, dilation)``; ``activation`` is ``"RE"`` (ReLU) or ``"HS"``
#: (Hardswish) as in Howard et al. (2019), Tables 1-2.
BneckRow = tuple[int, int, int, int, bool, str, int, int]

# Howard et al. (2019), Table 2 (torchvision's ``_mobilenet_v3_conf("mobilenet_v3_small")``);
# ``reduced_tail`` halves the 96/576 channels of the last three rows (C4), ``dilated`` gives them
# dilation 2.
_SMALL_SETTING: tuple[BneckRow, ...] = (
    (16, 3, 16, 16, True, "RE", 2, 1),  # C1
    (16, 3, 72, 24, False, "RE", 2, 1),  # C2
    (24, 3, 88, 24, False, "RE", 1, 1),
    (24, 5, 96, 40, True, "HS", 2, 1),  # C3
    (40, 5, 240, 40, True, "HS", 1, 1),
    (40, 5, 240, 40, True, "HS", 1, 1),
    (40, 5, 120, 48, True, "HS", 1, 1),
    (48, 5, 144, 48, True, "HS", 1, 1),
    (48, 5, 288, 96, True, "HS", 2, 1),  # C4
    (96, 5, 576, 96, True, "HS", 1, 1),
    (96, 5, 576, 96, True, "HS", 1, 1),
)


class InvertedResidualConfig:
    """One bottleneck's settings (torchvision's ``InvertedResidualConfig``).

    Channel counts are multiplied by ``width_mult`` and rounded to a multiple of 8
    (:meth:`adjust_channels`); ``use_hs`` is ``activation == "HS"``.
    """

    def __init__(
        self,
        input_channels: int,
        kernel: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        dilation: int,
        width_mult: float = 1.0,
    ) -> None:
        if activation not in ("RE", "HS"):
            raise ValueError(f"activation must be 'RE' (ReLU) or 'HS' (Hardswish): {activation!r}")
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.kernel = kernel
        self.expanded_channels = self.adjust_channels(expanded_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation

    @staticmethod
    def adjust_channels(channels: int, width_mult: float) -> int:
        """``channels * width_mult`` rounded to a multiple of 8 (:func:`make_divisible`)."""
        return make_divisible(channels * width_mult, 8)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck (Howard et al. 2019, Sec. 5; Sandler et al. 2018).

    ``block`` is an ``nn.Sequential`` of: a 1x1 expansion :class:`Conv2dNormActivation` (only
    when ``expanded_channels != input_channels``), the depthwise ``kernel`` x ``kernel`` one
    (stride, or dilation instead when ``dilation > 1``), a :class:`SqueezeExcitation`
    (``use_se``; squeeze to ``make_divisible(expanded // 4, 8)``, ReLU, Hardsigmoid) and the
    linear 1x1 projection (no activation). The input is added back when the stride is 1 and the
    widths agree (``use_res_connect``).
    """

    def __init__(
        self,
        cnf: InvertedResidualConfig,
        norm_layer: Callable[..., nn.Module],
        se_layer: Callable[..., nn.Module] = partial(
            SqueezeExcitation, scale_activation=nn.Hardsigmoid
        ),
    ) -> None:
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[nn.Module] = []
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        if cnf.expanded_channels != cnf.input_channels:  # expand
            layers.append(
                Conv2dNormActivation(
                    cnf.input_channels,
                    cnf.expanded_channels,
                    kernel_size=1,
                    norm_layer=norm_layer,
                    activation_layer=activation_layer,
                )
            )
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(  # depthwise
            Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                kernel_size=cnf.kernel,
                stride=stride,
                dilation=cnf.dilation,
                groups=cnf.expanded_channels,
                norm_layer=norm_layer,
                activation_layer=activation_layer,
            )
        )
        if cnf.use_se:
            squeeze_channels = make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(se_layer(cnf.expanded_channels, squeeze_channels))
        layers.append(  # project
            Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.out_channels,
                kernel_size=1,
                norm_layer=norm_layer,
                activation_layer=None,
            )
        )
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels
        self._is_cn = cnf.stride > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return the bottleneck's output for ``input`` (N, input_channels, H, W)."""
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


def _init_linear(m: nn.Linear) -> None:
    """torchvision's MobileNetV3 classifier init: N(0, 0.01), zero bias."""
    nn.init.normal_(m.weight, 0, 0.01)
    nn.init.zeros_(m.bias)


class MobileNetV3(nn.Module):
    """MobileNetV3 (Howard et al. 2019) with torchvision's module names and state_dict keys.

    Args:
        inverted_residual_setting: one :class:`InvertedResidualConfig` per bottleneck.
        last_channel: width of the classifier's hidden layer.
        num_classes: outputs of the classifier (logits).
        norm_layer: default ``BatchNorm2d(eps=0.001, momentum=0.01)`` (torchvision's).
        dropout: dropout probability before the last linear layer.

    Initialisation is torchvision's: convs Kaiming-normal (fan_out), conv biases 0, BatchNorm
    weight 1 and bias 0, linears N(0, 0.01) with bias 0.
    """

    def __init__(
        self,
        inverted_residual_setting: Sequence[InvertedResidualConfig],
        last_channel: int,
        num_classes: int = 1000,
        norm_layer: Callable[..., nn.Module] | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not all(isinstance(s, InvertedResidualConfig) for s in inverted_residual_setting):
            raise TypeError("The inverted_residual_setting should be List[InvertedResidualConfig]")
        if norm_layer is None:
            norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        first = inverted_residual_setting[0].input_channels
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3, first, kernel_size=3, stride=2, norm_layer=norm_layer,
                activation_layer=nn.Hardswish,
            )
        ]  # fmt: skip
        layers += [InvertedResidual(cnf, norm_layer) for cnf in inverted_residual_setting]
        lastconv_input_channels = inverted_residual_setting[-1].out_channels
        lastconv_output_channels = 6 * lastconv_input_channels
        layers.append(
            Conv2dNormActivation(
                lastconv_input_channels, lastconv_output_channels, kernel_size=1,
                norm_layer=norm_layer, activation_layer=nn.Hardswish,
            )
        )  # fmt: skip
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_output_channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

        init_conv_norm_linear(self, _init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch ``x`` of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def mobilenet_v3(
    inverted_residual_setting: Sequence[InvertedResidualConfig | Sequence],
    last_channel: int,
    num_classes: int = 1000,
    *,
    dropout: float = 0.2,
    width_mult: float = 1.0,
) -> MobileNetV3:
    """A :class:`MobileNetV3` from a bottleneck table (Howard et al. 2019, Tables 1-2).

    Args:
        inverted_residual_setting: one row per bottleneck, an :class:`InvertedResidualConfig` or
            a sequence ``(input_channels, kernel, expanded_channels, out_channels, use_se,
            activation, stride, dilation)`` with ``activation`` ``"RE"`` or ``"HS"`` (JSON
            lists work, so the call can be recorded in a checkpoint header).
        last_channel: width of the classifier's hidden layer (taken as given; torchvision's
            ``mobilenet_v3_small`` uses ``adjust_channels(1024, width_mult)``).
        num_classes: outputs (logits).
        dropout: dropout probability in the classifier.
        width_mult: multiplier of the channel counts of the sequence rows (rounded to multiples
            of 8); :class:`InvertedResidualConfig` rows are used as they are.

    Example (a tiny network for 32x32 inputs)::

        net = mobilenet_v3([(8, 3, 8, 8, True, "RE", 2, 1), (8, 3, 24, 16, False, "HS", 2, 1)],
                           last_channel=32, num_classes=10)
    """
    setting = [
        row if isinstance(row, InvertedResidualConfig)
        else InvertedResidualConfig(*row, width_mult=width_mult)
        for row in inverted_residual_setting
    ]  # fmt: skip
    return MobileNetV3(setting, int(last_channel), num_classes, dropout=dropout)


def mobilenet_v3_small(
    num_classes: int = 1000,
    *,
    dropout: float = 0.2,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
    dilated: bool = False,
) -> MobileNetV3:
    """MobileNetV3-Small (Howard et al. 2019, Table 2), torchvision's ``mobilenet_v3_small``.

    11 bottlenecks, last channel 1024, dropout 0.2: 2,542,856 parameters for 1000 classes.
    ``manipex.models.load("mobilenet_v3_small-047dcff4.pth", mobilenet_v3_small())`` loads
    torchvision's weights. ``width_mult``, ``reduced_tail`` (halve the channels of the last
    stage) and ``dilated`` (dilation 2 instead of stride in the last stage) are torchvision's
    options of the same names.
    """
    divider = 2 if reduced_tail else 1
    dilation = 2 if dilated else 1
    rows: list[BneckRow] = list(_SMALL_SETTING[:8])
    for i, row in enumerate(_SMALL_SETTING[8:]):
        cin, k, exp, cout, se, act, stride, _ = row
        if i > 0:  # the first C4 row keeps its input and expansion widths, as in torchvision
            cin, exp = cin // divider, exp // divider
        rows.append((cin, k, exp, cout // divider, se, act, stride, dilation))
    last_channel = InvertedResidualConfig.adjust_channels(1024 // divider, width_mult)
    return mobilenet_v3(
        rows, last_channel, num_classes, dropout=dropout, width_mult=width_mult
    )
