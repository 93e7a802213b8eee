"""Building blocks shared by the torchvision-compatible MobileNetV3, EfficientNet and ConvNeXt.

Each block here has torchvision 0.28's module structure, submodule names and forward
computation, so the networks built from them have torchvision's state_dict keys:

- :class:`Conv2dNormActivation` — ``torchvision.ops.misc.Conv2dNormActivation``: an
  ``nn.Sequential`` of ``Conv2d`` (index 0), an optional norm layer (1) and an optional
  activation (next index; built with ``inplace=True`` as in torchvision).
- :class:`SqueezeExcitation` — ``torchvision.ops.misc.SqueezeExcitation`` (Hu et al. 2018):
  ``avgpool``, ``fc1``, ``activation``, ``fc2``, ``scale_activation``, all modules.
- :class:`Permute` — ``torchvision.ops.misc.Permute``.
- :class:`LayerNorm2d` — ConvNeXt's channels-first LayerNorm (``torchvision.models.convnext``).
- :func:`stochastic_depth` / :class:`StochasticDepth` — ``torchvision.ops.stochastic_depth``
  (Huang et al. 2016); the function is ``torch.fx.wrap``-ed, so a ``torch.fx`` trace records
  each call as one ``call_function`` node.

Unlike torchvision, nothing here logs API usage (``_log_api_usage_once``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2dNormActivation",
    "LayerNorm2d",
    "Permute",
    "SqueezeExcitation",
    "StochasticDepth",
    "make_divisible",
    "stochastic_depth",
]


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``, default
    ``divisor``), never more than 10% below ``v`` (torchvision's ``_make_divisible``, from the
    TensorFlow MobileNet code)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class Conv2dNormActivation(nn.Sequential):
    """``Conv2d`` - norm - activation as an ``nn.Sequential`` (torchvision's block).

    Args:
        in_channels, out_channels: channels of the convolution.
        kernel_size, stride, groups, dilation: of the convolution.
        padding: ``None`` (default) pads ``(kernel_size - 1) // 2 * dilation`` per side.
        norm_layer: called with ``out_channels``; ``None``: no norm layer.
        activation_layer: called with ``inplace=inplace`` (nothing when ``inplace`` is ``None``);
            ``None``: no activation.
        bias: bias of the convolution; ``None`` (default): only when there is no norm layer.

    The layers are indexed ``0`` (conv), ``1`` (norm), then the activation, as in torchvision;
    ``out_channels`` is kept as an attribute.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str | None = None,
        groups: int = 1,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        activation_layer: Callable[..., nn.Module] | None = nn.ReLU,
        dilation: int | tuple[int, int] = 1,
        inplace: bool | None = True,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            if isinstance(kernel_size, int) and isinstance(dilation, int):
                padding = (kernel_size - 1) // 2 * dilation
            else:
                k, d = _pair(kernel_size), _pair(dilation)
                kernel_size, dilation = k, d
                padding = ((k[0] - 1) // 2 * d[0], (k[1] - 1) // 2 * d[1])
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=bias,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            params = {} if inplace is None else {"inplace": inplace}
            layers.append(activation_layer(**params))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation block (Hu et al. 2018, Fig. 1), torchvision's module names.

    ``x * scale_activation(fc2(activation(fc1(avgpool(x)))))`` with 1x1 convolutions ``fc1``
    (``input_channels -> squeeze_channels``) and ``fc2`` (back). ``activation`` and
    ``scale_activation`` are the ``delta`` and ``sigma`` of Hu et al.'s Eq. 3; both are module
    classes (or partials), called without arguments.
    """

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: Callable[..., nn.Module] = nn.ReLU,
        scale_activation: Callable[..., nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``input`` (N, C, H, W) rescaled channel-wise."""
        scale = self._scale(input)
        return scale * input


class Permute(nn.Module):
    """``torch.permute(x, dims)`` as a module (no parameters)."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return a view of ``x`` with its dimensions in the order ``dims``."""
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor (ConvNeXt, Liu et al. 2022).

    Built as ``nn.LayerNorm(C, eps=...)`` (so its parameters are ``weight`` and ``bias`` of
    shape (C,)); the forward permutes to channels-last, normalises each pixel's channel vector
    and permutes back, exactly as torchvision's ``LayerNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` (N, C, H, W) normalised over C."""
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


def stochastic_depth(
    input: torch.Tensor, p: float, mode: str, training: bool = True
) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth").

    In training, zeroes ``input`` with probability ``p`` — per sample (``mode="row"``) or the
    whole batch (``mode="batch"``) — and divides what survives by ``1 - p``; outside training
    (``training=False``) or with ``p == 0`` it returns ``input`` itself.

    Raises:
        ValueError: ``p`` outside [0, 1] or ``mode`` not ``"batch"`` / ``"row"``.
    """
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    """:func:`stochastic_depth` with probability ``p`` and ``mode`` as a module.

    It applies only in training mode; in eval mode it is the identity. No parameters.
    """

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Return ``stochastic_depth(input, p, mode, self.training)``."""
        return stochastic_depth(input, self.p, self.mode, self.training)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"


def init_conv_norm_linear(model: nn.Module, init_linear: Callable[[nn.Linear], None]) -> None:
    """torchvision's weight initialisation of MobileNetV3 and EfficientNet, in module order:
    Conv2d Kaiming-normal (fan out) with zero bias, BatchNorm/GroupNorm weight 1 and bias 0,
    Linear by ``init_linear`` (the two models differ only there)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_linear(m)
