"""Small replicas of the blocks of torchvision's and timm's modern CNNs, for the suite.

torchvision and timm do not load on the CPU torch the suite runs on; these are written from
their source with the same block structure (module kinds, the order of operations, functional
calls where they make them), at a few channels and 16x16 inputs, so that float64 finite
differences stay fast. Every builder takes ``plain=True`` for the bias-free, normalisation-free
variant that conservation tests need (BatchNorm/LayerNorm become Identity, no biases).

* :func:`mobilenet_v3`: torchvision ``mobilenetv3.py``: Conv2dNormActivation with Hardswish,
  InvertedResidual with squeeze-excitation (ReLU, Hardsigmoid), ``result += input``.
* :func:`efficientnet`: torchvision ``efficientnet.py`` MBConv: SiLU, SE (SiLU, Sigmoid),
  ``stochastic_depth`` (an fx-wrapped function, as ``torchvision.ops``).
* :func:`regnet_y`: torchvision ``regnet.py`` ResBottleneckBlock with SE and a projection.
* :func:`convnext`: torchvision ``convnext.py`` CNBlock: depthwise 7x7, Permute, LayerNorm,
  Linear, GELU, Linear, Permute, layer scale, stochastic depth; LayerNorm2d in stem/downsampling.
* :func:`timm_bn_act`: timm's ``BatchNormAct2d``: a BatchNorm2d subclass whose forward calls
  ``F.batch_norm`` on its own buffers, then dropout and an activation.
* :func:`optional_args`: a timm-style block ``forward(x, attn_mask=None, is_causal=False)``.
* :func:`inception`: torchvision ``inception.py``: BasicConv2d with ``F.relu(x, inplace=True)``,
  an InceptionE-like ``Mixed_7c`` with ``F.avg_pool2d`` in its pool branch, torch.cat.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, List, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn


def stochastic_depth(input: Tensor, p: float, mode: str, training: bool = True) -> Tensor:
    """torchvision.ops.stochastic_depth (Huang et al. 2016): drop whole residual branches."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    return input * noise.div_(survival_rate)


torch.fx.wrap("stochastic_depth")


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input: Tensor) -> Tensor:
        return stochastic_depth(input, self.p, self.mode, self.training)


def _norm(plain: bool, channels: int) -> nn.Module:
    return nn.Identity() if plain else nn.BatchNorm2d(channels)


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation: conv (bias only without a norm), norm, act."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1, activation: Optional[Callable] = nn.ReLU,
                 plain: bool = False) -> None:
        layers: List[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                                             bias=False)]
        layers.append(_norm(plain, cout))
        if activation is not None:
            layers.append(activation(inplace=True) if activation in (nn.ReLU, nn.Hardswish, nn.SiLU) else activation())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.misc.SqueezeExcitation (Hu et al. 2018): ``scale * input``."""

    def __init__(self, channels, squeeze, activation=nn.ReLU, scale_activation=nn.Sigmoid, plain=False) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1, bias=not plain)
        self.fc2 = nn.Conv2d(squeeze, channels, 1, bias=not plain)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: Tensor) -> Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Tensor) -> Tensor:
        scale = self._scale(input)
        return scale * input


class _Net(nn.Module):
    """features -> avgpool -> flatten -> classifier, as torchvision's classifiers."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --- MobileNetV3 ---------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """torchvision mobilenetv3.InvertedResidual: expand, depthwise, SE, project, residual."""

    def __init__(self, cin, expanded, cout, kernel, use_se, activation, stride, plain=False) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, activation=activation, plain=plain))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded,
                                           activation=activation, plain=plain))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4), nn.ReLU, nn.Hardsigmoid, plain=plain))
        layers.append(Conv2dNormActivation(expanded, cout, 1, activation=None, plain=plain))
        self.block = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


def mobilenet_v3(num_classes: int = 3, plain: bool = False, channels: int = 3) -> nn.Module:
    features = nn.Sequential(
        Conv2dNormActivation(channels, 8, 3, 2, activation=nn.Hardswish, plain=plain),
        InvertedResidual(8, 8, 8, 3, True, nn.ReLU, 1, plain),
        InvertedResidual(8, 16, 8, 3, True, nn.Hardswish, 1, plain),
        Conv2dNormActivation(8, 16, 1, activation=nn.Hardswish, plain=plain),
    )
    classifier = nn.Sequential(nn.Linear(16, 16, bias=not plain), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                               nn.Linear(16, num_classes, bias=not plain))
    return _Net(features, classifier)


