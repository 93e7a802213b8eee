"""Tests of the torchvision-compatible MobileNetV3-Small, EfficientNet-B0 and ConvNeXt-T.

The expected state_dict keys and shapes are generated here, independently of manipex, from the
structure of torchvision 0.28's ``torchvision/models/mobilenetv3.py``, ``efficientnet.py`` and
``convnext.py`` and of ``torchvision/ops/misc.py`` (``Conv2dNormActivation`` is a Sequential
``conv, norm, activation``; ``SqueezeExcitation`` holds ``fc1``, ``fc2``): module names,
registration order (a module's own parameters before its children's, so a ConvNeXt block's
``layer_scale`` comes before its ``block.*``) and channel arithmetic. torchvision itself does
not load in this environment. The parameter counts are torchvision's published ``num_params``
of the IMAGENET1K weights.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.fx
from torch import nn

from manipex import models, surgery
from manipex.models import _blocks
from manipex.models import convnext as convnext_module
from manipex.models import efficientnet as efficientnet_module
from manipex.models import mobilenet as mobilenet_module
from manipex.models._blocks import (
    Conv2dNormActivation,
    LayerNorm2d,
    Permute,
    SqueezeExcitation,
    StochasticDepth,
    stochastic_depth,
)

Spec = list[tuple[str, tuple[int, ...]]]
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# torchvision's MobileNet_V3_Small / EfficientNet_B0 / ConvNeXt_Tiny_Weights.IMAGENET1K_V1
# .meta["num_params"].
TORCHVISION_PARAMS = {
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "convnext_tiny": 28_589_128,
}
ENTRIES = {"mobilenet_v3_small": 244, "efficientnet_b0": 360, "convnext_tiny": 182}

# The tables of torchvision's builders (mobilenet: ``_mobilenet_v3_conf``; efficientnet:
# ``_efficientnet_conf``; convnext: ``convnext_tiny``).
MN_SMALL = [(16, 3, 16, 16, True, "RE", 2, 1), (16, 3, 72, 24, False, "RE", 2, 1),
            (24, 3, 88, 24, False, "RE", 1, 1), (24, 5, 96, 40, True, "HS", 2, 1),
            (40, 5, 240, 40, True, "HS", 1, 1), (40, 5, 240, 40, True, "HS", 1, 1),
            (40, 5, 120, 48, True, "HS", 1, 1), (48, 5, 144, 48, True, "HS", 1, 1),
            (48, 5, 288, 96, True, "HS", 2, 1), (96, 5, 576, 96, True, "HS", 1, 1),
            (96, 5, 576, 96, True, "HS", 1, 1)]  # fmt: skip
EFF_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]  # fmt: skip
CN_TINY = [(96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)]

# Tiny configurations with the same blocks, for 32x32 inputs.
MN_MINI = [(8, 3, 8, 8, True, "RE", 2, 1), (8, 3, 24, 16, False, "HS", 2, 1),
           (16, 5, 48, 16, True, "HS", 1, 1)]  # fmt: skip
EFF_MINI = [(1, 3, 1, 8, 8, 1), (6, 3, 2, 8, 16, 2)]
CN_MINI = [(8, 16, 1), (16, None, 2)]


def _div8(v: float) -> int:
    """torchvision's ``_make_divisible(v, 8)``."""
    new_v = max(8, int(v + 4) // 8 * 8)
    return new_v + 8 if new_v < 0.9 * v else new_v


def _bn(prefix: str, c: int) -> Spec:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]  # fmt: skip


def _cna(prefix: str, cout: int, cin_per_group: int, k: int) -> Spec:
    """Conv2dNormActivation with BatchNorm: ``{prefix}.0`` conv (no bias), ``{prefix}.1`` BN."""
    return [(f"{prefix}.0.weight", (cout, cin_per_group, k, k)), *_bn(f"{prefix}.1", cout)]


