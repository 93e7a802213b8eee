"""The budget and the steps of an input attack: where ``eps`` goes from the flag to the projection.

- :class:`Budget`: the ball ``||x_adv - x|| <= eps`` (L∞ or L2) and the valid input range,
  resolved once from what the user passed (``eps`` a number, ``math.inf`` or ``"auto"``: 10 % of
  the data range in L∞, :data:`AUTO_EPS_FRACTION`) and checked against the data; its
  :meth:`Budget.project` is the only projection the attacks use.
- :class:`Adam` and :class:`SignStep`: the element-wise steps (Kingma & Ba 2015; the L∞ sign
  step of Ghorbani et al. 2019 and ATEX), chosen by name with :func:`make_step`.
- :class:`BetaSchedule`: the softplus β of the attack's surrogate, fixed or growing
  exponentially (Dombrowski et al. 2019, Sec. 3: 10 -> 100).

Checks name the function they serve (``where``) and the argument.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._validation import check_real, short

Bound = Union[float, Sequence[float], Tensor]

#: The default budget, ``eps="auto"``: this fraction of the data range (the largest channel's
#: ``high - low`` of ``clamp``) in L∞.
AUTO_EPS_FRACTION = 0.1

NORMS = ("linf", "l2")


def _bounds(value: Optional[Tuple[Bound, Bound]], x: Tensor, where: str) -> Optional[Tuple[Tensor, Tensor]]:
    """The valid range as tensors broadcast to one input (per channel when given per channel)."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{where}: clamp must be None or a pair (low, high)")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, list, tuple, Tensor)):
            raise TypeError(f"{where}: clamp bounds must be numbers, sequences or tensors, got {short(v)}")
        try:
            t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where}: clamp bound {short(v)} is not a number or a sequence of numbers") from None
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: clamp bounds must be finite, got {short(v)}")
        if t.dim() == 1 and x.dim() > 2 and t.shape[0] == x.shape[1]:  # per channel
            t = t.reshape(-1, *([1] * (x.dim() - 2)))
        try:
            out.append(torch.broadcast_to(t, x.shape[1:]))
        except RuntimeError:
            raise ValueError(f"{where}: clamp bound of shape {tuple(t.shape)} does not fit inputs "
                             f"{tuple(x.shape[1:])}") from None
    low, high = out
    if (low > high).any():
        raise ValueError(f"{where}: clamp low must not exceed high")
    if (x < low - 1e-6).any() or (x > high + 1e-6).any():
        raise ValueError(f"{where}: x lies outside the clamp range; pass clamp=(low, high) of your data or "
                         "clamp=None")
    return low, high


@dataclass(frozen=True)
class Budget:
    """The attack's budget: ``||x_adv - x||_norm <= eps`` (``eps`` in the units of ``x``;
    ``math.inf``: none) and the valid range ``bounds`` (``(low, high)`` tensors of one input's
    shape, or None). Build it with :meth:`resolve`."""

    eps: float
    norm: str = "linf"
    bounds: Optional[Tuple[Tensor, Tensor]] = None

    @classmethod
    def resolve(cls, eps: Union[float, str], norm: str, clamp: Optional[Tuple[Bound, Bound]], x: Tensor, *,
                where: str = "manipulate_input") -> "Budget":
        """The budget of ``eps`` (a positive number, ``math.inf`` or ``"auto"``) in ``norm``
        (``"linf"``, ``"l2"``) with the valid range ``clamp`` (floats or per-channel sequences;
        None: none), checked against the data ``x`` (which must lie in the range)."""
        if norm not in NORMS:
            raise ValueError(f"{where}: norm must be one of {', '.join(NORMS)}, got {short(norm)}")
        bounds = _bounds(clamp, x, where)
        if eps is None:
            raise ValueError(f"{where}: eps=None is ambiguous; pass a budget, eps='auto' (10 % of the data "
                             "range) or eps=math.inf for an unbounded attack")
        if isinstance(eps, str):
            if eps != "auto":
                raise ValueError(f"{where}: eps must be a positive number, math.inf or 'auto', got {short(eps)}")
            if norm != "linf" or bounds is None:
                raise ValueError(f"{where}: eps='auto' is 10 % of the data range in L-infinity and needs "
                                 "norm='linf' and clamp=(low, high); pass eps explicitly")
            return cls(AUTO_EPS_FRACTION * float((bounds[1] - bounds[0]).max()), norm, bounds)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"{where}: eps must be a positive number, math.inf or 'auto', got {short(eps)}")
        return cls(float(eps), norm, bounds)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """``x_adv`` projected onto the ball around ``x`` (per image), then clipped to the valid
        range; no graph is recorded by callers (they call it under ``no_grad``)."""
        delta = x_adv - x
        if math.isfinite(self.eps):
            if self.norm == "linf":
                delta = delta.clamp(-self.eps, self.eps)
            else:
                n = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
                delta = delta * (self.eps / n).clamp(max=1.0).reshape(-1, *([1] * (x.dim() - 1)))
        out = x + delta
        if self.bounds is not None:
            out = torch.maximum(torch.minimum(out, self.bounds[1]), self.bounds[0])
        return out


