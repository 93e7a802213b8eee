"""torchvision's Swin attention written out for the propagation rules.

torchvision's ``swin_transformer.shifted_window_attention(input, qkv_weight, proj_weight,
relative_position_bias, window_size, num_heads, shift_size, attention_dropout=0.0, dropout=0.0,
qkv_bias=None, proj_bias=None, logit_scale=None, training=True)`` is hidden from ``torch.fx``
with ``torch.fx.wrap`` (one opaque call), and its body cannot be traced either: Python ``if`` on
the padded size (``if window_size[0] >= pad_H``, ``if sum(shift_size) > 0``) and a shift mask
written in place into ``x.new_zeros(...)``.

While a model is traced for the rules (a tracing patch, :func:`manipex.explainers.graph.
register_tracing_patch`), every fx-wrapped global ``shifted_window_attention`` (found in
``torch.fx``'s table of wrapped functions and in the globals of the model's module classes) is
replaced by :func:`traceable_shifted_window_attention`, the same function written from steps the
rules know, and the original is put back afterwards (also after an error); the model itself is
not touched. The steps:

* the shape arithmetic (padding, the shifts, the number of windows, the head size and scale) in
  :func:`window_geometry` and the shift mask (0 / -100, torchvision's) in :func:`shift_mask`:
  both ``torch.fx.wrap``-ed functions of the input's *shape* only, so they are constant nodes,
  evaluated at run time. The graph is traced symbolically once and is valid at every input size
  the model accepts (a window larger than the feature map turns the shift off at run time:
  the roll is then by 0 and the mask all zeros, the same function as torchvision's);
* ``F.pad``, ``torch.roll`` by the shifts, window partition with ``view``/``permute``/
  ``reshape`` (plumbing); the ``qkv`` projection as ``F.linear`` on the parameter (a functional
  dense layer); ``q`` scaled; ``q @ k^T`` (matmul); ``+ relative_position_bias`` (a constant
  added); ``+ mask`` through ``view``/``unsqueeze`` as torchvision (a constant added);
  ``softmax(dim=-1)``; ``@ v`` (matmul of the attention and the values); the ``proj``
  ``F.linear``; window reverse, roll back, the padding sliced off.

Configurations whose shift is 0 (every other block) have no roll and no mask, as torchvision's.
Refused with :class:`~manipex.explainers.nodes.UnsupportedModelError`: Swin v2's cosine attention
(``logit_scale`` given: ``F.normalize`` divides by an activation's norm, which no rule shares)
and dropout in training mode (call ``model.eval()``).
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .nodes import UnsupportedModelError
from . import graph

#: The name torchvision wraps (``torch.fx.wrap("shifted_window_attention")``).
NAME = "shifted_window_attention"
#: The parameters a function of that name must take to be replaced (torchvision's, in order).
_PARAMETERS = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
               "shift_size")
_KNOWN = frozenset(_PARAMETERS + ("attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale",
                                  "training"))


class Geometry(NamedTuple):
    """The shape arithmetic of one shifted-window attention call (all Python ints/floats)."""

    pad_r: int  # padding on the right (width) and bottom (height) to window multiples
    pad_b: int
    pad_H: int
    pad_W: int
    shift_h: int  # the cyclic shift, 0 where the window covers the padded map
    shift_w: int
    windows_h: int  # windows per column and per row, and their product
    windows_w: int
    windows: int
    tokens: int  # tokens per window (window_size[0] * window_size[1])
    batch_windows: int  # B * windows
    head_dim: int
    scale: float  # head_dim ** -0.5
    batch: int


def window_geometry(B: int, H: int, W: int, C: int, window_size: Sequence[int], shift_size: Sequence[int],
                    num_heads: int) -> Geometry:
    """torchvision's shape arithmetic: padding to window multiples, the shift turned off where a
    window covers the padded map, the windows, the head size and its scale."""
    wh, ww = int(window_size[0]), int(window_size[1])
    pad_r = (ww - W % ww) % ww
    pad_b = (wh - H % wh) % wh
    pad_H, pad_W = H + pad_b, W + pad_r
    shift_h = 0 if wh >= pad_H else int(shift_size[0])
    shift_w = 0 if ww >= pad_W else int(shift_size[1])
    windows = (pad_H // wh) * (pad_W // ww)
    head_dim = C // num_heads
    return Geometry(pad_r, pad_b, pad_H, pad_W, shift_h, shift_w, pad_H // wh, pad_W // ww, windows, wh * ww,
                    B * windows, head_dim, head_dim ** -0.5, B)


def shift_mask(pad_H: int, pad_W: int, window_size: Sequence[int], shift_h: int, shift_w: int,
               dtype: torch.dtype, device: Any) -> Tensor:
    """torchvision's attention mask of the shifted windows, (windows, tokens, tokens): 0 between
    tokens of the same region of the rolled map, -100 between tokens of different regions; all
    zeros where the shift is off (``shift_h + shift_w == 0``: torchvision adds no mask then)."""
    wh, ww = int(window_size[0]), int(window_size[1])
    windows = (pad_H // wh) * (pad_W // ww)
    if shift_h + shift_w <= 0:
        return torch.zeros((windows, wh * ww, wh * ww), dtype=dtype, device=device)
    attn_mask = torch.zeros((pad_H, pad_W), dtype=dtype, device=device)
    h_slices = ((0, -wh), (-wh, -shift_h), (-shift_h, None))
    w_slices = ((0, -ww), (-ww, -shift_w), (-shift_w, None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            attn_mask[h[0]: h[1], w[0]: w[1]] = count
            count += 1
    attn_mask = attn_mask.view(pad_H // wh, wh, pad_W // ww, ww)
    attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(windows, wh * ww)
    attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))


torch.fx.wrap("window_geometry")
torch.fx.wrap("shift_mask")


def traceable_shifted_window_attention(  # noqa: PLR0913 -- torchvision's signature, kept
    input: Tensor, qkv_weight: Tensor, proj_weight: Tensor, relative_position_bias: Optional[Tensor],
    window_size: List[int], num_heads: int, shift_size: List[int], attention_dropout: float = 0.0,
    dropout: float = 0.0, qkv_bias: Optional[Tensor] = None, proj_bias: Optional[Tensor] = None,
    logit_scale: Optional[Tensor] = None, training: bool = True,
) -> Tensor:
    """torchvision's ``shifted_window_attention`` (Swin v1) from steps ``torch.fx`` traces and the
    rules know (see the module docstring); the same function, at every input size. A ``None``
    relative position bias adds nothing."""
    where = "explain() on torchvision's shifted_window_attention"
    if logit_scale is not None:
        raise UnsupportedModelError(
            f"{where}: Swin v2's cosine attention (logit_scale given: ShiftedWindowAttentionV2) is not supported "
            "by the propagation rules (F.normalize divides by the norm of an activation); Swin v1 is")
    if training and (_nonzero(attention_dropout) or _nonzero(dropout)):
        raise UnsupportedModelError(f"{where}: dropout in training mode (attention_dropout={attention_dropout}, "
                                    f"dropout={dropout}); call model.eval() first")
    window_size, configured_shift = list(window_size), list(shift_size)
    shape = input.shape
    g = window_geometry(shape[0], shape[1], shape[2], shape[3], window_size, configured_shift, num_heads)
    C = shape[3]
    shifted = sum(configured_shift) > 0  # a constant of the module; the shape may still turn it off
    # pad feature maps to multiples of window size
    x = F.pad(input, (0, 0, 0, g.pad_r, 0, g.pad_b))
    # cyclic shift
    if shifted:
        x = torch.roll(x, shifts=(-g.shift_h, -g.shift_w), dims=(1, 2))
    # partition windows
    x = x.view(g.batch, g.windows_h, window_size[0], g.windows_w, window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(g.batch_windows, g.tokens, C)  # B*nW, Ws*Ws, C
    # multi-head attention
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(g.batch_windows, g.tokens, 3, num_heads, g.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * g.scale
    attn = q.matmul(k.transpose(-2, -1))
    # add relative position bias
    if relative_position_bias is not None:
        attn = attn + relative_position_bias
    if shifted:
        mask = shift_mask(g.pad_H, g.pad_W, window_size, g.shift_h, g.shift_w, input.dtype, input.device)
        attn = attn.view(g.batch, g.windows, num_heads, g.tokens, g.tokens)
        attn = attn + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, g.tokens, g.tokens)
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(g.batch_windows, g.tokens, C)
    x = F.linear(x, proj_weight, proj_bias)
    # reverse windows
    x = x.view(g.batch, g.windows_h, g.windows_w, window_size[0], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(g.batch, g.pad_H, g.pad_W, C)
    # reverse cyclic shift
    if shifted:
        x = torch.roll(x, shifts=(g.shift_h, g.shift_w), dims=(1, 2))
    # unpad features
    return x[:, : shape[1], : shape[2], :].contiguous()


def _nonzero(p: Any) -> bool:
    return isinstance(p, torch.fx.Proxy) or bool(p)


def _replacement(original: Callable) -> Optional[Callable]:
    """A stand-in for ``original`` that binds a call to its signature (so positional calls of
    torchvision's and of older copies without ``logit_scale`` both map) and calls
    :func:`traceable_shifted_window_attention`; None where ``original`` is not torchvision's."""
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):
        return None
    names = tuple(signature.parameters)
    if names[:len(_PARAMETERS)] != _PARAMETERS or not set(names) <= _KNOWN:
        return None

    def shifted_window_attention(*args: Any, **kwargs: Any) -> Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return traceable_shifted_window_attention(**bound.arguments)

    shifted_window_attention.__wrapped_original__ = original  # type: ignore[attr-defined]
    return shifted_window_attention