# --- EfficientNet --------------------------------------------------------------------------------


class MBConv(nn.Module):
    """torchvision efficientnet.MBConv (Tan & Le 2019): SiLU, SE, stochastic depth."""

    def __init__(self, cin, cout, expand_ratio, kernel, stride, sd_prob, plain=False) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = cin * expand_ratio
        layers: List[nn.Module] = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, activation=nn.SiLU, plain=plain))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU,
                                           plain=plain))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), partial(nn.SiLU, inplace=True), nn.Sigmoid,
                                        plain=plain))
        layers.append(Conv2dNormActivation(expanded, cout, 1, activation=None, plain=plain))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


def efficientnet(num_classes: int = 3, plain: bool = False) -> nn.Module:
    features = nn.Sequential(
        Conv2dNormActivation(3, 8, 3, 2, activation=nn.SiLU, plain=plain),
        MBConv(8, 8, 1, 3, 1, 0.0, plain),
        MBConv(8, 8, 2, 3, 1, 0.1, plain),
        Conv2dNormActivation(8, 16, 1, activation=nn.SiLU, plain=plain),
    )
    classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(16, num_classes, bias=not plain))
    return _Net(features, classifier)


# --- RegNet-Y -------------------------------------------------------------------------------------


class BottleneckTransform(nn.Sequential):
    """torchvision regnet.BottleneckTransform: a (1x1), b (3x3 grouped), se, c (1x1)."""

    def __init__(self, cin, cout, stride, group_width, se_ratio, plain=False) -> None:
        from collections import OrderedDict

        layers = OrderedDict()
        w_b = cout
        layers["a"] = Conv2dNormActivation(cin, w_b, 1, activation=nn.ReLU, plain=plain)
        layers["b"] = Conv2dNormActivation(w_b, w_b, 3, stride, groups=w_b // group_width, activation=nn.ReLU,
                                           plain=plain)
        layers["se"] = SqueezeExcitation(w_b, max(1, int(round(se_ratio * cin))), nn.ReLU, nn.Sigmoid, plain=plain)
        layers["c"] = Conv2dNormActivation(w_b, cout, 1, activation=None, plain=plain)
        super().__init__(layers)


class ResBottleneckBlock(nn.Module):
    """torchvision regnet.ResBottleneckBlock: ``activation(proj(x) + f(x))``."""

    def __init__(self, cin, cout, stride, group_width=4, se_ratio=0.25, plain=False) -> None:
        super().__init__()
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = Conv2dNormActivation(cin, cout, 1, stride, activation=None, plain=plain)
        self.f = BottleneckTransform(cin, cout, stride, group_width, se_ratio, plain)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


def regnet_y(num_classes: int = 3, plain: bool = False) -> nn.Module:
    features = nn.Sequential(
        Conv2dNormActivation(3, 8, 3, 2, activation=nn.ReLU, plain=plain),
        ResBottleneckBlock(8, 8, 1, plain=plain),
        ResBottleneckBlock(8, 16, 2, plain=plain),
    )
    return _Net(features, nn.Linear(16, num_classes, bias=not plain))


# --- ConvNeXt -------------------------------------------------------------------------------------


class Permute(nn.Module):
    def __init__(self, dims: List[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return torch.permute(x, self.dims)


class LayerNorm2d(nn.LayerNorm):
    """torchvision convnext.LayerNorm2d: LayerNorm over channels, through channels-last."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class CNBlock(nn.Module):
    """torchvision convnext.CNBlock (Liu et al. 2022)."""

    def __init__(self, dim, layer_scale, sd_prob, plain=False) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=not plain),
            Permute([0, 2, 3, 1]),
            nn.Identity() if plain else nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim, bias=not plain),
            nn.GELU(),
            nn.Linear(4 * dim, dim, bias=not plain),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, input: Tensor) -> Tensor:
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


def convnext(num_classes: int = 3, plain: bool = False) -> nn.Module:
    norm = (lambda c: nn.Identity()) if plain else partial(LayerNorm2d, eps=1e-6)
    features = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 4, 4, bias=not plain), norm(8)),
        nn.Sequential(CNBlock(8, 0.5, 0.0, plain)),
        nn.Sequential(norm(8), nn.Conv2d(8, 16, 2, 2, bias=not plain)),
        nn.Sequential(CNBlock(16, 0.5, 0.1, plain)),
    )
    classifier = nn.Sequential(norm(16), nn.Flatten(1), nn.Linear(16, num_classes, bias=not plain))
    return ConvNeXt(features, classifier)


class ConvNeXt(nn.Module):
    """torchvision convnext.ConvNeXt: features -> avgpool -> classifier (LayerNorm2d, Flatten, Linear)."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(x)


# --- timm BatchNormAct2d ---------------------------------------------------------------------------


class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.norm_act.BatchNormAct2d: BatchNorm, dropout and activation in one module,
    the BatchNorm computed with ``F.batch_norm`` on the module's own buffers."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, act_layer=nn.ReLU, drop_layer=None) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight, self.bias, bn_training, exponential_average_factor, self.eps,
        )
        x = self.drop(x)
        x = self.act(x)
        return x


def timm_bn_act(num_classes: int = 3, plain: bool = False) -> nn.Module:
    def bn(c):
        return nn.ReLU() if plain else BatchNormAct2d(c, act_layer=nn.SiLU)

    features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), bn(8), nn.Conv2d(8, 8, 3, 2, 1, bias=False),
                             bn(8), nn.Conv2d(8, 16, 3, 1, 1, bias=False), bn(16))
    return _Net(features, nn.Linear(16, num_classes, bias=not plain))


