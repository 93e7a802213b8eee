"""What each operation of a traced model is to the propagation rules: a table of op -> handler.

:func:`classify` turns an fx node that reads the signal (the model input or anything computed
from it) into a :class:`Layer` of one *kind*; the rules (:mod:`manipex.explainers.rules`) and
composites (:mod:`manipex.explainers.composites`) are chosen by kind, not by method. A handler
is a small class that knows one family of operations: which arguments carry the signal, which
uses it refuses (with an error naming the node), and the layer it makes. Three tables map
modules (by type), functions and tensor methods to handlers; add an operation by adding an
entry, not a branch.

Kinds:

==============  ==================================================================================
``conv``        Conv1d/2d/3d modules (a BatchNorm that alone reads their output merged in)
``dense``       Linear modules (likewise)
``batchnorm``   a BatchNorm standing alone (a per-channel affine map); also a BatchNorm subclass
                read functionally (timm's ``BatchNormAct2d``: ``F.batch_norm`` on its own buffers)
``activation``  element-wise nonlinearities (:data:`ACTIVATIONS`: ReLU, Softplus, GELU, SiLU,
                Hardswish, Hardsigmoid, ReLU6, Mish, ELU, tanh, sigmoid, ...), modules or calls
``norm``        LayerNorm (also channels-last), GroupNorm, RMSNorm, InstanceNorm, modules or calls
``product``     the element-wise product of two activations: a gate ``x * sigmoid(s(x))``
                (squeeze-excitation), GLU-style products
``matmul``      a matrix product ``a @ b`` (``matmul``, ``bmm``): of two activations (attention
                scores ``q @ k^T``, ``A @ v``) or of an activation and a constant
``softmax``     a softmax over one dimension (attention probabilities)
``maxpool``     max-pooling; ``avgpool`` average and adaptive average pooling; ``upsample``
``add``         the sum or difference of two tensors, or of a tensor and a constant (a residual
                sum, a position embedding)
``cat``         ``torch.cat`` / ``torch.stack`` along a non-batch dimension
``mean``        a mean or sum over non-batch dimensions
``scale``       multiplication or division by a number or a constant tensor (layer scale)
``reshape``     plumbing that moves values without mixing them: view/reshape, flatten/unflatten,
                permute/transpose, squeeze/unsqueeze, getitem slices, pad, roll, flip,
                expand/repeat, the pieces of chunk/split/unbind
``identity``    Dropout and stochastic depth in eval mode, Identity, contiguous, clone, ``.to``
==============  ==================================================================================

Parameters read in the forward (a layer scale ``gamma * x``, a position embedding ``x + pos``, a
functional LayerNorm's weight) are constants to the rules; the graph evaluates them from the
live parameters, so their gradients flow. A functional convolution or linear map reading its
weight that is a parameter (or computed from parameters, as ``nn.MultiheadAttention``'s packed
projection) is a ``dense``/``conv`` layer read at each call; one whose weight is computed from an
activation is refused. ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` are
written out as matmul, scale, mask, softmax and matmul nodes while tracing
(:mod:`manipex.explainers.attention`), so that the rules see every step.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..surgery import SmoothMaxPool


class UnsupportedModelError(ValueError):
    """The model contains a layer or a structure that a propagation method cannot handle."""


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
        kind: see the module docstring.
        name: a description for messages, e.g. ``layer 'layer1.0.conv1' (Conv2d)``.
        node: the ``torch.fx`` node.
        module: the module called, if any (the same module may be several layers); for a
            functional BatchNorm, the BatchNorm module whose buffers it reads.
        batchnorm: a BatchNorm merged into this conv/dense layer.
        activation: for activations, its name in :data:`ACTIVATIONS` (``relu``, ``softplus``,
            ``gelu``, ``hardsigmoid``, ...).
        first: a conv/dense layer that no other conv/dense layer precedes: it reads the model
            input (through reshapes, pooling or other layers without weights).
        gate: for a ``product``, the position (0 or 1) of the operand that is a gate (computed
            by a sigmoid or hardsigmoid, through plumbing), or None.
    """

    kind: str
    name: str
    node: torch.fx.Node
    module: Optional[nn.Module] = None
    batchnorm: Optional[nn.Module] = None
    activation: str = ""
    beta: float = 1.0
    first: bool = False
    gate: Optional[int] = None
    #: For a ``softmax``, the dimension it normalises.
    dim: Optional[int] = None
    #: For a ``matmul`` of two activations, the position (0 or 1) of the operand that is an
    #: attention matrix (a softmax output, through plumbing), or None.
    attention: Optional[int] = None
    #: For a ``matmul``: how many of its two operands are activations (1: linear in the other).
    operands: int = 0
    #: For a functional conv/dense layer (``F.linear(x, w, b)``, ``F.conv2d``):
    #: ``call(x, weight, bias)`` with the call's other arguments (stride, padding, ...) fixed,
    #: and where the call reads its weight and bias (position, keyword).
    call: Optional[Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]] = None
    weight_at: Tuple[Tuple[int, str], ...] = ()

    @property
    def is_affine(self) -> bool:
        """A layer with weights: conv, dense or standalone batchnorm."""
        return self.kind in ("conv", "dense", "batchnorm")

    def softplus_beta(self) -> float:
        """β of a softplus activation, read from the module now (β schedules change it)."""
        return float(getattr(self.module, "beta", self.beta)) if self.module is not None else self.beta

    def parameters(self, args: Tuple = (), kwargs: Optional[Dict[str, Any]] = None) -> Tuple[Tensor, Optional[Tensor]]:
        """Weight and bias of an affine layer, with a merged BatchNorm folded in.

        ``bn(W x + b) = (s W) x + s (b - mu) + beta`` with ``s = gamma / sqrt(var + eps)``,
        computed from the parameters (not in place), so gradients reach all of them. A
        standalone BatchNorm gives its per-channel scale and shift. A functional layer reads
        them from the call's evaluated arguments ``args``/``kwargs`` (a recorded call:
        :meth:`Record.parameters <manipex.explainers.graph.Record.parameters>`).
        """
        if self.kind == "batchnorm":
            return batchnorm_affine(self.module)
        if self.call is not None:
            if not args:
                raise UnsupportedModelError(f"{self.name} is a functional layer: its weight is read at each call")
            kwargs = kwargs or {}
            weight, bias = (kwargs[key] if key in kwargs else (args[i] if len(args) > i else None)
                            for i, key in self.weight_at)
        else:
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
        if self.call is not None:
            return self.call(x, weight, bias)
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m._conv_forward(x, weight, bias)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = x * weight.reshape(shape)
        return out if bias is None else out + bias.reshape(shape)


