"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", Sec. 3).

For every self-attention layer ``l`` (in the order the forward calls them) the attention
probabilities ``(N, heads, T, T)`` are fused over the heads (``head_fusion``: mean, max or min)
into ``A_l``; the residual connection is accounted for as ``Â_l = 0.5 A_l + 0.5 I``, with each row
renormalised to sum 1 (the mean of softmax rows already sums to 1; max and min do not); the
rollout is ``Â_L @ ... @ Â_1``. The map is the row of the class token (``token``; ``None``: the
mean of all rows, for models that pool the tokens by their mean) over the patch tokens (the
first ``prefix_tokens`` tokens, class and distillation tokens, are dropped), reshaped to the
patch grid and upsampled bilinearly to the input's spatial size, repeated over its channels so
that it has ``x``'s shape. For a sequence input ``(N, L, D)`` (token embeddings) the map is the
row over the ``L`` tokens, repeated over ``D``; for ``(N, D)`` (one token per feature) it is the
row itself.

Rollout is **class-agnostic**: ``target`` is accepted (every method takes one) and ignored (a
class index the model does not have is still refused).

The attention probabilities are captured without tracing and without hooks, on any model: the
forward runs under a :class:`torch.overrides.TorchFunctionMode` that

* computes ``F.scaled_dot_product_attention`` explicitly (``softmax(q k^T * scale + mask) v``,
  with boolean or float ``attn_mask``, ``is_causal``, ``scale``, ``enable_gqa``, and dropout as
  torch applies it where ``dropout_p > 0``) and records the softmax;
* records the output of ``torch.softmax``, ``F.softmax`` (``nn.Softmax``) and ``Tensor.softmax``
  over the last dimension whose output is square in its last two dimensions (explicit
  attention: timm's ``attn.softmax(dim=-1)``, Hugging Face's eager attention);
* runs ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, also inside
  ``nn.TransformerEncoderLayer``) with ``need_weights=True, average_attn_weights=False`` (its
  explicit path) and records the per-head weights; the module's caller still gets what it asked
  for (``None`` weights with ``need_weights=False``, as torchvision's ViT asks).

The recorded probabilities are the very tensors of the forward, so the map is exactly
differentiable (to second order) w.r.t. the input and every parameter; head fusion by max or
min is differentiable almost everywhere. Non-square attention (cross-attention) is not
recorded. Windowed attention (Swin: a batch of ``N * windows``) has no rollout over the image and
is refused with a clear error, as is a model that computes no attention.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .._validation import check_choice, check_int, select_target, short
from .base import Explainer, report_output

_SDPA = {F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention}
_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax, torch._C.TensorBase.softmax}
if hasattr(torch, "special") and hasattr(torch.special, "softmax"):
    _SOFTMAX.add(torch.special.softmax)
_MHA = F.multi_head_attention_forward
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
_SDPA_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tuple[Tensor, Tensor]:
    """``F.scaled_dot_product_attention`` computed explicitly: ``(output, probabilities)``.

    The same function as torch's (its documented reference implementation), made of operations
    that all have a double backward. A boolean mask marks the positions that take part (True);
    a float mask is added to the scores; ``is_causal`` masks the upper triangle. Dropout is
    applied (after the probabilities are taken) whenever ``dropout_p > 0``, as torch does.
    """
    length, source = query.size(-2), key.size(-2)
    factor = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa and key.dim() >= 3 and key.size(-3) != query.size(-3):
        repeat = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    scores = query @ key.transpose(-2, -1) * factor
    if is_causal:
        causal = torch.ones(length, source, dtype=torch.bool, device=query.device).tril(diagonal=0)
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probabilities = torch.softmax(scores, dim=-1)
    weights = F.dropout(probabilities, dropout_p, training=True) if dropout_p > 0 else probabilities
    return weights @ value, probabilities


def _square(t: Any) -> bool:
    return isinstance(t, Tensor) and t.dim() >= 3 and t.shape[-1] == t.shape[-2]


