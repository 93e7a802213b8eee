"""Gradient-family methods, computed with plain autograd on any differentiable model.

* ``gradient``: ``h(x) = dg_k/dx`` (Simonyan et al. 2013; Dombrowski et al. 2019, Sec. 2.1).
* ``grad_x_input``: ``h(x) = x * dg_k/dx`` (Shrikumar et al. 2017).
* ``integrated_gradients``: ``h(x) = (x - x0) * int_0^1 dg_k/dx(x0 + t (x - x0)) dt``
  (Sundararajan et al. 2017, Eq. 1), by a quadrature rule.

With ``create_graph=True`` the maps are built with ``torch.autograd.grad(create_graph=True)``
and are therefore exactly differentiable w.r.t. ``x`` and the parameters. Chunked integrated
gradients sums per-chunk maps *without* detaching them (Captum detaches chunks).
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_real, predicted_target, select_target, short
from .base import Explainer, report_output, requires_grad_input
from .recompute import recomputed


def target_gradient(
    model: nn.Module, x: Tensor, target: Optional[Tensor], create_graph: bool, *, where: str
) -> Tuple[Tensor, Tensor]:
    """``(d g_target / d x, target)`` for a batch; ``target`` None means the predicted class."""
    xg = requires_grad_input(x)
    out = model(xg)
    report_output(xg, out)
    t = select_target(out, target, where=where)
    score = out.gather(1, t[:, None]).sum()
    (grad,) = torch.autograd.grad(score, xg, create_graph=create_graph)
    return grad, t


class Gradient(Explainer):
    """Gradient (saliency) map ``dg_k/dx``; Captum's ``Saliency(abs=False)``."""

    name = "gradient"

    def attribute(self, model, x, target, create_graph):
        return target_gradient(model, x, target, create_graph, where="explain(method='gradient')")[0]


class GradXInput(Explainer):
    """Gradient x Input ``x * dg_k/dx``; Captum's ``InputXGradient``."""

    name = "grad_x_input"

    def attribute(self, model, x, target, create_graph):
        grad = target_gradient(model, x, target, create_graph, where="explain(method='grad_x_input')")[0]
        return x * grad


RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(rule: str, steps: int, dtype: torch.dtype = torch.float64) -> Tuple[Tensor, Tensor]:
    """Nodes ``t`` in [0, 1] and weights of a quadrature rule with ``steps`` nodes.

    The Riemann rules match Captum's ``approximation_method`` of the same name; Gauss-Legendre
    nodes come from the Golub-Welsch eigenvalue problem (no numpy in the map's path), computed
    once per rule and size.
    """
    t, w = _quadrature64(rule, steps)
    return t.to(dtype=dtype, copy=True), w.to(dtype=dtype, copy=True)  # the cache stays intact


@functools.lru_cache(maxsize=64)
def _quadrature64(rule: str, steps: int) -> Tuple[Tensor, Tensor]:
    n = steps
    if rule == "gausslegendre":
        k = torch.arange(1, n, dtype=torch.float64)
        off = k / torch.sqrt(4 * k * k - 1)
        jacobi = torch.diag(off, 1) + torch.diag(off, -1)
        nodes, vecs = torch.linalg.eigh(jacobi)
        t, w = (nodes + 1) / 2, vecs[0] ** 2
    elif rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("explain(method='integrated_gradients'): riemann_trapezoid needs steps >= 2")
        t = torch.linspace(0, 1, n, dtype=torch.float64)
        w = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 1 / (2 * (n - 1))
    else:
        start = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
        t = (torch.arange(n, dtype=torch.float64) + start) / n
        w = torch.full((n,), 1 / n, dtype=torch.float64)
    return t, w


