"""A model seen as a graph of layers, for methods that replace the backward pass.

Guided backprop, LRP and PatternAttribution propagate a signal backwards layer by layer with
their own rule per layer kind. :func:`model_graph` traces the model once with ``torch.fx``
(cached per model and module structure) into a directed acyclic graph of
:class:`~manipex.explainers.nodes.Layer` s; :mod:`manipex.explainers.nodes` holds the table of
operations and the kind each one is (conv, dense, batchnorm, activation, norm, product, pooling,
add, cat, mean, scale, reshape, identity). A forward whose arguments after the input have
defaults (``forward(x, attn_mask=None)``) is traced with those defaults.

A tensor may feed several layers (fan-out) and a module object may be called at several
places (torchvision's BasicBlock calls ``self.relu`` twice): every call is its own layer.
Anything else (a custom autograd Function, an in-place operation, a division by an activation,
a functional convolution reading its weights directly, data-dependent control flow that fx
cannot trace) is refused with an error that names the node and the operation.

:meth:`Graph.forward` evaluates the model layer by layer and records every layer's inputs and
output; :meth:`Graph.backward` walks the records in reverse topological order, sums the signal
arriving from every consumer of a tensor and asks a rule for each layer's share to each of its
inputs. Rules are written with differentiable torch operations and
``torch.autograd.grad(create_graph=...)``, so the maps are exactly differentiable w.r.t. the
input and every parameter. The model is only read, never changed.
"""
from __future__ import annotations

import contextlib
import functools
import operator
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..surgery import SmoothMaxPool, _FunctionalSurrogate
from . import attention
from .nodes import Layer, Site, UnsupportedModelError, batchnorm_affine, classify  # noqa: F401  (re-exported)
from .. import surgery
from .nodes import ANY_MODEL
from ..models.normalize import Normalize

SHAPE_METHODS = {"size", "dim"}
#: Kinds whose output is a linear function of their (signal) inputs.
LINEAR_KINDS = frozenset({"avgpool", "add", "mean", "upsample", "scale", "cat", "reshape", "identity"})


@dataclass
class Record:
    """A layer evaluated on one batch: its signal inputs (distinct tensors) and output."""

    layer: Layer
    inputs: Tuple[Tensor, ...]
    output: Tensor
    #: The call's evaluated arguments (signal inputs, parameters, constants).
    args: Tuple = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> Tuple[Tensor, Optional[Tensor]]:
        """The weight and bias of this affine layer as it was called (a functional layer's
        from its arguments), a merged BatchNorm folded in: :meth:`Layer.parameters`."""
        return self.layer.parameters(self.args, self.kwargs)

    @property
    def input(self) -> Tensor:
        """The single input of a one-input layer."""
        if len(self.inputs) != 1:
            raise UnsupportedModelError(f"{self.layer.name} has {len(self.inputs)} inputs, a rule expected one")
        return self.inputs[0]


#: ``rule(record, signal) -> one share per input`` (a tensor alone for one input).
Propagate = Callable[[Record, Tensor], Union[Tensor, Sequence[Tensor]]]