class AttentionRecorder(TorchFunctionMode):
    """Within the block, every self-attention's probabilities are appended to ``maps`` (see the
    module docstring); the forward's values are those of the model (to float tolerance)."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: List[Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SDPA:
            bound = dict(zip(_SDPA_PARAMETERS, args))
            bound.update(kwargs)
            out, probabilities = scaled_dot_product_attention(**bound)
            if _square(probabilities):
                self.maps.append(probabilities)
            return out
        if func is _MHA:
            return self._multi_head(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAX and _square(out):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if isinstance(dim, int) and dim in (-1, out.dim() - 1):
                self.maps.append(out)
        return out

    def _multi_head(self, func, args, kwargs):
        bound = _MHA_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        wanted, average = bound.arguments["need_weights"], bound.arguments["average_attn_weights"]
        bound.arguments["need_weights"] = True  # the explicit path: q k^T, softmax, @ v
        bound.arguments["average_attn_weights"] = False
        out, weights = func(*bound.args, **bound.kwargs)
        if _square(weights):
            self.maps.append(weights)
        if not wanted:
            return out, None
        if average:
            weights = weights.mean(dim=1 if weights.dim() == 4 else 0)
        return out, weights


def _per_sample(a: Tensor, n: int, where: str) -> Tensor:
    """``a`` as ``(N, heads, T, T)``: 4-d with the batch first; 3-d ``(N, T, T)`` (one head) or
    ``(N * heads, T, T)`` (batch-major, as ``bmm``-based attention lays it out); more dims after
    the batch are heads."""
    t = a.shape[-1]
    if a.dim() == 3 and a.shape[0] == n:
        return a[:, None]
    if a.dim() == 3 and a.shape[0] % n == 0:
        return a.reshape(n, a.shape[0] // n, t, t)
    if a.dim() >= 4 and a.shape[0] == n:
        return a.reshape(n, -1, t, t)
    raise ValueError(
        f"{where}: an attention of shape {tuple(a.shape)} does not have the batch ({n}) first: windowed "
        "attention (Swin) or attention over another batch layout has no rollout over the input's tokens"
    )


class AttentionRollout(Explainer):
    """Attention rollout (Abnar & Zuidema 2020, Sec. 3). Class-agnostic: ``target`` is ignored.

    Options:
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over the heads (as in common
            implementations); rows are renormalised after adding the identity.
        token: the row of the rollout that is the map, the class token (default ``0``); ``None``:
            the mean of all rows (models that pool by the mean of the tokens).
        prefix_tokens: tokens before the patch tokens, dropped from the map (default 1, the
            class token; 2 for DeiT with a distillation token; 0 without a class token). For a
            sequence input ``(N, L, D)`` they are dropped only where the attention has
            ``L + prefix_tokens`` tokens.
        grid: ``(h, w)`` of the patch tokens; None: square, ``sqrt`` of their number.

    The map has ``x``'s shape: for images ``(N, C, H, W)``, the patch row reshaped to the grid,
    upsampled bilinearly to ``(H, W)`` and repeated over ``C``; for ``(N, L, D)`` the token row
    repeated over ``D``. See the module docstring for how attention is captured.

    Example:
        >>> h = manipex.explain(vit, x, "attention_rollout")                   # class token row
        >>> h = manipex.explain(deit, x, "attention_rollout", prefix_tokens=2)
    """

    name = "attention_rollout"
    options = {"head_fusion": "mean", "token": 0, "prefix_tokens": 1, "grid": None}
    #: Only models that compute self-attention have this map (others get a ValueError): suites
    #: that run every method on CNNs can leave such methods out by this flag.
    requires_attention = True

    def validate_options(self) -> None:
        where = "explain(method='attention_rollout')"
        check_choice(self.config["head_fusion"], ("mean", "max", "min"), where=where, name="head_fusion")
        check_int(self.config["token"], where=where, name="token", allow_none=True)
        check_int(self.config["prefix_tokens"], where=where, name="prefix_tokens", ge=0)
        grid = self.config["grid"]
        if grid is not None and (not isinstance(grid, (tuple, list)) or len(grid) != 2 or any(
                not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in grid)):
            raise ValueError(f"{where}: grid must be None or (h, w), two positive ints, got {short(grid)}")

    def attribute(self, model, x, target, create_graph):
        where = "explain(method='attention_rollout')"
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"{where}: x must be images (N, C, H, W), token embeddings (N, L, D) or "
                             f"features (N, D), got shape {tuple(x.shape)}")
        recorder = AttentionRecorder()
        # no gradient is needed; a map without graph keeps none of the forward alive
        with torch.set_grad_enabled(create_graph):
            with recorder:
                out = model(x)
            if isinstance(out, Tensor):
                report_output(x, out)
                if target is not None:  # ignored, but a class the model does not have is an error
                    select_target(out, target, where=where)
            row = self._row(recorder.maps, x.shape[0], where)
            return self._to_input(row, x, where)

    def _row(self, maps: List[Tensor], n: int, where: str) -> Tensor:
        if not maps:
            raise ValueError(
                f"{where}: the model computed no self-attention: no F.scaled_dot_product_attention, no "
                "nn.MultiheadAttention and no softmax over the last dim with a square (T, T) output ran "
                "in its forward; attention rollout needs a transformer")
        fused = []
        for a in maps:
            a = _per_sample(a, n, where)
            fusion = self.config["head_fusion"]
            fused.append(a.mean(1) if fusion == "mean" else a.amax(1) if fusion == "max" else a.amin(1))
        tokens = {a.shape[-1] for a in fused}
        if len(tokens) != 1:
            raise ValueError(f"{where}: the attention layers attend over different numbers of tokens "
                             f"({', '.join(map(str, sorted(tokens)))}); rollout needs one token sequence")
        t = fused[0].shape[-1]
        dtype = torch.promote_types(fused[0].dtype, torch.float32)
        eye = torch.eye(t, dtype=dtype, device=fused[0].device)
        rollout: Optional[Tensor] = None
        for a in fused:
            a = 0.5 * a.to(dtype) + 0.5 * eye
            a = a / a.sum(dim=-1, keepdim=True)
            rollout = a if rollout is None else a @ rollout
        token = self.config["token"]
        if token is None:
            return rollout.mean(dim=1)
        if not -t <= token < t:
            raise ValueError(f"{where}: token {token} is out of range for {t} tokens")
        return rollout[:, token]

    def _to_input(self, row: Tensor, x: Tensor, where: str) -> Tensor:
        n, t = row.shape
        prefix = self.config["prefix_tokens"]
        row = row.to(x.dtype)
        if x.dim() in (2, 3):
            length = x.shape[1]
            if t == length + prefix:
                row = row[:, prefix:]
            elif t != length:
                raise ValueError(f"{where}: the attention has {t} tokens, the input {length} (with "
                                 f"prefix_tokens={prefix}: {length + prefix}); they must match")
            return row if x.dim() == 2 else row[:, :, None].expand(-1, -1, x.shape[2]).contiguous()
        patches = t - prefix
        grid = self.config["grid"]
        if grid is None:
            side = math.isqrt(max(patches, 0))
            if patches < 1 or side * side != patches:
                raise ValueError(f"{where}: {t} tokens less prefix_tokens={prefix} leave {patches} patch tokens, "
                                 "not a square grid; pass grid=(h, w) or the right prefix_tokens")
            grid = (side, side)
        h, w = grid
        if h * w != patches:
            raise ValueError(f"{where}: grid {tuple(grid)} has {h * w} cells but there are {patches} patch "
                             f"tokens ({t} tokens less prefix_tokens={prefix})")
        cam = row[:, prefix:].reshape(n, 1, h, w)
        if (h, w) != tuple(x.shape[2:]):
            cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
        return cam.expand(-1, x.shape[1], -1, -1).contiguous()


__all__ = ["AttentionRollout", "AttentionRecorder", "scaled_dot_product_attention"]
