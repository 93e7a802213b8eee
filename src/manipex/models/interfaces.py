"""Models whose forward returns more than one logits tensor.

manipex runs ``model(x)`` and expects one logits tensor ``(N, K)``. Many models return more: a
dict ``{"logits": ..., "hidden": ...}``, a tuple ``(logits, features)``, or an object with
``.logits`` (Hugging Face's ``ImageClassifierOutput``, a ``ModelOutput`` that is both a dataclass
and an ``OrderedDict``). :class:`Logits` wraps such a model into one that returns its logits::

    net = manipex.models.Logits(hf_model)                    # hf_model(x).logits
    net = manipex.models.Logits(model, 0)                    # model(x)[0] of a tuple
    net = manipex.models.Logits(model, lambda out: out["scores"])

The public entry points (:func:`manipex.explain`, :func:`manipex.attacks.manipulate_input`,
:func:`manipex.attacks.manipulate_model`, ...) do this themselves (:func:`logits_model`): with
``output=None`` (their default) they learn, once per model object, whether the model returns a
tensor, by one forward of the first sample under ``torch.no_grad()``; a model that does not is
run as ``Logits(model, "auto")``, and a :class:`ModelOutputWarning` (once per model) says which
part of its output is used. ``output=...`` chooses the part explicitly.
"""
from __future__ import annotations

import dataclasses
import sys
import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Set, Tuple, Union

import torch
import torch.fx
from torch import Tensor, nn

from .._validation import describe, short

#: What selects the logits: an attribute or key name, an index, a function, or "auto".
Output = Union[str, int, Callable[[Any], Tensor]]

_MISSING = object()
_FAILED = object()
_AUTO_RULES = ("its .logits, its 'logits' key, the element of a 1-tuple, or the only (N, classes) "
               "tensor of a tuple")


class ModelOutputWarning(UserWarning):
    """manipex took the logits out of a model's non-tensor output (said once per model object;
    pass ``output=...`` to choose the part, which also silences it)."""


def check_output_selector(output: Any, *, where: str, allow_none: bool = True) -> None:
    """``output`` is None (where allowed), a non-empty name, an int (not a bool) or a callable."""
    if output is None and allow_none:
        return
    if isinstance(output, str):
        if not output:
            raise ValueError(f"{where}: output must be a non-empty attribute or key name, got ''")
        return
    if isinstance(output, int) and not isinstance(output, bool):
        return
    if callable(output) and not isinstance(output, (Tensor, type)):
        return
    kind = "None, " if allow_none else ""
    raise TypeError(f"{where}: output must be {kind}an attribute or key name (str), an index (int) or a "
                    f"function of the model's output, got {short(output)} ({type(output).__name__})")


def _tensorlike(value: Any) -> bool:
    return isinstance(value, (Tensor, torch.fx.Proxy))


def _is_logits(value: Any, n: Optional[int]) -> bool:
    return (isinstance(value, Tensor) and value.is_floating_point() and value.dim() == 2
            and (n is None or value.shape[0] == n))


def _what(value: Any) -> str:
    return "None" if value is None else describe(value)


def _available(out: Any) -> str:
    """The parts of a model's output, in words, for an error message."""
    if isinstance(out, Tensor):
        return ("it is a tensor already (the model returns logits as they are: pass output=None, "
                "or a function of the tensor)")
    entries = []
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)  # a namedtuple
        for i, v in enumerate(out):
            name = f" ({fields[i]})" if fields and i < len(fields) else ""
            entries.append(f"[{i}]{name} {_what(v)}")
        listing = "items: "
    else:
        names = list(out.keys()) if isinstance(out, Mapping) else []
        if dataclasses.is_dataclass(out):
            names += [f.name for f in dataclasses.fields(out) if f.name not in names]
        elif not isinstance(out, Mapping) and hasattr(out, "__dict__"):
            names += [k for k in vars(out) if not str(k).startswith("_")]
        for name in names:
            value = getattr(out, name, _MISSING) if isinstance(name, str) else _MISSING
            if value is _MISSING and isinstance(out, Mapping):
                value = out.get(name)
            entries.append(f"{name!s} ({_what(value)})")
        listing = ("attributes/keys: " if isinstance(out, Mapping) and dataclasses.is_dataclass(out)
                   else "keys: " if isinstance(out, Mapping) else "attributes: ")
    if not entries:
        return "it has no attributes, keys or items that manipex can list"
    more = f", ... ({len(entries)} in all)" if len(entries) > 12 else ""
    text = listing + ", ".join(entries[:12]) + more
    return text if len(text) <= 600 else text[:600] + "..."


