"""Attention rollout (Abnar & Zuidema 2020, Sec. 3): closed forms, capture of every kind of
attention (SDPA, explicit softmax, nn.MultiheadAttention), exact second order, errors, and the
model left untouched.

The ViTs are tiny replicas written here with timm's structure (Conv2d patch embedding, class
token concatenated, position embedding, pre-norm blocks with a fused qkv Linear, LayerNorm, GELU
MLP, final norm, head on the class token).
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex.explainers.rollout import AttentionRecorder, scaled_dot_product_attention

from conftest import assert_same_state, make, state_of
from test_derivatives import check_second_order


def rollout(model, x, *args, **options):
    return manipex.explain(model, x, "attention_rollout", *args, **options)


# ----------------------------------------------------------------------------- replicas

class Attention(nn.Module):
    """timm's ``Attention``: fused qkv, then ``kind``: ``"sdpa"`` (F.scaled_dot_product_attention,
    timm's fused path), ``"explicit"`` (``(q * scale) @ k^T``, ``attn.softmax(dim=-1)``, ``@ v``)
    or ``"mha"`` (nn.MultiheadAttention(batch_first=True) called with need_weights=False, as
    torchvision's ViT does)."""

    def __init__(self, dim: int, heads: int, kind: str) -> None:
        super().__init__()
        self.heads, self.head_dim, self.kind = heads, dim // heads, kind
        self.scale = self.head_dim ** -0.5
        if kind == "mha":
            self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        if self.kind == "mha":
            out, _ = self.mha(x, x, x, need_weights=False)
            return out
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.kind == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kind: str) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, kind)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """timm's VisionTransformer at tiny sizes; ``dist=True``: DeiT's distillation token (two
    prefix tokens, two heads averaged); ``pool="avg"``: no class token, mean of the tokens."""

    def __init__(self, kind: str = "sdpa", image: int = 8, patch: int = 2, dim: int = 8, heads: int = 2,
                 depth: int = 2, classes: int = 3, dist: bool = False, pool: str = "token") -> None:
        super().__init__()
        self.pool = pool
        self.prefix = 0 if pool == "avg" else 2 if dist else 1
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5) if self.prefix else None
        self.dist_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5) if dist else None
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + self.prefix, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim, heads, kind) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.head_dist = nn.Linear(dim, classes) if dist else None

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        if self.pool == "avg":
            return self.head(x.mean(dim=1))
        if self.head_dist is not None:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        return self.head(x[:, 0])