# --- the context a handler sees -----------------------------------------------------------------


@dataclass
class Site:
    """An fx node being classified: where it is, what it calls, what carries the signal."""

    node: torch.fx.Node
    modules: Dict[str, nn.Module]
    signal: set
    method: str
    #: The layers classified so far (the nodes before this one), with their signal sources.
    layers: Dict[torch.fx.Node, Layer]
    sources: Dict[torch.fx.Node, Tuple[torch.fx.Node, ...]]

    @property
    def where(self) -> str:
        return f"explain(method={self.method!r})"

    @property
    def name(self) -> str:
        node = self.node
        if node.op == "call_module":
            return f"layer {node.target!r} ({type(self.modules[node.target]).__name__})"
        if node.op == "call_method":
            return f"method .{node.target}() at node {node.name!r}"
        return f"call {getattr(node.target, '__name__', node.target)!s} at node {node.name!r}"

    @property
    def module(self) -> Optional[nn.Module]:
        return self.modules[self.node.target] if self.node.op == "call_module" else None

    def argument(self, position: int, keyword: str, default: Any = None) -> Any:
        """The call's argument by position (counting the tensor of a method call) or keyword."""
        if keyword in self.node.kwargs:
            return self.node.kwargs[keyword]
        return self.node.args[position] if len(self.node.args) > position else default

    def is_signal(self, value: Any) -> bool:
        return isinstance(value, torch.fx.Node) and value in self.signal

    def signal_operands(self) -> List[torch.fx.Node]:
        """Positional arguments that carry the signal, in order, repeats kept."""
        return [a for a in self.node.args if self.is_signal(a)]

    def refuse(self, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.where} does not support {self.name}: {why}")


