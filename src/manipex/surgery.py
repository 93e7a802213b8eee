"""Model surgery: ReLU -> Softplus(β) with a settable β, and exact restoration.

Dombrowski et al. (2019, Sec. 3) attack the softplus surrogate of a ReLU network, with β
growing during the attack, and defend by evaluating maps on a small-β copy (β-smoothing,
Sec. 4). This module provides both forms:

* :func:`softplus` – a context manager that swaps every ``nn.ReLU`` of the model in place for
  ``nn.Softplus(beta)`` and puts the very same ReLU objects back on exit, also after an error.
  The yielded :class:`SoftplusHandle` changes β of all swapped units (``handle.beta = 50``).
* :func:`softplus_copy` – a deep copy with the swap, the original untouched.

ReLUs called functionally (``F.relu`` in ``forward``) cannot be swapped in place: both refuse
such models with an error naming the call; :func:`canonicalize` returns a traced copy in which
those calls are ``nn.ReLU`` modules.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, List, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

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


class SoftplusHandle:
    """The Softplus units put in by surgery; setting :attr:`beta` changes all of them."""

    def __init__(self, units: List[nn.Softplus], beta: float) -> None:
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


@contextlib.contextmanager
def softplus(model: nn.Module, beta: float = 10.0) -> Iterator[SoftplusHandle]:
    """Swap every ``nn.ReLU`` of ``model`` for ``nn.Softplus(beta)`` while in the block.

    >>> with manipex.surgery.softplus(model, beta=10) as sp:
    ...     for step in range(steps):
    ...         sp.beta = 10 * 10 ** (step / steps)   # Dombrowski's exponential schedule
    ...         ...
    """
    beta = _check_beta(beta, "surgery.softplus")
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


def smooth_copy(model: nn.Module, beta: float = 10.0) -> Tuple[nn.Module, SoftplusHandle]:
    """Like :func:`softplus_copy`, with the handle that sets β of exactly the swapped units
    (Softplus layers the model had before keep their own β). The copy has its own parameters,
    equal to the model's."""
    beta = _check_beta(beta, "surgery.softplus_copy")
    _check_no_functional_relu(model, "surgery.softplus_copy")
    clone = copy.deepcopy(model)
    units = []
    for parent, name, relu in _relu_slots(clone):
        unit = nn.Softplus(beta=beta).train(relu.training)
        setattr(parent, name, unit)
        units.append(unit)
    return clone, SoftplusHandle(units, beta)


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