class Adam:
    """Adam (Kingma & Ba 2015) on one tensor, step for step what ``torch.optim.Adam`` computes
    with its defaults (betas 0.9, 0.999, eps 1e-8, no weight decay). Written out because
    ``torch.optim``'s first optimiser of a process imports ``torch._dynamo``, which takes longer
    than a short attack itself (measured: README, Measured figures behind the defaults)."""

    def __init__(self, param: Tensor, lr: float, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m, self.v, self.t = torch.zeros_like(param), torch.zeros_like(param), 0

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad.conj(), value=1 - b2)
        correction1, correction2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        denom = (self.v.sqrt() / math.sqrt(correction2)).add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-self.lr / correction1)


class SignStep:
    """The L∞ steepest-descent step ``param -= lr * sign(grad)`` (Ghorbani et al. 2019; ATEX)."""

    def __init__(self, param: Tensor, lr: float):
        self.param, self.lr = param, lr

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        self.param -= self.lr * grad.sign()


#: the steps by name, as ``optimizer=`` takes them
STEPS = {"adam": Adam, "sign": SignStep}


def make_step(optimizer: str, param: Tensor, lr: float):
    """The step ``optimizer`` (``"adam"``, ``"sign"``) on ``param`` with step size ``lr``."""
    return STEPS[optimizer](param, lr)


@dataclass(frozen=True)
class BetaSchedule:
    """The softplus β of the attack's surrogate over ``steps`` steps: None (no surrogate: the
    model as it is), fixed (``start == end``), or growing exponentially from ``start`` to
    ``end`` (Dombrowski et al. 2019, Sec. 3: 10 -> 100)."""

    start: Optional[float] = None
    end: Optional[float] = None

    @classmethod
    def of(cls, beta: Union[None, float, Tuple[float, float], "BetaSchedule"], *,
           where: str = "manipulate_input") -> "BetaSchedule":
        """From what ``beta=`` takes: None, a positive number, or a pair ``(start, end)``."""
        if isinstance(beta, BetaSchedule):
            return beta
        if beta is None:
            return cls()
        pair = isinstance(beta, (tuple, list)) and len(beta) == 2
        if not pair and (not isinstance(beta, (int, float)) or isinstance(beta, bool)):
            raise ValueError(f"{where}: beta must be None, a positive number or a pair (start, end), "
                             f"got {short(beta)}")
        values = [check_real(b, where=where, name="beta", gt=0) for b in (beta if pair else [beta])]
        return cls(float(values[0]), float(values[-1]))

    @property
    def smooth(self) -> bool:
        """Whether the attack runs on a softplus surrogate at all."""
        return self.start is not None

    @property
    def growing(self) -> bool:
        """Whether β changes over the run (then the run goes to its end: no early stop)."""
        return self.smooth and self.start != self.end

    def at(self, step: int, steps: int) -> Optional[float]:
        """β at ``step`` of ``steps`` (0-based): ``start * (end / start) ** (step / (steps - 1))``."""
        if not self.smooth:
            return None
        if not self.growing:
            return self.start
        return self.start * (self.end / self.start) ** (step / max(1, steps - 1))