# --- a forward with optional arguments (timm's attention-style blocks) -----------------------------


class OptionalArgsBlock(nn.Module):
    """A block whose forward takes optional extra arguments, as timm's
    ``forward(x, attn_mask=None, is_causal=False)``."""

    def __init__(self, dim, plain=False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=not plain)
        self.act = nn.GELU()

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        y = self.act(self.conv(x))
        if attn_mask is not None:
            y = y + attn_mask
        if is_causal:
            y = y.flip(-1)
        return x + y


class OptionalArgsNet(nn.Module):
    def __init__(self, num_classes=3, plain=False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=not plain)
        self.act = nn.GELU()
        self.block = OptionalArgsBlock(8, plain)
        self.pool = nn.MaxPool2d(2)
        self.block2 = OptionalArgsBlock(8, plain)
        self.head = nn.Linear(8, num_classes, bias=not plain)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        x = self.block(self.act(self.stem(x)), attn_mask=attn_mask, is_causal=is_causal)
        x = self.block2(self.pool(x), attn_mask=attn_mask, is_causal=is_causal)
        return self.head(x.mean((2, 3)))


def optional_args(num_classes: int = 3, plain: bool = False) -> nn.Module:
    return OptionalArgsNet(num_classes, plain)


# --- Inception with functional ReLUs ----------------------------------------------------------------


class BasicConv2d(nn.Module):
    """torchvision inception.BasicConv2d: conv, BatchNorm(eps=0.001), ``F.relu(x, inplace=True)``."""

    def __init__(self, cin, cout, plain=False, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.Identity() if plain else nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class InceptionE(nn.Module):
    """torchvision inception.InceptionE, at a few channels."""

    def __init__(self, cin, plain=False) -> None:
        super().__init__()
        conv = partial(BasicConv2d, plain=plain)
        self.branch1x1 = conv(cin, 4, kernel_size=1)
        self.branch3x3_1 = conv(cin, 4, kernel_size=1)
        self.branch3x3_2a = conv(4, 4, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(4, 4, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(cin, 4, kernel_size=1)
        self.branch3x3dbl_2 = conv(4, 4, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = conv(4, 4, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(4, 4, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = conv(cin, 4, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class Inception(nn.Module):
    def __init__(self, num_classes=3, plain=False) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 8, plain, kernel_size=3, stride=2, padding=1)
        self.Mixed_7c = InceptionE(8, plain)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(24, num_classes, bias=not plain)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_1a_3x3(x)
        x = self.Mixed_7c(x)
        x = self.avgpool(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def inception(num_classes: int = 3, plain: bool = False) -> nn.Module:
    return Inception(num_classes, plain)


REPLICAS = {
    "mobilenet_v3": mobilenet_v3, "efficientnet": efficientnet, "regnet_y": regnet_y, "convnext": convnext,
    "timm_bn_act": timm_bn_act, "optional_args": optional_args, "inception": inception,
}


def build(name: str, plain: bool = False, seed: int = 0, dtype=torch.float32) -> nn.Module:
    """A replica in eval mode, seeded, with BatchNorm statistics made non-trivial."""
    torch.manual_seed(seed)
    model = REPLICAS[name](plain=plain)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.to(dtype).eval()