def vit(kind: str = "sdpa", dtype=torch.float64, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = TinyViT(kind, **kwargs).to(dtype).eval()
    torch.manual_seed(seed + 1)
    return model, torch.rand(2, 3, 8, 8, dtype=dtype)


class FixedAttention(nn.Module):
    """Attention whose probabilities are ``softmax(logits)``, a parameter: known in closed form.
    The values are the tokens themselves, so the output is ``attn @ x``."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x):
        attn = torch.softmax(self.logits.expand(x.shape[0], -1, -1, -1), dim=-1)  # (N, heads, T, T)
        return x + (attn.mean(1) @ x)


class Fixed(nn.Module):
    """Patch size 1 on a 4x4 image: 16 patch tokens plus a class token, ``layers`` fixed
    attentions (each ``(heads, 17, 17)`` logits), a head on the class token."""

    def __init__(self, *logits):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 4, 1)
        self.cls_token = nn.Parameter(torch.ones(1, 1, 4))
        self.layers = nn.Sequential(*[FixedAttention(a) for a in logits])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        return self.head(self.layers(x)[:, 0])


def fixed(*logits):
    torch.manual_seed(0)
    return Fixed(*logits).double().eval(), torch.rand(2, 3, 4, 4, dtype=torch.float64)


def expected_rollout(attentions, fusion="mean"):
    """The definition, by hand: (T, T) per layer after head fusion, 0.5 A + 0.5 I, rows to 1,
    Â_L ... Â_1."""
    result = torch.eye(attentions[0].shape[-1], dtype=torch.float64)
    for a in attentions:
        a = {"mean": a.mean(0), "max": a.amax(0), "min": a.amin(0)}[fusion]
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=torch.float64)
        result = (a / a.sum(-1, keepdim=True)) @ result
    return result


# ----------------------------------------------------------------------------- closed forms

def test_uniform_attention_gives_a_uniform_map():
    """One layer of uniform attention 1/T: Â's class row over the patches is 0.5/T each."""
    model, x = fixed(torch.zeros(2, 17, 17, dtype=torch.float64))
    h = rollout(model, x)
    assert h.shape == x.shape
    assert torch.allclose(h, torch.full_like(x, 0.5 / 17), rtol=0, atol=1e-15)


def test_identity_attention_gives_a_zero_map_and_token_none_a_uniform_one():
    """Attention to itself only: the rollout is I, the class row has nothing on the patches;
    the mean of all rows is 1/T on every token."""
    model, x = fixed(torch.eye(17, dtype=torch.float64).expand(2, -1, -1) * 1e4)
    assert torch.equal(rollout(model, x), torch.zeros_like(x))
    assert torch.allclose(rollout(model, x, token=None), torch.full_like(x, 1 / 17), rtol=0, atol=1e-15)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_two_layers_follow_the_definition(fusion):
    torch.manual_seed(5)
    logits = [torch.randn(3, 17, 17, dtype=torch.float64) * 2 for _ in range(2)]
    model, x = fixed(*logits)
    expected = expected_rollout([torch.softmax(a, -1) for a in logits], fusion)
    h = rollout(model, x, head_fusion=fusion)
    grid = expected[0, 1:].reshape(4, 4)  # 4x4 patches of size 1: no interpolation
    assert torch.allclose(h, grid.expand_as(x), rtol=1e-12, atol=0)
    # the order matters: Â_2 Â_1 is not Â_1 Â_2
    swapped = expected_rollout([torch.softmax(a, -1) for a in logits[::-1]], fusion)
    assert not torch.allclose(swapped[0, 1:].reshape(4, 4).expand_as(x), h)
    # token picks the row; token=-1 is the last patch token's row
    assert torch.allclose(rollout(model, x, head_fusion=fusion, token=5), expected[5, 1:].reshape(4, 4).expand_as(x))
    assert torch.allclose(rollout(model, x, head_fusion=fusion, token=None),
                          expected.mean(0)[1:].reshape(4, 4).expand_as(x))


def test_the_map_is_the_upsampled_patch_row():
    """A ViT on 8x8 images with 2x2 patches: the class row over the 4x4 patches, bilinearly
    upsampled, the same in every channel; prefix_tokens=0 with grid reads the class token too."""
    model, x = vit("explicit")
    with AttentionRecorder() as recorder:
        model(x)
    assert len(recorder.maps) == 2 and recorder.maps[0].shape == (2, 2, 17, 17)
    expected = [expected_rollout([a[i] for a in recorder.maps])[0] for i in range(2)]
    patches = torch.stack([e[1:] for e in expected]).reshape(2, 1, 4, 4)
    h = rollout(model, x, 1)  # the target is accepted and ignored: rollout is class-agnostic
    assert torch.allclose(h, F.interpolate(patches, size=(8, 8), mode="bilinear", align_corners=False).expand_as(x))
    assert torch.equal(h, rollout(model, x, 0)) and torch.equal(h, rollout(model, x))
    all_tokens = torch.stack(expected)[:, :16].reshape(2, 1, 2, 8)
    assert torch.allclose(rollout(model, x, prefix_tokens=1, grid=(2, 8)),
                          F.interpolate(torch.stack(expected)[:, 1:].reshape(2, 1, 2, 8), size=(8, 8),
                                        mode="bilinear", align_corners=False).expand_as(x))
    assert not torch.allclose(all_tokens, torch.stack(expected)[:, 1:].reshape(2, 1, 2, 8))


def test_deit_and_mean_pooled_vits():
    model, x = vit("sdpa", dist=True)
    h = rollout(model, x, prefix_tokens=2)
    assert h.shape == x.shape and (h > 0).all()
    with pytest.raises(ValueError, match="not a square grid"):
        rollout(model, x)  # 18 tokens less 1 prefix: 17 patches
    model, x = vit("sdpa", pool="avg")
    h = rollout(model, x, prefix_tokens=0, token=None)
    assert h.shape == x.shape and (h > 0).all()


# ----------------------------------------------------------------------------- capture

@pytest.mark.parametrize("kind", ["sdpa", "explicit", "mha"])
def test_every_attention_kind_is_captured_and_the_forward_is_unchanged(kind):
    model, x = vit(kind)
    plain = model(x)
    with AttentionRecorder() as recorder:
        recorded = model(x)
    assert torch.allclose(plain, recorded, rtol=1e-12, atol=1e-12)
    assert len(recorder.maps) == 2
    for a in recorder.maps:
        assert a.shape == (2, 2, 17, 17) and torch.allclose(a.sum(-1), torch.ones(2, 2, 17, dtype=a.dtype))
    assert torch._C._len_torch_function_stack() == 0


def test_the_three_kinds_of_the_same_weights_give_the_same_map():
    """SDPA and explicit softmax of the same qkv weights; nn.MultiheadAttention with them."""
    sdpa, x = vit("sdpa")
    explicit, _ = vit("explicit")
    explicit.load_state_dict(sdpa.state_dict())
    mha, _ = vit("mha")
    state = {k: v for k, v in sdpa.state_dict().items() if ".attn." not in k}
    for i, block in enumerate(sdpa.blocks):
        state[f"blocks.{i}.attn.mha.in_proj_weight"] = block.attn.qkv.weight
        state[f"blocks.{i}.attn.mha.in_proj_bias"] = block.attn.qkv.bias
        state[f"blocks.{i}.attn.mha.out_proj.weight"] = block.attn.proj.weight
        state[f"blocks.{i}.attn.mha.out_proj.bias"] = block.attn.proj.bias
    mha.load_state_dict(state)
    assert torch.allclose(sdpa(x), mha(x)) and torch.allclose(sdpa(x), explicit(x))
    h = rollout(sdpa, x)
    assert torch.allclose(h, rollout(explicit, x), rtol=1e-10, atol=1e-14)
    assert torch.allclose(h, rollout(mha, x), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("case", ["plain", "bool", "float", "causal", "scale", "gqa", "cross"])
def test_explicit_sdpa_is_torch_s(case):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 3, dtype=torch.float64) for _ in range(3))
    kwargs = {}
    if case == "bool":
        kwargs["attn_mask"] = torch.rand(5, 5) > 0.3
        kwargs["attn_mask"][:, 0] = True  # no row fully masked
    elif case == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    elif case == "causal":
        kwargs["is_causal"] = True
    elif case == "scale":
        kwargs["scale"] = 0.3
    elif case == "gqa":
        k, v = k[:, :2], v[:, :2]
        kwargs["enable_gqa"] = True
    elif case == "cross":
        k, v = torch.randn(2, 4, 7, 3, dtype=torch.float64), torch.randn(2, 4, 7, 3, dtype=torch.float64)
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    out, probabilities = scaled_dot_product_attention(q, k, v, **kwargs)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    with AttentionRecorder() as recorder:
        through = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert torch.allclose(through, expected, rtol=1e-12, atol=1e-12)
    if case == "cross":  # not square: no self-attention, not recorded
        assert recorder.maps == []
    else:
        assert len(recorder.maps) == 1 and torch.equal(recorder.maps[0], probabilities)