def _label(how: Tuple[str, Any]) -> str:
    """How a selection reads in Python: ``.logits``, ``['logits']``, ``[0]``."""
    kind, key = how
    if kind == "attr":
        return f".{key}"
    if kind == "key":
        return f"[{key!r}]"
    if kind == "index":
        return f"[{key}]"
    if kind == "call":
        return f"{getattr(key, '__name__', type(key).__name__)}(output)"
    return "output itself"


class Logits(nn.Module):
    """``model`` whose forward returns the logits tensor ``(N, K)`` selected from its output.

    Args:
        model: any ``nn.Module`` taking one input; registered as the child ``model``, so its
            parameters are this module's under ``model.`` and ``train()``/``eval()`` reach it.
            ``.training`` *is* the wrapped model's flag.
        output: what selects the logits from ``model(x)``:

            - a name (str): the attribute of that name (``out.logits``), else the mapping key
              (``out["logits"]``); default ``"logits"``;
            - an int: the index into a tuple or list output (``out[0]``; also a Hugging Face
              ``ModelOutput``'s ``to_tuple()``);
            - a callable: ``output(out)`` returns the logits;
            - ``"auto"``: ``.logits``, else the key ``"logits"``, else the element of a 1-tuple,
              else the only floating ``(N, K)`` tensor of a tuple; a model that returns a tensor
              passes it through.

    A selected value that is not a floating tensor of shape ``(N, K)`` raises a ``ValueError``
    that names the model's output type, what was found, and the keys, attributes or items
    available. Traceable by ``torch.fx`` whenever the wrapped model is (the selection runs on
    the Python objects holding the proxies). Module names of the wrapped model resolve in
    :meth:`get_submodule` as they are (e.g. Grad-CAM's ``layer="layer4"``) as well as under
    ``model.``.
    """

    def __init__(self, model: nn.Module, output: Output = "logits") -> None:
        where = "manipex.models.Logits"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
        check_output_selector(output, where=where, allow_none=False)
        super().__init__()
        self.model = model
        self.output = output
        #: the selection "auto" resolved to, from the last output it saw with real tensors (a
        #: traced output of proxies reuses it where their shapes would be needed)
        self.resolved: Optional[Tuple[str, Any]] = None

    # ``training`` is the wrapped model's flag: ``model.eval()`` after wrapping is seen here too.
    @property
    def training(self) -> bool:  # type: ignore[override]
        inner = self.__dict__.get("_modules", {}).get("model")
        return inner.training if inner is not None else self.__dict__.get("_own_training", True)

    @training.setter
    def training(self, mode: bool) -> None:
        self.__dict__["_own_training"] = mode
        inner = self.__dict__.get("_modules", {}).get("model")
        if inner is not None:
            inner.training = mode

    def forward(self, x: Tensor) -> Tensor:
        return self.select(self.model(x), x.shape[0] if isinstance(x, Tensor) else None)

    def select(self, out: Any, n: Optional[int] = None, *, where: Optional[str] = None) -> Tensor:
        """The logits in ``out``, an output of the wrapped model for ``n`` inputs (None: any)."""
        where = where or f"manipex.models.Logits(output={short(self.output, 40)})"
        how = self._resolve(out, n, where)
        value = self._apply(how, out, where)
        if isinstance(value, torch.fx.Proxy) or _is_logits(value, n):
            return value
        expected = "(N, classes)"
        if n is not None and isinstance(value, Tensor) and value.dim() == 2 and value.shape[0] != n:
            expected += f" with N = {n}, the batch size"
        raise ValueError(
            f"{where}: {type(self.model).__name__} returns {type(out).__name__}; its {_label(how)} is "
            f"{_what(value)}, not a floating logits tensor of shape {expected}; {_available(out)}; "
            "pass output=<attribute or key name>, <index> or <function of the output> to choose another")

    def _missing(self, out: Any, what: str, where: str) -> ValueError:
        return ValueError(f"{where}: {type(self.model).__name__} returns {type(out).__name__}, which has {what}; "
                          f"{_available(out)}; pass output=<attribute or key name>, <index> or "
                          "<function of the output>")

    def _resolve(self, out: Any, n: Optional[int], where: str) -> Tuple[str, Any]:
        output = self.output
        if callable(output) and not isinstance(output, str):
            return ("call", output)
        if isinstance(output, int):
            return ("index", output)
        if output != "auto":
            if isinstance(out, torch.fx.Proxy):
                return ("attr", output)
            try:
                value = getattr(out, output, _MISSING)
            except Exception:  # a property that fails: not a usable attribute
                value = _MISSING
            has_key = isinstance(out, Mapping) and output in out
            if value is not _MISSING and (_tensorlike(value) or not has_key):
                return ("attr", output)
            if has_key:
                return ("key", output)
            raise self._missing(out, f"no attribute or key {output!r}", where)
        how = self._auto(out, n, where)
        if not isinstance(out, torch.fx.Proxy) and not any(isinstance(v, torch.fx.Proxy) for v in _parts(out)):
            self.resolved = how
        return how

    def _auto(self, out: Any, n: Optional[int], where: str) -> Tuple[str, Any]:
        if isinstance(out, Tensor):
            return ("self", None)
        if isinstance(out, torch.fx.Proxy):  # a traced output that fx keeps as one value
            return self.resolved or ("self", None)
        try:
            value = getattr(out, "logits", _MISSING)
        except Exception:
            value = _MISSING
        if _tensorlike(value):
            return ("attr", "logits")
        if isinstance(out, Mapping) and "logits" in out and _tensorlike(out["logits"]):
            return ("key", "logits")
        if isinstance(out, (tuple, list)):
            if len(out) == 1 and _tensorlike(out[0]):
                return ("index", 0)
            if any(isinstance(v, torch.fx.Proxy) for v in out):  # traced: the shapes are unknown
                if self.resolved is not None:
                    return self.resolved  # as seen on real tensors before
                raise ValueError(
                    f"{where}: {type(self.model).__name__} returns a {type(out).__name__} of {len(out)} items, and "
                    "while torch.fx traces it the shapes that tell the logits apart are unknown; pass "
                    "output=<index>, or call the wrapper once on a batch before tracing it")
            found = [i for i, v in enumerate(out) if _is_logits(v, n)]
            if len(found) == 1:
                return ("index", found[0])
        raise self._missing(out, f"no part that manipex can tell is the logits (it takes {_AUTO_RULES})", where)

    def _apply(self, how: Tuple[str, Any], out: Any, where: str) -> Any:
        kind, key = how
        if kind == "self":
            return out
        if kind == "call":
            return key(out)
        if kind == "attr":
            return getattr(out, key)
        if kind == "key":
            return out[key]
        # an index
        if isinstance(out, torch.fx.Proxy):
            return out[key]
        items = out if isinstance(out, (tuple, list)) else _MISSING
        if items is _MISSING and callable(getattr(out, "to_tuple", None)):  # a Hugging Face ModelOutput
            items = out.to_tuple()
        if items is _MISSING:
            raise self._missing(out, f"no items to index with output={key}", where)
        if not -len(items) <= key < len(items):
            raise self._missing(out, f"no item [{key}] (it has {len(items)})", where)
        return items[key]

    def get_submodule(self, target: str) -> nn.Module:
        """The submodule ``target``: a name under this module (``"model.layer4"``) or, where
        that finds none, a name under the wrapped model (``"layer4"``)."""
        try:
            return super().get_submodule(target)
        except AttributeError:
            if target:
                try:
                    return self.model.get_submodule(target)
                except AttributeError:
                    pass
            raise

    def extra_repr(self) -> str:
        output = self.output
        return f"output={getattr(output, '__name__', None) or short(output, 40) if callable(output) else repr(output)}"