# --- handlers ----------------------------------------------------------------------------------


class Handler:
    """One family of operations. :meth:`layer` checks the use and makes the :class:`Layer`."""

    kind = ""
    #: Whether the output is a linear function of the signal inputs.
    linear = False

    def layer(self, site: Site) -> Layer:
        self.check(site)
        return Layer(self.kind, site.name, site.node, site.module)

    def check(self, site: Site) -> None:
        """Refuse uses the rules cannot handle; by default, a signal passed as a keyword."""
        if any(site.is_signal(v) for v in site.node.kwargs.values()):
            raise site.refuse("an activation passed as a keyword")

    def sources(self, site: Site) -> Sequence[torch.fx.Node]:
        """The nodes whose signal this layer reads (default: every signal argument)."""
        return [n for n in site.node.all_input_nodes if n in site.signal]


class Affine(Handler):
    """Conv and Linear modules: ``z = W x + b`` (a following BatchNorm merged later)."""

    def layer(self, site):
        kind = "dense" if isinstance(site.module, nn.Linear) else "conv"
        return Layer(kind, site.name, site.node, site.module)


class BatchNorm(Handler):
    """An eval-mode BatchNorm, a per-channel affine map: a module, or ``F.batch_norm`` reading
    the buffers of one BatchNorm module (a subclass that fx traces into, such as timm's
    ``BatchNormAct2d``)."""

    kind = "batchnorm"

    def layer(self, site):
        if site.module is not None:
            return Layer(self.kind, site.name, site.node, site.module)
        owners = set()
        for position, key in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
            value = site.argument(position, key)
            if isinstance(value, torch.fx.Node):
                if value.op != "get_attr":
                    raise site.refuse(f"its {key} is computed in the forward, not a BatchNorm's own tensor")
                owners.add(value.target.rpartition(".")[0])
        if site.argument(5, "training", False):
            raise site.refuse("batch statistics (training=True); call model.eval() first")
        bns = [site.modules.get(o) for o in owners]
        if len(owners) != 1 or not isinstance(bns[0], nn.modules.batchnorm._BatchNorm):
            raise site.refuse("F.batch_norm on tensors that are not the buffers of one BatchNorm module")
        return Layer(self.kind, f"{site.name} (BatchNorm {next(iter(owners))!r})", site.node, bns[0])


@dataclass(frozen=True)
class Activation(Handler):
    """An element-wise nonlinearity ``y_i = f(z_i)``, named as in :data:`ACTIVATIONS`."""

    activation: str
    kind = "activation"

    def layer(self, site):
        self.check(site)
        m = site.module
        beta = float(getattr(m, "beta", 1.0)) if m is not None else 1.0
        if self.activation == "softplus" and m is None:
            beta = float(site.argument(1, "beta", 1.0))
        return Layer(self.kind, site.name, site.node, m, activation=self.activation, beta=beta)


class Norm(Handler):
    """A normalisation over non-batch dimensions: LayerNorm, GroupNorm, RMSNorm, InstanceNorm."""

    kind = "norm"


class Pool(Handler):
    """Pooling and interpolation (``maxpool``, ``avgpool``, ``upsample``)."""

    def __init__(self, kind: str, linear: bool) -> None:
        self.kind, self.linear = kind, linear


