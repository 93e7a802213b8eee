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

ReLUs called functionally (``F.relu`` in ``forward``) cannot be swapped in place: both refuse
such models with an error naming the call; :func:`canonicalize` returns a traced copy in which
those calls are ``nn.ReLU`` modules.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Iterator, List, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

FUNCTIONAL_RELUS = (F.relu, torch.relu, torch.relu_, F.relu_)


def functional_relus(model: nn.Module) -> List[str]:
    """Names of fx nodes where ``model.forward`` calls ReLU functionally ([] if untraceable)."""
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception:
        return []
    return [
        n.name for n in graph.nodes
        if (n.op == "call_function" and n.target in FUNCTIONAL_RELUS) or (n.op == "call_method" and n.target in ("relu", "relu_"))
    ]


def _check_no_functional_relu(model: nn.Module, where: str) -> None:
    found = functional_relus(model)
    if found:
        raise ValueError(
            f"{where}: the model's forward calls ReLU functionally (fx node {found[0]!r}), which "
            "cannot be swapped for Softplus; use nn.ReLU modules or manipex.surgery.canonicalize(model)"
        )


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


def _relu_slots(model: nn.Module) -> List[Tuple[nn.Module, str, nn.ReLU]]:
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.ReLU
    ]


def has_relu(model: nn.Module) -> bool:
    """Whether ``model`` has an ``nn.ReLU`` module that surgery would swap."""
    return bool(_relu_slots(model))


@contextlib.contextmanager
def softplus(model: nn.Module, beta: float = 10.0, *, check: bool = True) -> Iterator[SoftplusHandle]:
    """Swap every ``nn.ReLU`` of ``model`` for ``nn.Softplus(beta)`` while in the block.

    >>> with manipex.surgery.softplus(model, beta=10) as sp:
    ...     for step in range(steps):
    ...         sp.beta = 10 * 10 ** (step / steps)   # Dombrowski's exponential schedule
    ...         ...
    """
    beta = _check_beta(beta, "surgery.softplus")
    if check:  # check=False: a caller that swaps once per batch has checked once (tracing costs)
        _check_no_functional_relu(model, "surgery.softplus")
    slots = _relu_slots(model)
    units = [nn.Softplus(beta=beta).train(relu.training) for _, _, relu in slots]
    try:
        for (parent, name, _), unit in zip(slots, units):
            setattr(parent, name, unit)
        yield SoftplusHandle(units, beta)
    finally:
        for parent, name, relu in slots:
            setattr(parent, name, relu)


def softplus_copy(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)``."""
    return smooth_copy(model, beta)[0]


def smooth_copy(model: nn.Module, beta: float = 10.0, *, pools: bool = False) -> Tuple[nn.Module, SoftplusHandle]:
    """Like :func:`softplus_copy`, with the handle that sets β of exactly the swapped units
    (Softplus layers the model had before keep their own β). The copy has its own parameters,
    equal to the model's.

    ``pools``: also swap every ``nn.MaxPool1d/2d/3d`` module (without ``return_indices``) for
    a :class:`SmoothMaxPool` of the same β. Functional max-pooling and adaptive max-pooling
    stay hard.
    """
    beta = _check_beta(beta, "surgery.softplus_copy")
    _check_no_functional_relu(model, "surgery.softplus_copy")
    clone = copy.deepcopy(model)
    units: List[nn.Module] = []
    for parent, name, relu in _relu_slots(clone):
        unit = nn.Softplus(beta=beta).train(relu.training)
        setattr(parent, name, unit)
        units.append(unit)
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
    """Set β of every ``nn.Softplus`` in ``model``; returns how many were set."""
    beta = _check_beta(beta, "surgery.set_beta")
    units = [m for m in model.modules() if isinstance(m, nn.Softplus)]
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