def test_multihead_attention_still_returns_what_its_caller_asked_for():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, 2, batch_first=True).double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    for kwargs in ({"need_weights": False}, {}, {"average_attn_weights": False}):
        out, weights = mha(x, x, x, **kwargs)
        with AttentionRecorder() as recorder:
            out2, weights2 = mha(x, x, x, **kwargs)
        assert torch.allclose(out, out2)
        assert (weights is None and weights2 is None) or torch.allclose(weights, weights2)
        assert len(recorder.maps) == 1 and recorder.maps[0].shape == (2, 2, 5, 5)


def test_softmax_that_is_no_attention_is_not_recorded():
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    with AttentionRecorder() as recorder:
        torch.softmax(x, -1)  # not square
        torch.softmax(torch.randn(4, 4), -1)  # 2-d: a batch of class probabilities
        F.softmax(torch.randn(2, 3, 4, 4), dim=1)  # not over the last dim
    assert recorder.maps == []
    with AttentionRecorder() as recorder:
        F.softmax(torch.randn(2, 3, 4, 4), dim=-1, dtype=torch.float32)  # Hugging Face's eager form
        nn.Softmax(dim=3)(torch.randn(2, 3, 4, 4))
        torch.randn(2, 4, 4).softmax(-1)
    assert len(recorder.maps) == 3