class Identity(Handler):
    """The identity in eval mode (Dropout, Identity, contiguous, clone, ``.to``)."""

    kind, linear = "identity", True


class StochasticDepth(Identity):
    """torchvision's ``stochastic_depth(input, p, mode, training)`` and timm's
    ``drop_path(x, drop_prob, training, ...)``, recorded by fx as one call: the identity in
    eval mode."""

    def __init__(self, training_position: int) -> None:
        self.position = training_position

    def check(self, site):
        if site.argument(self.position, "training", True) is not False:
            raise site.refuse("stochastic depth in training mode; call model.eval() first")
        if any(site.is_signal(a) for a in site.node.args[1:]):
            raise site.refuse("its probability is computed from an activation")

    def sources(self, site):
        return [site.node.args[0]]


class Plumbing(Handler):
    """Operations that move, duplicate or drop values without mixing them (kind ``reshape``):
    every other argument (a shape, an index, padding) must be a constant."""

    kind, linear = "reshape", True

    def check(self, site):
        super().check(site)
        if len(site.signal_operands()) > 1 or (site.node.args and not site.is_signal(site.node.args[0])):
            raise site.refuse("an index or shape computed from an activation")
        for a in site.node.args[1:]:
            if _reads_signal(a, site):
                raise site.refuse("an index or shape computed from an activation")


class ShapedLike(Plumbing):
    """``x.view_as(y)``, ``x.reshape_as(y)``, ``x.expand_as(y)``, ``x.type_as(y)``: ``y`` gives
    only its shape or type, so the signal comes from ``x`` alone."""

    def check(self, site):
        if not site.is_signal(site.node.args[0]):
            raise site.refuse("an activation's shape given to a constant")

    def sources(self, site):
        return [site.node.args[0]]


class Split(Plumbing):
    """``chunk``/``split``/``unbind``/``tensor_split``: a tuple of pieces. Not a layer itself:
    each piece taken from it (``getitem``) is a ``reshape`` layer reading the split tensor."""

    kind = "split"


class Add(Handler):
    """``a + b``, ``a - b`` of tensors or with constants (``torch.add(a, b, alpha=...)`` too)."""

    kind, linear = "add", True


class Cat(Handler):
    """``torch.cat`` / ``torch.stack`` of tensors, along a non-batch dimension."""

    kind, linear = "cat", True

    def check(self, site):
        super().check(site)
        if site.argument(1, "dim", 0) == 0:
            raise site.refuse("it concatenates along the batch dimension")


class Mean(Handler):
    """A mean or sum over non-batch dimensions."""

    kind, linear = "mean", True

    def check(self, site):
        super().check(site)
        dim = site.argument(1, "dim", None)
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        if dim is None or any(isinstance(d, int) and d == 0 for d in dims):
            raise site.refuse("it reduces over the batch dimension; reduce over the feature dimensions only "
                              "(e.g. x.mean((2, 3)))")


class Multiply(Handler):
    """``a * b``: a ``scale`` by a constant, or, for two activations, a ``product`` (a gate)."""

    linear = False

    def layer(self, site):
        super().check(site)
        operands = site.signal_operands()
        if len(operands) < 2:
            return Layer("scale", site.name, site.node)
        gates = [i for i, a in enumerate(site.node.args[:2]) if _is_gate(a, site)]
        gate = gates[0] if len(gates) == 1 else None
        return Layer("product", site.name, site.node, gate=gate)


class Divide(Handler):
    """``a / c`` by a constant (a ``scale``); division by an activation is refused."""

    kind, linear = "scale", True

    def check(self, site):
        super().check(site)
        if len(site.node.args) < 2 or site.is_signal(site.node.args[1]):
            raise site.refuse("it divides by an activation")


class Negate(Handler):
    kind, linear = "scale", True