@dataclass
class Graph:
    """The traced model: fx nodes in topological order and the layers among them."""

    nodes: List[torch.fx.Node]
    layers: Dict[torch.fx.Node, Layer]
    sources: Dict[torch.fx.Node, Tuple[torch.fx.Node, ...]]
    aliases: Dict[torch.fx.Node, torch.fx.Node]
    placeholder: torch.fx.Node
    result: torch.fx.Node
    modules: "weakref.WeakValueDictionary[str, nn.Module]" = field(default_factory=weakref.WeakValueDictionary)
    root: Optional["weakref.ReferenceType[nn.Module]"] = None
    #: The input shape (batch included: the meta tracer records sizes such as
    #: ``cls_token.expand(N, -1, -1)`` as constants) the graph was traced at, where the forward's
    #: control flow reads the shape; None for a graph valid at any shape.
    shape: Optional[Tuple[int, ...]] = None

    @functools.cached_property
    def piecewise_linear(self) -> bool:
        """Whether the traced model is piecewise linear: ReLU activations, hard max-pools and
        linear layers only (no Softplus, tanh or smooth max-pool; every other node an alias).
        Decided once per traced graph."""
        for node in self.nodes:
            layer = self.layers.get(node)
            if layer is None:
                if node.op not in ("placeholder", "output") and node not in self.aliases:
                    return False
            elif (layer.kind == "activation" and layer.activation != "relu") or isinstance(layer.module, SmoothMaxPool):
                return False
        return True

    @functools.cached_property
    def has_attention(self) -> bool:
        """Whether the traced model attends: a matrix product of two activations (``q @ k^T``,
        ``A @ v``) among its layers, as in every transformer (a softmax alone, e.g. a CNN's
        probability output, is not attention). LRP's default composite follows it
        (``attn_lrp`` where it holds, ``zb_zplus`` elsewhere)."""
        return any(layer.kind == "matmul" and layer.operands == 2 for layer in self.layers.values())

    def forward(self, x: Tensor, activation: Optional[Callable[["Layer", Tensor], Tensor]] = None
                ) -> Tuple[Tensor, List[Record]]:
        """Evaluate the model on ``x``, recording every layer's inputs and output; with
        ``activation(layer, z)``, an activation layer is evaluated by it instead where it gives
        a tensor (guided backprop's activations with their own backward), as usual where None."""
        env: Dict[torch.fx.Node, Any] = {self.placeholder: x}
        records: List[Record] = []
        for node in self.nodes:
            alias = self.aliases.get(node)
            if alias is not None:
                env[node] = env[alias]
                continue
            layer = self.layers.get(node)
            if layer is None:
                args = torch.fx.node.map_arg(node.args, env.__getitem__)
                kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
                env[node] = self._run(node, args, kwargs)
                continue
            sources = self.sources[node]
            if len(sources) == 1:
                inputs = (env[sources[0]],)
                lookup = env.__getitem__
            else:
                # Each input of a combining layer enters through its own view, so that a rule's
                # vector-Jacobian product is the partial derivative of this layer alone (the
                # residual add of a ResNet reads x and a function of x).
                proxies = {s: env[s].view_as(env[s]) for s in sources}
                inputs = tuple(proxies.values())

                def lookup(n: torch.fx.Node, proxies: Dict = proxies) -> Any:
                    source = self.aliases.get(n, n)
                    return proxies[source] if source in proxies else env[n]
            args = torch.fx.node.map_arg(node.args, lookup)
            kwargs = torch.fx.node.map_arg(node.kwargs, lookup)
            value = activation(layer, args[0]) if activation is not None and layer.kind == "activation" else None
            if value is None:
                value = self._evaluate(layer, node, args, kwargs)
            records.append(Record(layer, inputs, value, args, kwargs))
            env[node] = value
        return env[self.result], records

    def backward(self, x: Tensor, records: List[Record], signal: Tensor, rule: Propagate) -> Tensor:
        """Propagate ``signal`` (at the output) back to the input ``x`` through ``rule``.

        The signal of a tensor is the sum of what its consumers send back (fan-out); a
        tensor on no path to the output gets zero.
        """
        pending: Dict[torch.fx.Node, Tensor] = {self.result: signal}
        for record in reversed(records):
            node = record.layer.node
            s = pending.pop(node, None)
            if s is None:
                continue
            shares = rule(record, s)
            if isinstance(shares, Tensor):
                shares = (shares,)
            sources = self.sources[node]
            if len(shares) != len(sources):
                raise ValueError(
                    f"the rule for {record.layer.name} returned {len(shares)} relevances for "
                    f"{len(sources)} inputs"
                )
            for src, share in zip(sources, shares):
                pending[src] = pending[src] + share if src in pending else share
        out = pending.get(self.placeholder)
        return torch.zeros_like(x) if out is None else out  # None: the output ignores x

    def consumers(self, node: torch.fx.Node) -> List[Layer]:
        """The layers that read the tensor of ``node``."""
        return [layer for n, layer in self.layers.items() if node in self.sources[n]]

    def _evaluate(self, layer: Layer, node: torch.fx.Node, args: Tuple, kwargs: Dict) -> Tensor:
        if layer.kind in ("conv", "dense", "batchnorm"):
            weight, bias = layer.parameters(args, kwargs)
            return layer.forward_with(args[0], weight, bias)
        if layer.kind == "activation":
            return _activation(layer, node, args, kwargs)
        if "inplace" in kwargs:  # e.g. F.dropout(x, inplace=True): out of place, a recorded input stays
            kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        if layer.module is not None and getattr(layer.module, "inplace", False):
            return layer.module(args[0].clone(), *args[1:], **kwargs)
        return self._run(node, args, kwargs)

    def _run(self, node: torch.fx.Node, args: Tuple, kwargs: Dict) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return _get_attr(self.root(), node.target)
        if node.op == "placeholder":  # an argument of the forward, traced at its default value
            return node.args[0] if node.args else None
        raise UnsupportedModelError(f"fx node {node.op} is not supported")  # pragma: no cover