def _se(prefix: str, c: int, squeeze: int) -> Spec:
    return [(f"{prefix}.fc1.weight", (squeeze, c, 1, 1)), (f"{prefix}.fc1.bias", (squeeze,)),
            (f"{prefix}.fc2.weight", (c, squeeze, 1, 1)), (f"{prefix}.fc2.bias", (c,))]  # fmt: skip


def mobilenet_v3_spec(rows, last_channel: int, num_classes: int = 1000) -> Spec:
    """torchvision MobileNetV3: features.0 stem, features.1..n InvertedResidual, last conv."""
    spec = _cna("features.0", rows[0][0], 3, 3)
    for i, (cin, k, exp, cout, use_se, _act, _stride, _dil) in enumerate(rows, 1):
        p, j = f"features.{i}.block", 0
        if exp != cin:
            spec += _cna(f"{p}.0", exp, cin, 1)
            j = 1
        spec += _cna(f"{p}.{j}", exp, 1, k)  # depthwise
        if use_se:
            j += 1
            spec += _se(f"{p}.{j}", exp, _div8(exp // 4))
        spec += _cna(f"{p}.{j + 1}", cout, exp, 1)
    last = rows[-1][3]
    spec += _cna(f"features.{len(rows) + 1}", 6 * last, last, 1)
    return [*spec, ("classifier.0.weight", (last_channel, 6 * last)),
            ("classifier.0.bias", (last_channel,)),
            ("classifier.3.weight", (num_classes, last_channel)),
            ("classifier.3.bias", (num_classes,))]  # fmt: skip


def efficientnet_spec(rows, num_classes: int = 1000) -> Spec:
    """torchvision EfficientNet: features.0 stem, features.s.b MBConv, features.(n+1) conv."""
    spec = _cna("features.0", rows[0][3], 3, 3)
    for s, (ratio, k, _stride, cin0, cout, n) in enumerate(rows, 1):
        for b in range(n):
            cin = cin0 if b == 0 else cout
            exp, p, j = _div8(cin * ratio), f"features.{s}.{b}.block", 0
            if exp != cin:
                spec += _cna(f"{p}.0", exp, cin, 1)
                j = 1
            spec += _cna(f"{p}.{j}", exp, 1, k)
            spec += _se(f"{p}.{j + 1}", exp, max(1, cin // 4))
            spec += _cna(f"{p}.{j + 2}", cout, exp, 1)
    last = rows[-1][4]
    spec += _cna(f"features.{len(rows) + 1}", 4 * last, last, 1)
    return [*spec, ("classifier.1.weight", (num_classes, 4 * last)),
            ("classifier.1.bias", (num_classes,))]  # fmt: skip


def _ln(prefix: str, c: int) -> Spec:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,))]


def convnext_spec(rows, num_classes: int = 1000) -> Spec:
    """torchvision ConvNeXt: stem conv+LN, per stage blocks then downsampling, classifier."""
    c0 = rows[0][0]
    spec: Spec = [("features.0.0.weight", (c0, 3, 4, 4)), ("features.0.0.bias", (c0,)),
                  *_ln("features.0.1", c0)]  # fmt: skip
    idx = 1
    for cin, cout, n in rows:
        for b in range(n):
            p = f"features.{idx}.{b}"
            spec += [(f"{p}.layer_scale", (cin, 1, 1)), (f"{p}.block.0.weight", (cin, 1, 7, 7)),
                     (f"{p}.block.0.bias", (cin,)), *_ln(f"{p}.block.2", cin),
                     (f"{p}.block.3.weight", (4 * cin, cin)), (f"{p}.block.3.bias", (4 * cin,)),
                     (f"{p}.block.5.weight", (cin, 4 * cin)),
                     (f"{p}.block.5.bias", (cin,))]  # fmt: skip
        idx += 1
        if cout is not None:
            spec += [*_ln(f"features.{idx}.0", cin),
                     (f"features.{idx}.1.weight", (cout, cin, 2, 2)),
                     (f"features.{idx}.1.bias", (cout,))]  # fmt: skip
            idx += 1
    last = rows[-1][1] or rows[-1][0]
    return [*spec, *_ln("classifier.0", last), ("classifier.2.weight", (num_classes, last)),
            ("classifier.2.bias", (num_classes,))]  # fmt: skip


SPECS = {
    "mobilenet_v3_small": mobilenet_v3_spec(MN_SMALL, 1024),
    "efficientnet_b0": efficientnet_spec(EFF_B0),
    "convnext_tiny": convnext_spec(CN_TINY),
}


def _mini_models() -> dict[str, nn.Module]:
    return {
        "mobilenet": mobilenet_module.mobilenet_v3([list(r) for r in MN_MINI], 32, 5),
        "efficientnet": efficientnet_module.efficientnet(block_setting=EFF_MINI, num_classes=5),
        "convnext": convnext_module.convnext(CN_MINI, 5, stochastic_depth_prob=0.3),
    }


MINI_SPECS = {
    "mobilenet": mobilenet_v3_spec(MN_MINI, 32, 5),
    "efficientnet": efficientnet_spec(EFF_MINI, 5),
    "convnext": convnext_spec(CN_MINI, 5),
}


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    """Each ImageNet model built once (through the registry), in eval mode. Tests must not
    change them (copy first)."""
    torch.manual_seed(0)
    return {name: models.build(name).eval() for name in SPECS}


def _n_params(spec: Spec) -> int:
    return sum(math.prod(s) for k, s in spec if not k.endswith(BN_BUFFERS))


@pytest.mark.parametrize("name", list(SPECS))
def test_state_dict_equals_torchvision(zoo, name):
    spec, state = SPECS[name], zoo[name].state_dict()
    assert len(spec) == len(state) == ENTRIES[name]
    assert [(k, tuple(v.shape)) for k, v in state.items()] == spec  # same keys, order, shapes
    assert _n_params(spec) == TORCHVISION_PARAMS[name]
    assert sum(p.numel() for p in zoo[name].parameters()) == TORCHVISION_PARAMS[name]
    tracked = [v for k, v in state.items() if k.endswith("num_batches_tracked")]
    assert all(v.dtype == torch.long for v in tracked)


def test_spot_keys(zoo):
    """A few keys of each stage written out by hand (a check of the generated specs too)."""
    mn, ef, cn = (zoo[n].state_dict() for n in SPECS)
    assert list(mn)[:2] == ["features.0.0.weight", "features.0.1.weight"]
    assert list(mn)[-1] == "classifier.3.bias" and mn["classifier.3.weight"].shape == (1000, 1024)
    assert mn["features.0.0.weight"].shape == (16, 3, 3, 3)
    assert mn["features.1.block.1.fc1.weight"].shape == (8, 16, 1, 1)  # SE, no expansion
    assert mn["features.1.block.2.0.weight"].shape == (16, 16, 1, 1)
    assert mn["features.2.block.0.0.weight"].shape == (72, 16, 1, 1)  # expand
    assert mn["features.4.block.1.0.weight"].shape == (96, 1, 5, 5)  # depthwise 5x5
    assert mn["features.4.block.2.fc2.bias"].shape == (96,)
    assert mn["features.9.block.2.fc1.weight"].shape == (72, 288, 1, 1)
    assert mn["features.11.block.3.1.running_var"].shape == (96,)
    assert mn["features.12.0.weight"].shape == (576, 96, 1, 1)
    assert mn["classifier.0.weight"].shape == (1024, 576)
    assert "features.3.block.2.fc1.weight" not in mn  # no SE in the third bottleneck

    assert list(ef)[0] == "features.0.0.weight" and list(ef)[-1] == "classifier.1.bias"
    assert ef["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert ef["features.1.0.block.1.fc1.weight"].shape == (8, 32, 1, 1)
    assert ef["features.1.0.block.2.0.weight"].shape == (16, 32, 1, 1)
    assert ef["features.2.0.block.0.0.weight"].shape == (96, 16, 1, 1)
    assert ef["features.3.1.block.1.0.weight"].shape == (240, 1, 5, 5)
    assert ef["features.4.2.block.2.fc1.weight"].shape == (20, 480, 1, 1)
    assert ef["features.6.3.block.3.1.num_batches_tracked"].shape == ()
    assert ef["features.7.0.block.3.0.weight"].shape == (320, 1152, 1, 1)
    assert ef["features.8.0.weight"].shape == (1280, 320, 1, 1)
    assert ef["classifier.1.weight"].shape == (1000, 1280)
    assert "features.7.1.block.0.0.weight" not in ef

    assert list(cn)[:3] == ["features.0.0.weight", "features.0.0.bias", "features.0.1.weight"]
    assert list(cn)[-1] == "classifier.2.bias"
    assert cn["features.0.0.weight"].shape == (96, 3, 4, 4)
    assert cn["features.1.0.layer_scale"].shape == (96, 1, 1)
    assert cn["features.1.2.block.3.weight"].shape == (384, 96)
    assert cn["features.2.1.weight"].shape == (192, 96, 2, 2)  # downsampling conv
    assert cn["features.4.0.weight"].shape == (192,)  # downsampling LayerNorm2d
    assert cn["features.5.8.block.5.weight"].shape == (384, 1536)
    assert cn["features.6.1.weight"].shape == (768, 384, 2, 2)
    assert cn["features.7.2.block.0.weight"].shape == (768, 1, 7, 7)
    assert cn["classifier.0.weight"].shape == (768,) and cn["classifier.2.weight"].shape == (
        1000, 768)  # fmt: skip
    assert "features.8.0.weight" not in cn and not any("running" in k for k in cn)


def test_mobilenet_mirrors_torchvision_modules(zoo):
    net = zoo["mobilenet_v3_small"]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 34 and all(m.eps == 0.001 and m.momentum == 0.01 for m in bns)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    stem = net.features[0]
    assert isinstance(stem, Conv2dNormActivation) and isinstance(stem[2], nn.Hardswish)
    assert stem[2].inplace and stem[0].stride == (2, 2) and stem[0].bias is None
    blocks = list(net.features)[1:-1]
    assert all(isinstance(b, mobilenet_module.InvertedResidual) for b in blocks)
    assert [b.use_res_connect for b in blocks] == [False, False, True, False, True, True, False,
                                                    True, False, True, True]  # fmt: skip
    se = net.features[1].block[1]
    assert isinstance(se, SqueezeExcitation) and isinstance(se.avgpool, nn.AdaptiveAvgPool2d)
    assert type(se.activation) is nn.ReLU and not se.activation.inplace
    assert isinstance(se.scale_activation, nn.Hardsigmoid)
    assert type(net.features[2].block[0][2]) is nn.ReLU and net.features[2].block[0][2].inplace
    assert isinstance(net.features[4].block[0][2], nn.Hardswish)
    dw = net.features[9].block[1][0]
    assert (dw.groups, dw.kernel_size, dw.stride, dw.padding) == (288, (5, 5), (2, 2), (2, 2))
    assert len(net.features[9].block[3]) == 2  # projection: conv + BN, no activation
    assert [type(m) for m in net.classifier] == [nn.Linear, nn.Hardswish, nn.Dropout, nn.Linear]
    assert net.classifier[2].p == 0.2 and net.classifier[2].inplace
    assert net.classifier[3].bias.abs().max() == 0
    assert surgery.functional_relus(net) == []  # every ReLU is a module


def test_efficientnet_mirrors_torchvision_modules(zoo):
    net = zoo["efficientnet_b0"]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)
    blocks = [b for stage in list(net.features)[1:-1] for b in stage]
    assert len(blocks) == 16 and all(isinstance(b, efficientnet_module.MBConv) for b in blocks)
    probs = [b.stochastic_depth.p for b in blocks]
    assert probs == [0.2 * float(i) / 16 for i in range(16)]
    assert all(b.stochastic_depth.mode == "row" for b in blocks)
    assert sum(b.use_res_connect for b in blocks) == 9
    assert len(net.features[1][0].block) == 3 and len(net.features[2][0].block) == 4
    se = net.features[1][0].block[1]
    assert isinstance(se.activation, nn.SiLU) and se.activation.inplace
    assert isinstance(se.scale_activation, nn.Sigmoid)
    assert isinstance(net.features[0][2], nn.SiLU) and net.features[0][2].inplace
    assert [type(m) for m in net.classifier] == [nn.Dropout, nn.Linear]
    assert net.classifier[0].p == 0.2 and net.classifier[0].inplace
    assert net.classifier[1].weight.abs().max() <= 1 / math.sqrt(1000)  # uniform(+-1/sqrt(out))


def test_convnext_mirrors_torchvision_modules(zoo):
    net = zoo["convnext_tiny"]
    blocks = [b for m in net.features for b in m if isinstance(b, convnext_module.CNBlock)]
    assert len(blocks) == 18
    assert [b.stochastic_depth.p for b in blocks] == [0.1 * i / 17.0 for i in range(18)]
    assert all(torch.all(b.layer_scale == torch.tensor(1e-6)) for b in blocks)
    block = blocks[0].block
    assert [type(m) for m in block] == [nn.Conv2d, Permute, nn.LayerNorm, nn.Linear, nn.GELU,
                                        nn.Linear, Permute]  # fmt: skip
    assert block[1].dims == [0, 2, 3, 1] and block[6].dims == [0, 3, 1, 2]
    assert block[0].groups == 96 and block[0].padding == (3, 3) and block[2].eps == 1e-6
    lns2d = [m for m in net.modules() if isinstance(m, LayerNorm2d)]
    assert len(lns2d) == 1 + 3 + 1 and all(m.eps == 1e-6 for m in lns2d)  # stem, downs, head
    stem = net.features[0]
    assert len(stem) == 2 and stem[0].kernel_size == (4, 4) and stem[0].stride == (4, 4)
    assert stem[0].padding == (0, 0) and stem[0].bias is not None
    assert [type(m) for m in net.classifier] == [LayerNorm2d, nn.Flatten, nn.Linear]
    w = net.classifier[2].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.001 and torch.all(net.classifier[2].bias == 0)


def test_forward_224(zoo):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        for name, net in zoo.items():
            out = net(x)
            assert out.shape == (1, 1000) and out.dtype == torch.float32, name
            assert torch.isfinite(out).all(), name


def _sd_nodes(graph_module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in graph_module.graph.nodes if n.op == "call_function"
            and n.target is _blocks.stochastic_depth]  # fmt: skip


def test_trace_and_stochastic_depth_nodes(zoo):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    expected = {"mobilenet_v3_small": 0, "efficientnet_b0": 9, "convnext_tiny": 18}
    for name, net in zoo.items():
        traced = torch.fx.symbolic_trace(net)
        nodes = _sd_nodes(traced)
        assert len(nodes) == expected[name], name
        names = ["stochastic_depth", "stochastic_depth_1"][: len(nodes)]
        assert [n.name for n in nodes[:2]] == names
        assert all(n.args[3] is False for n in nodes)  # traced in eval mode
        assert not any(n.op == "call_module" and "stochastic_depth" in str(n.target)
                       for n in traced.graph.nodes)  # fmt: skip
        with torch.no_grad():
            assert torch.equal(traced(x), net(x)), name


@pytest.mark.parametrize("name", list(SPECS))
def test_state_dict_round_trip(zoo, name):
    src = copy.deepcopy(zoo[name])
    with torch.no_grad():
        for p in src.parameters():  # weights unlike a fresh model's (layer scales included)
            p.add_(0.01 * torch.randn_like(p))
        if name != "convnext_tiny":  # BatchNorm statistics and counters off their defaults
            src.train()(torch.rand(2, 3, 32, 32))
    src.eval()
    torch.manual_seed(7)
    dst = models.build(name)
    assert dst.load_state_dict(src.state_dict(), strict=True) is not None
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst.eval()(x), src(x))