class FunctionalAffine(Handler):
    """``F.linear(x, w, b)`` / ``F.conv2d(x, w, b, stride, padding, dilation, groups)`` with a
    weight that is no activation (a parameter, or computed from parameters: the packed
    projection of ``nn.MultiheadAttention``, a slice of it): a ``dense``/``conv`` layer whose
    weight and bias are read at each call. A weight computed from an activation (a dynamic
    filter) is refused."""

    def __init__(self, function: Callable, options: Tuple[Tuple[str, Any], ...] = ()) -> None:
        self.function, self.options = function, options

    def layer(self, site):
        weight = site.argument(1, "weight")
        if weight is None or _reads_signal(weight, site) or _reads_signal(site.argument(2, "bias"), site):
            raise site.refuse("its weight or bias is computed from an activation (a dynamic filter), which "
                              "no layer rule can share relevance over")
        if not site.is_signal(site.node.args[0] if site.node.args else site.node.kwargs.get("input")):
            raise site.refuse("the activation is not its input")
        fixed = {}
        for position, (key, default) in enumerate(self.options, start=3):
            value = site.argument(position, key, default)
            if isinstance(value, torch.fx.Node):
                raise site.refuse(f"its {key} is computed in the forward; it must be a constant")
            fixed[key] = value
        kind = "dense" if self.function is F.linear else "conv"
        call = functools.partial(_call_affine, self.function, fixed)
        return Layer(kind, site.name, site.node, call=call, weight_at=((1, "weight"), (2, "bias")))

    def sources(self, site):
        return [site.node.args[0]]


def _call_affine(function: Callable, fixed: Dict[str, Any], x: Tensor, weight: Tensor,
                 bias: Optional[Tensor]) -> Tensor:
    return function(x, weight, bias, **fixed)


class Matmul(Handler):
    """``a @ b``, ``torch.matmul``, ``torch.bmm``: with two activations, a ``matmul`` (the
    attention scores ``q @ k^T``, the attention-weighted values ``A @ v``); with one operand
    constant, linear in the other (also a ``matmul``: the rules share it proportionally).
    :attr:`Layer.attention` marks an operand that is an attention matrix (a softmax output)."""

    kind = "matmul"

    def layer(self, site):
        self.check(site)
        if len(site.node.args) != 2:
            raise site.refuse("a matrix product needs two operands")
        marks = [i for i, a in enumerate(site.node.args[:2]) if _traces_to(a, site, ("softmax",))]
        return Layer(self.kind, site.name, site.node, attention=marks[0] if len(marks) == 1 else None,
                     operands=len(site.signal_operands()))


class Softmax(Handler):
    """``softmax(x, dim)`` (function, method or ``nn.Softmax``): attention probabilities."""

    kind = "softmax"

    def layer(self, site):
        self.check(site)
        dim = site.module.dim if site.module is not None else site.argument(1, "dim")
        if not isinstance(dim, int):
            raise site.refuse("softmax needs its dim as a constant integer")
        if site.module is None and site.argument(3, "dtype") is not None:
            raise site.refuse("softmax with a dtype argument; cast before the softmax")
        return Layer(self.kind, site.name, site.node, site.module, dim=dim)

    def sources(self, site):
        return [site.node.args[0]]


def _reads_signal(value: Any, site: Site) -> bool:
    found = []
    torch.fx.node.map_arg(value, lambda n: found.append(n in site.signal))
    return any(found)


#: Kinds a gate's value passes through unchanged on its way to the product.
_GATE_PLUMBING = frozenset({"reshape", "identity"})
GATE_ACTIVATIONS = frozenset({"sigmoid", "hardsigmoid"})


def _is_gate(value: Any, site: Site) -> bool:
    """Whether an operand is a gate: a sigmoid or hardsigmoid output, through plumbing."""
    layer = _through_plumbing(value, site)
    return layer is not None and layer.kind == "activation" and layer.activation in GATE_ACTIVATIONS