class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al. 2017), Captum-compatible rules.

    Options:
        steps: number of quadrature nodes (Dombrowski's reference code uses 30).
        baseline: float or tensor broadcastable to ``x`` (default 0, the black image).
        rule: one of ``riemann_left``, ``riemann_right`` (Sundararajan Eq. 3),
            ``riemann_middle``, ``riemann_trapezoid``, ``gausslegendre`` (Captum's default).
        batch_size: rows per forward pass (as Captum's ``internal_batch_size``); ``None``
            evaluates all ``N * steps`` rows at once; ``"auto"`` (default): chunks of
            :data:`AUTO_ROWS` rows for a map on a CPU without ``create_graph``, all at once
            otherwise. Chunks are summed without detaching, so
            the map and its derivatives are identical to the unchunked ones; with
            ``create_graph`` each chunk's graph is rebuilt in the backward pass instead of kept
            (:func:`~manipex.explainers.recompute.recomputed`), so the peak memory of an attack
            step is that of one chunk. The baseline is a constant.
    """

    name = "integrated_gradients"
    options = {"steps": 50, "baseline": 0.0, "rule": "riemann_right", "batch_size": "auto"}

    def validate_options(self):
        c, where = self.config, "explain(method='integrated_gradients')"
        check_int(c["steps"], where=where, name="steps", ge=1)
        check_choice(c["rule"], RULES, where=where, name="rule")
        check_batch_size(c["batch_size"], self.name)
        check_baseline(c["baseline"], where)

    def attribute(self, model, x, target, create_graph):
        where = "explain(method='integrated_gradients')"
        baseline = broadcast_baseline(self.config["baseline"], x, where)
        if target is None:  # the class of x itself; a given target is range-checked per chunk
            target = predicted_target(model, x, target, where=where)
        alphas, weights = quadrature(self.config["rule"], self.config["steps"], x.dtype)
        n, rest = x.shape[0], x.shape[1:]
        delta = x - baseline
        per_chunk = chunk_length(self.config["batch_size"], n, len(alphas), x, create_graph)
        total = torch.zeros_like(x)
        for i in range(0, len(alphas), per_chunk):
            a = alphas[i : i + per_chunk].to(x.device)
            w = weights[i : i + per_chunk].to(x.device)
            shape = (len(a), 1) + (1,) * len(rest)

            def chunk(inputs: Tensor, a: Tensor = a, w: Tensor = w, shape=shape) -> Tensor:
                path = (baseline + a.view(shape) * (inputs - baseline).unsqueeze(0)).reshape(-1, *rest)
                grads, _ = target_gradient(model, path, target.repeat(len(a)), create_graph, where=where)
                return (w.view(shape) * grads.reshape(len(a), n, *rest)).sum(0)

            # chunks of a create_graph map are rebuilt in the backward pass, one at a time
            total = total + (recomputed(chunk, x, model) if create_graph and per_chunk < len(alphas) else chunk(x))
        return delta * total


#: Rows per forward pass of ``batch_size="auto"`` on a CPU without ``create_graph``: IG over all
#: ``N * steps`` rows at once gets slower per image as the batch grows, in chunks of 256 rows it
#: stays near the batch-1 cost (measured: README, Measured figures behind the defaults).
AUTO_ROWS = 256


def check_batch_size(batch_size: Union[int, str, None], method: str) -> None:
    where = f"explain(method={method!r})"
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(f"{where}: batch_size must be None, 'auto' or a positive int, got {short(batch_size)}")
        return
    check_int(batch_size, where=where, name="batch_size", ge=1, allow_none=True)


def chunk_length(batch_size: Union[int, str, None], n: int, copies: int, x: Optional[Tensor] = None,
                 create_graph: bool = False) -> int:
    """How many copies of an ``n``-image batch fit in ``batch_size`` rows (at least one);
    ``"auto"``: :data:`AUTO_ROWS` rows for a map of ``x`` on a CPU without ``create_graph``,
    else all at once (a GPU wants large batches; chunks of a create_graph map are rebuilt in the
    backward pass, which costs time)."""
    if batch_size == "auto":
        on_cpu = x is not None and x.device.type == "cpu"
        batch_size = AUTO_ROWS if on_cpu and not create_graph else None
    if batch_size is None:
        return copies
    return max(1, min(copies, batch_size // n))


def check_baseline(baseline: object, where: str) -> None:
    """A baseline option is a finite float or a finite floating tensor (its shape is checked
    against ``x`` by :func:`broadcast_baseline`)."""
    if isinstance(baseline, Tensor):
        if not baseline.is_floating_point():
            raise TypeError(f"{where}: baseline must be a float or a floating tensor, got dtype {baseline.dtype}")
        if not bool(torch.isfinite(baseline).all()):
            raise ValueError(f"{where}: baseline contains NaN or Inf values")
        return
    check_real(baseline, where=where, name="baseline")


def broadcast_baseline(baseline: object, x: Tensor, where: str) -> Tensor:
    """A float or tensor baseline as a tensor broadcast to ``x``'s shape, checked."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise ValueError(f"{where}: baseline must be finite, got {baseline!r}")
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, Tensor):
        try:
            b = torch.broadcast_to(baseline.to(x.dtype).to(x.device), x.shape)
        except RuntimeError:
            raise ValueError(
                f"{where}: baseline of shape {tuple(baseline.shape)} does not broadcast to x's shape {tuple(x.shape)}"
            ) from None
        if not torch.isfinite(b).all():
            raise ValueError(f"{where}: baseline contains NaN or Inf values")
        return b
    raise TypeError(f"{where}: baseline must be a float or a tensor, got {type(baseline).__name__}")