def test_torchvision_style_pth_and_safetensors(tmp_path, zoo):
    src = zoo["mobilenet_v3_small"]
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(src.state_dict(), path)  # how torchvision ships its weights
    dst = models.load(path, models.mobilenet_v3_small())
    pairs = zip(src.state_dict().items(), dst.state_dict().items(), strict=True)
    assert all(k == k2 and torch.equal(a, b) for (k, a), (k2, b) in pairs)

    torch.manual_seed(3)
    net = models.build("mobilenet_v3_small", num_classes=10)
    path = models.save(net, tmp_path / "m.safetensors")
    assert models.read_metadata(path)["arch"] == "mobilenet_v3_small"
    rebuilt = models.load(path)
    assert isinstance(rebuilt, models.MobileNetV3) and not rebuilt.training
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net.eval()(x))


def test_registry():
    names = {"mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"}
    assert names <= set(models.architectures())
    torch.manual_seed(0)
    net = models.build("convnext_tiny", num_classes=10)
    assert isinstance(net, models.ConvNeXt)
    assert net.manipex_arch == {"name": "convnext_tiny", "kwargs": {"num_classes": 10}}
    assert net.classifier[2].out_features == 10
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    direct = models.efficientnet_b0(num_classes=4)  # a direct call records its arch too
    assert direct.manipex_arch == {"name": "efficientnet_b0", "kwargs": {"num_classes": 4}}
    # The configurable builders live in their submodules, which the package does not shadow.
    assert models.convnext is convnext_module and callable(models.convnext.convnext)
    assert models.efficientnet is efficientnet_module and models.mobilenet is mobilenet_module