def _traces_to(value: Any, site: Site, kinds: Tuple[str, ...]) -> bool:
    """Whether an operand is the output of a layer of one of ``kinds``, through plumbing."""
    layer = _through_plumbing(value, site)
    return layer is not None and layer.kind in kinds


def _through_plumbing(value: Any, site: Site) -> Optional[Layer]:
    """The first layer behind ``value`` that is not plumbing (reshape, identity), or None."""
    node = value
    while isinstance(node, torch.fx.Node):
        layer = site.layers.get(node)
        if layer is None:
            return None
        sources = site.sources.get(node, ())
        if layer.kind not in _GATE_PLUMBING or len(sources) != 1:
            return layer
        node = sources[0]
    return None


# --- the tables ----------------------------------------------------------------------------------

#: Element-wise activation modules (matched by exact type: a subclass may change the forward,
#: and fx traces into it) and their names.
ACTIVATIONS: Dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Softplus: "softplus", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid", nn.Hardswish: "hardswish", nn.Hardtanh: "hardtanh", nn.GELU: "gelu",
    nn.SiLU: "silu", nn.Mish: "mish", nn.ELU: "elu", nn.CELU: "celu", nn.SELU: "selu",
    nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu", nn.Softsign: "softsign", nn.LogSigmoid: "logsigmoid",
    nn.Tanhshrink: "tanhshrink", nn.Softshrink: "softshrink", nn.Hardshrink: "hardshrink",
    nn.Threshold: "threshold",
}

#: Activations that rectify (guided backprop clamps the signal at them); the others squash.
RECTIFIERS = frozenset({"relu", "relu6", "softplus", "hardswish", "gelu", "silu", "mish", "elu", "celu", "selu",
                        "leaky_relu", "prelu", "threshold"})

_POOL_MAX = Pool("maxpool", False)
_POOL_AVG = Pool("avgpool", True)
_UPSAMPLE = Pool("upsample", True)
_PLUMBING, _IDENTITY, _SPLIT, _ADD, _CAT, _MEAN = Plumbing(), Identity(), Split(), Add(), Cat(), Mean()
_MUL, _DIV, _NORM = Multiply(), Divide(), Norm()
_MATMUL, _SOFTMAX = Matmul(), Softmax()
_CONV_OPTIONS = (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))

#: Module types (isinstance, in order) -> handler; activations are in :data:`ACTIVATIONS`.
MODULE_HANDLERS: Tuple[Tuple[Tuple[type, ...], Handler], ...] = (
    ((nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d), Affine()),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), BatchNorm()),
    ((nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), _NORM),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, SmoothMaxPool), _POOL_MAX),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
      nn.AdaptiveAvgPool3d), _POOL_AVG),
    ((nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d), _UPSAMPLE),
    ((nn.Softmax,), _SOFTMAX),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity), _IDENTITY),
    ((nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
      nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.PixelShuffle,
      nn.PixelUnshuffle), _PLUMBING),
)

#: Element-wise activation functions and their names.
FUNCTIONAL_ACTIVATIONS: Dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.softplus: "softplus", torch.tanh: "tanh",
    F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid",
    F.hardswish: "hardswish", F.hardtanh: "hardtanh", F.gelu: "gelu", F.silu: "silu", F.mish: "mish",
    F.elu: "elu", F.celu: "celu", F.selu: "selu", torch.selu: "selu", F.leaky_relu: "leaky_relu",
    F.softsign: "softsign", F.logsigmoid: "logsigmoid", F.tanhshrink: "tanhshrink",
    F.softshrink: "softshrink", F.hardshrink: "hardshrink",
}

