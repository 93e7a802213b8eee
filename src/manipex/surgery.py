"""Model surgery: ReLU -> Softplus(β) with a settable β, and exact restoration.

Dombrowski et al. (2019, Sec. 3) attack the softplus surrogate of a ReLU network, with β
growing during the attack, and defend by evaluating maps on a small-β copy (β-smoothing,
Sec. 4). This module provides both forms:

* :func:`softplus` – a context manager that swaps every ``nn.ReLU`` of the model in place for
  ``nn.Softplus(beta)`` and puts the very same ReLU objects back on exit, also after an error.
  The yielded :class:`SoftplusHandle` changes β of all swapped units (``handle.beta = 50``).
* :func:`softplus_copy` – a deep copy with the swap, the original untouched.

:func:`smooth_copy` can also swap max-pooling modules for :class:`SmoothMaxPool`, the same
surrogate one level up: softplus is the smooth maximum of ``(0, z)``, the smooth max-pool the
smooth maximum of a window. The attack uses it (manipex's extension of Dombrowski's surrogate):
with hard max-pooling the surrogate's map has no derivative through the choice of the window's
winner, so the attack cannot learn to switch winners.

ReLUs called functionally in ``forward`` (``F.relu``, ``torch.relu``, ``x.relu()``, their
in-place forms; torchvision's DenseNet and Inception call ``F.relu(x, inplace=True)``) become
Softplus too. They cannot be swapped in place; instead, while the surrogate is in effect, the
model's own forward runs under a :class:`torch.overrides.TorchFunctionMode` that computes
every such call as ``F.softplus(x, beta, threshold)`` of one ``nn.Softplus`` unit, which
stands for all the call sites: it is in the handle's ``units`` (a β schedule moves it with the
swapped modules) and :func:`functional_surrogate` returns it (the propagation graph, which
evaluates the nodes itself rather than through ``forward``, evaluates functional ReLU nodes as
that unit). A forward pre-hook on the root model enters the mode and a forward hook with
``always_call=True`` exits it, also when the forward raises, so the mode is active only inside
the model's forward, never in manipex's own code around it (guided backprop's rules and
Grad-CAM's ReLU call ``F.relu`` too). :func:`softplus` removes the hooks on exit;
:func:`smooth_copy`'s copy keeps them (deep copies of it carry their own). The hooks are put
in only where ``forward`` calls ReLU functionally (fx-traced once per model structure and
cached), and always for a model fx cannot trace. An in-place call (``F.relu(x, inplace=True)``,
``x.relu_()``) is computed out of place and its result returned: a forward that uses the
returned tensor (as torchvision's do) gets the softplus, one that relies on the side effect
alone keeps the pre-activation. A call the hooks do not see (``model.forward(x)`` rather than
``model(x)``, calls at the level of ``torch.ops.aten``) stays ReLU. :func:`canonicalize`
returns a traced copy in which those calls are ``nn.ReLU`` modules.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

FUNCTIONAL_RELUS = (F.relu, torch.relu, torch.relu_, F.relu_)
#: what the surrogate's function mode computes as Softplus: the functional and method forms
_RELU_CALLS = frozenset(FUNCTIONAL_RELUS + (Tensor.relu, Tensor.relu_))


def functional_relus(model: nn.Module) -> List[str]:
    """Names of fx nodes where ``model.forward`` calls ReLU functionally ([] if untraceable)."""
    return _trace_functional_relus(model) or []


def _trace_functional_relus(model: nn.Module) -> Optional[List[str]]:
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception:
        return None
    return [
        n.name for n in graph.nodes
        if (n.op == "call_function" and n.target in FUNCTIONAL_RELUS)
        or (n.op == "call_method" and n.target in ("relu", "relu_"))
    ]


#: per model, per structure fingerprint: whether its forward calls ReLU functionally
_FUNCTIONAL: "weakref.WeakKeyDictionary[nn.Module, Dict[Tuple[Any, ...], Optional[bool]]]" = (
    weakref.WeakKeyDictionary())
_FINGERPRINTS_KEPT = 8  # per model (the in-place swap changes the structure for its block)


def _fingerprint(model: nn.Module) -> Tuple[Any, ...]:
    return (type(model).forward, id(model.__dict__.get("forward")),
            tuple((name, type(m), id(m)) for name, m in model.named_modules()))


def has_functional_relu(model: nn.Module, *, trace: bool = True) -> Optional[bool]:
    """Whether ``model.forward`` calls ReLU functionally (``F.relu``, ``torch.relu``,
    ``x.relu()``, in-place forms), found by an fx trace; None if fx cannot trace the model.

    The answer is cached per model and structure (the names, types and identities of its
    modules, and its ``forward``), so asking again costs no trace. ``trace=False``: only the
    cached answer, None if there is none.
    """
    key = _fingerprint(model)
    known = _FUNCTIONAL.get(model)
    if known is not None and key in known:
        return known[key]
    if not trace:
        return None
    found = _trace_functional_relus(model)
    answer = None if found is None else bool(found)
    known = _FUNCTIONAL.setdefault(model, {})
    while len(known) >= _FINGERPRINTS_KEPT:
        known.pop(next(iter(known)))
    known[key] = answer
    return answer


def _check_beta(beta: float, where: str) -> float:
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta > 0 or beta == float("inf"):
        raise ValueError(f"{where}: beta must be a positive finite number, got {beta!r}")
    return float(beta)


class SmoothMaxPool(nn.Module):
    """Smooth max-pooling: ``(1/β) log Σ_window exp(β z)``, the log-sum-exp maximum of each window.

    The same surrogate as softplus, which is ``(1/β) log(exp(0) + exp(β z))``, the smooth
    maximum of ``(0, z)``: its gradient is the softmax ``exp(β z_i) / Σ exp(β z_j)`` over the
    window (weights >= 0 that sum to 1; winner-takes-all as β -> inf), and it exceeds the hard
    maximum by at most ``log(window size) / β``. Built from an ``nn.MaxPool1d/2d/3d``
    (:meth:`from_maxpool`), with its kernel, stride, padding, dilation and ceil mode.
    """

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], ceil_mode: bool = False, beta: float = 10.0) -> None:
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.ceil_mode = ceil_mode
        self.beta = _check_beta(beta, "SmoothMaxPool")

    @classmethod
    def from_maxpool(cls, pool: nn.Module, beta: float) -> "SmoothMaxPool":
        dims = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(pool)]

        def per_dim(value: Union[int, Sequence[int]]) -> Tuple[int, ...]:
            return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims

        stride = pool.stride if pool.stride is not None else pool.kernel_size
        return cls(per_dim(pool.kernel_size), per_dim(stride), per_dim(pool.padding), per_dim(pool.dilation),
                   pool.ceil_mode, beta).train(pool.training)

    def _out_size(self, size: int, d: int) -> int:
        span = self.dilation[d] * (self.kernel_size[d] - 1) + 1
        room = size + 2 * self.padding[d] - span
        out = (math.ceil if self.ceil_mode else math.floor)(room / self.stride[d]) + 1
        if self.ceil_mode and (out - 1) * self.stride[d] >= size + self.padding[d]:
            out -= 1  # PyTorch: the last window must start inside the input or its left padding
        return out

    def forward(self, x: Tensor) -> Tensor:
        dims = len(self.kernel_size)
        spatial = x.shape[x.dim() - dims:]
        if self._tiles(spatial):
            return self._forward_tiles(x, spatial)
        pads: List[int] = []
        for d in reversed(range(dims)):  # F.pad takes the last dimension first
            span = self.dilation[d] * (self.kernel_size[d] - 1) + 1
            need = (self._out_size(spatial[d], d) - 1) * self.stride[d] + span
            pads += [self.padding[d], max(0, need - spatial[d] - self.padding[d])]
        z = F.pad(x * self.beta, pads, value=-math.inf) if any(pads) else x * self.beta
        for d in range(dims):
            axis = x.dim() - dims + d
            span = self.dilation[d] * (self.kernel_size[d] - 1) + 1
            z = z.unfold(axis, span, self.stride[d])
            if self.dilation[d] > 1:
                z = z[..., ::self.dilation[d]]
        z = z.reshape(*z.shape[: x.dim()], -1)  # the window's entries on one axis
        return torch.logsumexp(z, dim=-1) / self.beta

    def _tiles(self, spatial: Sequence[int]) -> bool:
        """Whether the windows tile the input (the usual ``MaxPool2d(k)``): stride = kernel, no
        padding or dilation, and, in ceil mode, sizes that the kernel divides."""
        return (self.stride == self.kernel_size and not any(self.padding) and all(d == 1 for d in self.dilation)
                and (not self.ceil_mode or all(n % k == 0 for n, k in zip(spatial, self.kernel_size))))

    def _forward_tiles(self, x: Tensor, spatial: Sequence[int]) -> Tensor:
        """The tiling case with pooling kernels instead of unfolded windows:
        ``m + log(K * mean_window exp(z - m))`` with ``m`` the window's hard maximum, detached
        (a log-sum-exp does not depend on the shift, so this is exact to every order, as
        ``torch.logsumexp``'s own shift is); rows and columns past the last whole window are
        left out, as floor mode does."""
        dims = len(spatial)
        k = self.kernel_size
        out = [n // w for n, w in zip(spatial, k)]
        z = x[(...,) + tuple(slice(0, o * w) for o, w in zip(out, k))] * self.beta
        max_pool, avg_pool = _POOLS[dims]
        m = max_pool(z.detach(), k)
        spread = m
        for d in range(dims):
            spread = spread.repeat_interleave(k[d], dim=z.dim() - dims + d)
        window = math.prod(k)
        return (m + torch.log(avg_pool(torch.exp(z - spread), k) * window)) / self.beta

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, beta={self.beta:g}"


SMOOTHABLE_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_POOLS = {1: (F.max_pool1d, F.avg_pool1d), 2: (F.max_pool2d, F.avg_pool2d), 3: (F.max_pool3d, F.avg_pool3d)}


class SoftplusHandle:
    """The smooth units put in by surgery (Softplus, and :class:`SmoothMaxPool` where pools
    were swapped); setting :attr:`beta` changes all of them."""

    def __init__(self, units: List[nn.Module], beta: float) -> None:
        self.units = units
        self._beta = beta

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _check_beta(value, "SoftplusHandle.beta")
        for unit in self.units:
            unit.beta = self._beta

    def __len__(self) -> int:
        return len(self.units)


class _ReluAsSoftplus(TorchFunctionMode):
    """Computes every functional ReLU call as ``F.softplus`` with ``unit``'s β and threshold
    (in-place forms out of place, the result returned); every other call as it is."""

    def __init__(self, unit: nn.Softplus) -> None:
        super().__init__()
        self.unit = unit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            relu = func in _RELU_CALLS
        except TypeError:  # an unhashable callable: not a ReLU
            relu = False
        if relu:
            x = args[0] if args else kwargs["input"]
            return F.softplus(x, beta=self.unit.beta, threshold=self.unit.threshold)
        return func(*args, **kwargs)


class _FunctionalSurrogate:
    """The hooks on a root model under which its forward runs in :class:`_ReluAsSoftplus`:
    the pre-hook enters a mode, the forward hook (``always_call``: also when the forward
    raises) exits the one its call entered; nested and re-entrant calls enter their own."""

    def __init__(self, unit: nn.Softplus) -> None:
        self.unit = unit
        self._modes: List[_ReluAsSoftplus] = []

    def enter(self, module: nn.Module, args: Any) -> None:
        mode = _ReluAsSoftplus(self.unit)
        mode.__enter__()
        self._modes.append(mode)

    def exit(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._modes:  # none when an earlier (global) pre-hook raised before ours ran
            self._modes.pop().__exit__(None, None, None)

    def attach(self, model: nn.Module) -> List[Any]:
        """Register the hooks on ``model``: first among its pre-hooks and forward hooks, so that
        the mode spans the forward itself; returns their handles."""
        return [model.register_forward_pre_hook(self.enter, prepend=True),
                model.register_forward_hook(self.exit, prepend=True, always_call=True)]

    def __getstate__(self) -> Dict[str, Any]:  # copies and pickles: no modes in flight
        return {"unit": self.unit, "_modes": []}


#: the unit that stands for a model's functional ReLUs while the surrogate is in effect
_SURROGATES: "weakref.WeakKeyDictionary[nn.Module, nn.Softplus]" = weakref.WeakKeyDictionary()


def _attached_surrogate(model: nn.Module) -> Optional[_FunctionalSurrogate]:
    for hook in model._forward_pre_hooks.values():
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, _FunctionalSurrogate):
            return owner
    return None


def functional_surrogate(model: nn.Module) -> Optional[nn.Softplus]:
    """The ``nn.Softplus`` unit that stands for all of ``model``'s functional ReLU calls while
    the surrogate is in effect (inside :func:`softplus`, and on a :func:`smooth_copy` or a deep
    copy of one), None otherwise (also for a model that calls no ReLU functionally). Its
    ``beta`` and ``threshold`` are read at every call, so a handle's β schedule moves it.

    For code that evaluates the model's operations itself rather than through ``model(x)``
    (manipex's propagation graph): evaluate each functional ReLU as this unit.
    """
    unit = _SURROGATES.get(model)
    if unit is None:
        surrogate = _attached_surrogate(model)
        if surrogate is not None:  # a deep copy or unpickled copy of a smoothed model
            unit = surrogate.unit
            _SURROGATES[model] = unit
    return unit


def _relu_slots(model: nn.Module) -> List[Tuple[nn.Module, str, nn.ReLU]]:
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.ReLU
    ]


def has_relu(model: nn.Module) -> bool:
    """Whether surgery would swap something in ``model``: an ``nn.ReLU`` module, or a functional
    ReLU call that fx finds in its forward (and that is not already a surrogate's)."""
    if _relu_slots(model):
        return True
    return _attached_surrogate(model) is None and has_functional_relu(model) is True


class NothingToSmoothWarning(UserWarning):
    """β-smoothing was asked of a model without ReLUs: the map is the model's own."""


_WARNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def warn_nothing_to_smooth(model: nn.Module, where: str) -> None:
    """Warn, once per model, that β-smoothing (Dombrowski et al. 2019, Sec. 4: every ReLU
    replaced by Softplus(β), which bounds the map's curvature by β) finds no ReLU in ``model``.
    On a GELU or SiLU network (vision transformers, BERT, EfficientNet, ConvNeXt) the
    activations are smooth already and their curvature is the model's own: there is nothing
    to replace, and the map computed is the unsmoothed one. SmoothGrad and AGG-Mean are the
    defenses that apply there."""
    if model in _WARNED:
        return
    _WARNED.add(model)
    warnings.warn(
        f"{where}: the model has no ReLU for beta-smoothing to replace with Softplus (its activations are "
        "smooth already, e.g. GELU), so the map is the model's own, unsmoothed; use SmoothGrad or AGG-Mean "
        "as a defense on such models", NothingToSmoothWarning, stacklevel=4)


class PartlySmoothedWarning(UserWarning):
    """β-smoothing left some piecewise-linear activations of the model as they are."""


#: Activation modules with kinks that β-smoothing does not replace (it swaps ``nn.ReLU`` only).
KINKED = (nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Threshold,
          nn.Hardshrink, nn.Softshrink)

_WARNED_PARTLY: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def warn_unsmoothed(model: nn.Module, where: str) -> None:
    """Warn, once per model, naming the piecewise-linear activation modules (LeakyReLU, ReLU6,
    Hardswish, ...) that β-smoothing leaves as they are: it replaces ``nn.ReLU`` modules and
    functional ReLU calls only, so the map of such a model keeps their kinks."""
    counts: Dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, KINKED) and type(m) is not nn.ReLU:
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    if not counts or model in _WARNED_PARTLY:
        return
    _WARNED_PARTLY.add(model)
    kept = ", ".join(f"{name} ({n} module{'s' if n != 1 else ''})" for name, n in counts.items())
    warnings.warn(f"{where}: beta-smoothing replaces nn.ReLU (and functional ReLU calls) with Softplus; these "
                  f"piecewise-linear activations are left as they are: {kept}", PartlySmoothedWarning, stacklevel=4)


def _functional_unit(model: nn.Module, beta: float, check: bool) -> Optional[_FunctionalSurrogate]:
    """A surrogate for ``model``'s functional ReLUs if it calls ReLU functionally or may (fx
    cannot trace it; ``check=False`` and no cached answer); None if it does not, or if its
    functional ReLUs are a surrogate's already (they keep their β, as Softplus modules do)."""
    if _attached_surrogate(model) is not None:
        return None
    if has_functional_relu(model, trace=check) is False:
        return None
    return _FunctionalSurrogate(nn.Softplus(beta=beta).train(model.training))


@contextlib.contextmanager
def softplus(model: nn.Module, beta: float = 10.0, *, check: bool = True) -> Iterator[SoftplusHandle]:
    """Swap every ``nn.ReLU`` of ``model`` for ``nn.Softplus(beta)`` while in the block, and
    compute its functional ReLU calls as Softplus(β) (see the module's docstring).

    >>> with manipex.surgery.softplus(model, beta=10) as sp:
    ...     for step in range(steps):
    ...         sp.beta = 10 * 10 ** (step / steps)   # Dombrowski's exponential schedule
    ...         ...

    On exit, also after an error, the model is as it was: the same ReLU objects, no hooks of
    ours. ``check=False`` traces nothing: whether the forward calls ReLU functionally is taken
    from the cache of :func:`has_functional_relu` (a caller that swaps once per batch asks it
    once), and where it has no answer the functional surrogate is put in anyway (harmless
    where the forward calls no ReLU).
    """
    beta = _check_beta(beta, "surgery.softplus")
    surrogate = _functional_unit(model, beta, check)
    slots = _relu_slots(model)
    units: List[nn.Module] = [nn.Softplus(beta=beta).train(relu.training) for _, _, relu in slots]
    handles: List[Any] = []
    try:
        for (parent, name, _), unit in zip(slots, units):
            setattr(parent, name, unit)
        if surrogate is not None:
            units.append(surrogate.unit)
            _SURROGATES[model] = surrogate.unit
            handles = surrogate.attach(model)
        yield SoftplusHandle(units, beta)
    finally:
        for handle in reversed(handles):
            handle.remove()
        if surrogate is not None:
            _SURROGATES.pop(model, None)
        for parent, name, relu in slots:
            setattr(parent, name, relu)


def softplus_copy(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)`` (and
    its functional ReLUs computed as Softplus(β), by hooks on the copy)."""
    return smooth_copy(model, beta)[0]


def smooth_copy(model: nn.Module, beta: float = 10.0, *, pools: bool = False) -> Tuple[nn.Module, SoftplusHandle]:
    """Like :func:`softplus_copy`, with the handle that sets β of exactly the swapped units
    (Softplus layers the model had before keep their own β) and of the unit of its functional
    ReLUs (:func:`functional_surrogate` of the copy), if it calls any. The copy has its own
    parameters, equal to the model's, and keeps the hooks that make its functional ReLUs
    Softplus.

    ``pools``: also swap every ``nn.MaxPool1d/2d/3d`` module (without ``return_indices``) for
    a :class:`SmoothMaxPool` of the same β. Functional max-pooling and adaptive max-pooling
    stay hard.
    """
    beta = _check_beta(beta, "surgery.softplus_copy")
    surrogate = _functional_unit(model, beta, check=True)  # traced (once, cached) on the original
    clone = copy.deepcopy(model)
    units: List[nn.Module] = []
    for parent, name, relu in _relu_slots(clone):
        unit = nn.Softplus(beta=beta).train(relu.training)
        setattr(parent, name, unit)
        units.append(unit)
    if surrogate is not None:
        surrogate.attach(clone)
        _SURROGATES[clone] = surrogate.unit
        units.append(surrogate.unit)
    if pools:
        for parent, name, pool in _pool_slots(clone):
            unit = SmoothMaxPool.from_maxpool(pool, beta)
            setattr(parent, name, unit)
            units.append(unit)
    return clone, SoftplusHandle(units, beta)


def _pool_slots(model: nn.Module) -> List[Tuple[nn.Module, str, nn.Module]]:
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in SMOOTHABLE_POOLS and not child.return_indices
    ]


def set_beta(model: nn.Module, beta: float) -> int:
    """Set β of every ``nn.Softplus`` in ``model`` and of the unit of its functional ReLUs
    (:func:`functional_surrogate`), if it has one; returns how many were set."""
    beta = _check_beta(beta, "surgery.set_beta")
    units = [m for m in model.modules() if isinstance(m, nn.Softplus)]
    functional = functional_surrogate(model)
    if functional is not None and not any(functional is m for m in units):
        units.append(functional)
    for unit in units:
        unit.beta = beta
    return len(units)


def canonicalize(model: nn.Module) -> nn.Module:
    """A traced copy (``torch.fx.GraphModule``) whose functional ReLUs are ``nn.ReLU`` modules."""
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as err:
        raise ValueError(f"surgery.canonicalize: torch.fx could not trace {type(model).__name__}: {err}") from err
    for i, node in enumerate(list(traced.graph.nodes)):
        is_relu = (node.op == "call_function" and node.target in FUNCTIONAL_RELUS) or (
            node.op == "call_method" and node.target in ("relu", "relu_")
        )
        if is_relu:
            name = f"canonical_relu_{i}"
            traced.add_submodule(name, nn.ReLU())
            with traced.graph.inserting_after(node):
                new = traced.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            traced.graph.erase_node(node)
    traced.graph.lint()
    traced.recompile()
    return traced.train(model.training)
