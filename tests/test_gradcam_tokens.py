"""Grad-CAM on transformer tokens (pytorch-grad-cam's reshape_transform idea): (N, T, D) tokens
and (N, H, W, C) channels-last maps laid out as (N, D, h, w), the default layer found
structurally for ViTs and a Swin-like model, exact second order, the model left untouched."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex.explainers import gradcam
from manipex.explainers.gradcam import default_layer, token_grid

from conftest import assert_same_state, state_of
from test_derivatives import check_second_order
from test_rollout import TinyViT


def cam(model, x, *args, **options):
    return manipex.explain(model, x, "gradcam", *args, **options)


def vit(kind="sdpa", dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = TinyViT(kind, **kwargs).to(dtype).eval()
    torch.manual_seed(seed + 1)
    return model, torch.rand(2, 3, 8, 8, dtype=dtype)


def by_hand(model, x, layer, target, prefix):
    """Grad-CAM by hand at ``layer``'s token output: drop ``prefix`` tokens, (N, D, h, w)."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out[torch.arange(x.shape[0]), target].sum(), a)
    n, t, d = a.shape
    side = int(round((t - prefix) ** 0.5))
    maps = a[:, prefix:].reshape(n, side, side, d).permute(0, 3, 1, 2)
    grads = g[:, prefix:].reshape(n, side, side, d).permute(0, 3, 1, 2)
    c = F.relu((grads.mean((2, 3), keepdim=True) * maps).sum(1, keepdim=True))
    return F.interpolate(c, size=x.shape[2:], mode="bilinear", align_corners=False).expand_as(x)


# ----------------------------------------------------------------------------- token layout

def test_token_grid():
    assert token_grid(197, (224, 224), None, "t") == (1, 14, 14)
    assert token_grid(198, (224, 224), None, "t") == (2, 14, 14)  # DeiT
    assert token_grid(49, (7, 7), None, "t") == (0, 7, 7)
    assert token_grid(1 + 8 * 16, (128, 256), None, "t") == (1, 8, 16)  # a non-square input
    assert token_grid(17, (8, 8), 1, "t") == (1, 4, 4)
    with pytest.raises(ValueError, match="prefix_tokens=3 leave 14 patch tokens"):
        token_grid(17, (8, 8), 3, "t")


@pytest.mark.parametrize("kind", ["sdpa", "explicit", "mha"])
def test_tokens_of_a_block_are_reshaped_and_equal_grad_cam_by_hand(kind):
    model, x = vit(kind)
    target = torch.tensor([0, 2])
    for layer in ("blocks.0", "blocks.1"):
        h = cam(model, x, target, layer=layer)
        assert h.shape == x.shape
        expected = by_hand(model, x, model.get_submodule(layer), target, 1)
        assert torch.allclose(h, expected, rtol=1e-12, atol=1e-14)
        # prefix inferred (17 tokens: 1) or given; a reshape= callable gives the same
        assert torch.equal(h, cam(model, x, target, layer=layer, prefix_tokens=1))
        custom = cam(model, x, target, layer=layer,
                     reshape=lambda a: a[:, 1:].reshape(a.shape[0], 4, 4, -1).permute(0, 3, 1, 2))
        assert torch.equal(h, custom)
    assert cam(model, x, target, layer="blocks.0").abs().sum() > 0


def test_deit_and_mean_pooled_vits():
    model, x = vit("sdpa", dist=True)
    h = cam(model, x, 1)
    name, _ = default_layer(model)
    assert name == "blocks.0"
    assert torch.allclose(h, by_hand(model, x, model.blocks[0], torch.tensor([1, 1]), 2))
    model, x = vit("sdpa", pool="avg")
    assert default_layer(model)[0] == "blocks"
    h = cam(model, x, 1)
    assert torch.allclose(h, by_hand(model, x, model.blocks, torch.tensor([1, 1]), 0))
    assert h.abs().sum() > 0


# ----------------------------------------------------------------------------- default layers

def test_vit_default_is_the_input_of_the_last_block_with_a_class_token():
    """The patch tokens of the last block's output do not reach the class-token head: their
    gradient is exactly zero, so the default is the output of the block before."""
    model, x = vit("sdpa", depth=3)
    name, module = default_layer(model)
    assert name == "blocks.1" and module is model.blocks[1]
    assert torch.equal(cam(model, x), cam(model, x, layer="blocks.1"))
    assert torch.equal(cam(model, x, layer="blocks.2"), torch.zeros_like(x))  # the blank map avoided
    assert cam(model, x).abs().sum() > 0


