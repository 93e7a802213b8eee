"""Small replicas of the blocks of torchvision's, timm's and Hugging Face's transformers, for the suite.

torchvision and timm do not load on the CPU torch the suite runs on (and ``transformers`` is not
installed); these are written from their source with the same block structure (module kinds and
names, so the same ``state_dict`` keys, the order of operations, the functional calls where they
make them), at width 16 and 16x16 images or 8 tokens, so that float64 finite differences stay
fast. Every replica takes ``plain=True`` for the variant that conservation tests need: no bias
anywhere (``Linear``/``Conv2d``/``MultiheadAttention`` with ``bias=False``, ``LayerNorm`` with
``bias=False``), no additive constant reaching the signal (no class or distillation token, no
position, token-type or relative-position embedding: mean pooling over the tokens instead of the
class token). Multiplicative parameters (LayerNorm weights, timm's layer scale) and the additive
attention masks (BERT's padding mask, Swin's shift mask: they act on the attention logits) stay.

* ``vit_tv``: torchvision ``vision_transformer.py`` VisionTransformer: ``conv_proj``,
  ``reshape(n, hidden, n_h * n_w).permute(0, 2, 1)``, ``class_token.expand`` and ``torch.cat``,
  an Encoder (``input + self.pos_embedding``, dropout, EncoderBlocks, ``ln``), EncoderBlock
  ``ln_1 -> nn.MultiheadAttention(batch_first=True)(x, x, x, need_weights=False) -> dropout ->
  + input; ln_2 -> MLPBlock (Linear, GELU, Dropout, Linear, Dropout) -> +``, ``x[:, 0]``,
  ``heads`` (Sequential with ``head``). LayerNorm eps 1e-6.
* ``vit_timm``: timm ``vision_transformer.py`` VisionTransformer: PatchEmbed (``proj`` conv,
  ``flatten(2).transpose(1, 2)``), ``cls_token`` cat, ``+ pos_embed``, ``pos_drop``; Block
  ``x + drop_path1(ls1(attn(norm1(x))))``, ``x + drop_path2(ls2(mlp(norm2(x))))``; Attention with
  a fused ``qkv`` Linear, ``reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)``,
  ``unbind(0)``, ``q_norm``/``k_norm`` Identity, ``F.scaled_dot_product_attention``,
  ``transpose(1, 2).reshape(B, N, C)``, ``proj``, ``proj_drop``; LayerScale ``x * self.gamma``;
  Mlp (fc1, GELU, drop1, norm=Identity, fc2, drop2); final ``norm``, the pool (``x[:, 0]``, or
  ``global_pool="avg"``: ``x[:, num_prefix_tokens:].mean(dim=1)``, where timm moves the final norm
  after the pool: ``norm`` Identity, ``fc_norm`` LayerNorm), ``head_drop``, ``head``.
* ``vit_timm_explicit``: the same with ``fused_attn=False``: ``q = q * self.scale``,
  ``attn = q @ k.transpose(-2, -1)``, ``attn.softmax(dim=-1)``, ``attn_drop``, ``attn @ v``.
  Built with the same seed it has the same parameters as ``vit_timm``.
* ``deit``: timm ``deit.py`` VisionTransformerDistilled: ``cls_token`` and ``dist_token`` cat
  before the patches, ``pos_embed`` over all, blocks as ``vit_timm``, ``head(x[:, 0])`` and
  ``head_dist(x[:, 1])``, their average (in eval, or unless ``distilled_training``).
* ``swin``: torchvision ``swin_transformer.py``: patch embedding (Conv2d, Permute([0, 2, 3, 1]),
  LayerNorm), one stage of two SwinTransformerBlocks (the second shifted by half a window),
  ShiftedWindowAttention calling the fx-wrapped ``shifted_window_attention`` (F.pad to window
  multiples, ``torch.roll``, window partition by view/permute/reshape, ``F.linear`` qkv, q scaled,
  ``q.matmul(k.transpose(-2, -1))``, ``+ relative_position_bias`` (the table indexed by the
  ``relative_position_index`` buffer, view/permute/contiguous/unsqueeze), the shift mask built
  from shapes (-100 off the diagonal blocks), ``F.softmax``, ``matmul(v)``, proj, window reverse,
  roll back, unpad), MLP with GELU, StochasticDepth; final ``norm``, Permute([0, 3, 1, 2]),
  AdaptiveAvgPool2d(1), Flatten, ``head``. LayerNorm eps 1e-5.
* ``bert``: Hugging Face ``modeling_bert.py`` BertForSequenceClassification (eager attention),
  whose forward takes ``inputs_embeds`` (N, L, hidden), the word embeddings already looked up:
  BertEmbeddings (``inputs_embeds + token_type_embeddings(token_type_ids)``, ``+=
  position_embeddings(position_ids)``, nn.Embedding lookups of the model's id buffers, LayerNorm
  eps 1e-12, dropout), BertSelfAttention (separate ``query``/``key``/``value`` Linears,
  ``view(N, L, heads, dh).transpose(1, 2)``, ``q @ k.transpose(-1, -2) / math.sqrt(dh)`` + the
  extended mask, softmax, dropout, ``@ v``, heads merged), BertSelfOutput (dense, dropout,
  ``LayerNorm(x + input)``), BertIntermediate (dense, GELUActivation: ``F.gelu``), BertOutput,
  BertPooler (``dense(x[:, 0])``, Tanh), dropout, ``classifier``. The padding mask is a buffer
  ``attention_mask`` (2, 8) of ones with the last two tokens of the second row 0 (sample ``i``
  of a batch takes row ``i % 2``; the forward takes ``inputs_embeds`` only, so it traces with
  ``torch.fx``), extended to ``(1 - mask)[:, None, None, :] * torch.finfo(dtype).min``.
* ``bert_sdpa``: the same with BertSdpaSelfAttention:
  ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)``, ``transpose(1, 2).reshape``.
  Built with the same seed it has the same parameters as ``bert``.

:func:`build` returns a replica in eval mode, initialised from ``seed`` without touching the
caller's RNG (normal(0, 0.2) weights, biases in [-0.1, 0.1], LayerNorm weights in [0.5, 1.5],
tokens and embeddings normal, layer scales in [0.5, 1.5]: no saturation, no exact ties);
:func:`example` a batch for it. ``KIND[name]`` is ``"vision"`` or ``"text"``,
``NUM_CLASSES[name]`` the number of logits.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Callable, List, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from replicas import Permute, StochasticDepth

DIM, DEPTH, HEADS, MLP_DIM = 16, 2, 2, 32
IMAGE, PATCH, CHANNELS = 16, 4, 3
SEQ_LEN = 8


def _layer_norm(plain: bool, eps: float) -> Callable[[int], nn.Module]:
    return partial(nn.LayerNorm, eps=eps, bias=not plain)


# --- torchvision VisionTransformer ------------------------------------------------------------------


class MLP(nn.Sequential):
    """torchvision.ops.MLP: (Linear, activation, Dropout) per hidden layer, Linear, Dropout."""

    def __init__(self, in_channels: int, hidden_channels: List[int], activation_layer=nn.GELU, bias: bool = True,
                 dropout: float = 0.0) -> None:
        layers: List[nn.Module] = []
        in_dim = in_channels
        for hidden_dim in hidden_channels[:-1]:
            layers.append(nn.Linear(in_dim, hidden_dim, bias=bias))
            layers.append(activation_layer())
            layers.append(nn.Dropout(dropout))
            in_dim = hidden_dim
        layers.append(nn.Linear(in_dim, hidden_channels[-1], bias=bias))
        layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class MLPBlock(MLP):
    """torchvision vision_transformer.MLPBlock: Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float, bias: bool = True) -> None:
        super().__init__(in_dim, [mlp_dim, in_dim], activation_layer=nn.GELU, bias=bias, dropout=dropout)


