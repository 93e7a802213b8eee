"""Hugging Face ``transformers`` models traced for the propagation rules.

LRP (``attn_lrp``, ``cp_lrp`` and the other composites), guided backprop, PatternAttribution
and the aggregations replace the backward pass layer by layer, so they trace the model with
``torch.fx`` (:mod:`manipex.explainers.graph`). Hugging Face's forwards cannot be traced as
they are; while such a model is traced, :func:`hugging_face_tracing` (registered with
:func:`~manipex.explainers.graph.register_tracing_patch`) swaps traceable forms in for library
code and puts the originals back on exit, also after an error:

* **Attention.** HF's attention modules fetch their kernel from ``ALL_ATTENTION_FUNCTIONS``
  (``sdpa_attention_forward`` reads the query length in Python control flow; ``eager``'s
  softmax runs in float32 with a ``dtype`` argument, which the softmax rule refuses). For
  ``eager`` and ``sdpa``, ``AttentionInterface.get_interface`` (and
  ``ALL_ATTENTION_FUNCTIONS["sdpa"]``) returns :func:`eager_attention` / :func:`sdpa_attention`
  instead: the same function written as the steps the rules see,
  ``softmax(q @ k^T * scaling + mask, -1) @ v`` (grouped-query heads repeated, as HF's
  ``repeat_kv``; sdpa's ``is_causal`` as a causal mask; T5-style ``position_bias`` added). The
  softmax runs in the scores' dtype: the same as HF's for float32 models; float64 stays float64
  (HF's eager rounds it to float32); half precision differs by HF's float32 upcast. Other
  implementations (flash, flex, paged) are refused by name, as are ``softcap``, sliding windows
  and attention sinks. A modeling module's own ``eager_attention_forward`` is swapped too.
* **Masks.** ``create_bidirectional_mask``, ``create_causal_mask`` and
  ``create_sliding_window_causal_mask`` (as imported by a modeling module) are recorded as one
  node each (:class:`MaskNode`): it reads only the *shape, dtype and device* of the embeddings
  (so the node does not read the signal) and the padding mask, and makes the mask from them
  when the graph runs, with HF's own function; a causal mask is always materialised
  (``allow_is_causal_skip=False``: whether the traced sdpa adds its own causal mask is decided
  while tracing, when the node's value is not known). A boolean mask is added as ``0`` /
  ``finfo(dtype).min`` (HF's eager convention; finite, so that the AttnLRP softmax rule's
  ``x (R - s sum R)`` is 0 at masked scores, where ``-inf`` would give NaN).
* **Buffers** (BERT's ``position_ids`` sliced by the sequence length, its ``token_type_ids``,
  Swin's relative position index, a wrapper's attention mask) are traced as ``get_attr`` nodes
  (``torch.fx.Tracer.proxy_buffer_attributes``), read live when the graph runs: fx would
  otherwise evaluate the slices while tracing and store the results as ``_tensor_constant``
  attributes set on the traced root module.
* **Shapes.** HF's forwards check shapes in Python (``if num_channels != self.num_channels``)
  and unpack them (``hidden_shape = (*input_shape, -1, head_dim)``), so the graph is traced at
  the example's shape (fx's meta tracer, :func:`~manipex.explainers.graph.model_graph`). That
  tracer computes each leaf module's output on the meta device; for ``nn.Linear`` it mixes the
  meta input with the real weight and fails, losing every shape after the first projection.
  While tracing, ``nn.Linear``'s meta output is given by its shape
  (``torch.fx.experimental.meta_tracer.manual_meta_overrides``).

Nothing here touches the model: the swaps are of functions in ``transformers`` modules and of
``torch.fx`` settings, process-wide while one model is traced (traces are one at a time:
:mod:`~manipex.explainers.graph` holds a lock); the model's modules, parameters, buffers, hooks and
config are as they were.
Models are recognised by their classes (a module whose class is defined in ``transformers``),
so this is inert for every other model.

Checked (tests/test_huggingface.py): ``ViTForImageClassification``,
``DeiTForImageClassificationWithTeacher``, ``SwinForImageClassification``,
``BertForSequenceClassification`` (encoder, and decoder with causal attention) explained w.r.t.
``inputs_embeds`` through :class:`~manipex.models.interfaces.EmbeddingsModel`, with ``sdpa``
and ``eager`` attention. Not yet: Llama-style models (their ``LlamaRMSNorm`` is written with
``pow``/``rsqrt``, which the rules do not know; rotary embeddings).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.fx
from torch import Tensor, nn

from .attention import add_mask, causal_mask
from .nodes import UnsupportedModelError
from .graph import register_tracing_patch

#: The mask helpers recorded as one node each (the names a modeling module imports them by).
MASK_FUNCTIONS = ("create_bidirectional_mask", "create_causal_mask", "create_sliding_window_causal_mask")
#: The arguments of the mask helpers that are read only for their shape, dtype and device.
_METADATA_ONLY = ("inputs_embeds", "encoder_hidden_states")
#: Attention kwargs that change the function beyond what the traced forms compute.
_REFUSED_KWARGS = ("softcap", "sliding_window", "s_aux", "sinks")


def is_hugging_face(model: nn.Module) -> bool:
    """Whether any module of ``model`` is an instance of a class defined in ``transformers``."""
    return any(type(m).__module__.startswith("transformers.") for m in model.modules())


# --- attention ----------------------------------------------------------------------------------


def _node(function: Callable, *args: Any) -> Any:
    """``function(*args)`` as one node where an argument is a proxy (while tracing), else called."""
    proxy = next((a for a in args if isinstance(a, torch.fx.Proxy)), None)
    if proxy is None:
        return function(*args)
    return proxy.tracer.create_proxy("call_function", function, args, {})


def _attention(module: nn.Module, query, key, value, attention_mask, scaling, dropout, causal: bool,
               kwargs: Dict[str, Any], implementation: str):
    where = f"Hugging Face attention ({implementation}) in {type(module).__name__}"
    for name in _REFUSED_KWARGS:
        if kwargs.get(name) is not None:
            raise UnsupportedModelError(f"{where}: {name}={kwargs[name]!r} is not supported by the propagation rules")
    if isinstance(dropout, torch.fx.Proxy) or dropout:
        raise UnsupportedModelError(f"{where} applies attention dropout (training mode); call model.eval() first")
    groups = getattr(module, "num_key_value_groups", 1)
    if isinstance(groups, int) and groups > 1:  # grouped-query attention: HF's repeat_kv
        key, value = (t.unsqueeze(2).expand(-1, -1, groups, -1, -1).flatten(1, 2) for t in (key, value))
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    position_bias = kwargs.get("position_bias")
    if position_bias is not None:
        scores = _node(add_mask, scores, position_bias)
    if causal:
        lengths = (query.size(-2), key.size(-2))
        scores = _node(add_mask, scores, _node(causal_mask, *lengths, query.device))
    if attention_mask is not None:
        scores = _node(add_mask, scores, attention_mask)
    weights = torch.softmax(scores, -1)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def eager_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                    scaling: Optional[float] = None, dropout: float = 0.0, **kwargs: Any) -> Tuple[Tensor, Tensor]:
    """HF's ``eager_attention_forward`` written out: ``(out (N, L, H, d), weights)``."""
    return _attention(module, query, key, value, attention_mask, scaling, dropout, False, kwargs, "eager")


def sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                   dropout: float = 0.0, scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                   **kwargs: Any) -> Tuple[Tensor, None]:
    """HF's ``sdpa_attention_forward`` written out (its ``is_causal``: the module's flag unless
    passed, only without a mask and for more than one query): ``(out (N, L, H, d), None)``."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q_length = query.size(-2)  # an int, also while fx's meta tracer traces (a proxy in a symbolic trace)
    causal = bool(causal) and attention_mask is None and not (isinstance(q_length, int) and q_length <= 1)
    out, _ = _attention(module, query, key, value, attention_mask, scaling, dropout, causal, kwargs, "sdpa")
    return out, None


_TRACED = {"eager": eager_attention, None: eager_attention, "sdpa": sdpa_attention}


def _get_interface(self, attn_implementation: Optional[str], default: Callable) -> Callable:
    """``AttentionInterface.get_interface`` while tracing: the traced forms of eager and sdpa."""
    traced = _TRACED.get(attn_implementation)
    if traced is None:
        raise UnsupportedModelError(
            f"the propagation rules need Hugging Face attention 'eager' or 'sdpa', this model uses "
            f"{attn_implementation!r}; load it with attn_implementation='sdpa' (or 'eager')")
    return traced


def _getitem(original: Callable) -> Callable:
    """``AttentionInterface.__getitem__`` while tracing (``ALL_ATTENTION_FUNCTIONS["sdpa"]``, as
    a few modeling files index it): the traced forms for eager and sdpa, else the original."""

    def getitem(self, key):
        return _TRACED[key] if key in ("eager", "sdpa") else original(self, key)

    return getitem


# --- masks ---------------------------------------------------------------------------------------


class MaskNode:
    """A Hugging Face mask helper as one node of the traced graph.

    The node's arguments are the (shape, dtype, device) of the tensors the helper reads only
    for their metadata (``inputs_embeds``) and its tensor arguments (the padding mask, a buffer
    of the wrapper); the other arguments (the config, mask functions) are bound here. When the
    graph runs, the helper is called with an empty stand-in of the embeddings' shape. On the
    meta device (shapes while tracing) it gives None: the mask is added to the scores, which
    keep their shape."""

    def __init__(self, function: Callable, names: Tuple[str, ...], constants: Dict[str, Any]) -> None:
        self.function, self.names, self.constants = function, names, constants
        self.__name__ = getattr(function, "__name__", "mask")

    def __call__(self, *values: Any) -> Any:
        kwargs = dict(self.constants)
        meta = False
        for name, value in zip(self.names, values):
            if (name in _METADATA_ONLY and isinstance(value, tuple) and len(value) == 3
                    and isinstance(value[1], torch.dtype)):
                shape, dtype, device = value
                meta = meta or str(device) == "meta"
                value = None if meta else torch.empty(tuple(shape), dtype=dtype, device=device)
            elif isinstance(value, Tensor) and value.is_meta:
                meta = True
            kwargs[name] = value
        if meta:
            return None
        return self.function(**kwargs)

    def __repr__(self) -> str:
        return f"MaskNode({self.__name__})"


def _mask_leaf(function: Callable) -> Callable:
    """``function`` (a HF mask helper), recorded as a :class:`MaskNode` when it reads a proxy."""
    import inspect

    signature = inspect.signature(function)

    def traced(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        arguments = dict(bound.arguments)
        extra = arguments.pop(next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), ""), {})
        arguments.update(extra)
        proxies = any(isinstance(v, torch.fx.Proxy) for v in arguments.values())
        if not proxies:
            return function(*args, **kwargs)
        names, values, constants = [], [], {}
        for name, value in arguments.items():
            if isinstance(value, torch.fx.Proxy) and name in _METADATA_ONLY:
                names.append(name)
                values.append((value.shape, value.dtype, value.device))
            elif isinstance(value, (torch.fx.Proxy, Tensor)):
                names.append(name)
                values.append(value)
            else:
                constants[name] = value
        if "allow_is_causal_skip" in signature.parameters:
            # the traced sdpa decides at trace time whether to add a causal mask (where it gets
            # none); the node must then always give the causal mask, never None for is_causal
            constants["allow_is_causal_skip"] = False
        leaf = MaskNode(function, tuple(names), constants)
        proxy = next(v for v in arguments.values() if isinstance(v, torch.fx.Proxy))
        return proxy.tracer.create_proxy("call_function", leaf, tuple(values), {})

    traced.__wrapped__ = function
    return traced


# --- the meta tracer's shapes ----------------------------------------------------------------------


def _linear_meta(module: nn.Linear, x: Tensor) -> Tensor:
    return torch.empty((*x.shape[:-1], module.out_features), dtype=x.dtype, device="meta")


# --- the patch -------------------------------------------------------------------------------------


def _modeling_modules(model: nn.Module) -> List[Any]:
    names = dict.fromkeys(type(m).__module__ for m in model.modules() if type(m).__module__.startswith("transformers."))
    return [sys.modules[n] for n in names if n in sys.modules]


@contextlib.contextmanager
def _swapped(namespace: Any, name: str, value: Any) -> Iterator[None]:
    """``namespace.name = value`` (a module or class attribute, or a dict entry) until exit."""
    if isinstance(namespace, dict):
        missing = name not in namespace
        original = namespace.get(name)
        namespace[name] = value
        try:
            yield
        finally:
            if missing:
                namespace.pop(name, None)
            else:
                namespace[name] = original
        return
    own = name in vars(namespace)
    original = vars(namespace).get(name)
    setattr(namespace, name, value)
    try:
        yield
    finally:
        if own:
            setattr(namespace, name, original)
        else:
            delattr(namespace, name)


@contextlib.contextmanager
def hugging_face_tracing(model: nn.Module) -> Iterator[None]:
    """While ``model`` is traced: Hugging Face's attention, mask helpers and the meta tracer's
    ``nn.Linear`` shapes in traceable forms (see the module docstring); a no-op for a model
    without ``transformers`` classes. Everything is restored on exit, also after an error."""
    if "transformers" not in sys.modules or not is_hugging_face(model):
        yield
        return
    with contextlib.ExitStack() as stack:
        from transformers import modeling_utils

        interface = getattr(modeling_utils, "AttentionInterface", None)
        if interface is not None:
            stack.enter_context(_swapped(interface, "get_interface", _get_interface))
            stack.enter_context(_swapped(interface, "__getitem__", _getitem(interface.__getitem__)))
        for module in _modeling_modules(model):
            if callable(getattr(module, "eager_attention_forward", None)):
                stack.enter_context(_swapped(module, "eager_attention_forward", eager_attention))
            for name in MASK_FUNCTIONS:
                function = getattr(module, name, None)
                if callable(function):
                    stack.enter_context(_swapped(module, name, _mask_leaf(function)))
        from torch.fx.experimental import meta_tracer

        stack.enter_context(_swapped(torch.fx.Tracer, "proxy_buffer_attributes", True))
        if nn.Linear not in meta_tracer.manual_meta_overrides:
            stack.enter_context(_swapped(meta_tracer.manual_meta_overrides, nn.Linear, _linear_meta))
        yield


def _register() -> None:
    register_tracing_patch(hugging_face_tracing)  # masks: attention.add_mask, an add of a constant


_register()

__all__ = ["eager_attention", "sdpa_attention", "hugging_face_tracing", "is_hugging_face",
           "MaskNode", "MASK_FUNCTIONS"]