class EmbeddingsModel(Logits):
    """A text model as a function of its input embeddings: ``forward(inputs_embeds) -> logits``.

    Explanations of a text classifier are taken w.r.t. its token embeddings ``(N, L, D)`` (token
    ids are not differentiable). ``EmbeddingsModel(bert, attention_mask=mask)`` runs
    ``bert(inputs_embeds=e, attention_mask=mask, ...)`` and returns its logits (selected as by
    :class:`Logits`, ``output="logits"``)::

        net = manipex.models.interfaces.EmbeddingsModel(bert, attention_mask=batch["attention_mask"])
        e = net.embed(batch["input_ids"])                       # (N, L, D), the word embeddings
        r = manipex.explain(net, e, "lrp", composite="attn_lrp")  # (N, L, D); r.sum(-1): per token

    Args:
        model: a Hugging Face model (or any module) taking ``inputs_embeds=`` and the inputs
            below as keywords; registered as the child ``model``, never copied. ``.training`` is
            the wrapped model's flag (eval mode when it is).
        attention_mask, token_type_ids, **inputs: further keyword inputs of the model, tensors
            of shape ``(L,)``, ``(1, L)`` (the same for every sample: broadcast to any batch) or
            ``(N, L)`` (one row per sample: only batches of those ``N`` samples); None leaves
            one out. Held as non-persistent buffers (``.to(device)`` moves them; no
            ``state_dict`` entries); read at every call, so they may be replaced. Inputs that
            are not tensors are passed as they are: a decoder (``is_decoder=True``, GPT-style)
            wants ``use_cache=False``, so that no key/value cache is built (nothing is generated,
            and fx cannot trace the cache's bookkeeping).
        output: what selects the logits from the model's output (see :class:`Logits`).

    Methods that evaluate the model on many copies of the batch (integrated gradients,
    SmoothGrad, occlusion) need inputs shared by every sample (``(L,)`` or ``(1, L)``); with
    per-sample rows they raise a ``ValueError`` rather than pair rows with the wrong samples.

    The forward checks the embeddings' shape in Python (``(N, L, D)``, ``D`` the width of the
    model's input embeddings, ``L`` that of the inputs): the propagation graph is then traced at
    the input's shape (fx's meta tracer), which Hugging Face's forwards need (BERT slices its
    position ids by the sequence length).
    """

    def __init__(self, model: nn.Module, attention_mask: Optional[Tensor] = None,
                 token_type_ids: Optional[Tensor] = None, *, output: Output = "logits",
                 **inputs: Optional[Tensor]) -> None:
        super().__init__(model, output)
        where = "manipex.models.interfaces.EmbeddingsModel"
        names = []
        #: keyword inputs that are not tensors (``use_cache=False``), passed as they are
        self.options: Dict[str, Any] = {}
        for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids), *inputs.items()):
            if value is not None and not isinstance(value, Tensor):
                if name in ("attention_mask", "token_type_ids"):
                    raise TypeError(f"{where}: {name} must be a tensor or None, got {type(value).__name__}")
                self.options[name] = value
                continue
            if value is not None and not 1 <= value.dim() <= 2:
                raise ValueError(f"{where}: {name} must have shape (L,), (1, L) or (N, L), got {tuple(value.shape)}")
            self.register_buffer(name, value, persistent=False)
            names.append(name)
        #: the keyword inputs passed to the model besides ``inputs_embeds``
        self.inputs: Tuple[str, ...] = tuple(names)

    def width(self) -> Optional[int]:
        """``D``, the width of the wrapped model's input embeddings (None where it has none)."""
        try:
            embeddings = self.model.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        return getattr(embeddings, "embedding_dim", None)

    def embed(self, input_ids: Tensor) -> Tensor:
        """The word embeddings of ``input_ids`` ``(N, L)``: the input this wrapper explains,
        ``(N, L, D)``, detached (position and token-type embeddings are added by the model)."""
        return self.model.get_input_embeddings()(input_ids).detach()

    def forward(self, inputs_embeds: Tensor) -> Tensor:  # type: ignore[override]
        where = "manipex.models.interfaces.EmbeddingsModel"
        width = self.width()
        if inputs_embeds.dim() != 3 or (width is not None and inputs_embeds.shape[-1] != width):
            raise ValueError(f"{where}: inputs_embeds must have shape (N, L, {width or 'D'}), got "
                             f"{tuple(inputs_embeds.shape)}")
        kwargs = {}
        for name in self.inputs:
            value = getattr(self, name)
            if value is None:
                continue
            if value.shape[-1] != inputs_embeds.shape[1]:
                raise ValueError(f"{where}: {name} has length {value.shape[-1]}, inputs_embeds "
                                 f"{inputs_embeds.shape[1]} tokens")
            kwargs[name] = _per_row(value, inputs_embeds, name)
        return self.select(self.model(inputs_embeds=inputs_embeds, **self.options, **kwargs),
                           inputs_embeds.shape[0] if isinstance(inputs_embeds, Tensor) else None)

    def extra_repr(self) -> str:
        return f"inputs={list(self.inputs)}, " + super().extra_repr()


