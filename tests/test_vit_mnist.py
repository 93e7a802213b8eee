"""The default ViT ``vit_mnist``: its architecture, the shipped weights (digests checked, the
recorded accuracy), gradient maps, and ``manipex audit --arch vit_mnist`` resolving to it."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import torch.fx
from torch import nn

import manipex
from manipex import models
from manipex.models import pretrained
from manipex.models.vit import Attention, Block, VisionTransformer, vit_mnist

#: the test accuracy the shipped ViT must exceed (it records 0.942; the default CNN 0.949)
ACCURACY_FLOOR = 0.93


@pytest.fixture(scope="module")
def vit():
    return models.load_default("vit_mnist", progress=False)


def test_the_architecture_has_the_vit_structure_and_parameter_count():
    net = models.build("vit_mnist")
    assert isinstance(net, VisionTransformer) and net.manipex_arch == {"name": "vit_mnist", "kwargs": {}}
    assert sum(p.numel() for p in net.parameters()) == 139_018
    proj = net.patch_embed.proj
    assert (proj.in_channels, proj.out_channels, proj.kernel_size, proj.stride) == (1, 64, (7, 7), (7, 7))
    assert net.cls_token.shape == (1, 1, 64) and net.pos_embed.shape == (1, 17, 64)
    assert len(net.blocks) == 4 and all(isinstance(b, Block) for b in net.blocks)
    block = net.blocks[0]
    assert isinstance(block.norm1, nn.LayerNorm) and isinstance(block.attn, Attention) and block.attn.heads == 4
    assert (block.attn.qkv.in_features, block.attn.qkv.out_features) == (64, 192)
    assert (block.mlp.fc1.out_features, block.mlp.fc2.out_features) == (128, 64) and isinstance(block.mlp.act, nn.GELU)
    assert isinstance(net.norm, nn.LayerNorm) and (net.head.in_features, net.head.out_features) == (64, 10)
    assert not any(isinstance(m, (nn.Dropout, nn.ReLU)) for m in net.modules())
    keys = set(net.state_dict())  # timm's names
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.3.attn.qkv.weight", "blocks.3.attn.proj.bias",
            "blocks.0.mlp.fc1.weight", "norm.weight", "head.bias"} <= keys
    assert "vit_mnist" in models.architectures() and models.vit_mnist is not None


def test_parameter_count_by_part():
    net = vit_mnist()
    per_block = (64 * 192 + 192) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 2 * 2 * 64
    expected = (49 * 64 + 64) + 64 + 17 * 64 + 4 * per_block + 2 * 64 + (64 * 10 + 10)
    assert sum(p.numel() for p in net.parameters()) == expected == 139_018


def test_forward_shapes_and_fx_trace():
    torch.manual_seed(0)
    net = vit_mnist().eval()
    x = torch.rand(3, 1, 28, 28)
    out = net(x)
    assert out.shape == (3, 10)
    traced = torch.fx.symbolic_trace(net)
    assert torch.allclose(traced(x), out, atol=1e-6)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert torch.nn.functional.scaled_dot_product_attention in targets and torch.cat in targets
    other = VisionTransformer(5, image_size=32, patch=4, channels=3, dim=32, depth=2, heads=2, mlp=64)
    assert other(torch.rand(2, 3, 32, 32)).shape == (2, 5) and other.pos_embed.shape == (1, 65, 32)
    with pytest.raises(ValueError, match="multiple of patch"):
        VisionTransformer(image_size=28, patch=5)
    with pytest.raises(ValueError, match="divisible by heads"):
        VisionTransformer(dim=30, heads=4)


def test_load_default_is_the_shipped_file_checked_and_trains_nothing(vit, monkeypatch, tmp_path):
    def no_training(*args, **kwargs):
        raise AssertionError("load_default trained a model although its weights are shipped")

    monkeypatch.setattr(pretrained.training, "train_classifier", no_training)
    path = pretrained.shipped_path("vit_mnist")
    assert path.is_file() and path.stat().st_size < 1_000_000
    meta = models.read_metadata(path)["metadata"]
    assert meta["recipe"] == dataclasses.asdict(pretrained.DEFAULT_RECIPES["vit_mnist"])
    assert meta["recipe"]["arch"] == "vit_mnist" and meta["recipe"]["dataset"] == "mnist5k"
    again = models.load_default("vit_mnist", cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing cached
    assert pretrained.state_digest(again) == pretrained.state_digest(vit) == meta["state_sha256"]
    assert isinstance(vit, VisionTransformer) and not vit.training and all(p.requires_grad for p in vit.parameters())
    x, y = manipex.data.load("mnist5k", split="test")
    acc = models.accuracy(vit, x, y)
    assert acc == pytest.approx(meta["test_accuracy"]) and acc > ACCURACY_FLOOR


def test_a_damaged_shipped_vit_is_refused(vit, monkeypatch, tmp_path):
    path = pretrained.shipped_path("vit_mnist")
    meta = models.read_metadata(path)["metadata"]
    damaged = models.build("vit_mnist")
    damaged.load_state_dict(vit.state_dict())
    with torch.no_grad():
        damaged.head.bias[0] += 1e-3
    monkeypatch.setattr(pretrained, "SHIPPED_DIR", tmp_path)
    models.save(damaged, tmp_path / path.name, arch="vit_mnist", metadata=meta)
    with pytest.raises(ValueError, match="damaged"):
        models.load_default("vit_mnist")
    shutil.copy(path, tmp_path / path.name)
    assert pretrained.state_digest(models.load_default("vit_mnist")) == meta["state_sha256"]


def test_gradient_maps_are_finite(vit):
    x, y = manipex.data.load("mnist5k", split="test")
    x, y = x[:4], y[:4]
    h = manipex.explain(vit, x, "gradient", y)
    assert h.shape == x.shape and torch.isfinite(h).all() and (h.abs().flatten(1).sum(1) > 0).all()
    xr = x.clone().requires_grad_(True)
    expected, = torch.autograd.grad(vit(xr).gather(1, y[:, None]).sum(), xr)
    assert torch.allclose(h, expected, atol=1e-6)
    # second order (the attacks): the map differentiated again, through the math SDPA kernel
    xa = x.clone().requires_grad_(True)
    g = manipex.explain(vit, xa, "gradient", y, create_graph=True)
    second, = torch.autograd.grad(g.pow(2).sum(), xa)
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def _audit_config(argv):
    from manipex.cli import audit_overrides, build_parser
    from manipex.experiments.audit import AuditConfig

    return AuditConfig.resolve(audit_overrides(build_parser().parse_args(["audit", *argv])), sources=["test"])


def test_audit_arch_vit_mnist_resolves_to_the_default_vit(vit, tmp_path):
    from manipex.experiments.audit import Audit
    from manipex.experiments.sources import original_model

    for argv in (["--arch", "vit_mnist"], ["default", "--arch", "vit_mnist"]):
        config = _audit_config(argv)
        assert config.default_model == "vit_mnist" and config.is_default and not config.trains_here
    x, y = manipex.data.load("mnist5k", split="train")
    loaded = original_model(config, (x[:8], y[:8]), "cpu")
    assert pretrained.state_digest(loaded) == pretrained.state_digest(vit)
    # references: the vit_mnist architecture with its recipe's epochs, lr and batch size
    ctx = type("Ctx", (), {"train": (x[:8], y[:8]), "model": vit})()
    recipe = Audit()._recipe(config, ctx)
    default = pretrained.DEFAULT_RECIPES["vit_mnist"]
    assert (recipe.arch, recipe.kwargs, recipe.epochs, recipe.lr, recipe.batch_size) == (
        "vit_mnist", {}, default.epochs, default.lr, default.batch_size)
    assert isinstance(models.build(recipe.arch, **recipe.kwargs), VisionTransformer)
    # the CNN stays the default; weights or other data are not a default model
    assert _audit_config([]).default_model == "mnist"
    assert _audit_config(["--arch", "mnist_cnn"]).default_model == "mnist"
    assert _audit_config(["--arch", "atex_cnn"]).default_model is None
    weights = models.save(vit, tmp_path / "vit.safetensors")
    config = _audit_config([str(weights), "--arch", "vit_mnist"])
    assert config.default_model is None and config.weights == str(weights)
