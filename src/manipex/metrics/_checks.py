"""Input checks shared by every public function of :mod:`manipex.metrics`.

Same rules as :mod:`manipex._validation`: ``TypeError`` for the wrong kind of object,
``ValueError`` for a bad value, a message that names the function and the argument, and the
arguments are never changed (a converted copy is returned where a dtype must change).

What every metric refuses, so that no metric returns a silently wrong number:

- non-tensors, and tensors of a non-floating dtype (integer or bool maps would be rounded,
  wrap around or compare equal: an integer map once gave SSIM 1.0); convert with ``.float()``;
- tensors of the wrong rank, and empty ones (no sample, or no value per sample);
- NaN or Inf values (the message counts them);
- two batches of different shapes, or on different devices: nothing is broadcast, a batch of
  2 is never compared with a batch of 1.

Low-precision maps (float16, bfloat16) are computed in float32: float16 cannot hold rank sums
beyond 65504 nor integers beyond 2048 exactly, so Spearman and centers of mass would be wrong.
Results then come back as float32.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._validation import check_dtype_match, check_model, forward

LOW_PRECISION = (torch.float16, torch.bfloat16)
"""Floating dtypes that metrics compute in float32."""


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a metric computes in: the promoted dtype of ``tensors``, at least float32."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in LOW_PRECISION else dtype


def check_batch(t: object, *, where: str, name: str, min_dim: int = 2, max_dim: Optional[int] = None) -> Tensor:
    """Refuse a non-tensor, a non-floating dtype, a rank outside ``[min_dim, max_dim]``, an empty
    tensor, and NaN or Inf values. Returns ``t`` itself (unchanged)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{where}: {name} must have a floating dtype, got {t.dtype}; convert it with .float()"
        )
    if t.dim() < min_dim or (max_dim is not None and t.dim() > max_dim):
        if max_dim is None:
            want = f"at least {min_dim} dimensions (N, ...)"
        elif max_dim == min_dim:
            want = f"exactly {min_dim} dimensions"
        else:
            want = f"{min_dim} to {max_dim} dimensions"
        raise ValueError(f"{where}: {name} must be a batch with {want}, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(
            f"{where}: {name} is empty (shape {tuple(t.shape)}); it needs at least one sample "
            "with at least one value"
        )
    check_finite(t, where=where, name=name)
    return t


def check_finite(t: Tensor, *, where: str, name: str) -> None:
    """Refuse NaN and Inf values, saying how many of each there are."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        nan = int(torch.isnan(t).sum())
        inf = int((~finite).sum()) - nan
        parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} Inf"] if inf else [])
        raise ValueError(
            f"{where}: {name} contains {' and '.join(parts)} value{'s' if nan + inf > 1 else ''} "
            f"(of {t.numel()}, shape {tuple(t.shape)})"
        )


def check_pair(
    a: object,
    b: object,
    *,
    where: str,
    names: Tuple[str, str] = ("a", "b"),
    min_dim: int = 2,
    max_dim: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Check two batches with :func:`check_batch`, require the same shape and device, and
    return them in :func:`compute_dtype` (the arguments themselves are not changed)."""
    a = check_batch(a, where=where, name=names[0], min_dim=min_dim, max_dim=max_dim)
    b = check_batch(b, where=where, name=names[1], min_dim=min_dim, max_dim=max_dim)
    _check_alike(a, b, where=where, names=names)
    dtype = compute_dtype(a, b)
    return a.to(dtype), b.to(dtype)


def _check_alike(a: Tensor, b: Tensor, *, where: str, names: Tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{where}: {names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)} (batches are compared sample by sample, never broadcast)"
        )
    if a.device != b.device:
        raise ValueError(f"{where}: {names[0]} is on {a.device} but {names[1]} on {b.device}")


def as_compute(t: Tensor) -> Tensor:
    """``t`` in :func:`compute_dtype` (float32 for float16/bfloat16, else itself)."""
    return t.to(compute_dtype(t))


def check_real(value: object, *, where: str, name: str, positive: bool = False, allow_zero: bool = True) -> float:
    """A finite real number (not a bool); ``positive`` also refuses negatives, and zero unless
    ``allow_zero``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be finite, got {value}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{where}: {name} must be {bound}, got {value}")
    return value


def check_int(value: object, *, where: str, name: str, low: int, high: Optional[int] = None) -> int:
    """An ``int`` (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{where}: {name} must be an int in {span}, got {value}")
    return value


def model_outputs(model: object, x: object, x_adv: object, *, where: str) -> Tuple[Tensor, Tensor]:
    """Logits of ``model`` at ``x`` and ``x_adv``, without a graph, after checking all three.

    The model must be an ``nn.Module`` in eval mode (:func:`manipex._validation.check_model`;
    it is not changed), ``x`` and ``x_adv`` batches of the same shape, dtype and device as the
    model's parameters, and each output logits ``(N, K)`` without NaN or Inf."""
    model = check_model(model, where=where)
    x = check_batch(x, where=where, name="x")
    x_adv = check_batch(x_adv, where=where, name="x_adv")
    _check_alike(x, x_adv, where=where, names=("x", "x_adv"))
    for name, t in (("x", x), ("x_adv", x_adv)):
        check_dtype_match(model, t, where=where, name=name)
    with torch.no_grad():
        out, out_adv = forward(model, x, where=where), forward(model, x_adv, where=where)
    check_finite(out, where=where, name="the model's output at x")
    check_finite(out_adv, where=where, name="the model's output at x_adv")
    return out, out_adv