class TextModel(nn.Module):
    """Token embeddings (N, L, D) through nn.TransformerEncoderLayer (nn.MultiheadAttention
    inside, need_weights=False), mean pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def test_a_text_model_gets_the_token_row_over_the_embedding():
    torch.manual_seed(0)
    model = TextModel().double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    h = rollout(model, x, token=None, prefix_tokens=0)
    assert h.shape == x.shape and torch.equal(h, h[:, :, :1].expand_as(h))
    assert torch.allclose(h[:, :, 0].sum(1), torch.ones(2, dtype=torch.float64))  # rows of a stochastic matrix
    h0 = rollout(model, x)  # the first token's row (prefix_tokens is not dropped: 5 tokens, 5 inputs)
    assert h0.shape == x.shape and torch.allclose(h0[:, :, 0].sum(1), torch.ones(2, dtype=torch.float64))


# ----------------------------------------------------------------------------- exact second order

@pytest.mark.parametrize("kind", ["sdpa", "explicit", "mha"])
def test_second_order_matches_finite_differences(kind):
    model, x = vit(kind)
    before = state_of(model)
    check_second_order(model, x, "attention_rollout", {})
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("fusion", ["max", "min"])
def test_second_order_with_max_and_min_fusion(fusion):
    model, x = vit("sdpa", heads=4)
    check_second_order(model, x, "attention_rollout", {"head_fusion": fusion})


def test_the_map_is_differentiable_in_an_attack_step():
    model, x = vit("sdpa", dtype=torch.float32)
    delta = torch.zeros_like(x, requires_grad=True)
    h = rollout(model, x + delta, create_graph=True)
    (g,) = torch.autograd.grad((h ** 2).sum(), delta)
    assert g.abs().sum() > 0
    assert not rollout(model, x.clone().requires_grad_(True)).requires_grad


# ----------------------------------------------------------------------------- errors, model untouched

def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_a_model_without_attention_gets_the_clear_error():
    model, x = make("small_cnn", softplus=False)
    before = state_of(model)
    with pytest.raises(ValueError, match="computed no self-attention"):
        rollout(model, x)
    assert_same_state(before, state_of(model))
    assert torch._C._len_torch_function_stack() == 0


class Windowed(nn.Module):
    """Swin-like attention in 2x2 windows: a batch of N * windows."""

    def __init__(self):
        super().__init__()
        self.embed, self.qkv, self.head = nn.Conv2d(3, 4, 1), nn.Linear(4, 12), nn.Linear(4, 2)

    def forward(self, x):
        t = self.embed(x)  # (N, 4, 4, 4)
        n = t.shape[0]
        w = t.reshape(n, 4, 2, 2, 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(n * 4, 4, 4)  # windows of 4 tokens
        q, k, v = self.qkv(w).reshape(n * 4, 4, 3, 1, 4).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.head(out.reshape(n, -1, 4).mean(1))


class Prepending(TextModel):
    """Two learned tokens before the embeddings (a class and a distillation token)."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(1, 2, 6))

    def forward(self, x):
        x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x], 1)
        return self.head(self.encoder(x)[:, 0])


@pytest.mark.parametrize("case", ["options", "grid", "windowed", "token", "text"])
def test_errors_name_the_problem_and_leave_the_model_untouched(case):
    model, x = vit("sdpa")
    if case == "windowed":
        torch.manual_seed(0)
        model = Windowed().double().eval()
        x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    before = state_of(model)
    attributes = set(vars(model))
    if case == "options":
        with pytest.raises(ValueError, match="head_fusion"):
            rollout(model, x, head_fusion="median")
        with pytest.raises(ValueError, match="prefix_tokens"):
            rollout(model, x, prefix_tokens=-1)
        with pytest.raises(TypeError, match="token"):
            rollout(model, x, token=0.5)
        with pytest.raises(ValueError, match="grid"):
            rollout(model, x, grid=(4,))
        with pytest.raises(TypeError, match="unknown option"):
            rollout(model, x, layer="blocks")
    elif case == "grid":
        with pytest.raises(ValueError, match=r"grid \(3, 5\) has 15 cells but there are 16 patch tokens"):
            rollout(model, x, grid=(3, 5))
    elif case == "windowed":
        with pytest.raises(ValueError, match="windowed attention"):
            rollout(model, x)
    elif case == "token":
        with pytest.raises(ValueError, match="token 17 is out of range for 17 tokens"):
            rollout(model, x, token=17)
    else:  # a sequence model that prepends two tokens, read with one prefix token: a mismatch
        torch.manual_seed(0)
        model = Prepending().double().eval()
        before, attributes = state_of(model), set(vars(model))
        with pytest.raises(ValueError, match=r"the attention has 7 tokens, the input 5 \(with prefix_tokens=1: 6\)"):
            rollout(model, torch.randn(2, 5, 6, dtype=torch.float64))
        assert rollout(model, torch.randn(2, 5, 6, dtype=torch.float64), prefix_tokens=2).shape == (2, 5, 6)
    assert_same_state(before, state_of(model))
    assert no_hooks(model) and set(vars(model)) == attributes
    assert torch._C._len_torch_function_stack() == 0


def test_model_unchanged_after_calls_and_an_error_inside_the_forward():
    model, x = vit("mha")
    before = state_of(model)
    rollout(model, x)
    h = rollout(model, x.clone().requires_grad_(True), create_graph=True)
    h.sum().backward()
    for p in model.parameters():
        p.grad = None
    assert_same_state(before, state_of(model))

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom inside the model")

    model.blocks.append(Boom().eval())
    before = state_of(model)
    with pytest.raises(RuntimeError, match="boom"):
        rollout(model, x)
    assert_same_state(before, state_of(model))
    assert torch._C._len_torch_function_stack() == 0
    assert model.training is False and all(not m.training for m in model.modules())


def test_rollout_is_registered():
    assert "attention_rollout" in manipex.methods()
    model, x = vit("sdpa")
    assert torch.equal(manipex.explain(model, x, "attention_rollout", None), rollout(model, x))