class EncoderBlock(nn.Module):
    """torchvision vision_transformer.EncoderBlock: pre-norm nn.MultiheadAttention and MLPBlock."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float, attention_dropout: float,
                 norm_layer: Callable[[int], nn.Module], bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = norm_layer(hidden_dim)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=attention_dropout,
                                                    bias=bias, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = norm_layer(hidden_dim)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout, bias=bias)

    def forward(self, input: Tensor) -> Tensor:
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    """torchvision vision_transformer.Encoder: ``input + pos_embedding``, dropout, layers, ln."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
                 dropout: float, attention_dropout: float, norm_layer: Callable[[int], nn.Module],
                 plain: bool = False) -> None:
        super().__init__()
        self.pos_embedding = None if plain else nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        layers: OrderedDict = OrderedDict()
        for i in range(num_layers):
            layers[f"encoder_layer_{i}"] = EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout,
                                                        norm_layer, bias=not plain)
        self.layers = nn.Sequential(layers)
        self.ln = norm_layer(hidden_dim)

    def forward(self, input: Tensor) -> Tensor:
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        if self.pos_embedding is not None:
            input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class TorchvisionViT(nn.Module):
    """torchvision vision_transformer.VisionTransformer (Dosovitskiy et al. 2021). ``plain``: no
    class token, no position embedding, ``x.mean(dim=1)`` instead of ``x[:, 0]``."""

    def __init__(self, image_size: int = IMAGE, patch_size: int = PATCH, num_layers: int = DEPTH,
                 num_heads: int = HEADS, hidden_dim: int = DIM, mlp_dim: int = MLP_DIM, dropout: float = 0.0,
                 attention_dropout: float = 0.0, num_classes: int = 10, plain: bool = False) -> None:
        super().__init__()
        torch._assert(image_size % patch_size == 0, "Input shape indivisible by patch size!")
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.mlp_dim, self.attention_dropout, self.dropout = mlp_dim, attention_dropout, dropout
        self.num_classes, self.plain = num_classes, plain
        norm_layer = _layer_norm(plain, 1e-6)
        self.conv_proj = nn.Conv2d(CHANNELS, hidden_dim, kernel_size=patch_size, stride=patch_size, bias=not plain)
        seq_length = (image_size // patch_size) ** 2
        self.class_token = None if plain else nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length += 0 if plain else 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout,
                               norm_layer, plain=plain)
        self.seq_length = seq_length
        heads_layers: OrderedDict = OrderedDict()
        heads_layers["head"] = nn.Linear(hidden_dim, num_classes, bias=not plain)
        self.heads = nn.Sequential(heads_layers)

    def _process_input(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p = self.patch_size
        torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
        torch._assert(w == self.image_size, f"Wrong image width! Expected {self.image_size} but got {w}!")
        n_h = h // p
        n_w = w // p
        x = self.conv_proj(x)  # (n, c, h, w) -> (n, hidden_dim, n_h, n_w)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        x = x.permute(0, 2, 1)  # (n, seq_length, hidden_dim)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self._process_input(x)
        n = x.shape[0]
        if self.class_token is not None:
            batch_class_token = self.class_token.expand(n, -1, -1)
            x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x.mean(dim=1) if self.class_token is None else x[:, 0]
        x = self.heads(x)
        return x


def vit_tv(num_classes: int = 10, plain: bool = False) -> nn.Module:
    return TorchvisionViT(num_classes=num_classes, plain=plain)


# --- timm VisionTransformer and DeiT ----------------------------------------------------------------


class PatchEmbed(nn.Module):
    """timm.layers.PatchEmbed: conv ``proj``, ``flatten(2).transpose(1, 2)`` (NCHW -> NLC), norm."""

    def __init__(self, img_size: int = IMAGE, patch_size: int = PATCH, in_chans: int = CHANNELS,
                 embed_dim: int = DIM, bias: bool = True) -> None:
        super().__init__()
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = True
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        x = self.norm(x)
        return x


class Attention(nn.Module):
    """timm vision_transformer.Attention: fused qkv, SDPA (``fused_attn``) or the explicit form."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, proj_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused_attn: bool = True) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim should be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v

        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class LayerScale(nn.Module):
    """timm vision_transformer.LayerScale: ``x * self.gamma``."""

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class Mlp(nn.Module):
    """timm.layers.Mlp: fc1, act, drop1, norm (Identity), fc2, drop2."""

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, bias: bool = True,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class Block(nn.Module):
    """timm vision_transformer.Block: pre-norm attention and Mlp, layer scale, drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, init_values: Optional[float] = 1.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, fused_attn: bool = True) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=bias, attn_drop=attn_drop,
                              proj_drop=proj_drop, fused_attn=fused_attn)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, bias=bias, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class TimmViT(nn.Module):
    """timm vision_transformer.VisionTransformer. ``global_pool``: ``"token"`` (``x[:, 0]``) or
    ``"avg"`` (mean of the non-prefix tokens); ``fc_norm=None`` is timm's rule: the final norm
    after the pool (``fc_norm``) for ``"avg"``, before it (``norm``) otherwise. ``plain``: no class
    token, no position embedding (timm's ``class_token=False, pos_embed='none'``), ``"avg"``."""

    def __init__(self, img_size: int = IMAGE, patch_size: int = PATCH, in_chans: int = CHANNELS,
                 num_classes: int = 10, global_pool: Optional[str] = None, embed_dim: int = DIM, depth: int = DEPTH,
                 num_heads: int = HEADS, mlp_ratio: float = MLP_DIM / DIM, init_values: Optional[float] = 1.0,
                 fc_norm: Optional[bool] = None, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 fused_attn: bool = True, plain: bool = False) -> None:
        super().__init__()
        class_token = not plain
        if global_pool is None:
            global_pool = "avg" if plain else "token"
        assert global_pool in ("", "avg", "token")
        assert class_token or global_pool != "token", "global_pool 'token' needs a class token"
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        norm_layer = _layer_norm(plain, 1e-6)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.has_class_token = class_token

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=not plain)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        embed_len = num_patches + self.num_prefix_tokens
        self.pos_embed = None if plain else nn.Parameter(torch.randn(1, embed_len, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(p=pos_drop_rate)
        self.patch_drop = nn.Identity()
        self.norm_pre = nn.Identity()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=not plain, bias=not plain, init_values=init_values,
                  norm_layer=norm_layer, fused_attn=fused_attn)
            for _ in range(depth)])
        self.norm = norm_layer(embed_dim) if not use_fc_norm else nn.Identity()
        self.fc_norm = norm_layer(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes, bias=not plain)

    def _pos_embed(self, x: Tensor) -> Tensor:
        to_cat = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(x.shape[0], -1, -1))
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        x = self.blocks(x)
        x = self.norm(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool:
            x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


class DistilledViT(TimmViT):
    """timm deit.VisionTransformerDistilled (Touvron et al. 2021): class and distillation tokens,
    two heads averaged. ``plain``: no tokens; both heads on the mean of the tokens, averaged."""

    def __init__(self, num_classes: int = 10, plain: bool = False, **kwargs) -> None:
        super().__init__(num_classes=num_classes, plain=plain, global_pool="avg" if plain else "token",
                         fc_norm=False, **kwargs)
        self.num_prefix_tokens = 0 if plain else 2
        self.dist_token = None if plain else nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.pos_embed = None if plain else nn.Parameter(
            torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, self.embed_dim))
        self.head_dist = nn.Linear(self.embed_dim, self.num_classes, bias=not plain)
        self.distilled_training = False

    def _pos_embed(self, x: Tensor) -> Tensor:
        if self.cls_token is not None:
            x = torch.cat((
                self.cls_token.expand(x.shape[0], -1, -1),
                self.dist_token.expand(x.shape[0], -1, -1),
                x),
                dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False):
        if self.cls_token is None:
            x = x_dist = x.mean(dim=1)
        else:
            x, x_dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (x + x_dist) / 2
        x = self.head(x)
        x_dist = self.head_dist(x_dist)
        if self.distilled_training and self.training:
            return x, x_dist
        return (x + x_dist) / 2