#: Functions -> handler.
FUNCTION_HANDLERS: Dict[Any, Handler] = {
    **{f: Activation(a) for f, a in FUNCTIONAL_ACTIVATIONS.items()},
    F.batch_norm: BatchNorm(),
    F.layer_norm: _NORM, F.group_norm: _NORM, F.rms_norm: _NORM, F.instance_norm: _NORM,
    F.max_pool1d: _POOL_MAX, F.max_pool2d: _POOL_MAX, F.max_pool3d: _POOL_MAX,
    F.adaptive_max_pool1d: _POOL_MAX, F.adaptive_max_pool2d: _POOL_MAX,
    F.avg_pool1d: _POOL_AVG, F.avg_pool2d: _POOL_AVG, F.avg_pool3d: _POOL_AVG,
    F.adaptive_avg_pool1d: _POOL_AVG, F.adaptive_avg_pool2d: _POOL_AVG, F.adaptive_avg_pool3d: _POOL_AVG,
    F.interpolate: _UPSAMPLE, F.upsample: _UPSAMPLE,
    F.dropout: _IDENTITY, F.dropout1d: _IDENTITY, F.dropout2d: _IDENTITY, F.dropout3d: _IDENTITY,
    torch.cat: _CAT, torch.concat: _CAT, torch.concatenate: _CAT, torch.stack: _CAT,
    operator.add: _ADD, torch.add: _ADD, operator.sub: _ADD, torch.sub: _ADD,
    operator.mul: _MUL, torch.mul: _MUL, operator.truediv: _DIV, torch.div: _DIV,
    operator.neg: Negate(), torch.neg: Negate(),
    torch.mean: _MEAN, torch.sum: _MEAN,
    torch.flatten: _PLUMBING, torch.reshape: _PLUMBING, torch.permute: _PLUMBING,
    torch.transpose: _PLUMBING, torch.swapaxes: _PLUMBING, torch.movedim: _PLUMBING,
    torch.squeeze: _PLUMBING, torch.unsqueeze: _PLUMBING, torch.unflatten: _PLUMBING, F.pad: _PLUMBING,
    torch.roll: _PLUMBING, torch.flip: _PLUMBING, torch.broadcast_to: _PLUMBING, torch.tile: _PLUMBING,
    operator.getitem: _PLUMBING, F.pixel_shuffle: _PLUMBING, F.pixel_unshuffle: _PLUMBING,
    torch.chunk: _SPLIT, torch.split: _SPLIT, torch.unbind: _SPLIT, torch.tensor_split: _SPLIT,
    F.conv1d: FunctionalAffine(F.conv1d, _CONV_OPTIONS), F.conv2d: FunctionalAffine(F.conv2d, _CONV_OPTIONS),
    F.conv3d: FunctionalAffine(F.conv3d, _CONV_OPTIONS), F.linear: FunctionalAffine(F.linear),
    operator.matmul: _MATMUL, torch.matmul: _MATMUL, torch.bmm: _MATMUL,
    F.softmax: _SOFTMAX, torch.softmax: _SOFTMAX,
}

#: Functions recognised by name (defined in packages manipex does not import), with the position
#: of their ``training`` argument.
NAMED_FUNCTIONS: Dict[str, Handler] = {
    "stochastic_depth": StochasticDepth(3),  # torchvision.ops.stochastic_depth (fx-wrapped)
    "drop_path": StochasticDepth(2),  # timm.layers.drop_path
}