def _batch_rows(value: Tensor, n: int, name: str = "input") -> Tensor:
    """``value`` ``(L,)``, ``(1, L)`` or ``(N, L)`` as ``(n, L)`` rows."""
    if value.dim() == 1:
        value = value.unsqueeze(0)
    if value.shape[0] == n:
        return value
    if value.shape[0] == 1:
        return value.expand(n, -1)
    raise ValueError(f"manipex.models.interfaces.EmbeddingsModel: {name} has {value.shape[0]} rows, the batch "
                     f"{n}; give one row shared by every sample ((L,) or (1, L)) for methods that evaluate "
                     "the model on copies of the batch (integrated gradients, SmoothGrad, occlusion)")


def _per_row(value: Tensor, like: Any, name: str) -> Any:
    """:func:`_batch_rows` for the batch of ``like``; while fx traces, one node evaluated when
    the graph runs (the buffer read live, so a replaced mask takes effect; no expanded copy
    stored by fx as a constant on the wrapper)."""
    if isinstance(like, torch.fx.Proxy):
        tracer = like.tracer
        n = tracer.create_proxy("call_method", "size", (like, 0), {})
        return tracer.create_proxy("call_function", _batch_rows, (value, n, name), {})
    return _batch_rows(value, like.shape[0], name)