def _module_globals(model: nn.Module) -> Iterator[Dict[str, Any]]:
    """The globals of the model's module classes' forwards (where their calls look names up)."""
    seen = set()
    for m in model.modules():
        for cls in type(m).__mro__:
            forward = cls.__dict__.get("forward")
            namespace = getattr(forward, "__globals__", None)
            if isinstance(namespace, dict) and id(namespace) not in seen:
                seen.add(id(namespace))
                yield namespace


@contextlib.contextmanager
def traceable_swin(model: nn.Module) -> Iterator[None]:
    """While tracing ``model``: every fx-wrapped ``shifted_window_attention`` (torchvision's, or a
    copy with its signature) is no fx leaf and, in the module globals that define it, is
    :func:`traceable_shifted_window_attention`; everything is put back on exit."""
    from torch.fx import _symbolic_trace

    table = getattr(_symbolic_trace, "_wrapped_fns_to_patch", None)
    table = table if isinstance(table, dict) else {}
    namespaces: Dict[int, Dict[str, Any]] = {}
    for key, namespace in table.items():
        if isinstance(key, tuple) and key[-1] == NAME and isinstance(namespace, dict):
            namespaces[id(namespace)] = namespace
    for namespace in _module_globals(model):
        if NAME in namespace:
            namespaces.setdefault(id(namespace), namespace)
    swapped: List[Tuple[Dict[str, Any], Any]] = []
    hidden: Dict[Any, Any] = {}
    try:
        for namespace in namespaces.values():
            original = namespace.get(NAME)
            stand_in = _replacement(original) if callable(original) else None
            if stand_in is None:
                continue
            swapped.append((namespace, original))
            namespace[NAME] = stand_in
            for key in [k for k, v in table.items() if isinstance(k, tuple) and k[-1] == NAME and v is namespace]:
                hidden[key] = table.pop(key)
        yield
    finally:
        for namespace, original in reversed(swapped):
            namespace[NAME] = original
        table.update(hidden)


def _register() -> None:
    graph.register_tracing_patch(traceable_swin)


_register()

__all__ = ["Geometry", "window_geometry", "shift_mask", "traceable_shifted_window_attention", "traceable_swin"]