#: Tensor methods -> handler.
METHOD_HANDLERS: Dict[str, Handler] = {
    "relu": Activation("relu"), "tanh": Activation("tanh"), "sigmoid": Activation("sigmoid"),
    "mean": _MEAN, "sum": _MEAN, "add": _ADD, "sub": _ADD, "mul": _MUL, "div": _DIV, "neg": Negate(),
    "view": _PLUMBING, "reshape": _PLUMBING, "flatten": _PLUMBING, "unflatten": _PLUMBING,
    "permute": _PLUMBING, "transpose": _PLUMBING, "swapaxes": _PLUMBING, "movedim": _PLUMBING,
    "squeeze": _PLUMBING, "unsqueeze": _PLUMBING, "roll": _PLUMBING, "flip": _PLUMBING,
    "expand": _PLUMBING, "repeat": _PLUMBING, "tile": _PLUMBING,
    "view_as": ShapedLike(), "reshape_as": ShapedLike(), "expand_as": ShapedLike(), "type_as": ShapedLike(),
    "contiguous": _IDENTITY, "clone": _IDENTITY, "to": _IDENTITY, "float": _IDENTITY, "double": _IDENTITY,
    "chunk": _SPLIT, "split": _SPLIT, "unbind": _SPLIT, "tensor_split": _SPLIT,
    "matmul": _MATMUL, "bmm": _MATMUL, "softmax": _SOFTMAX,
}

SUPPORTED = (
    "Conv1d/2d/3d, Linear, BatchNorm, LayerNorm, GroupNorm, RMSNorm, element-wise activations (ReLU, "
    "ReLU6, Softplus, GELU, SiLU, Hardswish, Hardsigmoid, Mish, ELU, tanh, sigmoid, ...), MaxPool, AvgPool, "
    "AdaptiveAvgPool, Upsample, Flatten, Dropout, Identity, stochastic depth; +, -, products of two "
    "activations (gates), scaling by constants, torch.cat/stack, mean/sum over non-batch dims, "
    "F.interpolate, view/reshape/permute/transpose/getitem/pad/roll/expand/chunk/split; attention: "
    "matmul/bmm, softmax, F.scaled_dot_product_attention, nn.MultiheadAttention, F.linear/F.conv with "
    "parameter weights"
)


ANY_MODEL = ("Methods without layer rules (gradient, grad_x_input, integrated_gradients, smoothgrad, occlusion) "
             "work on any differentiable model.")


def handler_for(site: Site) -> Optional[Handler]:
    """The handler of an fx node, or None if the operation is unknown."""
    node = site.node
    if node.op == "call_module":
        m = site.module
        activation = ACTIVATIONS.get(type(m))
        if activation is not None:
            return Activation(activation)
        for classes, handler in MODULE_HANDLERS:
            if isinstance(m, classes):
                return handler
        return None
    if node.op == "call_function":
        handler = FUNCTION_HANDLERS.get(node.target)
        if handler is None:
            handler = NAMED_FUNCTIONS.get(getattr(node.target, "__name__", ""))
        return handler
    if node.op == "call_method":
        return METHOD_HANDLERS.get(node.target)
    return None


def classify(site: Site) -> Tuple[Layer, Tuple[torch.fx.Node, ...], Handler]:
    """The layer for an fx node that reads the signal, with its signal sources, or an error
    that names the node and the operation."""
    handler = handler_for(site)
    node = site.node
    if handler is None:
        if node.op == "call_module":
            raise UnsupportedModelError(f"{site.where} does not support {site.name}; supported: {SUPPORTED}. "
                                        f"{ANY_MODEL}")
        what = getattr(node.target, "__name__", str(node.target))
        hint = " (an in-place operation)" if what.endswith("_") and not what.startswith("_") else ""
        raise UnsupportedModelError(
            f"{site.where} does not support the operation {what!r}{hint} (fx node {node.name!r}) in the "
            f"model's forward; supported: {SUPPORTED}. {ANY_MODEL}"
        )
    layer = handler.layer(site)
    return layer, tuple(dict.fromkeys(handler.sources(site))), handler


__all__ = [
    "Layer", "UnsupportedModelError", "batchnorm_affine", "Handler", "Site", "classify", "handler_for",
    "ACTIVATIONS", "FUNCTIONAL_ACTIVATIONS", "RECTIFIERS", "GATE_ACTIVATIONS", "MODULE_HANDLERS", "FUNCTION_HANDLERS",
    "METHOD_HANDLERS",
    "NAMED_FUNCTIONS", "SUPPORTED",
]
