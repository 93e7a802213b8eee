"""A model seen as a graph of layers, for methods that replace the backward pass.

Guided backprop, LRP and PatternAttribution propagate a signal backwards layer by layer with
their own rule per layer kind. :func:`model_graph` traces the model once with ``torch.fx``
(cached per model and module structure) into a directed acyclic graph of :class:`Layer` s:

* ``conv`` / ``dense``: Conv1d/2d/3d and Linear modules, with a BatchNorm that is the sole
  consumer of their output merged into them (``batchnorm``: a BatchNorm standing alone, as in
  DenseNet's pre-activation layers, is a per-channel affine map);
* ``activation``: ReLU, Softplus, Tanh, Sigmoid (modules or functional calls; ``other`` for
  ELU, LeakyReLU, GELU, SiLU), always evaluated out of place;
* ``maxpool``; ``avgpool`` (average and adaptive average pooling);
* ``add``: the sum or difference of two tensors (the residual add ``out += identity`` of a
  ResNet), or of a tensor and a constant;
* ``cat``: ``torch.cat`` of several tensors (DenseNet);
* ``mean``: a mean or sum over non-batch dimensions (``x.mean((2, 3))``);
* ``upsample``: ``F.interpolate`` and ``nn.Upsample``;
* ``scale``: multiplication or division by a number or a constant tensor;
* ``reshape`` (Flatten, ``view``, ``reshape``, ``torch.flatten``) and ``identity`` (Dropout
  in eval mode, Identity, ``contiguous``).

A tensor may feed several layers (fan-out) and a module object may be called at several
places (torchvision's BasicBlock calls ``self.relu`` twice): every call is its own layer.
Anything else (a custom autograd Function, an in-place operation, a product of two
activations, a functional layer reading its weights directly, data-dependent control flow
that fx cannot trace) is refused with an error that names the node and the operation.

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
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..surgery import SmoothMaxPool


class UnsupportedModelError(ValueError):
    """The model contains a layer or a structure that a propagation method cannot handle."""


AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATION_MODULES: Dict[type, str] = {
    nn.ReLU: "relu", nn.Softplus: "softplus", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.ELU: "other", nn.LeakyReLU: "other", nn.GELU: "other", nn.SiLU: "other",
}
MODULE_KINDS: Tuple[Tuple[Tuple[type, ...], str], ...] = (
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, SmoothMaxPool), "maxpool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
      nn.AdaptiveAvgPool3d), "avgpool"),
    ((nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d), "upsample"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity), "identity"),
    ((nn.Flatten, nn.Unflatten), "reshape"),
)
ACTIVATION_FUNCTIONS: Dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.softplus: "softplus", torch.tanh: "tanh",
    F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}
FUNCTION_KINDS: Dict[Any, str] = {
    torch.flatten: "reshape", torch.reshape: "reshape",
    F.max_pool1d: "maxpool", F.max_pool2d: "maxpool", F.max_pool3d: "maxpool",
    F.adaptive_max_pool1d: "maxpool", F.adaptive_max_pool2d: "maxpool",
    F.avg_pool1d: "avgpool", F.avg_pool2d: "avgpool", F.avg_pool3d: "avgpool",
    F.adaptive_avg_pool1d: "avgpool", F.adaptive_avg_pool2d: "avgpool",
    F.adaptive_avg_pool3d: "avgpool", F.dropout: "identity",
    F.interpolate: "upsample", F.upsample: "upsample",
    torch.cat: "cat", torch.concat: "cat", torch.concatenate: "cat",
    operator.add: "add", torch.add: "add", operator.sub: "add", torch.sub: "add",
    operator.mul: "scale", torch.mul: "scale", operator.truediv: "scale", torch.div: "scale",
    operator.neg: "scale", torch.neg: "scale",
    torch.mean: "mean", torch.sum: "mean",
}
METHOD_KINDS = {
    "view": "reshape", "reshape": "reshape", "flatten": "reshape", "contiguous": "identity",
    "relu": "activation", "tanh": "activation", "sigmoid": "activation",
    "mean": "mean", "sum": "mean", "add": "add", "sub": "add", "mul": "scale", "div": "scale",
    "neg": "scale",
}
SHAPE_METHODS = {"size", "dim"}
#: Kinds whose output is a linear function of their (signal) inputs.
LINEAR_KINDS = frozenset({"avgpool", "add", "mean", "upsample", "scale", "cat", "reshape", "identity"})


def batchnorm_affine(bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` per channel, from its parameters."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@dataclass(eq=False)
class Layer:
    """One node of the traced model, as the rules see it.

    Attributes:
        kind: ``conv``, ``dense``, ``batchnorm``, ``activation``, ``maxpool``, ``avgpool``,
            ``add``, ``cat``, ``mean``, ``upsample``, ``scale``, ``reshape`` or ``identity``.
        name: a description for messages, e.g. ``layer 'layer1.0.conv1' (Conv2d)``.
        node: the ``torch.fx`` node.
        module: the module called, if any (the same module may be several layers).
        batchnorm: a BatchNorm merged into this conv/dense layer.
        activation: for activations, ``relu``, ``softplus``, ``tanh``, ``sigmoid`` or ``other``.
        first: a conv/dense layer that no other conv/dense layer precedes: it reads the model
            input (through reshapes, pooling or other layers without weights).
    """

    kind: str
    name: str
    node: torch.fx.Node
    module: Optional[nn.Module] = None
    batchnorm: Optional[nn.Module] = None
    activation: str = ""
    beta: float = 1.0
    first: bool = False

    @property
    def is_affine(self) -> bool:
        """A layer with weights: conv, dense or standalone batchnorm."""
        return self.kind in ("conv", "dense", "batchnorm")

    def softplus_beta(self) -> float:
        """β of a softplus activation, read from the module now (β schedules change it)."""
        return float(getattr(self.module, "beta", self.beta)) if self.module is not None else self.beta

    def parameters(self) -> Tuple[Tensor, Optional[Tensor]]:
        """Weight and bias of an affine layer, with a merged BatchNorm folded in.

        ``bn(W x + b) = (s W) x + s (b - mu) + beta`` with ``s = gamma / sqrt(var + eps)``,
        computed from the parameters (not in place), so gradients reach all of them. A
        standalone BatchNorm gives its per-channel scale and shift.
        """
        if self.kind == "batchnorm":
            return batchnorm_affine(self.module)
        weight, bias = self.module.weight, self.module.bias
        if self.batchnorm is None:
            return weight, bias
        scale, shift = batchnorm_affine(self.batchnorm)
        if bias is not None:
            shift = shift + bias * scale
        return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), shift

    def forward_with(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """This affine layer's map with the given weight and bias (rules pass modified
        weights); a standalone BatchNorm is ``x * weight + bias`` per channel."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m._conv_forward(x, weight, bias)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = x * weight.reshape(shape)
        return out if bias is None else out + bias.reshape(shape)


