"""Grad-CAM (Selvaraju et al. 2017).

``L = ReLU(sum_c alpha_c A_c)`` with ``alpha_c`` the spatial mean of ``dg_k/dA_c`` at a
convolutional layer's output ``A``, upsampled bilinearly to the input size and repeated over
the input's channels so that the map has ``x``'s shape. The layer's output is captured with a
forward hook that is always removed; ``alpha`` is computed with ``create_graph`` so the map is
exactly differentiable (almost everywhere: ReLU) w.r.t. the input and the weights.

The default layer (:func:`default_layer`) is the output of the last convolutional stage: the
tensor that reaches the classifier through pooling and linear layers only. Selvaraju et al. use
the feature maps of the last convolutional layer, which keep the spatial layout and are the
closest to the class decision; in a network whose last block has parallel branches (Inception)
those maps are the block's output, the concatenation of all branches, not the branch
convolution that the forward happens to call last (the former default, the last Conv2d
called, was ``Mixed_7c.branch_pool.conv`` of an Inception-v3). The stage output is found by
tracing the model with ``torch.fx`` and walking back from the output through the head:

* Linear, Dropout/Identity, Flatten / ``view`` / ``reshape`` / ``flatten`` / ``squeeze``;
* pooling of any kind (max, average, adaptive, LP; modules or functional calls), a mean, sum
  or ``amax`` over the spatial dimensions;
* element-wise activations, normalisations and softmax where they act on non-spatial
  features, e.g. the ReLU and Dropout between a VGG's classifier Linears or ConvNeXt's
  ``LayerNorm2d`` after the global pooling. Whether a tensor is spatial is decided by the
  structure (before or after the pooling), not by shapes: the input size is not known.

The first node met that is none of these is the stage output, and the default layer is the
outermost module whose forward returns exactly that tensor (the outermost module the node
leaves on its way into the head): ``layer4`` of a ResNet, the last ReLU of ``features`` of a
VGG (``features.29``: the max-pool after it belongs to the head), the last Inception block
(``Mixed_7c``), ``features`` of a DenseNet. A tensor that no module returns (torchvision's
DenseNet applies ``F.relu(features)`` in its root forward) steps back through such element-wise
activations to a module's output; an activation module that the root forward calls itself
(manipex's DenseNet: ``self.relu(features)``) is treated alike, so that the two DenseNets get
the same layer; in a flat ``nn.Sequential`` that is the layer before the last activation (the
last Conv2d of ``Conv2d - ReLU - MaxPool2d - Flatten - Linear``). A module called several times
(weights shared) is taken at the call that returns the stage output.

Transformers: taking the class token (``x[:, 0]``) or the mean of the tokens (``x.mean(1)``)
is a reduction as well, and so is a pooling fed by a permute (Swin's channels-last
``permute(0, 3, 1, 2) -> avgpool``); upstream of it the walk steps over token slicing, permutes
and LayerNorm/RMSNorm (the final norm). An output that averages several heads (DeiT's
``(head(x[:, 0]) + head_dist(x[:, 1])) / 2``) is walked along each. Where the head takes the
class token, the default is the input of the last block (see :class:`GradCAM`).

The result is cached per model and module structure (tracing once, not on every step of an
attack). A model that fx cannot trace (data-dependent control flow), or whose stage output no
module returns, silently gets the former default: the last Conv2d that the forward calls.
"""
from __future__ import annotations

import math
import operator
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_int, select_target, short
from .base import Explainer, requires_grad_input
from .nodes import ACTIVATIONS, FUNCTIONAL_ACTIVATIONS
from ..surgery import SmoothMaxPool
from ..models.normalize import Normalize


def find_layers(model: nn.Module, layer: Optional[Union[str, nn.Module]], where: str) -> List[nn.Module]:
    """The module named (or given) by ``layer``; for ``None`` every Conv2d (the fallback
    default: the last one the forward calls is taken)."""
    if layer is None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"{where}: the model has no Conv2d layer; pass layer=<module or name>")
        return convs
    if isinstance(layer, str):
        try:
            return [model.get_submodule(layer)]
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"{where}: the model has no layer {short(layer)}; "
                             f"layers: {', '.join(names[:20])}") from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"{where}: layer {type(layer).__name__} is not a submodule of the model")
        return [layer]
    raise TypeError(f"{where}: layer must be a module name or an nn.Module, got {type(layer).__name__}")


