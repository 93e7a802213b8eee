"""A small Vision Transformer (Dosovitskiy et al. 2021) built from plain modules.

:class:`VisionTransformer` is the pre-norm ViT of Dosovitskiy et al. (2021), "An Image is Worth
16x16 Words: Transformers for Image Recognition at Scale" (ICLR), with timm's module names
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.<i>.norm1`` / ``attn.qkv`` /
``attn.proj`` / ``norm2`` / ``mlp.fc1`` / ``mlp.act`` / ``mlp.fc2``, ``norm``, ``head``) and
timm's blocks:

* patch embedding: ``Conv2d(channels, dim, patch, stride=patch)``, then
  ``flatten(2).transpose(1, 2)`` (one token per patch);
* a class token parameter, prepended with ``torch.cat([cls.expand(n, -1, -1), x], dim=1)``, and
  a learned position embedding parameter added to all tokens;
* ``depth`` pre-norm blocks ``x = x + attn(norm1(x))``, ``x = x + mlp(norm2(x))`` with
  ``nn.LayerNorm``; attention with a fused ``qkv = nn.Linear(dim, 3 * dim)``, reshaped to
  ``(3, B, heads, N, head_dim)``, ``F.scaled_dot_product_attention(q, k, v)`` and an output
  projection ``proj``; the MLP is ``Linear - nn.GELU - Linear``;
* a final ``nn.LayerNorm``, the class token ``x[:, 0]`` and a ``Linear`` head (logits).

No dropout, no data-dependent control flow: the forward takes one tensor and traces with
``torch.fx.symbolic_trace``; the activation is an ``nn.GELU`` module. Attention calls the fused
SDPA kernel, which has no double backward; manipex's second-order paths swap in the math kernel
(:mod:`manipex._second_order`).

:func:`vit_mnist` is the default MNIST configuration (1x28x28 inputs in [0, 1], 7x7 patches:
16 tokens and the class token, ``dim=64``, ``depth=4``, ``heads=4``, ``mlp=128``: 139,018
parameters); :func:`manipex.models.load_default` ``("vit_mnist")`` returns it trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "VisionTransformer", "vit_mnist"]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches to tokens: ``Conv2d(channels, dim, patch,
    stride=patch)``, then ``flatten(2).transpose(1, 2)``: (N, C, H, W) -> (N, H/p * W/p, dim)."""

    def __init__(self, channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention (timm's ``Attention``): fused ``qkv`` Linear, scaled dot-product
    attention (scale ``head_dim ** -0.5``), output Linear ``proj``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """``fc1 (dim -> hidden) - act (nn.GELU) - fc2 (hidden -> dim)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), pre-norm,
    class-token readout, with timm's module names; see the module docstring for the layers.

    Args:
        num_classes: outputs of the head (logits).
        image_size: height = width of the inputs; a multiple of ``patch``.
        patch: side of the square, non-overlapping patches (``(image_size / patch) ** 2`` tokens).
        channels: input channels.
        dim: token width. depth: number of blocks. heads: attention heads (``dim % heads == 0``).
        mlp: hidden width of each block's MLP.
        eps: epsilon of every ``nn.LayerNorm`` (timm's ViTs use 1e-6).

    Initialisation follows timm's ViT: ``pos_embed`` truncated normal (std 0.02), ``cls_token``
    normal (std 1e-6), every Linear truncated normal (std 0.02) with zero bias, the patch
    convolution and LayerNorms at torch's defaults.
    """

    def __init__(self, num_classes: int = 10, *, image_size: int = 28, patch: int = 7, channels: int = 1,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128, eps: float = 1e-6):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"VisionTransformer: image_size ({image_size}) must be a multiple of patch ({patch})")
        self.num_tokens = (image_size // patch) ** 2
        self.patch_embed = PatchEmbed(channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp, eps) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits (N, num_classes) for images (N, channels, image_size, image_size)."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def vit_mnist(num_classes: int = 10) -> VisionTransformer:
    """The default MNIST ViT: 1x28x28 inputs in [0, 1], 7x7 patches (16 tokens + class token),
    ``dim=64``, ``depth=4``, ``heads=4``, ``mlp=128`` (139,018 parameters with 10 classes);
    outputs logits. :func:`manipex.models.load_default` ``("vit_mnist")`` returns it trained on
    MNIST-5k."""
    return VisionTransformer(num_classes, image_size=28, patch=7, channels=1, dim=64, depth=4, heads=4, mlp=128)