def vit_timm(num_classes: int = 10, plain: bool = False, **kwargs) -> nn.Module:
    return TimmViT(num_classes=num_classes, plain=plain, fused_attn=True, **kwargs)


def vit_timm_explicit(num_classes: int = 10, plain: bool = False, **kwargs) -> nn.Module:
    return TimmViT(num_classes=num_classes, plain=plain, fused_attn=False, **kwargs)


def deit(num_classes: int = 10, plain: bool = False, **kwargs) -> nn.Module:
    return DistilledViT(num_classes=num_classes, plain=plain, **kwargs)


# --- torchvision Swin Transformer ---------------------------------------------------------------------


def _get_relative_position_bias(relative_position_bias_table: Tensor, relative_position_index: Tensor,
                                window_size: List[int]) -> Tensor:
    N = window_size[0] * window_size[1]
    relative_position_bias = relative_position_bias_table[relative_position_index]  # type: ignore[index]
    relative_position_bias = relative_position_bias.view(N, N, -1)
    relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    return relative_position_bias


def shifted_window_attention(
    input: Tensor, qkv_weight: Tensor, proj_weight: Tensor, relative_position_bias: Optional[Tensor],
    window_size: List[int], num_heads: int, shift_size: List[int], attention_dropout: float = 0.0,
    dropout: float = 0.0, qkv_bias: Optional[Tensor] = None, proj_bias: Optional[Tensor] = None,
    training: bool = True,
) -> Tensor:
    """torchvision swin_transformer.shifted_window_attention (v1: no logit scale); a ``None``
    relative position bias (the plain variant) adds nothing."""
    B, H, W, C = input.shape
    # pad feature maps to multiples of window size
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape

    shift_size = shift_size.copy()
    # If window size is larger than feature size, there is no need to shift window
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0

    # cyclic shift
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))

    # partition windows
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)  # B*nW, Ws*Ws, C

    # multi-head attention
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // num_heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    # add relative position bias
    if relative_position_bias is not None:
        attn = attn + relative_position_bias

    if sum(shift_size) > 0:
        # generate attention mask
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0]: h[1], w[0]: w[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))

    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=attention_dropout, training=training)

    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, proj_weight, proj_bias)
    x = F.dropout(x, p=dropout, training=training)

    # reverse windows
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)

    # reverse cyclic shift
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))

    # unpad features
    x = x[:, :H, :W, :].contiguous()
    return x


