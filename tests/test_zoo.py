"""Tests of the graph-shaped zoo models: ResNet-18/50, CIFAR ResNets and DenseNet-121.

The expected state_dict keys and shapes are generated here, independently of manipex, from the
structure of torchvision's ``torchvision/models/resnet.py`` and ``densenet.py`` (module names,
registration order, channel arithmetic); torchvision itself does not load in this environment.
The parameter counts are torchvision's published ``num_params`` of the IMAGENET1K weights.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

import pytest

from manipex import models, surgery
from manipex.models import densenet as densenet_module

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
Spec = list[tuple[str, tuple[int, ...]]]

# torchvision's ResNet18/ResNet50/DenseNet121_Weights.IMAGENET1K_V1.meta["num_params"].
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "densenet121": 7_978_856}


def _bn(prefix: str, c: int) -> Spec:
    """A BatchNorm2d's entries in registration order: parameters, then buffers."""
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]  # fmt: skip


def torchvision_resnet_spec(bottleneck: bool, layers: tuple[int, ...]) -> Spec:
    """torchvision ResNet: conv1, bn1, layer1..4 (_make_layer), fc; keys with shapes."""
    expansion = 4 if bottleneck else 1
    spec: Spec = [("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64)]
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        stride = 1 if i == 0 else 2
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            if bottleneck:
                convs = [(inplanes, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)]
            else:
                convs = [(inplanes, planes, 3), (planes, planes, 3)]
            for c, (cin, cout, k) in enumerate(convs, 1):
                spec += [(f"{p}.conv{c}.weight", (cout, cin, k, k)), *_bn(f"{p}.bn{c}", cout)]
            if j == 0 and (stride != 1 or inplanes != planes * expansion):
                spec += [(f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1)),
                         *_bn(f"{p}.downsample.1", planes * expansion)]  # fmt: skip
            inplanes = planes * expansion
    return [*spec, ("fc.weight", (1000, inplanes)), ("fc.bias", (1000,))]


def torchvision_densenet_spec(growth: int = 32, config=(6, 12, 24, 16), init: int = 64) -> Spec:
    """torchvision DenseNet-BC (bn_size 4): features.conv0 ... features.norm5, classifier."""
    spec: Spec = [("features.conv0.weight", (init, 3, 7, 7)), *_bn("features.norm0", init)]
    nf = init
    for i, n in enumerate(config, 1):
        for j in range(1, n + 1):
            p, cin, mid = f"features.denseblock{i}.denselayer{j}", nf + (j - 1) * growth, 4 * growth
            spec += [*_bn(f"{p}.norm1", cin), (f"{p}.conv1.weight", (mid, cin, 1, 1))]
            spec += [*_bn(f"{p}.norm2", mid), (f"{p}.conv2.weight", (growth, mid, 3, 3))]
        nf += n * growth
        if i < len(config):
            p = f"features.transition{i}"
            spec += [*_bn(f"{p}.norm", nf), (f"{p}.conv.weight", (nf // 2, nf, 1, 1))]
            nf //= 2
    return [*spec, *_bn("features.norm5", nf), ("classifier.weight", (1000, nf)),
            ("classifier.bias", (1000,))]  # fmt: skip


SPECS = {
    "resnet18": torchvision_resnet_spec(False, (2, 2, 2, 2)),
    "resnet50": torchvision_resnet_spec(True, (3, 4, 6, 3)),
    "densenet121": torchvision_densenet_spec(),
}
ENTRIES = {"resnet18": 122, "resnet50": 320, "densenet121": 727}  # state_dict entries


@pytest.fixture(scope="module")
def zoo() -> dict[str, nn.Module]:
    """Each ImageNet model built once (through the registry), in eval mode."""
    torch.manual_seed(0)
    return {name: models.build(name).eval() for name in SPECS}


@pytest.mark.parametrize("name", list(SPECS))
def test_state_dict_equals_torchvision(zoo, name):
    spec, state = SPECS[name], zoo[name].state_dict()
    assert len(spec) == len(state) == ENTRIES[name]
    assert [(k, tuple(v.shape)) for k, v in state.items()] == spec  # same keys, order, shapes
    n_params = sum(v.numel() for k, v in state.items() if not k.endswith(BN_BUFFERS))
    n_spec = sum(torch.Size(s).numel() for k, s in spec if not k.endswith(BN_BUFFERS))
    assert n_params == n_spec == TORCHVISION_PARAMS[name]
    assert sum(p.numel() for p in zoo[name].parameters()) == TORCHVISION_PARAMS[name]


def test_spot_keys(zoo):
    r18, r50, d121 = (zoo[n].state_dict() for n in ("resnet18", "resnet50", "densenet121"))
    assert r18["layer2.0.downsample.1.running_mean"].shape == (128,)
    assert r18["layer1.0.bn1.num_batches_tracked"].dtype == torch.long
    assert "layer1.0.downsample.0.weight" not in r18 and "layer1.0.downsample.0.weight" in r50
    assert r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
    assert zoo["resnet50"].layer2[0].conv2.stride == (2, 2)
    assert d121["features.denseblock4.denselayer16.conv2.weight"].shape == (32, 128, 3, 3)
    assert d121["features.transition3.conv.weight"].shape == (512, 1024, 1, 1)
    assert d121["classifier.weight"].shape == (1000, 1024)


def test_resnet_mirrors_torchvision_modules(zoo):
    r18 = zoo["resnet18"]
    block = r18.layer2[0]
    assert isinstance(block, models.BasicBlock) and block.stride == 2
    assert isinstance(block.relu, nn.ReLU) and block.relu.inplace
    assert isinstance(block.downsample, nn.Sequential) and block.downsample[0].stride == (2, 2)
    assert r18.layer1[0].downsample is None and r18.layer2[1].downsample is None
    assert isinstance(r18.maxpool, nn.MaxPool2d) and r18.conv1.kernel_size == (7, 7)
    assert isinstance(r18.avgpool, nn.AdaptiveAvgPool2d) and r18.avgpool.output_size == (1, 1)
    # One ReLU module per block, called twice (BasicBlock) / three times (Bottleneck).
    n_relu = {n: sum(isinstance(m, nn.ReLU) for m in zoo[n].modules()) for n in zoo}
    assert n_relu["resnet18"] == 1 + 8 and n_relu["resnet50"] == 1 + 16
    assert n_relu["densenet121"] == 1 + 2 * 58 + 3 + 1  # relu0, dense layers, transitions, final
    convs = [m for m in r18.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    bns = [m for m in r18.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def _call_counts(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op in ("call_module", "call_function"):
            key = str(node.target) if node.op == "call_module" else node.target.__name__
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_imagenet_models_forward_and_trace(zoo):
    torch.manual_seed(0)
    # Small inputs: 64 px for ResNet-18, 32 px (the least that reaches a 1x1 map) for the others.
    x = {"resnet18": torch.rand(1, 3, 64, 64), "resnet50": torch.rand(1, 3, 32, 32),
         "densenet121": torch.rand(1, 3, 32, 32)}  # fmt: skip
    for name, model in zoo.items():
        traced = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            out = model(x[name])
            assert out.shape == (1, 1000) and torch.isfinite(out).all()
            assert torch.equal(traced(x[name]), out), name
        assert surgery.functional_relus(model) == []  # every ReLU is a module: Softplus-swappable
        counts = _call_counts(traced)
        assert counts["flatten"] == 1
        if name == "densenet121":
            assert counts["cat"] == 58 + 4 and counts["relu"] == 1  # 58 layer inputs, 4 blocks
        else:
            assert counts["add"] == (8 if name == "resnet18" else 16)  # one per residual block
            assert counts["layer1.0.relu"] == (2 if name == "resnet18" else 3)


def test_softplus_surgery_on_graph_models(zoo):
    model, x = zoo["resnet18"], torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        with surgery.softplus(model, beta=5.0) as handle:
            assert len(handle) == 9
            assert not torch.equal(model(x), before)
        assert torch.equal(model(x), before)  # restored exactly


def test_cifar_resnet_structure_and_forward():
    torch.manual_seed(0)
    net = models.build("cifar_resnet", depth=20, num_classes=7)
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert not hasattr(net, "layer4") and net.maxpool is None
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert net.layer1[0].downsample is None
    for stage, width in ((net.layer2, 32), (net.layer3, 64)):
        conv, bn = stage[0].downsample
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and bn.num_features == width
        assert stage[0].conv1.stride == (2, 2) and stage[1].downsample is None
    assert net.fc.in_features == 64 and net.fc.out_features == 7
    # 19 weighted conv layers + fc = depth 20 (the 1x1 shortcut convs are not counted).
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 20
    # ResNet-20 has 0.27M parameters (He et al. 2016, Table 6). Counted by hand: stem 432 + 32;
    # stage 1: 3 x (2 x 2304 + 2 x 32); stage 2: 4608 + 9216 + 128 + projection 512 + 64, then
    # 2 x (2 x 9216 + 128); stage 3: 18432 + 36864 + 256 + projection 2048 + 128, then
    # 2 x (2 x 36864 + 256); fc 64 x 7 + 7.
    assert sum(p.numel() for p in net.parameters()) == 272_279

    small = models.cifar_resnet(width=4, num_classes=3)  # depth 8: one block per stage
    x = torch.rand(2, 3, 32, 32)
    traced = torch.fx.symbolic_trace(small.eval())
    with torch.no_grad():
        assert small(x).shape == (2, 3) and torch.equal(traced(x), small(x))
    assert net.train()(x).shape == (2, 7)


@pytest.mark.parametrize("depth", [7, 9, 2, 0, 20.0, True])
def test_cifar_resnet_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        models.cifar_resnet(depth=depth)
    with pytest.raises(ValueError, match="width"):
        models.cifar_resnet(width=0)


def test_registry_names():
    new = {"resnet18", "resnet50", "densenet121", "cifar_resnet"}
    assert new <= set(models.architectures())
    with pytest.raises(ValueError, match="unknown architecture") as err:
        models.build("resnet1000")
    assert all(name in str(err.value) for name in new)
    net = models.build("cifar_resnet", depth=14, width=8)
    assert net.manipex_arch == {"name": "cifar_resnet", "kwargs": {"depth": 14, "width": 8}}


def test_cifar_resnet_safetensors_round_trip(tmp_path):
    torch.manual_seed(2)
    src = models.build("cifar_resnet", depth=14, num_classes=5, width=8)
    src.train()(torch.rand(4, 3, 32, 32))  # non-default running stats and counters
    path = models.save(src, tmp_path / "cifar.safetensors", metadata={"acc": 0.9})
    assert models.read_metadata(path)["arch"] == "cifar_resnet"
    rebuilt = models.load(path)
    assert isinstance(rebuilt, models.ResNet) and not rebuilt.training
    pairs = zip(src.state_dict().items(), rebuilt.state_dict().items(), strict=True)
    assert all(k == k2 and torch.equal(a, b) for (k, a), (k2, b) in pairs)
    assert int(rebuilt.bn1.num_batches_tracked) == 1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), rebuilt(x))


def test_plain_pth_state_dict_loads_into_resnet18(tmp_path, zoo):
    src = zoo["resnet18"]
    path = tmp_path / "x.pth"
    torch.save(src.state_dict(), path)  # exactly how torchvision ships its weights
    dst = models.load(path, models.build("resnet18"))
    pairs = zip(src.state_dict().items(), dst.state_dict().items(), strict=True)
    assert all(k == k2 and torch.equal(a, b) for (k, a), (k2, b) in pairs)


def test_legacy_torchvision_densenet_file_loads(tmp_path):
    """densenet121-a639ec97.pth (2017) has keys like ``denselayer1.norm.1.weight`` and no
    ``num_batches_tracked``; torchvision renames on load, and so must manipex."""
    torch.manual_seed(3)
    src = densenet_module.DenseNet(growth_rate=4, block_config=(2, 3), num_init_features=8,
                                   num_classes=3)  # fmt: skip
    state = {}
    for key, value in src.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        for mod in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            key = key.replace(f".{mod}.", f".{mod[:-1]}.{mod[-1]}.") if "denselayer" in key else key
        state[key] = value
    assert "features.denseblock1.denselayer2.norm.1.running_var" in state
    path = tmp_path / "legacy.pth"
    torch.save(state, path)
    dst = densenet_module.DenseNet(growth_rate=4, block_config=(2, 3), num_init_features=8,
                                   num_classes=3)  # fmt: skip
    models.load(path, dst)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    # A genuinely missing tensor is still an error.
    del state["features.denseblock2.denselayer3.conv.2.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="1 missing"):
        models.load(path, dst)


def test_a_zoo_model_built_directly_records_its_architecture(tmp_path):
    """``save(vgg16(...))`` writes the architecture, so ``load(path)`` rebuilds it."""
    for model in (models.vgg16(10, input_size=32), models.cifar_resnet(depth=8, num_classes=4),
                  models.tabular_mlp(5, hidden=[4])):
        path = models.save(model, tmp_path / "m.safetensors")
        loaded = models.load(path)
        assert type(loaded) is type(model) and not loaded.training
        for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(a, b)


def test_loading_into_a_given_model_returns_it_in_eval_mode(tmp_path):
    model = models.cifar_resnet(depth=8)
    path = models.save(model, tmp_path / "m.safetensors")
    target = models.cifar_resnet(depth=8).train()
    assert models.load(path, target) is target and not target.training
