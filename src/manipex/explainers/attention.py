"""Attention written out for the propagation rules: what the tracer records instead of a fused call.

LRP rules for transformers (AttnLRP, CP-LRP; :mod:`manipex.explainers.rules`) act on the steps
of attention: the scores ``q @ k^T``, their scaling and mask, the softmax and the product with
the values. Two ways of writing attention hide those steps from ``torch.fx``:

* ``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)`` is one
  call. :func:`expand_sdpa` replaces each such node of a traced graph by
  ``softmax(add_mask(q @ k.transpose(-2, -1) * scale, mask), -1) @ v``: the math kernel's
  definition (``torch.nn.functional.scaled_dot_product_attention``'s documented reference), so
  the traced model computes the same function.
* ``nn.MultiheadAttention`` is a leaf module whose forward (``F.multi_head_attention_forward``)
  has shape checks fx cannot trace. :func:`trace_multihead` is what the tracer runs instead: the
  packed input projection as ``F.linear`` on the module's own parameters (read live, so their
  gradients flow), the heads split with ``unflatten``/``transpose``, the same attention steps,
  and ``out_proj`` called as the module it is.

Masks: a boolean mask keeps the positions where it is ``True`` (SDPA's convention) or drops them
(``nn.MultiheadAttention``'s ``attn_mask`` and ``key_padding_mask``); :func:`add_mask` turns
either into ``0`` / the dtype's lowest number added to the scores (as Hugging Face does: the
softmax gives exactly 0 there, and no infinity reaches a rule's arithmetic). A float mask is added as
it is (Hugging Face passes ``torch.finfo(dtype).min`` at masked positions).
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .nodes import Add, FUNCTION_HANDLERS, UnsupportedModelError


def add_mask(scores: Tensor, mask: Optional[Tensor], keep: bool = True) -> Tensor:
    """``scores`` plus an attention mask: a float mask as it is; a boolean one as ``0`` where the
    score is kept and ``torch.finfo(dtype).min`` where it is masked (``keep=True``: ``True`` keeps, SDPA's
    convention; ``keep=False``: ``True`` masks, ``nn.MultiheadAttention``'s)."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        dropped = ~mask if keep else mask
        lowest = torch.finfo(scores.dtype).min
        mask = torch.zeros(dropped.shape, dtype=scores.dtype, device=scores.device).masked_fill(dropped, lowest)
    return scores + mask


def causal_mask(queries: int, keys: int, device: Any) -> Tensor:
    """SDPA's ``is_causal`` mask: query ``i`` sees keys ``j <= i`` (``True`` keeps)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril()


def expand_sdpa(graph: torch.fx.Graph, where: str) -> None:
    """Replace every ``F.scaled_dot_product_attention`` node of ``graph`` by its steps (see the
    module docstring); dropout must be off and grouped-query attention is refused."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        defaults = (None, None, None, None, 0.0, False, None, False)
        arg = {n: (node.kwargs[n] if n in node.kwargs else node.args[i] if i < len(node.args) else d)
               for i, (n, d) in enumerate(zip(names, defaults))}
        if isinstance(arg["dropout_p"], torch.fx.Node) or arg["dropout_p"]:
            raise UnsupportedModelError(f"{where} does not support scaled_dot_product_attention with dropout "
                                        f"(node {node.name!r}); call model.eval() first")
        if arg["enable_gqa"]:
            raise UnsupportedModelError(f"{where} does not support grouped-query attention (enable_gqa=True) "
                                        f"at node {node.name!r}; repeat the keys and values per head instead")
        with graph.inserting_before(node):
            q, k, v = arg["query"], arg["key"], arg["value"]
            scores = graph.call_function(operator.matmul, (q, graph.call_method("transpose", (k, -2, -1))))
            scale = arg["scale"]
            if scale is None:
                scale = graph.call_function(operator.pow, (graph.call_method("size", (q, -1)), -0.5))
            scores = graph.call_function(operator.mul, (scores, scale))
            if arg["is_causal"]:
                device = graph.call_function(getattr, (q, "device"))
                lengths = (graph.call_method("size", (q, -2)), graph.call_method("size", (k, -2)))
                scores = graph.call_function(add_mask, (scores, graph.call_function(causal_mask, (*lengths, device))))
            if arg["attn_mask"] is not None:
                scores = graph.call_function(add_mask, (scores, arg["attn_mask"]))
            weights = graph.call_function(torch.softmax, (scores, -1))
            out = graph.call_function(operator.matmul, (weights, v))
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def trace_multihead(tracer: torch.fx.Tracer, m: nn.MultiheadAttention, query, key, value,
                    key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                    average_attn_weights: bool = True, is_causal: bool = False):
    """What the tracer records for a call of ``nn.MultiheadAttention`` ``m`` (see the module
    docstring): ``(output, weights)``, ``weights`` averaged over heads unless
    ``average_attn_weights=False``, None unless ``need_weights``."""
    path = tracer.path_of_module(m)
    where = f"nn.MultiheadAttention {path!r}"
    if m.bias_k is not None or m.add_zero_attn:
        raise UnsupportedModelError(f"{where}: add_bias_kv and add_zero_attn are not supported by the propagation "
                                    "rules")
    if m.training and m.dropout > 0:
        raise UnsupportedModelError(f"{where} applies dropout in training mode; call model.eval() first")

    def param(name: str):
        return tracer.create_proxy("get_attr", f"{path}.{name}", (), {})

    if not m.batch_first:  # (L, N, E) -> (N, L, E)
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    heads, head_dim = m.num_heads, m.head_dim
    if m._qkv_same_embed_dim:
        weight = param("in_proj_weight")
        bias = param("in_proj_bias") if m.in_proj_bias is not None else None
        if query is key and key is value:
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            w = weight.chunk(3)
            b = bias.chunk(3) if bias is not None else (None, None, None)
            q, k, v = (F.linear(t, w[i], b[i]) for i, t in enumerate((query, key, value)))
    else:
        b = param("in_proj_bias").chunk(3) if m.in_proj_bias is not None else (None, None, None)
        q, k, v = (F.linear(t, param(f"{n}_proj_weight"), b[i])
                   for i, (t, n) in enumerate(((query, "q"), (key, "k"), (value, "v"))))
    q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (q, k, v))  # (N, H, L, d)
    scores = (q @ k.transpose(-2, -1)) * (head_dim ** -0.5)

    def masked(scores, mask, keep: bool):  # a node: the mask's dtype is known only when it runs
        return tracer.create_proxy("call_function", add_mask, (scores, mask, keep), {})

    if is_causal and attn_mask is None:
        lengths = (q.size(-2), k.size(-2))
        scores = masked(scores, tracer.create_proxy("call_function", causal_mask, (*lengths, q.device), {}), True)
    if attn_mask is not None:
        if isinstance(attn_mask, Tensor) and attn_mask.dim() == 3:  # (N * H, L, S)
            attn_mask = attn_mask.unflatten(0, (-1, heads))
        scores = masked(scores, attn_mask, False)
    if key_padding_mask is not None:  # (N, S), True: ignore that key
        scores = masked(scores, key_padding_mask[:, None, None, :], False)
    weights = scores.softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).flatten(-2)
    out = tracer.call_module(m.out_proj, m.out_proj.forward, (out,), {})
    if not m.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


__all__ = ["add_mask", "causal_mask", "expand_sdpa", "trace_multihead"]


def _register() -> None:
    """The mask node is an ``add`` to the rules (a constant added to the scores)."""
    FUNCTION_HANDLERS[add_mask] = Add()


_register()