def _activation(layer: Layer, node: torch.fx.Node, args: Tuple, kwargs: Dict) -> Tensor:
    """An activation evaluated out of place (an in-place ReLU would overwrite a recorded input);
    a softplus with a module reads its β now (β schedules, the surrogate's functional ReLUs)."""
    x, m = args[0], layer.module
    if layer.activation == "relu":
        return F.relu(x)
    if layer.activation == "softplus" and m is not None:
        return F.softplus(x, beta=m.beta, threshold=m.threshold)
    if m is not None:
        return m(x.clone()) if getattr(m, "inplace", False) else m(x)
    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    if node.op == "call_method":
        return getattr(x, node.target)(*args[1:], **kwargs)
    if node.target in (F.relu6, F.hardtanh, F.elu, F.celu, F.selu, F.leaky_relu, F.hardsigmoid, F.hardswish,
                       F.silu, F.mish, F.threshold) and len(args) > 1 and isinstance(args[-1], bool):
        args = args[:-1]  # a positional inplace flag
    return node.target(x, *args[1:], **kwargs)


def _get_attr(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _is_shape_query(node: torch.fx.Node) -> bool:
    if node.op == "call_method" and node.target in SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device"):
        return True
    return False


def _signal_sources(nodes: Sequence[torch.fx.Node], aliases: Dict) -> Tuple[torch.fx.Node, ...]:
    """The distinct signal nodes a layer reads, in argument order, aliases resolved."""
    return tuple(dict.fromkeys(aliases.get(n, n) for n in nodes))


#: Graphs per model and module structure. The graph refers to the model's modules only weakly,
#: so a model that is no longer used is freed with its graphs. A few structures are kept per
#: model: β-smoothing swaps ReLU modules in and out on every call.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple, Graph]]" = weakref.WeakKeyDictionary()
_PER_MODEL = 4


def _surrogate_unit(model: nn.Module) -> Optional[nn.Module]:
    """The Softplus that stands for the model's functional ReLUs while the attack's surrogate is
    in effect (:func:`manipex.surgery.functional_surrogate`), else None."""
    lookup = getattr(surgery, "functional_surrogate", None)
    return lookup(model) if lookup is not None else None


def _fingerprint(model: nn.Module) -> Tuple:
    """The module structure (names, types, identities) and the surrogate of functional ReLUs;
    β is read at run time, so a β schedule does not force a new trace every step."""
    unit = _surrogate_unit(model)
    return (tuple((name, type(m), id(m)) for name, m in model.named_modules())
            + (id(unit) if unit is not None else None,))


#: One trace at a time: tracing swaps process-wide functions (below, and the tracing patches).
_TRACING = threading.RLock()


@contextlib.contextmanager
def _refusing_autograd_functions(where: str) -> Iterator[None]:
    """fx would trace into a custom ``torch.autograd.Function``'s forward and silently drop its
    backward; while tracing, calling one raises an error that names it instead. Only in the
    tracing thread: another thread's forward calls its Functions as usual meanwhile."""
    function = torch.autograd.function.Function
    original = function.__dict__["apply"]
    tracing_thread = threading.get_ident()

    def refuse(cls, *args, **kwargs):
        if threading.get_ident() != tracing_thread:
            return original.__get__(None, cls)(*args, **kwargs)
        raise UnsupportedModelError(
            f"{where} does not support the custom autograd Function {cls.__name__} in the model's "
            "forward: its backward replaces the gradient, which propagation rules cannot see"
        )

    function.apply = classmethod(refuse)
    try:
        yield
    finally:
        function.apply = original


def check_hooks(model: nn.Module, where: str) -> None:
    """Refuse a model with forward or backward hooks, naming the module and the hook: the graph
    evaluates each layer's operation, not the module's ``__call__``, so a hook would be skipped
    without a word (the gradient family runs the model itself and honours them). manipex's own
    hooks (the attack surrogate's, :mod:`manipex.surgery`) are not refused."""
    advice = (" the propagation rules evaluate each layer's operation without calling the module, so the hook "
              "would be skipped; remove it for this call (handle.remove()). " + ANY_MODEL + " They honour hooks.")
    g = torch.nn.modules.module
    for kind in ("forward", "forward_pre", "backward", "backward_pre"):
        table = getattr(g, f"_global_{kind}_hooks", None)
        if table:
            raise UnsupportedModelError(f"{where} does not honour the global {kind.replace('_', ' ')} hook "
                                        f"{_hook_name(next(iter(table.values())))};" + advice)
    for name, m in model.named_modules():
        for kind, table in (("forward", m._forward_hooks), ("forward pre", m._forward_pre_hooks),
                            ("backward", m._backward_hooks), ("backward pre", m._backward_pre_hooks)):
            for hook in table.values():
                if isinstance(getattr(hook, "__self__", None), _FunctionalSurrogate):
                    continue
                raise UnsupportedModelError(
                    f"{where} does not honour the {kind} hook {_hook_name(hook)} on module {name or '<model>'!r} "
                    f"({type(m).__name__}):" + advice)


def _hook_name(hook: Any) -> str:
    return repr(getattr(hook, "__qualname__", None) or getattr(hook, "__name__", None) or hook)


def model_graph(model: nn.Module, method: str, example: Optional[Tensor] = None) -> Graph:
    """Trace ``model`` into a :class:`Graph` (cached per model and module structure).

    ``example``, an input batch: a forward whose Python control flow reads the input's shape
    (Hugging Face's ``if pixel_values.shape[1] != self.num_channels: raise``) cannot be traced
    symbolically; it is then traced at this input's shape (fx's meta tracer, which records the
    batch size too) and cached for that shape. A model with hooks is refused (:func:`check_hooks`)."""
    check_hooks(model, f"explain(method={method!r})")
    key = _fingerprint(model)
    graphs = _CACHE.setdefault(model, {})
    shaped = (key, tuple(example.shape)) if example is not None else None
    graph = graphs.get(key) or (graphs.get(shaped) if shaped is not None else None)
    if graph is None:
        graph = _trace(model, method, example)
        if len(graphs) >= _PER_MODEL:
            graphs.pop(next(iter(graphs)))
        graphs[shaped if graph.shape is not None else key] = graph
    return graph


class _Tracer(torch.fx.Tracer):
    """fx's tracer, keeping manipex's input :class:`~manipex.models.normalize.Normalize` (a
    BatchNorm to the rules) and the attack's :class:`~manipex.surgery.SmoothMaxPool` (a
    max-pool) leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (Normalize, SmoothMaxPool)) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable, args: Tuple, kwargs: Dict) -> Any:
        if type(m) is nn.MultiheadAttention:  # written out (a subclass may change the forward)
            return attention.trace_multihead(self, m, *args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


def _meta_tracer() -> torch.fx.Tracer:
    """fx's meta tracer (shapes known while tracing: shape checks in the forward run) with
    :class:`_Tracer`'s leaves."""
    from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer

    class _MetaProxy(MetaProxy):
        def size(self, dim=None):  # MetaProxy.size(0) gives the whole size (``if dim`` on 0)
            meta = getattr(self, "_tensor_meta", None)
            if meta is not None:
                return meta.size() if dim is None else meta.size(dim)
            return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})

    class _MetaTracer(MetaTracer, _Tracer):  # MetaTracer's proxies, _Tracer's leaves
        def proxy(self, node):
            return _MetaProxy(node, self)

    return _MetaTracer()