@pytest.mark.parametrize("name", list(MINI_SPECS))
def test_tiny_configurations(name):
    torch.manual_seed(0)
    net = _mini_models()[name]
    state = net.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == MINI_SPECS[name]
    x = torch.rand(2, 3, 32, 32)
    assert net.train()(x).shape == (2, 5)  # training mode: dropout, stochastic depth, BN
    net.eval()
    traced = torch.fx.symbolic_trace(net)
    other = _mini_models()[name]
    other.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 5) and torch.isfinite(out).all()
        assert torch.equal(traced(x), out) and torch.equal(other.eval()(x), out)


def test_tiny_configuration_details():
    mini = _mini_models()
    mn, ef, cn = mini["mobilenet"], mini["efficientnet"], mini["convnext"]
    assert [b.use_res_connect for b in list(mn.features)[1:-1]] == [False, False, True]
    assert mn.classifier[0].out_features == 32 and mn.features[-1].out_channels == 96
    ef_probs = [b.stochastic_depth.p for s in list(ef.features)[1:-1] for b in s]
    assert ef_probs == [0.0, 0.2 / 3, 0.4 / 3]
    assert [b.stochastic_depth.p for s in cn.features for b in s
            if isinstance(b, convnext_module.CNBlock)] == [0.0, 0.15, 0.3]  # fmt: skip
    single = convnext_module.convnext([(8, None, 1)], 3, stochastic_depth_prob=0.5)
    assert single.features[1][0].stochastic_depth.p == 0.0  # torchvision would divide by zero
    # Width / depth scaling (torchvision's efficientnet_b1: depth 1.1) and MobileNet options.
    b1 = efficientnet_module.efficientnet(1.0, 1.1, 0.2)
    assert [len(s) for s in list(b1.features)[1:-1]] == [2, 3, 3, 4, 4, 5, 2]
    assert sum(p.numel() for p in b1.parameters()) == 7_794_184  # torchvision's num_params
    tail = mobilenet_module.mobilenet_v3_small(reduced_tail=True, dilated=True)
    assert tail.features[9].block[0][0].out_channels == 288  # first C4 row keeps 288
    assert tail.features[9].block[3][0].out_channels == 48
    assert tail.classifier[0].out_features == 512
    assert tail.features[10].block[1][0].dilation == (2, 2)
    assert tail.features[9].block[1][0].stride == (1, 1)
    with pytest.raises(ValueError, match="empty"):
        convnext_module.convnext([])
    with pytest.raises(ValueError, match="activation"):
        mobilenet_module.mobilenet_v3([(8, 3, 8, 8, True, "XX", 1, 1)], 16)