class ModuleListViT(TinyViT):
    """Blocks in a ModuleList looped over by the forward (Hugging Face's and others' layout)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = nn.ModuleList(list(self.blocks))

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(F.layer_norm(x, x.shape[-1:])[:, 0, :])


def test_vit_with_a_module_list_and_functional_norm():
    torch.manual_seed(0)
    model = ModuleListViT(depth=3).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert default_layer(model)[0] == "blocks.1"
    assert cam(model, x).shape == x.shape


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class SwinBlock(nn.Module):
    """A channels-last (N, H, W, C) block: LayerNorm, attention over all positions, MLP."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        n, h, w, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, h * w, 3, c).permute(2, 0, 1, 3)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v)).reshape(n, h, w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class TinySwin(nn.Module):
    """torchvision's Swin layout: features (patch embedding Conv2d - Permute - LayerNorm, stage,
    merging, stage), norm, permute(0, 3, 1, 2), AdaptiveAvgPool2d(1), flatten, head."""

    def __init__(self, dim=6, classes=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, dim, 2, 2), Permute([0, 2, 3, 1]), nn.LayerNorm(dim)),
            nn.Sequential(SwinBlock(dim)), PatchMerging(dim), nn.Sequential(SwinBlock(2 * dim)))
        self.norm = nn.LayerNorm(2 * dim)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x):
        x = self.features(x)
        x = self.norm(x)
        x = self.permute(x)
        x = self.avgpool(x)
        return self.head(self.flatten(x))


def swin():
    torch.manual_seed(0)
    model = TinySwin().double().eval()
    torch.manual_seed(1)
    return model, torch.rand(2, 3, 8, 8, dtype=torch.float64)


def test_swin_like_default_is_the_last_stage_channels_last():
    model, x = swin()
    found = gradcam._default(model)
    assert found == ("features", 0) and found.channels_last
    h = cam(model, x, 0)
    assert h.shape == x.shape and h.abs().sum() > 0
    # by hand: the (N, 2, 2, 12) stage output permuted to (N, 12, 2, 2)
    store = {}
    handle = model.features.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    out = model(x)
    handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(out[:, 0].sum(), a)
    a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    expected = F.interpolate(F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)), size=(8, 8),
                             mode="bilinear", align_corners=False).expand_as(x)
    assert torch.allclose(h, expected, rtol=1e-12, atol=1e-14)
    # a given layer: channels-last inferred from the shape (2, 2, 12 on an 8x8 input), or told
    assert torch.equal(h, cam(model, x, 0, layer="features"))
    assert torch.equal(h, cam(model, x, 0, layer="features", channels_last=True))
    assert not torch.allclose(h, cam(model, x, 0, layer="features", channels_last=False))
    assert cam(model, x, 0, layer="features.1").shape == x.shape  # (N, 4, 4, 6): an earlier stage


# ----------------------------------------------------------------------------- exact second order

@pytest.mark.parametrize("kind", ["sdpa", "explicit", "mha"])
def test_second_order_matches_finite_differences_on_tokens(kind):
    model, x = vit(kind)
    before = state_of(model)
    check_second_order(model, x, "gradcam", {})  # the default layer, blocks.0
    check_second_order(model, x, "gradcam", {"layer": "blocks.0", "prefix_tokens": 1})
    assert_same_state(before, state_of(model))


def test_second_order_on_channels_last():
    model, x = swin()
    check_second_order(model, x, "gradcam", {})


# ----------------------------------------------------------------------------- errors, untouched

def test_errors_and_the_model_untouched():
    model, x = vit("sdpa")
    before = state_of(model)
    attributes = set(vars(model))
    with pytest.raises(ValueError, match="prefix_tokens=3 leave 14 patch tokens"):
        cam(model, x, layer="blocks.0", prefix_tokens=3)
    with pytest.raises(ValueError, match="reshape must return"):
        cam(model, x, layer="blocks.0", reshape=lambda a: a)
    with pytest.raises(TypeError, match="reshape"):
        cam(model, x, reshape=3)
    with pytest.raises(TypeError, match="channels_last"):
        cam(model, x, channels_last="yes")
    with pytest.raises(ValueError, match="prefix_tokens"):
        cam(model, x, prefix_tokens=-1)
    with pytest.raises(ValueError):  # target out of range: after the forward
        cam(model, x, 7)
    assert_same_state(before, state_of(model))
    assert set(vars(model)) == attributes
    assert all(not m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- the suite's replicas

REPLICAS = os.path.join(os.path.dirname(__file__), "transformer_replicas.py")


@pytest.mark.skipif(not os.path.exists(REPLICAS), reason="tests/transformer_replicas.py is not there")
@pytest.mark.parametrize("name, layer, channels_last", [
    ("vit_tv", "encoder.layers.encoder_layer_", False), ("vit_timm", "blocks.", False),
    ("vit_timm_explicit", "blocks.", False), ("deit", "blocks.", False), ("swin", "features", True),
])
def test_replicas_default_layers(name, layer, channels_last):
    spec = importlib.util.spec_from_file_location("transformer_replicas", REPLICAS)
    replicas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replicas)
    model = replicas.build(name, dtype=torch.float64)
    x = replicas.example(name, 2, dtype=torch.float64)
    found = gradcam._default(model)
    if name != "swin":  # the input of the last block: the output of the one before it
        depth = len(model.blocks if hasattr(model, "blocks") else model.encoder.layers)
        layer = layer + str(depth - 2)
    assert found is not None and found[0] == layer and found.channels_last == channels_last
    h = cam(model, x)
    assert h.shape == x.shape and h.abs().sum() > 0
    before = state_of(model)
    check_second_order(model, x, "gradcam", {})
    if name != "swin":
        assert manipex.explain(model, x, "attention_rollout", prefix_tokens=2 if name == "deit" else 1).shape == x.shape
    assert_same_state(before, state_of(model))
