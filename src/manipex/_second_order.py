"""Exact second derivatives on every model: kernels with a double backward.

Attacks, model manipulation and robust training differentiate a map, which is itself a
gradient: every operation of the model's forward needs a backward that is differentiable again.
Two in torch 2.13 have none, and fail with a raw "derivative for ... is not implemented":

* ``aten::hardsigmoid_backward`` (MobileNetV3's squeeze-excitation gate, ``nn.Hardsigmoid``);
* the fused attention kernels behind ``F.scaled_dot_product_attention`` (flash / efficient /
  ``_scaled_dot_product_flash_attention_for_cpu``), used by every attention layer.

Within :func:`second_order`, the model's forward computes these through exact equivalents that
have one: hardsigmoid as ``where(-3 < x < 3, x / 6 + 1/2, x >= 3)`` (the same values and, away
from the two kinks, the same derivatives as torch's kernel; at the kinks both take the one-sided
value 0), and attention through the math SDPA kernel (the same function, computed without fusion).
The model itself is not changed: a ``TorchFunctionMode`` substitutes the calls while the block
runs, and its output is the same to float tolerance. A derivative that is still missing becomes an
:class:`MissingDerivativeError` naming the model's layer that uses the operation.
"""
from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


class MissingDerivativeError(RuntimeError):
    """An operation of the model has no second derivative in torch."""


def _hardsigmoid(x: Tensor, inplace: bool = False) -> Tensor:
    """``relu6(x + 3) / 6`` with a double backward (torch's ``hardsigmoid_backward`` has none)."""
    inside = (x > -3) & (x < 3)
    return torch.where(inside, x / 6 + 0.5, (x >= 3).to(x.dtype))


_HARDSIGMOID = {F.hardsigmoid, torch._C._nn.hardsigmoid}
_INPLACE_HARDSIGMOID = {torch._C._nn.hardsigmoid_}


class _ExactKernels(TorchFunctionMode):
    """Replaces calls whose backward has no derivative by exact equivalents that have one."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HARDSIGMOID or func in _INPLACE_HARDSIGMOID:
            return _hardsigmoid(args[0])  # in place or not: computed out of place, returned
        return func(*args, **kwargs)


_ACTIVE: "contextvars.ContextVar[bool]" = contextvars.ContextVar("manipex_second_order", default=False)


@contextlib.contextmanager
def second_order(model: Optional[nn.Module] = None, where: str = "manipex") -> Iterator[None]:
    """Within the block, every forward uses kernels with a double backward (see the module
    docstring); re-entrant. ``model`` and ``where`` name the layer in a
    :class:`MissingDerivativeError` raised inside the block."""
    if _ACTIVE.get():
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    token = _ACTIVE.set(True)
    try:
        with sdpa_kernel([SDPBackend.MATH]), _ExactKernels():
            yield
    except RuntimeError as err:
        clear = missing_derivative(err, model, where)
        if clear is None:
            raise
        raise clear from err
    finally:
        _ACTIVE.reset(token)


_MISSING = re.compile(r"derivative for (?:aten::)?'?_*(\w+?)(?:_backward)?'? is not implemented")


def missing_derivative(err: BaseException, model: Optional[nn.Module], where: str) -> Optional[MissingDerivativeError]:
    """A :class:`MissingDerivativeError` naming the layers that use the operation of a torch
    "derivative for ... is not implemented" error, or None for other errors."""
    found = _MISSING.search(str(err))
    if found is None or isinstance(err, MissingDerivativeError):
        return None
    op = found.group(1).lstrip("_")
    layers = _layers_using(model, op) if model is not None else []
    at = f" in {', '.join(layers[:3])}" if layers else ""
    return MissingDerivativeError(
        f"{where}: the model uses the operation {op!r}{at}, whose backward torch cannot differentiate "
        f"again (the second derivative that attacks and robust training need). Replace that layer by an "
        f"equivalent made of differentiable operations, or use a method that needs no second order "
        f"(create_graph=False). torch's error: {found.group(0)}"
    )


def _layers_using(model: nn.Module, op: str) -> List[str]:
    """The layers that call the operation: the modules around the fx nodes that call it
    (``torch.cdist`` in a prototype layer), else modules whose type is named after it
    (``hardsigmoid`` -> ``nn.Hardsigmoid``)."""
    key = op.replace("_", "").lower()
    hits: List[str] = []
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception:  # untraceable: fall back to the module types
        graph = None
    if graph is not None:
        for node in graph.nodes:
            name = getattr(node.target, "__name__", node.target if isinstance(node.target, str) else "")
            if node.op == "call_module":
                name = type(model.get_submodule(node.target)).__name__
            if not isinstance(name, str) or name.replace("_", "").lower() != key:
                continue
            stack = list(node.meta.get("nn_module_stack", {}).values())
            where = node.target if node.op == "call_module" else (stack[-1][0] if stack else "")
            if where:
                hit = f"layer {where!r} ({type(model.get_submodule(where)).__name__})"
            else:
                hit = f"the model's forward (fx node {node.name!r})"
            if hit not in hits:
                hits.append(hit)
    if not hits:
        for name, m in model.named_modules():
            kind = type(m).__name__.lower()
            if name and (kind in key or key.startswith(kind)):
                hits.append(f"layer {name!r} ({type(m).__name__})")
    return hits


__all__ = ["second_order", "MissingDerivativeError", "missing_derivative"]