def test_stochastic_depth_function_and_module():
    x = torch.rand(6, 3, 4, 4)
    module = StochasticDepth(0.5, "row")
    assert repr(module) == "StochasticDepth(p=0.5, mode=row)"
    assert module.eval()(x) is x  # eval mode: the identity
    assert stochastic_depth(x, 0.5, "row", training=False) is x
    assert stochastic_depth(x, 0.0, "batch") is x
    torch.manual_seed(0)
    out = module.train()(x)
    kept = [bool(torch.equal(o, 2 * xi)) for o, xi in zip(out, x)]
    dropped = [bool(torch.all(o == 0)) for o in out]
    assert all(k != d for k, d in zip(kept, dropped)) and any(kept) and any(dropped)
    out = stochastic_depth(x, 0.25, "batch")
    assert torch.equal(out, x * (torch.ones(()) / 0.75)) or torch.all(out == 0)  # all or none
    assert torch.all(stochastic_depth(x, 1.0, "row") == 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        stochastic_depth(x, 1.5, "row")
    with pytest.raises(ValueError, match="mode"):
        stochastic_depth(x, 0.5, "col")


def test_stochastic_depth_is_one_fx_call_function():
    traced = torch.fx.symbolic_trace(StochasticDepth(0.2, "row").eval())
    nodes = [n for n in traced.graph.nodes if n.op not in ("placeholder", "output")]
    assert len(nodes) == 1
    (node,) = nodes
    assert node.op == "call_function" and node.name == "stochastic_depth"
    assert node.target is stochastic_depth and node.args[1:] == (0.2, "row", False)
    x = torch.rand(2, 3)
    assert torch.equal(traced(x), x)


def test_layer_norm_2d_equals_channels_last_layer_norm():
    torch.manual_seed(0)
    ln2d, ln = LayerNorm2d(6, eps=1e-6), nn.LayerNorm(6, eps=1e-6)
    assert isinstance(ln2d, nn.LayerNorm) and list(ln2d.state_dict()) == ["weight", "bias"]
    with torch.no_grad():
        for a, b in ((ln2d.weight, ln.weight), (ln2d.bias, ln.bias)):
            a.copy_(torch.randn(6))
            b.copy_(a)
    x = torch.randn(2, 6, 5, 4)
    out = ln2d(x)
    expected = ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    manual = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight.view(1, 6, 1, 1) + ln.bias.view(
        1, 6, 1, 1)  # fmt: skip
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)


