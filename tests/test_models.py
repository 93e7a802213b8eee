"""Tests of manipex.models: architectures, torchvision key compatibility, safe checkpoint I/O,
and the cached default model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from manipex import models
from manipex.models import pretrained, training

ALLOWED_LEAVES = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten,
    nn.Dropout, nn.BatchNorm2d,
)  # fmt: skip

SHAPES = [
    ("mnist_cnn", {}, (3, 1, 28, 28), 10),
    ("mnist_cnn", {"num_classes": 4}, (3, 1, 28, 28), 4),
    ("atex_cnn", {}, (3, 1, 28, 28), 10),
    ("vgg16", {"num_classes": 10, "input_size": 32}, (2, 3, 32, 32), 10),
    ("vgg16", {"num_classes": 10, "input_size": 32, "batch_norm": True}, (2, 3, 32, 32), 10),
    ("vgg16_bn", {"num_classes": 7, "input_size": 32}, (2, 3, 32, 32), 7),
    ("tabular_mlp", {"in_features": 12}, (5, 12), 2),
    ("tabular_mlp", {"in_features": 12, "num_classes": 3, "hidden": []}, (5, 12), 3),
]


@pytest.mark.parametrize(("name", "kwargs", "shape", "classes"), SHAPES)
def test_forward_shape_and_plain_modules(name, kwargs, shape, classes):
    torch.manual_seed(0)
    model = models.build(name, **kwargs)
    assert model(torch.rand(shape)).shape == (shape[0], classes)
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, ALLOWED_LEAVES) for m in leaves), leaves
    assert not any(getattr(m, "inplace", False) for m in leaves)


def test_vgg16_imagenet_forward():
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = models.vgg16().eval()
        assert model(torch.empty(1, 3, 224, 224)).shape == (1, 1000)
    assert model.avgpool.output_size == (7, 7)
    assert model.classifier[0].in_features == 25088 and model.classifier[3].out_features == 4096


def test_registry():
    assert {"mnist_cnn", "atex_cnn", "vgg16", "vgg16_bn", "tabular_mlp"} <= set(models.architectures())
    with pytest.raises(ValueError, match="mnist_cnn"):
        models.build("no_such_net")
    with pytest.raises(ValueError, match="input_size"):
        models.vgg16(input_size=64)


def test_atex_cnn_matches_reference_code():
    model = models.atex_cnn()
    assert list(model.state_dict()) == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
        "fc_model.0.weight", "fc_model.0.bias", "fc_model.2.weight", "fc_model.2.bias",
    ]  # fmt: skip
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(32, (3, 3), (1, 1))] * 2
    assert isinstance(model.fc_model[1], nn.Tanh) and model.fc_model[0].out_features == 120


def _torchvision_keys(conv_idx, bn_idx=()):
    keys = []
    for i in sorted([*conv_idx, *bn_idx]):
        keys += [f"features.{i}.weight", f"features.{i}.bias"]
        if i in bn_idx:
            keys += [f"features.{i}.{s}" for s in ("running_mean", "running_var", "num_batches_tracked")]
    return keys + [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]


VGG16_CONV = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_BN = [0, 1, 3, 4, 7, 8, 10, 11, 14, 15, 17, 18, 20, 21, 24, 25, 27, 28, 30, 31, 34, 35, 37, 38, 40, 41]
VGG16_KEYS = _torchvision_keys(VGG16_CONV)
VGG16_BN_KEYS = _torchvision_keys(VGG16_BN[0::2], VGG16_BN[1::2])


@pytest.mark.parametrize("input_size", [224, 32])
def test_vgg16_keys_equal_torchvision(input_size):
    with torch.device("meta"):  # no memory, no init cost
        plain = models.vgg16(input_size=input_size)
        bn = models.vgg16(batch_norm=True, input_size=input_size)
    assert len(VGG16_KEYS) == 32 and len(VGG16_BN_KEYS) == 97
    assert list(plain.state_dict()) == VGG16_KEYS
    assert list(bn.state_dict()) == VGG16_BN_KEYS
    # Pools where torchvision has them (its ReLUs follow each conv / BN).
    assert [i for i, m in enumerate(plain.features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16, 23, 30]
    assert [i for i, m in enumerate(bn.features) if isinstance(m, nn.MaxPool2d)] == [6, 13, 23, 33, 43]
    if input_size == 224:
        assert plain.state_dict()["classifier.0.weight"].shape == (4096, 25088)


def test_torch_pth_state_dict_loads_strict(tmp_path):
    torch.manual_seed(0)
    src = models.vgg16(num_classes=10, batch_norm=True, input_size=32)
    src.features[1].running_mean.uniform_()  # make buffers non-default
    path = tmp_path / "vgg16_bn.pth"
    torch.save(src.state_dict(), path)  # exactly how torchvision ships its weights
    dst = models.load(path, models.vgg16(num_classes=10, batch_norm=True, input_size=32))
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_pth_nested_and_dataparallel_prefix(tmp_path):
    src = models.mnist_cnn()
    prefixed = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": prefixed}, path)
    dst = models.load(path, models.mnist_cnn())
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match="pass a model"):
        models.load(path)


def test_safetensors_round_trip_bit_exact(tmp_path):
    torch.manual_seed(1)
    src = models.build("tabular_mlp", in_features=6, hidden=(8, 4)).double()
    path = models.save(src, tmp_path / "mlp.safetensors", metadata={"note": "x", "acc": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.safetensors"]  # no temp file left
    meta = models.read_metadata(path)
    assert meta == {
        "arch": "tabular_mlp",
        "arch_kwargs": {"in_features": 6, "hidden": [8, 4]},
        "metadata": {"note": "x", "acc": 0.5},
    }
    rebuilt = models.load(path)  # architecture rebuilt from the header
    assert not rebuilt.training
    for (k, a), (k2, b) in zip(src.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype == torch.float64 and torch.equal(a, b)
    into = models.tabular_mlp(6, hidden=(8, 4)).double()
    assert models.load(path, into) is into
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), into.state_dict().values()))


def test_save_with_explicit_arch_and_bn_buffers(tmp_path):
    src = models.vgg16(num_classes=10, batch_norm=True, input_size=32)
    src.train()(torch.rand(2, 3, 32, 32))  # updates running stats and num_batches_tracked
    path = models.save(src, tmp_path / "v.safetensors", arch="vgg16",
                       arch_kwargs={"num_classes": 10, "batch_norm": True, "input_size": 32})  # fmt: skip
    rebuilt = models.load(path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), rebuilt.state_dict().values()))
    assert int(rebuilt.features[1].num_batches_tracked) == 1


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        models.load(tmp_path / "missing.safetensors")
    anonymous = nn.Sequential(nn.Linear(2, 2))
    path = models.save(anonymous, tmp_path / "anon.safetensors")
    with pytest.raises(ValueError, match="no architecture"):
        models.load(path)
    cnn = models.save(models.build("mnist_cnn"), tmp_path / "cnn.safetensors")
    with pytest.raises(ValueError, match=r"missing \(first: \['features.0.weight'"):
        models.load(cnn, models.atex_cnn())
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        (tmp_path / "w.npz").write_bytes(b"")
        models.load(tmp_path / "w.npz", anonymous)


def _touch(path: str) -> None:
    Path(path).touch()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"0.weight": torch.zeros(2, 2), "payload": _Evil(marker)}, path)
    with pytest.raises(ValueError, match="refused to unpickle"):
        models.load(path, nn.Sequential(nn.Linear(2, 2)))
    assert not marker.exists()
    # Control: the payload is real; an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture
def fast_recipe(monkeypatch):
    """Two epochs instead of three, and a counter of training runs."""
    recipe = dataclasses.replace(pretrained.DEFAULT_RECIPES["mnist"], epochs=2)
    monkeypatch.setitem(pretrained.DEFAULT_RECIPES, "mnist", recipe)
    calls = []
    real = training.train_classifier

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_classifier", counting)
    return calls


def test_load_default_trains_once_then_loads(tmp_path, fast_recipe):
    rng = torch.get_rng_state()
    model = models.load_default(cache_dir=tmp_path, progress=False)
    assert len(fast_recipe) == 1 and fast_recipe[0]["epochs"] == 2
    assert torch.equal(torch.get_rng_state(), rng)  # caller's RNG untouched
    assert not model.training and all(p.requires_grad for p in model.parameters())
    (cached,) = tmp_path.glob("mnist-*.safetensors")
    meta = models.read_metadata(cached)
    assert meta["arch"] == "mnist_cnn" and meta["metadata"]["recipe"]["epochs"] == 2
    assert meta["metadata"]["test_accuracy"] >= 0.85

    again = models.load_default(cache_dir=tmp_path, progress=False)
    assert len(fast_recipe) == 1  # loaded, not retrained
    assert not again.training and all(p.requires_grad for p in again.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    from manipex import data

    x, y = data.load("mnist5k", split="test")
    assert models.accuracy(again, x, y) == pytest.approx(meta["metadata"]["test_accuracy"])

    retrained = models.load_default(cache_dir=tmp_path, retrain=True, progress=False)
    assert len(fast_recipe) == 2  # seeded: the same weights again
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), retrained.state_dict().values()))

    cached.write_bytes(b"garbage")  # a damaged cache file is replaced
    with pytest.warns(UserWarning, match="retraining"):
        models.load_default(cache_dir=tmp_path, progress=False)
    assert len(fast_recipe) == 3


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MANIPEX_CACHE_DIR", str(tmp_path / "env"))
    assert models.default_cache_dir() == tmp_path / "env"
    assert models.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MANIPEX_CACHE_DIR")
    assert "manipex" in str(models.default_cache_dir())
    with pytest.raises(ValueError, match="mnist"):
        models.load_default("imagenet", cache_dir=tmp_path)


def test_train_classifier_and_accuracy_restore_mode():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = models.tabular_mlp(4, hidden=(16,)).eval()
    before = models.accuracy(model, x, y)
    assert models.train_classifier(model, x, y, epochs=30, lr=1e-2, batch_size=16, progress=False) is model
    assert not model.training
    assert models.accuracy(model, x, y) > max(before, 0.9)
    with pytest.raises(ValueError, match="length"):
        models.train_classifier(model, x, y[:3], epochs=1, progress=False)