torch.fx.wrap("shifted_window_attention")


class ShiftedWindowAttention(nn.Module):
    """torchvision swin_transformer.ShiftedWindowAttention (Liu et al. 2021)."""

    def __init__(self, dim: int, window_size: List[int], shift_size: List[int], num_heads: int,
                 qkv_bias: bool = True, proj_bias: bool = True, attention_dropout: float = 0.0,
                 dropout: float = 0.0, relative_position: bool = True) -> None:
        super().__init__()
        if len(window_size) != 2 or len(shift_size) != 2:
            raise ValueError("window_size and shift_size must be of length 2")
        self.window_size = window_size
        self.shift_size = shift_size
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.dropout = dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.relative_position = relative_position
        if relative_position:
            self.define_relative_position_bias_table()
            self.define_relative_position_index()

    def define_relative_position_bias_table(self) -> None:
        # (2*Wh-1) * (2*Ww-1), nH
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1), self.num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def define_relative_position_index(self) -> None:
        # get pair-wise relative position index for each token inside the window
        coords_h = torch.arange(self.window_size[0])
        coords_w = torch.arange(self.window_size[1])
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"))  # 2, Wh, Ww
        coords_flatten = torch.flatten(coords, 1)  # 2, Wh*Ww
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # 2, Wh*Ww, Wh*Ww
        relative_coords = relative_coords.permute(1, 2, 0).contiguous()  # Wh*Ww, Wh*Ww, 2
        relative_coords[:, :, 0] += self.window_size[0] - 1  # shift to start from 0
        relative_coords[:, :, 1] += self.window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
        relative_position_index = relative_coords.sum(-1).flatten()  # Wh*Ww*Wh*Ww
        self.register_buffer("relative_position_index", relative_position_index)

    def get_relative_position_bias(self) -> Optional[Tensor]:
        if not self.relative_position:
            return None
        return _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                           self.window_size)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        relative_position_bias = self.get_relative_position_bias()
        return shifted_window_attention(
            x, self.qkv.weight, self.proj.weight, relative_position_bias, self.window_size, self.num_heads,
            shift_size=self.shift_size, attention_dropout=self.attention_dropout, dropout=self.dropout,
            qkv_bias=self.qkv.bias, proj_bias=self.proj.bias, training=self.training)


