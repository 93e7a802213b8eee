"""Grad-CAM's default layer: the last convolutional stage's output (issue 24).

The default is the tensor that reaches the classifier through pooling and linear layers only,
found with torch.fx: a ResNet's ``layer4``, a VGG's last ReLU of ``features``, a DenseNet's
``features``, an Inception network's last block (``Mixed_7c``), not a branch convolution.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex import models, surgery
from manipex.explainers import gradcam
from manipex.explainers.gradcam import default_layer
from manipex.models.densenet import DenseNet

from conftest import assert_same_state, make, state_of


def cam(model, x, **options):
    return manipex.explain(model, x, "gradcam", **options)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not getattr(m, "_backward_pre_hooks", {}) for m in model.modules())


# ----------------------------------------------------------------------------- an Inception replica
# torchvision's inception_v3 structure at tiny widths: BasicConv2d (conv - BN - F.relu in place),
# an InceptionA-like block, the auxiliary head registered after it (called in training only), two
# InceptionE-like blocks whose four branches are concatenated (branch_pool after F.avg_pool2d),
# then avgpool - dropout - flatten - fc.

class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 4, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 3, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(3, 4, kernel_size=5, padding=2)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch5x5, branch_pool], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 4, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 4, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(4, 3, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(4, 3, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 4, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(4, 4, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(4, 3, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(4, 3, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 2, kernel_size=1)

    def _forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        return [branch1x1, branch3x3, branch3x3dbl, branch_pool]

    def forward(self, x):
        return torch.cat(self._forward(x), 1)


class InceptionAux(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(cin, 4, kernel_size=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = self.conv0(F.avg_pool2d(x, kernel_size=3, stride=2))
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.fc(x)


class TinyInception(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 6, kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(6, pool_features=4)
        self.AuxLogits = InceptionAux(12, num_classes)
        self.Mixed_7b = InceptionE(12)
        self.Mixed_7c = InceptionE(18)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(18, num_classes)

    def forward(self, x):
        x = self.Conv2d_1a_3x3(x)
        x = F.max_pool2d(x, kernel_size=3, stride=1)
        x = self.Mixed_5b(x)
        aux = self.AuxLogits(x) if self.training else None
        x = self.Mixed_7b(x)
        x = self.Mixed_7c(x)
        x = self.avgpool(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return (x, aux) if self.training else x


def inception():
    torch.manual_seed(0)
    model = TinyInception().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        model.fc.weight[0].abs_()  # class 0: a positive combination of Mixed_7c's channels
    torch.manual_seed(1)
    return model.eval(), torch.rand(2, 3, 20, 20, dtype=torch.float64)


def test_inception_default_is_the_last_block_not_a_branch_convolution():
    model, x = inception()
    name, module = default_layer(model)
    assert name == "Mixed_7c" and module is model.Mixed_7c
    h = cam(model, x)
    assert h.shape == x.shape and (h >= 0).all()
    # not all zeros: before the ReLU the map of class k sums to its score less its fc bias (the
    # head is avgpool - dropout - fc); class 0 reads the (non-negative) block output positively
    h0 = cam(model, x, target=0)
    assert h0.flatten(1).amax(1).gt(0).all()
    assert torch.equal(h0, cam(model, x, target=0, layer="Mixed_7c"))
    assert torch.equal(h, cam(model, x, layer="Mixed_7c"))
    assert torch.equal(h, cam(model, x, layer=model.Mixed_7c))
    xg = x.clone().requires_grad_(True)  # exactly differentiable, also at the default layer
    hg = manipex.explain(model, xg, "gradcam", 0, create_graph=True)
    assert torch.allclose(hg.detach(), h0) and torch.autograd.grad(hg.sum(), xg)[0].abs().sum() > 0
    # the former default, the last Conv2d called, is a branch convolution with another map
    assert not torch.allclose(h, cam(model, x, layer="Mixed_7c.branch_pool.conv"))


# ----------------------------------------------------------------------------- zoo and test models

ZOO = {  # architecture -> (build kwargs, default layer)
    "mnist_cnn": ({}, "3"),  # a flat Sequential: the last Conv2d (the ReLU after it is the root's)
    "atex_cnn": ({}, "features.4"),  # the last ReLU in ``features``, before its max-pool
    "vgg16": ({"input_size": 32}, "features.29"),
    "vgg16_bn": ({"input_size": 32}, "features.42"),
    "resnet18": ({}, "layer4"),
    "resnet50": ({}, "layer4"),
    "cifar_resnet": ({}, "layer3"),
    "densenet121": ({}, "features"),
    "mobilenet_v3_small": ({}, "features"),
    "efficientnet_b0": ({}, "features"),
    "convnext_tiny": ({}, "features"),  # avgpool - LayerNorm2d - Flatten - Linear is the head
}


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_zoo_default_layers(arch):
    if arch not in models.architectures():
        pytest.skip(f"{arch} is not registered")
    kwargs, expected = ZOO[arch]
    torch.manual_seed(0)
    model = models.build(arch, num_classes=10, **kwargs).eval()
    name, module = default_layer(model)
    assert name == expected and module is model.get_submodule(expected)


def test_resnet_default_equals_layer4():
    torch.manual_seed(0)
    model = models.build("resnet18", num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    before = state_of(model)
    h = cam(model, x)
    assert torch.equal(h, cam(model, x, layer="layer4"))
    assert_same_state(before, state_of(model))
    assert no_hooks(model)


@pytest.mark.parametrize("name, expected", [
    ("small_cnn", "3"), ("vgg_style", "1.2"), ("resnet_basic", "layer2"), ("resnet_bottleneck", "layer2"),
    ("densenet_small", "features"), ("unet_like", "dec"),
])
@pytest.mark.parametrize("softplus", [False, True])
def test_test_models_default_layers(name, expected, softplus):
    model, x = make(name, softplus=softplus)
    assert default_layer(model)[0] == expected
    assert torch.equal(cam(model, x), cam(model, x, layer=expected))


def vgg_like():
    """torchvision's VGG structure (features ending in a max-pool, avgpool, flatten, a
    classifier with ReLU and Dropout between its Linears), tiny."""
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                             nn.ReLU(), nn.MaxPool2d(2))
    classifier = nn.Sequential(nn.Linear(24, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 8), nn.ReLU(),
                               nn.Dropout(), nn.Linear(8, 3))
    return models.VGG(features, nn.AdaptiveAvgPool2d((2, 2)), classifier).double().eval()


def test_vgg_default_is_the_last_relu_of_features():
    model = vgg_like()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    assert default_layer(model)[0] == "features.6"
    assert torch.equal(cam(model, x), cam(model, x, layer="features.6"))
    smooth, _ = surgery.smooth_copy(model, 5.0, pools=True)  # SmoothMaxPool: still a pooling
    assert default_layer(smooth)[0] == "features.6"


class TorchvisionDenseNet(DenseNet):
    """torchvision's forward: ``F.relu(features, inplace=True)`` and functional pooling."""

    def forward(self, x):
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def test_densenet_default_is_features_with_a_module_or_a_functional_relu():
    torch.manual_seed(7)
    for cls in (DenseNet, TorchvisionDenseNet):
        model = cls(2, (2, 2), 4, bn_size=2, num_classes=4).double().eval()
        x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
        assert default_layer(model)[0] == "features"
        h = cam(model, x)
        assert torch.equal(h, cam(model, x, layer="features"))
        assert no_hooks(model)