def _symbolic_trace(model: nn.Module, defaults: Dict[str, Any], example: Optional[Tensor]):
    """fx's graph of the model and the per-sample shape it is specialised to (None: any)."""
    try:
        return _Tracer().trace(model, concrete_args=defaults or None), None
    except torch.fx.proxy.TraceError:
        if example is None:
            raise
    import inspect

    name = next(iter(inspect.signature(model.forward).parameters))
    meta = torch.empty(example.shape, dtype=example.dtype, device="meta")
    return _meta_tracer().trace(model, meta_args={name: meta}, concrete_args=defaults or None), tuple(example.shape)


#: Functions that libraries hide from fx with ``torch.fx.wrap`` (recorded as one call) but whose
#: steps the rules must see, traced into: torchvision's patch-merging padding (Swin's attention
#: is swapped for a traceable equivalent instead, :mod:`manipex.explainers.swin`).
TRACED_INTO = frozenset({"_patch_merging_pad"})  # shifted_window_attention: explainers/swin.py


@contextlib.contextmanager
def _tracing_into_wrapped() -> Iterator[None]:
    """While tracing, the functions of :data:`TRACED_INTO` are not fx leaves."""
    from torch.fx import _symbolic_trace

    table = getattr(_symbolic_trace, "_wrapped_fns_to_patch", None)
    if not isinstance(table, dict):  # pragma: no cover - another torch.fx layout
        yield
        return
    hidden = {key: value for key, value in table.items() if isinstance(key, tuple) and key[-1] in TRACED_INTO}
    for key in hidden:
        del table[key]
    try:
        yield
    finally:
        table.update(hidden)


