"""A model seen as a chain of layers, for methods that replace the backward pass.

Guided backprop, LRP and PatternAttribution propagate a signal backwards layer by layer with
their own rule per layer type. :func:`layer_chain` traces the model with ``torch.fx`` into a
sequence of :class:`Step` s: affine layers (Conv, Linear, with a following BatchNorm merged),
activations (modules or functional calls such as ``F.relu``, canonicalised), pooling, reshapes
and identities (Dropout in eval mode). Anything else is refused with an error naming the layer.

:meth:`Chain.forward` evaluates the model step by step and records each step's input and
output, so that the rules can backpropagate with ``torch.autograd.grad(create_graph=...)``:
everything stays in the autograd graph and the resulting maps are exactly differentiable.
The model is only read, never changed.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn


class UnsupportedModelError(ValueError):
    """The model contains a layer or a structure that a propagation method cannot handle."""


AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATION_MODULES: Dict[type, str] = {
    nn.ReLU: "relu", nn.Softplus: "softplus", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.ELU: "other", nn.LeakyReLU: "other", nn.GELU: "other", nn.SiLU: "other",
}
MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
LINEAR_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                       nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
RESHAPE_MODULES = (nn.Flatten, nn.Unflatten)

ACTIVATION_FUNCTIONS: Dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.softplus: "softplus", torch.tanh: "tanh",
    F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
}
FUNCTION_KINDS: Dict[Any, str] = {
    torch.flatten: "reshape", torch.reshape: "reshape",
    F.max_pool1d: "maxpool", F.max_pool2d: "maxpool", F.max_pool3d: "maxpool",
    F.avg_pool1d: "linear_pool", F.avg_pool2d: "linear_pool", F.avg_pool3d: "linear_pool",
    F.adaptive_avg_pool1d: "linear_pool", F.adaptive_avg_pool2d: "linear_pool",
    F.adaptive_avg_pool3d: "linear_pool", F.dropout: "identity",
}
METHOD_KINDS = {"view": "reshape", "reshape": "reshape", "flatten": "reshape",
                "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
SHAPE_METHODS = {"size", "dim"}


def batchnorm_affine(bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm as ``x * scale + shift`` per channel, from its parameters."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@dataclass
class Step:
    """One layer of the chain.

    ``kind`` is one of ``affine``, ``activation``, ``maxpool``, ``linear_pool``, ``reshape``,
    ``identity``. For ``activation`` steps ``activation`` names the function (``relu``,
    ``softplus``, ``tanh``, ``sigmoid`` or ``other``) and ``beta`` is the softplus β.
    """

    kind: str
    name: str
    node: torch.fx.Node
    module: Optional[nn.Module] = None
    batchnorm: Optional[nn.Module] = None
    activation: str = ""
    beta: float = 1.0
    merged: bool = False

    def softplus_beta(self) -> float:
        """β of a softplus activation, read from the module now (β schedules change it)."""
        return float(getattr(self.module, "beta", self.beta)) if self.module is not None else self.beta

    def affine_parameters(self) -> Tuple[Tensor, Optional[Tensor]]:
        """Weight and bias of an affine step, with a following eval-mode BatchNorm merged.

        ``bn(W x + b) = (s W) x + s (b - mu) + beta`` with ``s = gamma / sqrt(var + eps)``,
        computed from the parameters (not in place), so gradients reach all of them.
        """
        weight, bias = self.module.weight, self.module.bias
        if self.batchnorm is None:
            return weight, bias
        scale, shift = batchnorm_affine(self.batchnorm)
        if bias is not None:
            shift = shift + bias * scale
        return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), shift

    def affine(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The affine map of this step with the given weight and bias (a BatchNorm step
        standing alone is the per-channel affine map ``x * weight + bias``)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m._conv_forward(x, weight, bias)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = x * weight.reshape(shape)
        return out if bias is None else out + bias.reshape(shape)

    def parameters(self) -> Tuple[Tensor, Optional[Tensor]]:
        if isinstance(self.module, BATCHNORM_MODULES):
            return batchnorm_affine(self.module)
        return self.affine_parameters()


@dataclass
class Record:
    step: Step
    input: Tensor
    output: Tensor


@dataclass
class Chain:
    """The traced model: fx nodes in order, and which of them are chain steps."""

    graph_nodes: List[torch.fx.Node]
    steps: Dict[torch.fx.Node, Step]
    placeholder: torch.fx.Node
    result: torch.fx.Node
    modules: Dict[str, nn.Module] = field(default_factory=dict)

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Record]]:
        """Evaluate the model on ``x``, recording every step's input and output."""
        env: Dict[torch.fx.Node, Any] = {self.placeholder: x}
        records: List[Record] = []
        for node in self.graph_nodes:
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            step = self.steps.get(node)
            if step is not None and step.kind == "affine":
                weight, bias = step.parameters()
                value = step.affine(args[0], weight, bias)
            elif step is not None and step.merged:
                value = args[0]
            else:
                value = self._run(node, args, kwargs)
            if step is not None:
                records.append(Record(step, args[0], value))
            env[node] = value
        return env[self.result], records

    def _run(self, node: torch.fx.Node, args: Tuple, kwargs: Dict) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            raise UnsupportedModelError(f"attribute access {node.target!r} is not supported")
        raise UnsupportedModelError(f"fx node {node.op} is not supported")  # pragma: no cover


def _is_shape_query(node: torch.fx.Node) -> bool:
    if node.op == "call_method" and node.target in SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim"):
        return True
    return False


