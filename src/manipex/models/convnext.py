"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s") with torchvision's state_dict keys.

:func:`convnext_tiny` is torchvision 0.28's ``convnext_tiny`` (module names, forward, LayerNorm
eps 1e-6, layer scale 1e-6, stochastic depth 0.1, initialisation): 28,589,128 parameters, and
torchvision's weight file ``convnext_tiny-983f1562.pth`` loads with ``strict=True``.
:func:`convnext` is the same network for any stage table (e.g. a tiny one for tests).

Layout: ``features`` is an ``nn.Sequential`` of the "patchify" stem (:class:`Conv2dNormActivation`
4x4 stride 4 with bias, :class:`LayerNorm2d`, no activation), then per stage an
``nn.Sequential`` of :class:`CNBlock` followed, where the stage has an ``out_channels``, by a
downsampling ``nn.Sequential(LayerNorm2d, Conv2d 2x2 stride 2)``; then ``avgpool`` and
``classifier`` = ``LayerNorm2d - Flatten - Linear``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ._blocks import Conv2dNormActivation, LayerNorm2d, Permute, StochasticDepth

__all__ = ["CNBlock", "CNBlockConfig", "ConvNeXt", "convnext", "convnext_tiny"]

# Liu et al. (2022), Sec. 2 / torchvision's ``convnext_tiny``: C = (96, 192, 384, 768),
# B = (3, 3, 9, 3); rows ``(input_channels, out_channels or None, num_layers)``.
_TINY_SETTING: tuple[tuple[int, int | None, int], ...] = (
    (96, 192, 3),
    (192, 384, 3),
    (384, 768, 9),
    (768, None, 3),
)


class CNBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022, Fig. 4), torchvision's ``CNBlock``.

    ``block`` is ``nn.Sequential(Conv2d 7x7 depthwise, Permute to NHWC, LayerNorm(eps=1e-6),
    Linear(dim -> 4 dim), GELU, Linear(4 dim -> dim), Permute to NCHW)``; the forward is
    ``input + stochastic_depth(layer_scale * block(input))`` with the learnable per-channel
    ``layer_scale`` (shape (dim, 1, 1), initialised to ``layer_scale``) and ``"row"`` mode.
    """

    def __init__(
        self,
        dim: int,
        layer_scale: float,
        stochastic_depth_prob: float,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            norm_layer(dim),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return the block's output for ``input`` (N, dim, H, W)."""
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class CNBlockConfig:
    """One stage: ``num_layers`` blocks of width ``input_channels``, then (when
    ``out_channels`` is not ``None``) a downsampling layer to ``out_channels``."""

    def __init__(self, input_channels: int, out_channels: int | None, num_layers: int) -> None:
        self.input_channels = input_channels
        self.out_channels = out_channels
        self.num_layers = num_layers

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(input_channels={self.input_channels}, "
            f"out_channels={self.out_channels}, num_layers={self.num_layers})"
        )


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al. 2022) with torchvision's module names and state_dict keys.

    Args:
        block_setting: one :class:`CNBlockConfig` per stage.
        stochastic_depth_prob: block ``i`` (counted over all stages from 0) of ``n`` drops its
            branch with probability ``stochastic_depth_prob * i / (n - 1)`` in training (0 for a
            network of a single block, where torchvision divides by zero).
        layer_scale: initial value of every block's ``layer_scale``.
        num_classes: outputs (logits).
        norm_layer: of the stem, the downsampling layers and the classifier; default
            ``LayerNorm2d(eps=1e-6)``. The blocks' own LayerNorms are ``nn.LayerNorm(eps=1e-6)``.

    Initialisation is torchvision's: conv and linear weights truncated-normal (std 0.02) with
    bias 0; LayerNorms weight 1 and bias 0.
    """

    def __init__(
        self,
        block_setting: Sequence[CNBlockConfig],
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = 1e-6,
        num_classes: int = 1000,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not block_setting:
            raise ValueError("The block_setting should not be empty")
        if not all(isinstance(s, CNBlockConfig) for s in block_setting):
            raise TypeError("The block_setting should be List[CNBlockConfig]")
        if norm_layer is None:
            norm_layer = partial(LayerNorm2d, eps=1e-6)
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3, block_setting[0].input_channels, kernel_size=4, stride=4, padding=0,
                norm_layer=norm_layer, activation_layer=None, bias=True,
            )
        ]  # fmt: skip
        total_stage_blocks = sum(cnf.num_layers for cnf in block_setting)
        stage_block_id = 0
        for cnf in block_setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                sd_prob = (
                    stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
                    if total_stage_blocks > 1
                    else 0.0
                )
                stage.append(CNBlock(cnf.input_channels, layer_scale, sd_prob))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
            if cnf.out_channels is not None:  # downsampling
                layers.append(
                    nn.Sequential(
                        norm_layer(cnf.input_channels),
                        nn.Conv2d(cnf.input_channels, cnf.out_channels, kernel_size=2, stride=2),
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = block_setting[-1]
        width = last.out_channels if last.out_channels is not None else last.input_channels
        self.classifier = nn.Sequential(
            norm_layer(width), nn.Flatten(1), nn.Linear(width, num_classes)
        )

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch ``x`` of shape (N, 3, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = self.classifier(x)
        return x


def convnext(
    block_setting: Sequence[CNBlockConfig | Sequence[int | None]],
    num_classes: int = 1000,
    *,
    stochastic_depth_prob: float = 0.0,
    layer_scale: float = 1e-6,
) -> ConvNeXt:
    """A :class:`ConvNeXt` from a stage table (Liu et al. 2022, Sec. 2).

    Args:
        block_setting: one row per stage, a :class:`CNBlockConfig` or ``(input_channels,
            out_channels, num_layers)`` with ``out_channels`` ``None`` for the last stage (JSON
            lists work). ConvNeXt-T is ``[(96, 192, 3), (192, 384, 3), (384, 768, 9),
            (768, None, 3)]``.
        num_classes: outputs (logits).
        stochastic_depth_prob: the largest stochastic depth probability (torchvision's class
            default 0; its ``convnext_tiny`` uses 0.1, ``small`` 0.4, ``base``/``large`` 0.5).
        layer_scale: initial layer scale (Touvron et al. 2021's LayerScale), 1e-6.

    Example (a tiny network for 32x32 inputs)::

        net = convnext([(8, 16, 1), (16, None, 1)], num_classes=10)
    """
    setting = [
        row if isinstance(row, CNBlockConfig) else CNBlockConfig(*row) for row in block_setting
    ]
    return ConvNeXt(
        setting,
        stochastic_depth_prob=stochastic_depth_prob,
        layer_scale=layer_scale,
        num_classes=num_classes,
    )


def convnext_tiny(num_classes: int = 1000, *, stochastic_depth_prob: float = 0.1) -> ConvNeXt:
    """ConvNeXt-T (Liu et al. 2022), torchvision's ``convnext_tiny``.

    Stages of 3, 3, 9, 3 blocks with widths 96, 192, 384, 768, stochastic depth up to 0.1, layer
    scale 1e-6: 28,589,128 parameters for 1000 classes. ``manipex.models.load(
    "convnext_tiny-983f1562.pth", convnext_tiny())`` loads torchvision's weights.
    """
    return convnext(
        _TINY_SETTING, num_classes, stochastic_depth_prob=stochastic_depth_prob
    )