#: Context managers entered, each given the model, while a model is traced: they swap
#: fx-traceable forms in for library code that fx cannot trace as it is (and put the original
#: back on exit, also after an error). See :func:`register_tracing_patch`.
_TRACING_PATCHES: List[Callable[[nn.Module], Any]] = []


def register_tracing_patch(patch: Callable[[nn.Module], Any]) -> None:
    """Enter ``patch(model)`` (a context manager) whenever a model is traced for the rules;
    for example a module that replaces a library's attention function by a traceable equivalent
    while tracing. The patch must not change the model."""
    if patch not in _TRACING_PATCHES:
        _TRACING_PATCHES.append(patch)


@contextlib.contextmanager
def _tracing_patches(model: nn.Module) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for patch in _TRACING_PATCHES:
            stack.enter_context(patch(model))
        yield


def _defaults(model: nn.Module, where: str) -> Dict[str, Any]:
    """The forward's arguments after the input, at their defaults (``forward(x, mask=None,
    causal=False)`` is traced as ``forward(x)``); one without a default is refused."""
    import inspect

    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a builtin forward
        return {}
    required = [p.name for p in parameters[1:]
                if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not parameters or required:
        raise UnsupportedModelError(
            f"{where} needs a forward with a single input, {type(model).__name__}.forward takes "
            f"{len(parameters)} ({', '.join(p.name for p in parameters)}); the arguments after the input "
            f"need defaults ({', '.join(required) or 'the input itself is missing'} has none)"
        )
    return {p.name: p.default for p in parameters[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _trace(model: nn.Module, method: str, example: Optional[Tensor] = None) -> Graph:
    where = f"explain(method={method!r})"
    root = weakref.ref(model)
    if not list(model.children()):  # a single layer as the whole model, e.g. nn.Linear
        model = nn.Sequential(model)
    defaults = _defaults(model, where)
    try:
        with _TRACING, _refusing_autograd_functions(where), _tracing_into_wrapped(), _tracing_patches(model):
            fx_graph, shape = _symbolic_trace(model, defaults, example)
    except UnsupportedModelError:
        raise
    except Exception as err:  # fx raises many kinds of errors on dynamic code
        raise UnsupportedModelError(
            f"{where} needs a model that torch.fx can trace (no data-dependent control flow), but "
            f"tracing {type(model).__name__} failed: {type(err).__name__}: {err}"
        ) from err
    attention.expand_sdpa(fx_graph, where)
    modules = dict(model.named_modules())
    nodes = list(fx_graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1 + len(defaults):
        raise UnsupportedModelError(
            f"{where} needs a forward with a single input, {type(model).__name__}.forward takes {len(placeholders)}"
        )
    signal = {placeholders[0]}
    layers: Dict[torch.fx.Node, Layer] = {}
    sources: Dict[torch.fx.Node, Tuple[torch.fx.Node, ...]] = {}
    splits: Dict[torch.fx.Node, Tuple[torch.fx.Node, ...]] = {}  # chunk/split nodes -> what they split
    aliases: Dict[torch.fx.Node, torch.fx.Node] = {}
    ordered: List[torch.fx.Node] = []
    unit = _surrogate_unit(root())
    result = None
    for node in nodes[1:]:
        if node.op == "output":
            value = node.args[0]
            if not isinstance(value, torch.fx.Node) or value not in signal or value in splits:
                raise UnsupportedModelError(f"{where} needs a forward that returns one tensor of logits")
            result = value
            continue
        reads_signal = any(n in signal for n in node.all_input_nodes)
        if node.op in ("get_attr", "placeholder") or not reads_signal or _is_shape_query(node):
            ordered.append(node)  # parameters, buffers, defaults, constants and shape arithmetic
            continue
        site = Site(node, modules, signal, method, layers, sources)
        if node.op == "call_function" and node.target is operator.getitem and node.args[0] in splits:
            layer = Layer("reshape", site.name, node)  # a piece of a split tensor
            layers[node], sources[node] = layer, splits[node.args[0]]
            signal.add(node)
            ordered.append(node)
            continue
        layer, read, handler = classify(site)
        signal.add(node)
        ordered.append(node)
        if handler.kind == "split":
            splits[node] = _signal_sources(read, aliases)
            continue
        if layer.kind == "activation" and layer.activation == "relu" and layer.module is None and unit is not None:
            layer = Layer("activation", layer.name, node, unit, activation="softplus")  # the attack's surrogate
        layers[node] = layer
        sources[node] = _signal_sources(read, aliases)
    _merge_batchnorm(ordered, layers, sources, aliases)
    _mark_first(ordered, layers, sources)
    resolved = aliases.get(result, result)
    weak_modules: "weakref.WeakValueDictionary[str, nn.Module]" = weakref.WeakValueDictionary(
        {name: m for name, m in modules.items() if name})
    return Graph(ordered, {n: entry for n, entry in layers.items() if n not in aliases}, sources, aliases,
                 placeholders[0], resolved, weak_modules, root, shape)


def _merge_batchnorm(ordered, layers, sources, aliases) -> None:
    """Merge each BatchNorm that is the only consumer of a Conv/Linear into it (as LRP needs);
    the BatchNorm node becomes an alias of the merged layer's output."""
    for node in ordered:
        layer = layers.get(node)
        if layer is None or layer.kind != "batchnorm":
            continue
        (src,) = sources[node]
        previous = layers.get(src)
        if (previous is not None and previous.kind in ("conv", "dense") and previous.batchnorm is None
                and len(src.users) == 1 and src not in aliases):
            previous.batchnorm = layer.module
            aliases[node] = src
    for node in ordered:  # re-resolve sources that pointed at a merged BatchNorm
        if node in sources:
            sources[node] = tuple(dict.fromkeys(aliases.get(s, s) for s in sources[node]))


def _mark_first(ordered, layers, sources) -> None:
    """Flag the conv/dense layers that no other conv/dense layer precedes (zB's "first layer")."""
    after_affine: set = set()
    for node in ordered:
        layer = layers.get(node)
        if layer is None or node not in sources:
            continue
        preceded = any(s in after_affine for s in sources[node])
        if layer.kind in ("conv", "dense"):
            layer.first = not preceded
            after_affine.add(node)
        elif preceded:
            after_affine.add(node)


__all__ = ["Graph", "Layer", "Record", "model_graph", "register_tracing_patch", "UnsupportedModelError",
           "batchnorm_affine", "LINEAR_KINDS"]