@dataclass
class Record:
    """A layer evaluated on one batch: its signal inputs (distinct tensors) and output."""

    layer: Layer
    inputs: Tuple[Tensor, ...]
    output: Tensor

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
            records.append(Record(layer, inputs, value))
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
            weight, bias = layer.parameters()
            return layer.forward_with(args[0], weight, bias)
        if layer.kind == "activation":
            return _activation(layer, args[0], node)
        if node.op == "call_function" and "inplace" in kwargs:  # e.g. F.relu(x, inplace=True)
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
        raise UnsupportedModelError(f"fx node {node.op} is not supported")  # pragma: no cover


def _activation(layer: Layer, x: Tensor, node: torch.fx.Node) -> Tensor:
    """An activation evaluated out of place (an in-place ReLU would overwrite a recorded input)."""
    m = layer.module
    if layer.activation == "relu":
        return F.relu(x)
    if layer.activation == "softplus":
        if m is not None:
            return F.softplus(x, beta=m.beta, threshold=m.threshold)
        kwargs = {k: v for k, v in node.kwargs.items() if k in ("beta", "threshold")}
        return F.softplus(x, *node.args[1:], **kwargs)
    if layer.activation == "tanh":
        return torch.tanh(x)
    if layer.activation == "sigmoid":
        return torch.sigmoid(x)
    return m(x.clone()) if getattr(m, "inplace", False) else m(x)


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


def _describe(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}() at node {node.name!r}"
    return f"call {getattr(node.target, '__name__', node.target)!s} at node {node.name!r}"


SUPPORTED = (
    "Conv1d/2d/3d, Linear, BatchNorm, ReLU, Softplus, Tanh, Sigmoid, ELU, LeakyReLU, GELU, SiLU, "
    "MaxPool, AvgPool, AdaptiveAvgPool, Upsample, Flatten, Unflatten, Dropout, Identity; "
    "+, -, torch.cat, mean/sum over non-batch dims, F.interpolate, scaling by constants, view/reshape"
)