def test_the_stage_is_taken_at_the_call_that_returns_it():
    """A stage module called twice (shared weights): the map is at its second call's output."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 3, 3, padding=1)
            self.stage = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            x = self.stage(self.stage(self.stem(x)))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Twice().double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    assert gradcam._default(model) == ("stage", 1)
    xr = x.clone().requires_grad_(True)
    a = model.stage(model.stage(model.stem(xr)))
    out = model.fc(a.mean((2, 3)))
    (g,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), a)
    expected = F.interpolate(F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)), size=(6, 6),
                             mode="bilinear", align_corners=False)
    assert torch.allclose(cam(model, x), expected.expand_as(x))
    with pytest.raises(ValueError, match="called once"):
        cam(model, x, layer="stage")


# ----------------------------------------------------------------------------- fallback and errors

class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        if x.sum() > 0:
            x = x * 1.0
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def test_an_untraceable_model_falls_back_to_the_last_conv_called():
    torch.manual_seed(0)
    model = Untraceable().double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert gradcam._default(model) is None
    before = state_of(model)
    h = cam(model, x)
    assert h.shape == x.shape and torch.equal(h, cam(model, x, layer="conv2"))
    assert default_layer(model)[0] == "conv2" and default_layer(model, x)[0] == "conv2"
    assert_same_state(before, state_of(model))
    assert no_hooks(model)


def test_a_model_without_a_stage_or_a_conv_gets_the_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    with pytest.raises(ValueError, match="no Conv2d layer"):
        default_layer(model)
    with pytest.raises(ValueError, match="no Conv2d layer"):
        cam(model, torch.rand(2, 1, 4, 4, dtype=torch.float64))
    assert no_hooks(model)


class WithConstant(nn.Module):
    """Uses a plain tensor attribute: fx stores such constants on the traced root."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.scale = torch.tensor(2.0, dtype=torch.float64)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)) * self.scale, 1).flatten(1))


@pytest.mark.parametrize("build", [inception, lambda: (WithConstant().double().eval(),
                                                       torch.rand(2, 3, 6, 6, dtype=torch.float64))])
def test_model_unchanged_after_a_call_and_after_errors(build):
    model, x = build()
    attributes = set(vars(model))
    before = state_of(model)
    cam(model, x)
    assert_same_state(before, state_of(model))
    assert no_hooks(model) and set(vars(model)) == attributes
    with pytest.raises((RuntimeError, ValueError)):  # the default layer's hook is set: wrong channels
        cam(model, torch.rand(2, 5, 20, 20, dtype=torch.float64))
    with pytest.raises(ValueError):  # an error after the forward
        manipex.explain(model, x, "gradcam", 99)
    assert_same_state(before, state_of(model))
    assert no_hooks(model) and set(vars(model)) == attributes


# ----------------------------------------------------------------------------- cache

def test_the_default_is_traced_once_per_model_structure(monkeypatch):
    calls = []
    locate = gradcam._locate
    monkeypatch.setattr(gradcam, "_locate", lambda model: calls.append(1) or locate(model))
    model, x = make("resnet_basic", softplus=False)
    for _ in range(3):
        cam(model, x)
    cam(model, x, softplus_beta=3.0)  # β-smoothing swaps the ReLUs: the same structure
    cam(model, x, softplus_beta=5.0)
    assert len(calls) == 1
    model.fc = nn.Linear(model.fc.in_features, model.fc.out_features).double().eval()
    cam(model, x)
    assert len(calls) == 2
    assert default_layer(model)[0] == "layer2" and len(calls) == 2