def _classify(node: torch.fx.Node, modules: Dict[str, nn.Module], method: str) -> Step:
    """The chain step for an fx node that consumes the current tensor, or an error naming it."""
    if node.op == "call_module":
        module = modules[node.target]
        name = f"layer {node.target!r} ({type(module).__name__})"
        if isinstance(module, AFFINE_MODULES) or isinstance(module, BATCHNORM_MODULES):
            return Step("affine", name, node, module)
        for cls, act in ACTIVATION_MODULES.items():
            if type(module) is cls:
                return Step("activation", name, node, module, activation=act,
                            beta=float(getattr(module, "beta", 1.0)))
        if isinstance(module, MAXPOOL_MODULES):
            return Step("maxpool", name, node, module)
        if isinstance(module, LINEAR_POOL_MODULES):
            return Step("linear_pool", name, node, module)
        if isinstance(module, IDENTITY_MODULES):
            return Step("identity", name, node, module)
        if isinstance(module, RESHAPE_MODULES):
            return Step("reshape", name, node, module)
        raise UnsupportedModelError(
            f"explain(method={method!r}) does not support {name}; supported layers: Conv1d/2d/3d, "
            "Linear, BatchNorm, ReLU, Softplus, Tanh, Sigmoid, MaxPool, AvgPool, AdaptiveAvgPool, "
            "Flatten, Dropout, Identity"
        )
    if node.op == "call_function":
        name = f"call {getattr(node.target, '__name__', node.target)!s} at node {node.name!r}"
        if node.target in ACTIVATION_FUNCTIONS:
            act = ACTIVATION_FUNCTIONS[node.target]
            beta = float(node.kwargs.get("beta", node.args[1] if len(node.args) > 1 else 1.0)) if act == "softplus" else 1.0
            return Step("activation", name, node, activation=act, beta=beta)
        if node.target in FUNCTION_KINDS:
            return Step(FUNCTION_KINDS[node.target], name, node)
    if node.op == "call_method" and node.target in METHOD_KINDS:
        name = f"method .{node.target}() at node {node.name!r}"
        kind = METHOD_KINDS[node.target]
        if kind == "reshape":
            return Step("reshape", name, node)
        return Step("activation", name, node, activation=kind)
    what = getattr(node.target, "__name__", str(node.target))
    raise UnsupportedModelError(
        f"explain(method={method!r}) does not support the operation {what!r} (fx node "
        f"{node.name!r}) in the model's forward"
    )


_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[Tuple, Chain]]" = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> Tuple:
    """The module structure (names, types, identities); β is read at run time, so a β
    schedule does not force a new trace every step."""
    return tuple((name, type(m), id(m)) for name, m in model.named_modules())


def layer_chain(model: nn.Module, method: str) -> Chain:
    """Trace ``model`` into a :class:`Chain` (cached per model and module structure)."""
    key = _fingerprint(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    chain = _trace(model, method)
    _CACHE[model] = (key, chain)
    return chain


def _trace(model: nn.Module, method: str) -> Chain:
    if not list(model.children()):  # a single layer as the whole model, e.g. nn.Linear
        model = nn.Sequential(model)
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as err:  # fx raises many kinds of errors on dynamic code
        raise UnsupportedModelError(
            f"explain(method={method!r}) needs a model whose forward is a chain of layers, but "
            f"torch.fx could not trace {type(model).__name__}: {err}"
        ) from err
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(
            f"explain(method={method!r}) needs a forward with a single input, "
            f"{type(model).__name__}.forward takes {len(placeholders)}"
        )
    current = placeholders[0]
    aux: set = set()
    steps: Dict[torch.fx.Node, Step] = {}
    ordered: List[torch.fx.Node] = []
    result = None
    for node in nodes[1:]:
        inputs = set(node.all_input_nodes)
        if node.op == "output":
            if node.args[0] is not current:
                raise UnsupportedModelError(
                    f"explain(method={method!r}) needs a forward that returns one tensor of logits"
                )
            result = current
            continue
        if node.op == "get_attr":
            raise UnsupportedModelError(
                f"explain(method={method!r}) needs layers as modules, but the forward reads "
                f"{node.target!r} directly (a functional layer); use nn.Conv2d / nn.Linear modules"
            )
        if _is_shape_query(node) or (inputs and inputs <= aux) or not inputs:
            aux.add(node)
            ordered.append(node)
            continue
        if current not in inputs or inputs - aux - {current}:
            raise UnsupportedModelError(
                f"explain(method={method!r}) supports models whose forward is a chain of layers; "
                f"node {node.name!r} ({getattr(node.target, '__name__', node.target)}) combines "
                "several tensors (a skip connection or branch)"
            )
        if any(a is current for a in node.args[1:]) or any(v is current for v in node.kwargs.values()):
            raise UnsupportedModelError(
                f"explain(method={method!r}): node {node.name!r} uses the same tensor twice"
            )
        step = _classify(node, modules, method)
        steps[node] = step
        ordered.append(node)
        current = node
    _merge_batchnorm(ordered, steps)
    return Chain(ordered, steps, placeholders[0], result, modules)


def _merge_batchnorm(ordered: List[torch.fx.Node], steps: Dict[torch.fx.Node, Step]) -> None:
    """Merge each BatchNorm that directly follows a Conv/Linear into it (LRP needs this)."""
    previous: Optional[Step] = None
    for node in ordered:
        step = steps.get(node)
        if step is None:
            continue
        if (step.kind == "affine" and isinstance(step.module, BATCHNORM_MODULES) and previous is not None
                and previous.kind == "affine" and isinstance(previous.module, AFFINE_MODULES)
                and previous.batchnorm is None):
            previous.batchnorm = step.module
            step.kind, step.merged = "identity", True
        previous = step


__all__ = ["Chain", "Step", "Record", "layer_chain", "UnsupportedModelError"]