def _classify(node: torch.fx.Node, modules: Dict[str, nn.Module], signal: set, method: str) -> Layer:
    """The layer for an fx node that consumes a signal tensor, or an error naming it."""
    where = f"explain(method={method!r})"
    name = _describe(node, modules)
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, AFFINE_MODULES):
            kind = "dense" if isinstance(module, nn.Linear) else "conv"
            return Layer(kind, name, node, module)
        if isinstance(module, BATCHNORM_MODULES):
            return Layer("batchnorm", name, node, module)
        for cls, act in ACTIVATION_MODULES.items():
            if type(module) is cls:
                return Layer("activation", name, node, module, activation=act,
                             beta=float(getattr(module, "beta", 1.0)))
        for classes, kind in MODULE_KINDS:
            if isinstance(module, classes):
                return Layer(kind, name, node, module)
        raise UnsupportedModelError(f"{where} does not support {name}; supported: {SUPPORTED}")
    if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        act = ACTIVATION_FUNCTIONS[node.target]
        beta = 1.0
        if act == "softplus":
            beta = float(node.kwargs.get("beta", node.args[1] if len(node.args) > 1 else 1.0))
        return Layer("activation", name, node, activation=act, beta=beta)
    kind = None
    if node.op == "call_function":
        kind = FUNCTION_KINDS.get(node.target)
    elif node.op == "call_method":
        kind = METHOD_KINDS.get(node.target)
    if kind is None:
        what = getattr(node.target, "__name__", str(node.target))
        hint = " (an in-place operation)" if what.endswith("_") and not what.startswith("_") else ""
        raise UnsupportedModelError(
            f"{where} does not support the operation {what!r}{hint} (fx node {node.name!r}) in the "
            f"model's forward; supported: {SUPPORTED}"
        )
    if kind == "activation":
        return Layer("activation", name, node, activation=node.target)
    _check_arguments(node, kind, signal, where, name)
    return Layer(kind, name, node)


def _check_arguments(node: torch.fx.Node, kind: str, signal: set, where: str, name: str) -> None:
    """Refuse uses of an operation that are not linear in the signal or mix the batch."""
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node) and a in signal]
    if kind == "scale" and node.target in (operator.truediv, torch.div, "div") and (
            len(node.args) < 2 or node.args[1] in signal):
        raise UnsupportedModelError(f"{where} does not support {name}: it divides by an activation")
    if kind == "scale" and len(tensors) > 1:
        raise UnsupportedModelError(
            f"{where} does not support {name}: it multiplies two activations (a gate or attention); "
            "only products with constants are supported"
        )
    if kind == "cat":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim == 0:
            raise UnsupportedModelError(f"{where} does not support {name}: it concatenates along the batch dimension")
    if kind == "mean":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        if dim is None or any(isinstance(d, int) and d == 0 for d in dims):
            raise UnsupportedModelError(
                f"{where} does not support {name}: it reduces over the batch dimension; reduce "
                "over the feature dimensions only (e.g. x.mean((2, 3)))"
            )
    if kind in ("add", "upsample", "avgpool", "reshape", "identity", "mean") and any(
        isinstance(v, torch.fx.Node) and v in signal for v in node.kwargs.values()
    ):
        raise UnsupportedModelError(f"{where} does not support {name}: an activation passed as a keyword")


def _signal_sources(node: torch.fx.Node, signal: set, aliases: Dict) -> Tuple[torch.fx.Node, ...]:
    """The distinct signal nodes a node reads, in argument order, aliases resolved."""
    out: List[torch.fx.Node] = []
    for n in node.all_input_nodes:
        n = aliases.get(n, n)
        if n in signal and n not in out:
            out.append(n)
    return tuple(out)


#: Graphs per model and module structure. The graph refers to the model's modules only weakly,
#: so a model that is no longer used is freed with its graphs. A few structures are kept per
#: model: β-smoothing swaps ReLU modules in and out on every call.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple, Graph]]" = weakref.WeakKeyDictionary()
_PER_MODEL = 4


def _fingerprint(model: nn.Module) -> Tuple:
    """The module structure (names, types, identities); β is read at run time, so a β
    schedule does not force a new trace every step."""
    return tuple((name, type(m), id(m)) for name, m in model.named_modules())