# ---------------------------------------------------------------------------------------------
# The default layer: the last convolutional stage's output, found with torch.fx.

def _classes(*names: str) -> Tuple[type, ...]:
    """The torch.nn classes of these names that this torch version has."""
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


def _functions(module: Any, *names: str) -> set:
    return {getattr(module, n) for n in names if hasattr(module, n)}


#: Element-wise activations: the propagation graph's (:mod:`manipex.explainers.nodes`), and the
#: random and in-place forms that the head walk also steps over (no LRP rule needs them).
#: Swapping one for another (β-smoothing swaps ReLU for Softplus on every call) does not change
#: the default layer.
_ACTIVATION_MODULES = tuple(ACTIVATIONS) + _classes("RReLU")
_ACTIVATION_FUNCTIONS = set(FUNCTIONAL_ACTIVATIONS) | _functions(
    F, "relu_", "leaky_relu_", "rrelu", "elu_", "hardtanh_", "threshold") | _functions(
    torch, "relu_", "sigmoid_", "tanh_", "celu")
_ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}

_LINEAR_MODULES = (nn.Linear,)
_LINEAR_FUNCTIONS = {F.linear}
_IDENTITY_MODULES = _classes("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                             "FeatureAlphaDropout", "Identity")
_IDENTITY_FUNCTIONS = _functions(F, "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                                 "feature_alpha_dropout")
_IDENTITY_METHODS = {"contiguous"}
_RESHAPE_MODULES = (nn.Flatten,)
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze"}
_POOL_MODULES = _classes(
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "LPPool1d",
    "LPPool2d", "LPPool3d", "FractionalMaxPool2d", "FractionalMaxPool3d",
)
_ADAPTIVE_MODULES = _classes("AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
                             "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d")
_POOL_FUNCTIONS = _functions(
    F, "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "lp_pool1d", "lp_pool2d", "lp_pool3d", "fractional_max_pool2d", "fractional_max_pool3d",
)
_ADAPTIVE_FUNCTIONS = _functions(F, "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                                 "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
#: Normalisations and softmax: head layers only on pooled features (ConvNeXt's LayerNorm2d).
_FLAT_MODULES = _classes("Softmax", "LogSoftmax", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                         "LayerNorm", "GroupNorm")
_FLAT_FUNCTIONS = _functions(F, "softmax", "log_softmax") | _functions(torch, "softmax", "log_softmax")
_FLAT_METHODS = {"softmax", "log_softmax"}
#: Normalisations of tokens (per token, over the features): stepped over between a token
#: sequence and its pooling (a transformer's final norm).
_TOKEN_NORM_MODULES = _classes("LayerNorm", "RMSNorm")
_TOKEN_NORM_FUNCTIONS = _functions(F, "layer_norm", "rms_norm")
#: Moving the features' axis: channels-last maps (torchvision's Swin) or tokens (N, T, D) to the
#: layout of a pooling (``permute(0, 3, 1, 2)``, ``transpose(1, 2)``).
_PERMUTE_FUNCTIONS = _functions(torch, "permute", "transpose", "movedim", "swapaxes")
_PERMUTE_METHODS = {"permute", "transpose", "movedim", "swapaxes"}
_SCALE_FUNCTIONS = {operator.truediv, operator.mul, torch.div, torch.mul}
_ADD_FUNCTIONS = {operator.add, torch.add}


def _smooth_max_pool() -> type:
    return SmoothMaxPool


class _Tracer(torch.fx.Tracer):
    """fx's tracer, keeping manipex's input :class:`~manipex.models.normalize.Normalize` and the
    attack's :class:`~manipex.surgery.SmoothMaxPool` (a max-pool) leaves, as
    :mod:`manipex.explainers.graph` does, and subclasses of the head's layer kinds (ConvNeXt's
    ``LayerNorm2d`` is an ``nn.LayerNorm``)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        kinds = (Normalize, _smooth_max_pool(), *_ACTIVATION_MODULES, *_LINEAR_MODULES, *_IDENTITY_MODULES,
                 *_RESHAPE_MODULES, *_POOL_MODULES, *_ADAPTIVE_MODULES, *_FLAT_MODULES, *_TOKEN_NORM_MODULES)
        return isinstance(m, kinds) or super().is_leaf_module(m, module_qualified_name)


class _Root(nn.Module):
    """The model as the only child of the traced root: fx stores tensor constants of the
    forward as attributes of the root (``_tensor_constant0``), here never on the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


_PREFIX = "model."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _spatial_dims(node: torch.fx.Node) -> bool:
    """A mean/sum/amax over dimensions other than batch and channel (``x.mean((2, 3))``)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if _is_int(dims):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or not dims:
        return False
    return all(_is_int(d) and (d >= 2 or d < 0) for d in dims)


def _token_dim(node: torch.fx.Node) -> bool:
    """A mean/sum/amax over dimension 1 only, the tokens of ``(N, T, D)`` (timm's
    ``x[:, prefix:].mean(dim=1)``)."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, (tuple, list)) and len(dims) == 1:
        dims = dims[0]
    return _is_int(dims) and dims == 1


def _token_index(node: torch.fx.Node) -> Optional[str]:
    """``x[:, i]`` (also ``x[:, i, :]``, ``x.select(1, i)``): ``"token"``, one token taken;
    ``x[:, a:b]`` (``x.narrow(1, ...)``): ``"slice"``, some tokens kept; None: another index."""
    if node.op == "call_method" and node.target in ("select", "narrow") or (
            node.op == "call_function" and node.target in (torch.select, torch.narrow)):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if not _is_int(dim) or dim != 1:
            return None
        return "token" if node.target in ("select", torch.select) else "slice"
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return None
    index = node.args[1]
    if not isinstance(index, tuple) or len(index) < 2 or index[0] != slice(None):
        return None
    if any(i != slice(None) and i is not Ellipsis for i in index[2:]):
        return None
    if _is_int(index[1]):
        return "token"
    if isinstance(index[1], slice) and all(v is None or _is_int(v)
                                           for v in (index[1].start, index[1].stop, index[1].step)):
        return "slice"
    return None


def _is_token_norm(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """A LayerNorm or RMSNorm (module or functional call)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _TOKEN_NORM_MODULES)
    return node.op == "call_function" and node.target in _TOKEN_NORM_FUNCTIONS


def _to_one(size: Any) -> bool:
    """An adaptive pool's output size of 1 in every dimension: global pooling."""
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return bool(sizes) and all(_is_int(v) and v == 1 for v in sizes)


def _head_kind(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    """What ``node`` is to the head: ``linear``; ``identity`` (dropout); ``reshape``
    (flattening); ``pool`` (pooling that keeps a map); ``global`` (global pooling, a mean, sum
    or max over the spatial dims); ``flat`` (an element-wise activation, a normalisation or
    softmax, head layers only on pooled features); None: not a head layer."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, _LINEAR_MODULES):
            return "linear"
        if isinstance(m, _IDENTITY_MODULES):
            return "identity"
        if isinstance(m, _RESHAPE_MODULES):
            return "reshape"
        if isinstance(m, _ADAPTIVE_MODULES):
            return "global" if _to_one(m.output_size) else "pool"
        if isinstance(m, _POOL_MODULES + (_smooth_max_pool(),)):
            return "pool"
        if isinstance(m, _ACTIVATION_MODULES + _FLAT_MODULES + _TOKEN_NORM_MODULES):
            return "flat"
        return None
    index = _token_index(node)
    if index is not None:
        return index
    if node.op == "call_function":
        target = node.target
        if target in _PERMUTE_FUNCTIONS:
            return "permute"
        if target in _LINEAR_FUNCTIONS:
            return "linear"
        if target in _IDENTITY_FUNCTIONS:
            return "identity"
        if target in _RESHAPE_FUNCTIONS:
            return "reshape"
        if target in _ADAPTIVE_FUNCTIONS:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            return "global" if _to_one(size) else "pool"
        if target in _POOL_FUNCTIONS:
            return "pool"
        if target in _REDUCE_FUNCTIONS:
            return "global" if _spatial_dims(node) else "token" if _token_dim(node) else None
        if target in _ACTIVATION_FUNCTIONS or target in _FLAT_FUNCTIONS or target in _TOKEN_NORM_FUNCTIONS:
            return "flat"
        return None
    if node.op == "call_method":
        target = node.target
        if target in _IDENTITY_METHODS:
            return "identity"
        if target in _RESHAPE_METHODS:
            return "reshape"
        if target in _PERMUTE_METHODS:
            return "permute"
        if target in _REDUCE_METHODS:
            return "global" if _spatial_dims(node) else "token" if _token_dim(node) else None
        if target in _ACTIVATION_METHODS or target in _FLAT_METHODS:
            return "flat"
    return None


def _is_activation(node: torch.fx.Node) -> bool:
    """A functional element-wise activation (``F.relu(x)``, ``x.relu()``), which no module
    returns; a module activation is its module's output."""
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in _ACTIVATION_METHODS


def _root_activation(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """An element-wise activation module called by the model's own forward (not inside one of
    its submodules): to the default layer the same as a functional activation there."""
    if node.op != "call_module" or not isinstance(modules.get(node.target), _ACTIVATION_MODULES):
        return False
    stack = node.meta.get("nn_module_stack") or {}
    return len([key for key in stack if key != _PREFIX[:-1]]) == 1


def _tensor_input(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    """The tensor a single-input op reads (its first argument)."""
    first = node.args[0] if node.args else node.kwargs.get("input")
    if isinstance(first, torch.fx.Node) and first.op in ("call_module", "call_function", "call_method"):
        return first
    return None


def _exited(node: torch.fx.Node, user: torch.fx.Node) -> List[Tuple[str, Any]]:
    """The modules that ``node`` leaves on its way to ``user``, outermost first: in its module
    stack but not in the user's (fx keys a module's later calls ``name@1``, ``name@2``...)."""
    inner = node.meta.get("nn_module_stack") or {}
    outer = user.meta.get("nn_module_stack") or {}
    return [(key, value) for key, value in inner.items() if key not in outer]


def _call_index(key: str, name: str, node: torch.fx.Node, nodes: List[torch.fx.Node]) -> int:
    """Which call of the module (0: the first) returns ``node``."""
    head, sep, tail = key.rpartition("@")
    if sep and head == name and tail.isdigit():
        return int(tail)
    if node.op == "call_module" and node.target == name:  # torch without call suffixes
        return sum(1 for n in nodes[:nodes.index(node)] if n.op == "call_module" and n.target == name)
    return 0


def _stage_output(output: torch.fx.Node, modules: Dict[str, nn.Module]
                  ) -> Optional[Tuple[torch.fx.Node, torch.fx.Node, bool, bool]]:
    """``(node, user, channels_last, single)``: the first node, walking back from ``output``
    through the head, that is not part of the head (the stage output), the head node that reads
    it, whether it is a channels-last map (a permute between it and the pooling), and whether
    the head takes a single token of it (the class token: see :func:`_block_input`).

    An output that averages several heads (DeiT: ``(head(x[:, 0]) + head_dist(x[:, 1])) / 2``)
    is walked along each; they must reach the same stage output.
    """
    found = [_chain_stage(branch, modules) for branch in _head_branches(output)]
    if not found or any(f is None for f in found) or len({f[0] for f in found}) != 1:
        return None
    return found[0]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _head_branches(node: torch.fx.Node) -> List[torch.fx.Node]:
    """The heads whose sum (scaled by numbers) is the output: ``[node]`` for one head."""
    if node.op == "call_function" and node.target in _SCALE_FUNCTIONS and len(node.args) == 2:
        a, b = node.args
        if isinstance(a, torch.fx.Node) and _number(b):
            return _head_branches(a)
        if isinstance(b, torch.fx.Node) and _number(a) and node.target in (operator.mul, torch.mul):
            return _head_branches(b)
    if (node.op == "call_function" and node.target in _ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs
            and all(isinstance(a, torch.fx.Node) for a in node.args)):
        return _head_branches(node.args[0]) + _head_branches(node.args[1])
    return [node]


def _chain_stage(output: torch.fx.Node, modules: Dict[str, nn.Module]
                 ) -> Optional[Tuple[torch.fx.Node, torch.fx.Node, bool, bool]]:
    """:func:`_stage_output` along one head.

    The chain of head-like single-input ops is read back from the output. Linear layers,
    activations, normalisations and softmax belong to the head only where they act on
    non-spatial features: after (downstream of) a spatial reduction. A pooling or a global
    reduction is one; a flatten is one unless a global pooling comes before it with only
    activations and normalisations between (ConvNeXt's ``avgpool -> LayerNorm2d -> Flatten``).

    Tokens: taking one token (``x[:, 0]``, the class token) or a mean over the tokens
    (``x.mean(dim=1)``) is a reduction too, and so is a global pooling that a permute or
    transpose feeds (torchvision's Swin: ``norm -> permute(0, 3, 1, 2) -> avgpool``; Hugging
    Face's: ``layernorm -> transpose(1, 2) -> AdaptiveAvgPool1d``). Upstream of such a token
    reduction the walk also steps over token slicing (``x[:, prefix:]``), dropout/identity,
    permutes and LayerNorm/RMSNorm: a transformer's final norm normalises each token alone and
    is not part of the last stage.
    """
    chain: List[Tuple[torch.fx.Node, Optional[str]]] = []
    node: Optional[torch.fx.Node] = output
    while node is not None:
        kind = _head_kind(node, modules)
        chain.append((node, kind))
        if kind is None:
            break
        node = _tensor_input(node)
    if chain[-1][1] is not None:  # the chain ends at the input or at a constant
        return None
    spatial = tokens = channels_last = pooled = single = False
    for i, (node, kind) in enumerate(chain):
        if tokens:  # upstream of a token reduction
            if kind in ("identity", "slice") or (kind == "flat" and _is_token_norm(node, modules)):
                continue
            if kind == "permute":
                channels_last = not channels_last
                continue
            return (node, chain[i - 1][0], channels_last, single) if i > 0 else None
        if spatial and kind == "permute" and pooled:  # a pooling of permuted tokens (Swin)
            tokens, channels_last = True, True
            continue
        if kind is None or (spatial and kind in ("linear", "flat", "token", "slice", "permute")):
            return (node, chain[i - 1][0], False, False) if spatial and i > 0 else None
        pooled = kind in ("pool", "global") or (pooled and kind == "identity")
        if kind in ("pool", "global"):
            spatial = True
        elif kind == "token":
            spatial = tokens = True
            single = _token_index(node) == "token"  # one token taken (the class token), not a mean
        elif kind == "reshape" and not spatial:
            before = [k for _, k in chain[i + 1:] if k not in ("flat", "identity", "reshape")]
            spatial = not before or before[0] != "global"
    return None


def _block_input(exited: List[Tuple[str, Any]], nodes: List[torch.fx.Node]
                 ) -> Optional[Tuple[torch.fx.Node, torch.fx.Node, List[Tuple[str, Any]]]]:
    """Where the head takes one token (the class token) of the last block's output, the other
    tokens of that output never reach the head (the final norm acts on each token alone and no
    attention follows): their gradient is exactly zero and Grad-CAM there is blank. The map is
    then taken at the input of the last block, the last tensor whose patch tokens reach the
    class token (through the block's attention): ``(node, user, exited)`` of that input, as for
    the stage output; None where it is no module's output.

    The last block is the module the stage output leaves just inside the outermost one
    (``blocks.11`` of ``blocks``; a block of a ModuleList, which is never called, is the
    outermost itself)."""
    key = (exited[1] if len(exited) > 1 else exited[0])[0]
    inside = [n for n in nodes if key in (n.meta.get("nn_module_stack") or {})]
    if not inside:
        return None
    first = inside[0]
    for arg in first.all_input_nodes:
        if (arg.op in ("call_module", "call_function", "call_method")
                and key not in (arg.meta.get("nn_module_stack") or {})):
            before = _exited(arg, first)
            if before:
                return arg, first, before
    return None


class _Found(tuple):
    """``(name, call)`` of the default layer, with ``channels_last``: its output is a
    channels-last map ``(N, H, W, C)`` (found by the structure: a permute before the pooling)."""

    channels_last: bool

    def __new__(cls, name: str, call: int, channels_last: bool = False) -> "_Found":
        found = super().__new__(cls, (name, call))
        found.channels_last = channels_last
        return found


def _locate(model: nn.Module) -> Optional[_Found]:
    """``(name, call)`` of the module whose ``call``-th output is the last convolutional stage's
    (or last transformer block's) output, with its layout (``.channels_last``), or None where fx
    cannot trace the model or finds no such module."""
    root = _Root(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _Tracer().trace(root)
    except Exception:  # fx raises many kinds of errors on dynamic code: use the fallback
        return None
    nodes = list(graph.nodes)
    outputs = [n for n in nodes if n.op == "output"]
    if len(outputs) != 1 or not outputs[0].args or not isinstance(outputs[0].args[0], torch.fx.Node):
        return None
    modules = dict(root.named_modules())
    found = _stage_output(outputs[0].args[0], modules)
    if found is None:
        return None
    node, user, channels_last, single = found
    exited = _exited(node, user)
    if single and exited:
        shifted = _block_input(exited, nodes)
        if shifted is not None:
            node, user, exited = shifted
    # Back through activations of the root forward: a tensor no module returns (torchvision's
    # DenseNet: F.relu(features)), or an activation module that the root forward calls itself
    # (manipex's DenseNet: self.relu(features)), which must not make a difference.
    while not exited or _root_activation(node, modules):
        previous = _tensor_input(node) if _is_activation(node) or exited else None
        if previous is None:
            return None
        node, user = previous, node
        exited = _exited(node, user)
    key, value = exited[0]
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        name = value[0]  # (qualified name, type)
    else:  # older torch: the key is the name
        name = key.rpartition("@")[0] or key
    if not name.startswith(_PREFIX):
        return None
    return _Found(name[len(_PREFIX):], _call_index(key, name, node, nodes), channels_last)


#: Default layers per model and module structure: ``(name, call)``, or None for the fallback.
#: Names only, so a model that is no longer used is freed with its entries.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple, Optional[_Found]]]" = weakref.WeakKeyDictionary()
_PER_MODEL = 4


def _fingerprint(model: nn.Module) -> Tuple:
    """The module structure (names, types, identities, modes). Element-wise activation modules
    count by position only: β-smoothing swaps every ReLU for a new Softplus on each call,
    which changes neither the graph nor its stage output."""
    return tuple(
        (name, "activation", None, m.training) if type(m) in _ACTIVATION_MODULES else (name, type(m), id(m), m.training)
        for name, m in model.named_modules()
    )


def _default(model: nn.Module) -> Optional[_Found]:
    """:func:`_locate`, cached per model and module structure."""
    key = _fingerprint(model)
    try:
        found = _CACHE.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced or hashed
        return _locate(model)
    if key not in found:
        if len(found) >= _PER_MODEL:
            found.pop(next(iter(found)))
        found[key] = _locate(model)
    return found[key]


def default_layer(model: nn.Module, x: Optional[Tensor] = None) -> Tuple[str, nn.Module]:
    """Grad-CAM's default layer of ``model``, as ``(name, module)``: the output of the last
    convolutional stage (see the module docstring), e.g. ``("layer4", ...)`` for a ResNet and
    ``("Mixed_7c", ...)`` for an Inception network.

    Where fx cannot trace the model (or no module returns the stage output), the fallback is
    the last Conv2d that the forward calls on ``x`` (without ``x``: the last Conv2d registered,
    the same for a sequential model). The model is left unchanged.

    Raises:
        ValueError: if the fallback is needed and the model has no Conv2d.
    """
    where = "gradcam.default_layer"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module, got {type(model).__name__}")
    found = _default(model)
    if found is not None:
        return found[0], model.get_submodule(found[0])
    convs = find_layers(model, None, where)
    if x is not None:
        called: List[nn.Module] = []
        handles = [m.register_forward_hook(lambda module, inputs, output: called.append(module)) for m in convs]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for handle in handles:
                handle.remove()
        if called:
            convs = [called[-1]]
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(convs[-1])], convs[-1]


def token_grid(tokens: int, size: Tuple[int, int], prefix: Optional[int], where: str) -> Tuple[int, int, int]:
    """``(prefix, h, w)``: how ``tokens`` tokens of an input of spatial ``size`` ``(H, W)`` lie
    on a grid: the first ``prefix`` tokens (class, distillation, register tokens) are dropped and
    the rest fill an ``h x w`` grid, row by row, with the input's aspect ratio (``h W = w H``).

    ``prefix=None``: inferred, the fewest prefix tokens that leave such a grid: for a square
    input ``tokens`` less the largest square ``<= tokens`` (197 -> 1, DeiT's 198 -> 2).
    """
    height, width = size

    def grid(patches: int) -> Optional[Tuple[int, int]]:
        if patches < 1:
            return None
        h = max(1, round(math.sqrt(patches * height / width)))
        for hh in (h - 1, h, h + 1):
            if hh >= 1 and patches % hh == 0 and hh * width == (patches // hh) * height:
                return hh, patches // hh
        side = math.isqrt(patches)
        return (side, side) if prefix is not None and side * side == patches else None

    candidates = range(tokens) if prefix is None else [prefix]
    for p in candidates:
        found = grid(tokens - p)
        if found is not None:
            return (p, *found)
    if prefix is None:
        raise ValueError(f"{where}: cannot lay {tokens} tokens on a grid with the input's aspect ratio "
                         f"{height}x{width}; pass prefix_tokens=<number of class/distillation tokens> or reshape=")
    raise ValueError(f"{where}: {tokens} tokens less prefix_tokens={prefix} leave {tokens - prefix} patch tokens, "
                     f"which do not fill a grid with the input's aspect ratio {height}x{width}; pass reshape=")


def _aspect(a: int, b: int, size: Tuple[int, int]) -> bool:
    return a * size[1] == b * size[0]


class GradCAM(Explainer):
    """Grad-CAM. Options: ``layer`` (a module or its name), ``prefix_tokens``, ``channels_last``,
    ``reshape``.

    The default layer is the output of the last convolutional stage, the tensor that reaches
    the classifier through pooling and linear layers only: Selvaraju et al. (2017) weight the
    feature maps of the last convolutional layer, and for a block with parallel branches
    those maps are the block's output. So ``layer4`` of a ResNet, ``features.29`` (the last
    ReLU) of a VGG16, ``features`` of a DenseNet, ``Mixed_7c`` of an Inception-v3, never a
    branch or shortcut convolution. It is found by tracing the model with ``torch.fx``, once
    per model structure (see :func:`default_layer` and the module docstring); a model that fx
    cannot trace falls back to the last Conv2d that the forward calls.

    Transformers (the idea of pytorch-grad-cam's ``reshape_transform``): where the layer's
    output is a token sequence ``(N, T, D)`` (ViT) or a channels-last map ``(N, H, W, C)``
    (torchvision's Swin), the activation and its gradient are laid out as ``(N, D, h, w)``
    maps first: the ``prefix_tokens`` first tokens (class, distillation) are dropped and the
    patch tokens put on their grid, row by row (:func:`token_grid`); channels-last maps are
    permuted. Then Grad-CAM as usual: channel weights the spatial mean of the gradient, ReLU
    of the weighted sum, bilinear upsampling to the input.

    For a transformer the default layer is the output of the last transformer block where
    the head reads every token (mean pooling: timm's ``blocks`` with ``global_pool="avg"``; the
    last stage, ``features``, of torchvision's Swin): the token tensor that reaches the head
    only through the final norm, a pooling of the tokens (or of permuted tokens), slicing and
    linear layers. It is preferred to pytorch-grad-cam's recommendation ``blocks[-1].norm1``
    as the analogue of the last convolutional stage: the last tensor with the patches'
    spatial layout, from which all of them reach the head. The final norm is stepped over: it
    normalises each token alone and is no spatial stage. Where the head takes the class token
    (``x[:, 0]``: timm's ``blocks``, torchvision's ``encoder.layers``, DeiT), the patch tokens
    of the last block's output never reach the head (no attention follows; their gradient is
    exactly zero and the map would be blank), so the default is the *input* of the last block,
    the output of the block before it (``blocks.10`` of 12, ``encoder.layers.encoder_layer_10``):
    the last tensor whose patch tokens reach the class token, through the last attention.
    pytorch-grad-cam's ``blocks[-1].norm1`` is that tensor after the block's LayerNorm. Both
    rules are structural (the fx walk of the module docstring and :func:`_block_input`), not
    by name.

    Options:
        layer: a module or its name; None: the default layer above.
        prefix_tokens: tokens before the patch tokens in an ``(N, T, D)`` activation; None
            (default): inferred, ``T`` less the largest square ``<= T`` for a square input (the
            fewest that leave a grid with the input's aspect ratio).
        channels_last: whether a 4-d activation is ``(N, H, W, C)``; None (default): for the
            default layer, what the structure says (a permute before the pooling); for a given
            layer, True where ``(H, W)`` has the input's aspect ratio and ``(W, C)`` has not.
        reshape: a callable mapping the layer's output (and, the same way, its gradient) to
            ``(N, C, h, w)`` maps, overriding the above (pytorch-grad-cam's
            ``reshape_transform``); it must be differentiable (torch operations only).
    """

    name = "gradcam"
    options = {"layer": None, "prefix_tokens": None, "channels_last": None, "reshape": None}

    def validate_options(self) -> None:
        where = "explain(method='gradcam')"
        check_int(self.config["prefix_tokens"], where=where, name="prefix_tokens", ge=0, allow_none=True)
        if self.config["channels_last"] not in (None, True, False):
            raise TypeError(f"{where}: channels_last must be None, True or False, "
                            f"got {short(self.config['channels_last'])}")
        if self.config["reshape"] is not None and not callable(self.config["reshape"]):
            raise TypeError(f"{where}: reshape must be None or a callable, got {short(self.config['reshape'])}")

    def attribute(self, model, x, target, create_graph):
        where = "explain(method='gradcam')"
        if x.dim() != 4:
            raise ValueError(f"{where}: x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        call: Optional[int] = None
        structural: Optional[bool] = None
        requirement = ("the layer must be called once per forward and return (N, C, H, W) maps, (N, H, W, C) "
                       "channels-last maps or (N, T, D) tokens (or pass reshape=)")
        if self.config["layer"] is None:
            found = _default(model)
            if found is not None:
                layers, call = [model.get_submodule(found[0])], found[1]
                structural = getattr(found, "channels_last", False)
                requirement = (f"the default layer {found[0]!r} (the last convolutional stage) must return "
                               "(N, C, H, W) maps, (N, H, W, C) or (N, T, D) tokens; pass layer=<module or name>")
            else:
                layers = find_layers(model, None, where)
        else:
            layers = find_layers(model, self.config["layer"], where)
        captured: List[Tuple[nn.Module, Tensor]] = []

        def keep(module, inputs, output):
            captured.append((module, output))
            # the rest of the forward gets a copy: an in-place op after the layer (ReLU(inplace=True))
            # then changes the copy, not the activation the CAM is made of
            return output.clone() if isinstance(output, Tensor) else None

        handles = [m.register_forward_hook(keep) for m in layers]
        try:
            out = model(requires_grad_input(x))
        finally:
            for handle in handles:
                handle.remove()
        if call is not None:  # the stage's call of the default layer (a module may be called often)
            outputs = [a for _, a in captured]
            chosen = outputs[call:call + 1]
        else:
            chosen = [a for m, a in captured if captured and m is captured[-1][0]]
        reshape = self.config["reshape"]
        if len(chosen) != 1 or not isinstance(chosen[0], Tensor) or (reshape is None and chosen[0].dim() not in (3, 4)):
            raise ValueError(f"{where}: {requirement}")
        activation = chosen[0]
        t = select_target(out, target, where=where)
        score = out.gather(1, t[:, None]).sum()
        (grad,) = torch.autograd.grad(score, activation, create_graph=create_graph)
        layout = self._layout(activation, x, structural, where)
        activation, grad = layout(activation), layout(grad)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
        return cam.expand(-1, x.shape[1], -1, -1).contiguous()

    def _layout(self, activation: Tensor, x: Tensor, structural: Optional[bool], where: str
                ) -> Callable[[Tensor], Tensor]:
        """The map from the layer's output (or its gradient) to ``(N, C, h, w)``."""
        reshape = self.config["reshape"]
        n = x.shape[0]
        if reshape is not None:
            def user(a: Tensor) -> Tensor:
                maps = reshape(a)
                if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.shape[0] != n:
                    got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
                    raise ValueError(f"{where}: reshape must return (N, C, h, w) maps with N = {n}, got {got}")
                return maps

            return user
        size = (int(x.shape[2]), int(x.shape[3]))
        if activation.dim() == 3:  # tokens (N, T, D)
            prefix, h, w = token_grid(activation.shape[1], size, self.config["prefix_tokens"], where)
            return lambda a: a[:, prefix:].reshape(a.shape[0], h, w, a.shape[2]).permute(0, 3, 1, 2)
        channels_last = self.config["channels_last"]
        if channels_last is None:
            if structural is not None:
                channels_last = structural
            else:
                _, a1, a2, a3 = activation.shape
                channels_last = _aspect(a1, a2, size) and not _aspect(a2, a3, size)
        if channels_last:
            return lambda a: a.permute(0, 3, 1, 2)
        return lambda a: a