def test_conv_norm_activation_and_squeeze_excitation():
    block = Conv2dNormActivation(4, 8, kernel_size=5, stride=2, dilation=2)
    assert isinstance(block, nn.Sequential) and block.out_channels == 8
    conv, bn, act = block
    assert conv.padding == (4, 4) and conv.bias is None and conv.dilation == (2, 2)
    assert isinstance(bn, nn.BatchNorm2d) and type(act) is nn.ReLU and act.inplace
    plain = Conv2dNormActivation(4, 8, kernel_size=(3, 5), norm_layer=None, activation_layer=None)
    assert len(plain) == 1 and plain[0].padding == (1, 2) and plain[0].bias is not None
    nobn = Conv2dNormActivation(4, 8, 1, norm_layer=None, activation_layer=nn.Hardswish)
    assert list(nobn.state_dict()) == ["0.weight", "0.bias"] and isinstance(nobn[1], nn.Hardswish)

    torch.manual_seed(0)
    se = SqueezeExcitation(6, 2)
    assert list(se.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [n for n, _ in se.named_children()] == ["avgpool", "fc1", "fc2", "activation",
                                                   "scale_activation"]  # fmt: skip
    x = torch.rand(2, 6, 3, 3)
    squeeze = torch.relu(se.fc1(x.mean((2, 3), keepdim=True)))
    expected = torch.sigmoid(se.fc2(squeeze)) * x
    with torch.no_grad():
        torch.testing.assert_close(se(x), expected)