@contextlib.contextmanager
def _refusing_autograd_functions(where: str) -> Iterator[None]:
    """fx would trace into a custom ``torch.autograd.Function``'s forward and silently drop its
    backward; while tracing, calling one raises an error that names it instead."""
    function = torch.autograd.function.Function
    original = function.__dict__["apply"]

    def refuse(cls, *args, **kwargs):
        raise UnsupportedModelError(
            f"{where} does not support the custom autograd Function {cls.__name__} in the model's "
            "forward: its backward replaces the gradient, which propagation rules cannot see"
        )

    function.apply = classmethod(refuse)
    try:
        yield
    finally:
        function.apply = original


def model_graph(model: nn.Module, method: str) -> Graph:
    """Trace ``model`` into a :class:`Graph` (cached per model and module structure)."""
    key = _fingerprint(model)
    graphs = _CACHE.setdefault(model, {})
    graph = graphs.get(key)
    if graph is None:
        graph = _trace(model, method)
        if len(graphs) >= _PER_MODEL:
            graphs.pop(next(iter(graphs)))
        graphs[key] = graph
    return graph


class _Tracer(torch.fx.Tracer):
    """fx's tracer, keeping manipex's input :class:`~manipex.models.normalize.Normalize` (a
    BatchNorm to the rules) and the attack's :class:`~manipex.surgery.SmoothMaxPool` (a
    max-pool) leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from ..models.normalize import Normalize

        return isinstance(m, (Normalize, SmoothMaxPool)) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, method: str) -> Graph:
    where = f"explain(method={method!r})"
    root = weakref.ref(model)
    if not list(model.children()):  # a single layer as the whole model, e.g. nn.Linear
        model = nn.Sequential(model)
    try:
        with _refusing_autograd_functions(where):
            fx_graph = _Tracer().trace(model)
    except UnsupportedModelError:
        raise
    except Exception as err:  # fx raises many kinds of errors on dynamic code
        raise UnsupportedModelError(
            f"{where} needs a model that torch.fx can trace (no data-dependent control flow), but "
            f"tracing {type(model).__name__} failed: {type(err).__name__}: {err}"
        ) from err
    modules = dict(model.named_modules())
    nodes = list(fx_graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(
            f"{where} needs a forward with a single input, {type(model).__name__}.forward takes {len(placeholders)}"
        )
    signal = {placeholders[0]}
    layers: Dict[torch.fx.Node, Layer] = {}
    sources: Dict[torch.fx.Node, Tuple[torch.fx.Node, ...]] = {}
    aliases: Dict[torch.fx.Node, torch.fx.Node] = {}
    ordered: List[torch.fx.Node] = []
    result = None
    for node in nodes[1:]:
        if node.op == "output":
            value = node.args[0]
            if not isinstance(value, torch.fx.Node) or value not in signal:
                raise UnsupportedModelError(f"{where} needs a forward that returns one tensor of logits")
            result = value
            continue
        if node.op == "get_attr":
            if isinstance(_get_attr(model, node.target), nn.Parameter):
                raise UnsupportedModelError(
                    f"{where} needs layers as modules, but the forward reads the parameter "
                    f"{node.target!r} directly (a functional layer); use nn.Conv2d / nn.Linear modules"
                )
            ordered.append(node)  # a constant buffer
            continue
        reads_signal = any(n in signal for n in node.all_input_nodes)
        if not reads_signal or _is_shape_query(node):
            ordered.append(node)  # constants and shape arithmetic
            continue
        layer = _classify(node, modules, signal, method)
        layers[node] = layer
        sources[node] = _signal_sources(node, signal, aliases)
        signal.add(node)
        ordered.append(node)
    _merge_batchnorm(ordered, layers, sources, aliases)
    _mark_first(ordered, layers, sources)
    resolved = aliases.get(result, result)
    weak_modules: "weakref.WeakValueDictionary[str, nn.Module]" = weakref.WeakValueDictionary(
        {name: m for name, m in modules.items() if name})
    return Graph(ordered, {n: l for n, l in layers.items() if n not in aliases}, sources, aliases,
                 placeholders[0], resolved, weak_modules, root)


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


__all__ = ["Graph", "Layer", "Record", "model_graph", "UnsupportedModelError", "batchnorm_affine", "LINEAR_KINDS"]