def _parts(out: Any) -> list:
    if isinstance(out, (tuple, list)):
        return list(out)
    if isinstance(out, Mapping):
        return list(out.values())
    return []


# ---------------------------------------------------------------------------------------------
# what the public entry points run

#: model -> whether its forward returns a tensor (learned once per model object).
_RETURNS_TENSOR: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()
#: model -> the selection "auto" resolved to, for models that do not return a tensor.
_AUTO: "weakref.WeakKeyDictionary[nn.Module, Tuple[str, Any]]" = weakref.WeakKeyDictionary()
#: model -> the explicit names and indices already found to select logits.
_SELECTIONS_FOUND: "weakref.WeakKeyDictionary[nn.Module, Set[Union[str, int]]]" = weakref.WeakKeyDictionary()


def _probe(model: nn.Module, x: Tensor) -> Any:
    """``model(x[:1])`` without a graph; ``_FAILED`` where the model raises (the entry point's
    own run then raises the model's error as it always has)."""
    try:
        with torch.no_grad():
            return model(x[:1])
    except Exception:
        return _FAILED


def _stacklevel() -> int:
    """The stack level of the first caller outside manipex (a warning points at the user's call)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "manipex":
        frame, level = frame.f_back, level + 1
    return level - 1


def logits_model(model: nn.Module, x: Tensor, output: Optional[Output] = None, *, where: str) -> nn.Module:
    """The model that the entry point ``where`` runs on the batch ``x`` (call it after the
    model's checks, so that the model is in eval mode):

    - ``output=None``: ``model`` itself if it returns a tensor (learned once per model object,
      by one forward of ``x[:1]`` under ``torch.no_grad()``); else ``Logits(model, "auto")``,
      with a :class:`ModelOutputWarning` the first time (or the clear error where no part of
      the output can be told to be the logits). A :class:`Logits` passes as it is.
    - ``output=`` a name, index or function: ``Logits(model, output)``, checked on ``x[:1]``
      (names and indices once per model) so that a wrong choice fails before any work.

    The model is never changed; a model that fails on ``x[:1]`` is left to the entry point's
    run, which raises its error as before.
    """
    check_output_selector(output, where=where)
    if output is None:
        if isinstance(model, Logits):
            return model
        returns_tensor = _RETURNS_TENSOR.get(model)
        if returns_tensor is None:
            out = _probe(model, x)
            if out is _FAILED:
                return model
            returns_tensor = isinstance(out, Tensor)
            if not returns_tensor:
                wrapper = Logits(model, "auto")
                wrapper.select(out, 1, where=where)  # the clear error, before anything is cached
                _AUTO[model] = wrapper.resolved
                warnings.warn(f"{type(model).__name__} returns {type(out).__name__}; manipex uses its "
                              f"{_label(wrapper.resolved)} (pass output=... to choose another)",
                              ModelOutputWarning, stacklevel=_stacklevel())
            _RETURNS_TENSOR[model] = returns_tensor
        if returns_tensor:
            return model
        wrapper = Logits(model, "auto")
        wrapper.resolved = _AUTO.get(model)
        return wrapper
    wrapper = Logits(model, output)
    cacheable = isinstance(output, (str, int))
    if not cacheable or output not in _SELECTIONS_FOUND.get(model, ()):
        out = _probe(model, x)
        if out is not _FAILED:
            wrapper.select(out, 1, where=where)
            if cacheable:
                _SELECTIONS_FOUND.setdefault(model, set()).add(output)
    return wrapper


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a :class:`Logits` (nested ones too); any other model as it is."""
    while isinstance(model, Logits):
        model = model.model
    return model


__all__ = ["Logits", "EmbeddingsModel", "ModelOutputWarning", "logits_model", "unwrap", "check_output_selector"]