class SwinTransformerBlock(nn.Module):
    """torchvision swin_transformer.SwinTransformerBlock: pre-norm window attention and MLP."""

    def __init__(self, dim: int, num_heads: int, window_size: List[int], shift_size: List[int],
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = 0.0, norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 plain: bool = False) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ShiftedWindowAttention(dim, window_size, shift_size, num_heads, qkv_bias=not plain,
                                           proj_bias=not plain, attention_dropout=attention_dropout,
                                           dropout=dropout, relative_position=not plain)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.norm2 = norm_layer(dim)
        self.mlp = MLP(dim, [int(dim * mlp_ratio), dim], activation_layer=nn.GELU, bias=not plain, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        x = x + self.stochastic_depth(self.mlp(self.norm2(x)))
        return x


class SwinTransformer(nn.Module):
    """torchvision swin_transformer.SwinTransformer with one stage (no PatchMerging)."""

    def __init__(self, patch_size: List[int] = [2, 2], embed_dim: int = DIM, depths: List[int] = [2],
                 num_heads: List[int] = [HEADS], window_size: List[int] = [4, 4], mlp_ratio: float = MLP_DIM / DIM,
                 stochastic_depth_prob: float = 0.1, num_classes: int = 10, plain: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        norm_layer = _layer_norm(plain, 1e-5)
        layers: List[nn.Module] = []
        # split image into non-overlapping patches
        layers.append(nn.Sequential(
            nn.Conv2d(CHANNELS, embed_dim, kernel_size=(patch_size[0], patch_size[1]),
                      stride=(patch_size[0], patch_size[1]), bias=not plain),
            Permute([0, 2, 3, 1]),
            norm_layer(embed_dim),
        ))
        total_stage_blocks = sum(depths)
        stage_block_id = 0
        for i_stage in range(len(depths)):
            stage: List[nn.Module] = []
            dim = embed_dim * 2 ** i_stage
            for i_layer in range(depths[i_stage]):
                # adjust stochastic depth probability based on the depth of the stage block
                sd_prob = stochastic_depth_prob * float(stage_block_id) / (total_stage_blocks - 1)
                stage.append(SwinTransformerBlock(
                    dim, num_heads[i_stage], window_size=window_size,
                    shift_size=[0 if i_layer % 2 == 0 else w // 2 for w in window_size], mlp_ratio=mlp_ratio,
                    stochastic_depth_prob=sd_prob, norm_layer=norm_layer, plain=plain))
                stage_block_id += 1
            layers.append(nn.Sequential(*stage))
        self.features = nn.Sequential(*layers)
        num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = norm_layer(num_features)
        self.permute = Permute([0, 3, 1, 2])  # B H W C -> B C H W
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(num_features, num_classes, bias=not plain)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.norm(x)
        x = self.permute(x)
        x = self.avgpool(x)
        x = self.flatten(x)
        x = self.head(x)
        return x


def swin(num_classes: int = 10, plain: bool = False, **kwargs) -> nn.Module:
    return SwinTransformer(num_classes=num_classes, plain=plain, **kwargs)


# --- Hugging Face BERT --------------------------------------------------------------------------------


class GELUActivation(nn.Module):
    """transformers.activations.GELUActivation (``ACT2FN["gelu"]``): ``F.gelu``."""

    def forward(self, input: Tensor) -> Tensor:
        return F.gelu(input)


class BertEmbeddings(nn.Module):
    """BertEmbeddings from ``inputs_embeds`` (no word embeddings: they are looked up already).
    ``plain``: no position or token-type embeddings, LayerNorm without bias."""

    def __init__(self, hidden_size: int, max_position_embeddings: int, type_vocab_size: int, eps: float,
                 dropout: float, plain: bool = False) -> None:
        super().__init__()
        self.plain = plain
        if not plain:
            self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
            self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, bias=not plain)
        self.dropout = nn.Dropout(dropout)
        self.position_embedding_type = "absolute"
        self.register_buffer("position_ids", torch.arange(max_position_embeddings).expand((1, -1)), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long),
                             persistent=False)

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        input_shape = inputs_embeds.size()[:-1]
        seq_length = input_shape[1]
        embeddings = inputs_embeds
        if not self.plain:
            # Hugging Face slices ``[:, :seq_length]``; ``narrow`` is the same view and traces with fx
            position_ids = self.position_ids.narrow(1, 0, seq_length)
            buffered_token_type_ids = self.token_type_ids.narrow(1, 0, seq_length)
            token_type_ids = buffered_token_type_ids.expand(input_shape[0], seq_length)
            token_type_embeddings = self.token_type_embeddings(token_type_ids)
            embeddings = inputs_embeds + token_type_embeddings
            position_embeddings = self.position_embeddings(position_ids)
            embeddings += position_embeddings
        embeddings = self.LayerNorm(embeddings)
        embeddings = self.dropout(embeddings)
        return embeddings


class BertSelfAttention(nn.Module):
    """BertSelfAttention, eager: scores ``q @ k^T / sqrt(dh)`` + mask, softmax, dropout, ``@ v``."""

    def __init__(self, hidden_size: int, num_attention_heads: int, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_size = hidden_size // num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(hidden_size, self.all_head_size, bias=bias)
        self.key = nn.Linear(hidden_size, self.all_head_size, bias=bias)
        self.value = nn.Linear(hidden_size, self.all_head_size, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.dropout_prob = dropout

    def _heads(self, x: Tensor) -> Tensor:
        batch_size, seq_length = x.shape[0], x.shape[1]
        return x.view(batch_size, seq_length, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        query_layer = self._heads(self.query(hidden_states))
        key_layer = self._heads(self.key(hidden_states))
        value_layer = self._heads(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        if attention_mask is not None:
            attention_scores = attention_scores + attention_mask
        attention_probs = F.softmax(attention_scores, dim=-1)
        attention_probs = self.dropout(attention_probs)
        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        context_layer = context_layer.view(new_context_layer_shape)
        return context_layer


class BertSdpaSelfAttention(BertSelfAttention):
    """BertSdpaSelfAttention: ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)``."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        bsz, tgt_len = hidden_states.shape[0], hidden_states.shape[1]
        query_layer = self._heads(self.query(hidden_states))
        key_layer = self._heads(self.key(hidden_states))
        value_layer = self._heads(self.value(hidden_states))
        attn_output = F.scaled_dot_product_attention(
            query_layer, key_layer, value_layer, attn_mask=attention_mask,
            dropout_p=self.dropout_prob if self.training else 0.0, is_causal=False)
        attn_output = attn_output.transpose(1, 2)
        attn_output = attn_output.reshape(bsz, tgt_len, self.all_head_size)
        return attn_output


class BertSelfOutput(nn.Module):
    def __init__(self, hidden_size: int, eps: float, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class BertAttention(nn.Module):
    def __init__(self, hidden_size: int, num_attention_heads: int, eps: float, dropout: float, sdpa: bool,
                 bias: bool = True) -> None:
        super().__init__()
        attention = BertSdpaSelfAttention if sdpa else BertSelfAttention
        self.self = attention(hidden_size, num_attention_heads, dropout, bias=bias)
        self.output = BertSelfOutput(hidden_size, eps, dropout, bias=bias)

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        self_outputs = self.self(hidden_states, attention_mask)
        attention_output = self.output(self_outputs, hidden_states)
        return attention_output


class BertIntermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.intermediate_act_fn = GELUActivation()

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.intermediate_act_fn(hidden_states)
        return hidden_states


class BertOutput(nn.Module):
    def __init__(self, intermediate_size: int, hidden_size: int, eps: float, dropout: float, bias: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class BertLayer(nn.Module):
    def __init__(self, hidden_size: int, num_attention_heads: int, intermediate_size: int, eps: float,
                 dropout: float, sdpa: bool, bias: bool = True) -> None:
        super().__init__()
        self.attention = BertAttention(hidden_size, num_attention_heads, eps, dropout, sdpa, bias=bias)
        self.intermediate = BertIntermediate(hidden_size, intermediate_size, bias=bias)
        self.output = BertOutput(intermediate_size, hidden_size, eps, dropout, bias=bias)

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        attention_output = self.attention(hidden_states, attention_mask)
        layer_output = self.feed_forward_chunk(attention_output)  # apply_chunking_to_forward, chunk size 0
        return layer_output

    def feed_forward_chunk(self, attention_output: Tensor) -> Tensor:
        intermediate_output = self.intermediate(attention_output)
        layer_output = self.output(intermediate_output, attention_output)
        return layer_output


class BertEncoder(nn.Module):
    def __init__(self, num_hidden_layers: int, **kwargs) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(**kwargs) for _ in range(num_hidden_layers)])

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask)
        return hidden_states


class BertPooler(nn.Module):
    """``tanh(dense(x[:, 0]))``; ``plain``: ``x.mean(dim=1)`` (no dense, no Tanh)."""

    def __init__(self, hidden_size: int, plain: bool = False) -> None:
        super().__init__()
        self.plain = plain
        if not plain:
            self.dense = nn.Linear(hidden_size, hidden_size)
            self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:
        if self.plain:
            return hidden_states.mean(dim=1)
        first_token_tensor = hidden_states[:, 0]
        pooled_output = self.dense(first_token_tensor)
        pooled_output = self.activation(pooled_output)
        return pooled_output


class BertModel(nn.Module):
    def __init__(self, hidden_size: int = DIM, num_hidden_layers: int = DEPTH, num_attention_heads: int = HEADS,
                 intermediate_size: int = MLP_DIM, max_position_embeddings: int = 16, type_vocab_size: int = 2,
                 layer_norm_eps: float = 1e-12, hidden_dropout_prob: float = 0.1,
                 attention_probs_dropout_prob: float = 0.1, sdpa: bool = False, plain: bool = False) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(hidden_size, max_position_embeddings, type_vocab_size, layer_norm_eps,
                                         hidden_dropout_prob, plain=plain)
        self.encoder = BertEncoder(num_hidden_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                                   intermediate_size=intermediate_size, eps=layer_norm_eps,
                                   dropout=attention_probs_dropout_prob, sdpa=sdpa, bias=not plain)
        self.pooler = BertPooler(hidden_size, plain=plain)

    @property
    def dtype(self) -> torch.dtype:
        """ModuleUtilsMixin.dtype: the parameters' dtype (not the input's, as Hugging Face)."""
        return next(self.parameters()).dtype

    def get_extended_attention_mask(self, attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
        extended_attention_mask = attention_mask[:, None, None, :]
        extended_attention_mask = extended_attention_mask.to(dtype=dtype)  # fp16 compatibility
        extended_attention_mask = (1.0 - extended_attention_mask) * torch.finfo(dtype).min
        return extended_attention_mask

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple:
        extended_attention_mask = self.get_extended_attention_mask(attention_mask, self.dtype)
        embedding_output = self.embeddings(inputs_embeds)
        sequence_output = self.encoder(embedding_output, extended_attention_mask)
        pooled_output = self.pooler(sequence_output)
        return sequence_output, pooled_output


def _padding_mask(seq_len: int = SEQ_LEN, padded: int = 2) -> Tensor:
    mask = torch.ones(2, seq_len, dtype=torch.long)
    mask[1, seq_len - padded:] = 0
    return mask


class BertForSequenceClassification(nn.Module):
    """BertForSequenceClassification on ``inputs_embeds`` with a padding mask held as a buffer."""

    def __init__(self, num_labels: int = 3, sdpa: bool = False, plain: bool = False,
                 classifier_dropout: float = 0.1, **kwargs) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.bert = BertModel(sdpa=sdpa, plain=plain, **kwargs)
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(self.bert.embeddings.LayerNorm.normalized_shape[0], num_labels, bias=not plain)
        self.register_buffer("attention_mask", _padding_mask())

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        rows = torch.arange(inputs_embeds.shape[0], device=inputs_embeds.device) % self.attention_mask.shape[0]
        attention_mask = self.attention_mask[rows, :inputs_embeds.shape[1]]
        outputs = self.bert(inputs_embeds, attention_mask)
        pooled_output = outputs[1]
        pooled_output = self.dropout(pooled_output)
        logits = self.classifier(pooled_output)
        return logits


def bert(num_classes: int = 3, plain: bool = False, **kwargs) -> nn.Module:
    return BertForSequenceClassification(num_labels=num_classes, sdpa=False, plain=plain, **kwargs)


def bert_sdpa(num_classes: int = 3, plain: bool = False, **kwargs) -> nn.Module:
    return BertForSequenceClassification(num_labels=num_classes, sdpa=True, plain=plain, **kwargs)


# --- registry, build, example ----------------------------------------------------------------------------

REPLICAS = {
    "vit_tv": vit_tv, "vit_timm": vit_timm, "vit_timm_explicit": vit_timm_explicit, "deit": deit, "swin": swin,
    "bert": bert, "bert_sdpa": bert_sdpa,
}
NAMES = tuple(REPLICAS)
KIND = {name: ("text" if name.startswith("bert") else "vision") for name in NAMES}
NUM_CLASSES = {name: (3 if KIND[name] == "text" else 10) for name in NAMES}

_TOKENS = ("class_token", "cls_token", "dist_token")
_POSITIONS = ("pos_embedding", "pos_embed", "relative_position_bias_table")


def _initialise(model: nn.Module, generator: torch.Generator) -> None:
    """Every parameter drawn from ``generator``, in the order of ``named_parameters``, so that
    replicas with the same parameter names (vit_timm / vit_timm_explicit, bert / bert_sdpa)
    get the same values."""
    owner = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            owner[id(p)] = (module, pname)
    with torch.no_grad():
        for name, p in model.named_parameters():
            module, pname = owner[id(p)]
            leaf = name.rsplit(".", 1)[-1]
            if leaf in _TOKENS:
                p.normal_(0.0, 0.5, generator=generator)
            elif leaf in _POSITIONS or isinstance(module, nn.Embedding):
                p.normal_(0.0, 0.3, generator=generator)
            elif isinstance(module, nn.LayerNorm) and pname == "weight" or isinstance(module, LayerScale):
                p.uniform_(0.5, 1.5, generator=generator)
            elif "bias" in pname:
                p.uniform_(-0.1, 0.1, generator=generator)
            elif "weight" in pname:
                p.normal_(0.0, 0.2, generator=generator)
            else:
                raise AssertionError(f"no initialisation for parameter {name}")


def build(name: str, *, plain: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32,
          **kwargs) -> nn.Module:
    """The replica ``name`` in eval mode, its parameters drawn (in float32, then cast, so that
    dtypes agree) from a generator seeded with ``seed``; the caller's RNG is left as it was.
    ``kwargs`` go to the builder (``num_classes``, ``global_pool`` for the timm ViTs, ...)."""
    if name not in REPLICAS:
        raise KeyError(f"unknown replica {name!r}; one of {NAMES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = REPLICAS[name](plain=plain, **kwargs)
    _initialise(model, torch.Generator().manual_seed(seed))
    return model.to(dtype).eval()


def example(name: str, batch: int = 2, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """A batch for ``name``: images (N, 3, 16, 16) uniform in [0, 1], or ``inputs_embeds``
    (N, 8, 16) standard normal; drawn in float32 from ``seed``, then cast."""
    generator = torch.Generator().manual_seed(seed)
    if KIND[name] == "vision":
        x = torch.rand(batch, CHANNELS, IMAGE, IMAGE, generator=generator)
    else:
        x = torch.randn(batch, SEQ_LEN, DIM, generator=generator)
    return x.to(dtype)
