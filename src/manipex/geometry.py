"""Geometry of explanations (Dombrowski et al. 2019, Sec. 3 and 4).

The gradient map is the normal ``n = grad g / ||grad g||`` of the hypersurface
``S = {x : g(x) = c}`` of constant output; how fast it turns as ``x`` moves on ``S`` is given by
the principal curvatures, the eigenvalues of the shape operator

    ``L = P H P / ||grad g||``,  ``P = I - n n^T``,  ``H`` the Hessian of ``g`` at ``x``

(Theorem 1 bounds the change of the map by ``|lambda_max|`` times the geodesic distance, and
``|lambda_max| <= beta C`` for a Softplus(β) network). :func:`principal_curvature` estimates
``|lambda_max|`` with Lanczos iterations on Hessian-vector products (double backprop), never
forming ``H``. :func:`theorem2` checks Theorem 2 (β-smoothing is SmoothGrad with logistic
noise) numerically for a one-layer network.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._second_order import second_order
from ._validation import (TargetLike, check_call, check_choice, check_int, check_real, check_target, predicted_target,
                          short)
from .surgery import softplus


def _shape_operator(model: nn.Module, x: Tensor, k: Tensor):
    """The map ``v -> P H P v / ||grad g||`` at every sample of ``x`` (batched over samples)."""
    xg = x.detach().requires_grad_(True)
    with second_order(model, "principal_curvature"):
        g = model(xg).gather(1, k[:, None]).sum()
        (grad,) = torch.autograd.grad(g, xg, create_graph=True)
    flat = grad.flatten(1)
    norm = flat.norm(dim=1, keepdim=True)
    n = (flat / norm).detach()

    def project(v: Tensor) -> Tensor:
        return v - (v * n).sum(1, keepdim=True) * n

    def apply(v: Tensor) -> Tensor:
        pv = project(v)
        (hv,) = torch.autograd.grad(grad, xg, pv.reshape(x.shape), retain_graph=True)
        return project(hv.flatten(1)) / norm.detach()

    return apply, project


def principal_curvature(
    model: nn.Module,
    x: Tensor,
    target: TargetLike = None,
    *,
    iters: int = 50,
    seed: int = 0,
) -> Tensor:
    """Largest absolute principal curvature of ``{g_k = g_k(x)}`` at each sample, ``(N,)``.

    Lanczos with full reorthogonalisation on ``L`` (one Hessian-vector product per iteration
    and sample batch); exact when ``iters`` reaches the input dimension. Use a Softplus model
    (e.g. ``manipex.surgery.softplus_copy(model, beta)``): for ReLU networks ``H = 0`` almost
    everywhere and the curvature sits in the kinks.
    """
    where = "principal_curvature"
    check_call(model, x, where=where)
    check_int(iters, where=where, name="iters", ge=1)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    k = predicted_target(model, x, check_target(target, x.shape[0], where=where), where=where)
    n, d = x.shape[0], x[0].numel()
    m = min(iters, d)
    apply, project = _shape_operator(model, x, k)
    g = torch.Generator().manual_seed(seed)
    q = project(torch.randn(n, d, generator=g, dtype=x.dtype))
    q = q / q.norm(dim=1, keepdim=True)
    basis = [q]
    alphas, betas = [], []
    for j in range(m):
        w = apply(basis[-1])
        a = (w * basis[-1]).sum(1)
        alphas.append(a)
        stack = torch.stack(basis, 1)  # (N, j+1, d): full reorthogonalisation
        w = w - (stack * (stack * w[:, None]).sum(2, keepdim=True)).sum(1)
        w = project(w)
        b = w.norm(dim=1)
        if j == m - 1 or bool((b < 1e-10).all()):
            break
        betas.append(b)
        basis.append(w / b.clamp(min=1e-30)[:, None])
    t = torch.diag_embed(torch.stack(alphas, 1))
    if betas:
        off = torch.stack(betas, 1)
        t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    return torch.linalg.eigvalsh(t.detach()).abs().amax(1)


def dense_principal_curvatures(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """All principal curvatures of one input ``x`` (no batch axis) from the dense Hessian.

    For tests and small inputs only: ``O(d^2)`` memory.
    """
    def g(v: Tensor) -> Tensor:
        return model(v.reshape(1, *x.shape))[0, k]

    flat = x.flatten()
    grad = torch.autograd.functional.jacobian(g, flat)
    hess = torch.autograd.functional.hessian(g, flat)
    n = grad / grad.norm()
    p = torch.eye(flat.numel(), dtype=x.dtype) - torch.outer(n, n)
    return torch.linalg.eigvalsh(p @ hess @ p / grad.norm())


def theorem2(w: Tensor, x: Tensor, beta: float, *, points: int = 200001) -> Tuple[Tensor, Tensor]:
    """Both sides of Dombrowski Theorem 2 for ``g(x) = relu(w^T x)``:

    ``E_{eps ~ p_beta}[grad g(x - eps)]`` with ``eps = t w/||w||``, ``p_beta(t) = beta /
    (e^{beta t/2} + e^{-beta t/2})^2`` (logistic noise), by quadrature over ``t``; and
    ``grad g_{beta/||w||}(x)`` of ``softplus_{beta/||w||}(w^T x)`` by autograd.
    """
    w, x = w.double(), x.double()
    wn = w.norm()
    # relu'(w^T (x - t w/||w||)) = 1[t < c]: integrate the density up to the jump at c
    c = ((w @ x) / wn).item()
    t = torch.linspace(min(-60.0 / beta, c - 1.0), c, points, dtype=torch.float64)
    density = beta / (torch.exp(beta * t / 2) + torch.exp(-beta * t / 2)) ** 2
    lhs = w * torch.trapezoid(density, t)
    xg = x.clone().requires_grad_(True)
    (rhs,) = torch.autograd.grad(F.softplus(w @ xg, beta=(beta / wn).item()), xg)
    return lhs, rhs


def curvature_vs_beta(model: nn.Module, x: Tensor, betas: Sequence[float] = (1.0, 3.0, 10.0, 30.0, 100.0),
                      *, iters: int = 30, target: TargetLike = None):
    """Median largest principal curvature of the Softplus(β) copies of a ReLU ``model``."""
    import pandas as pd

    where = "curvature_vs_beta"
    check_call(model, x, where=where)
    if isinstance(betas, (int, float)) or not isinstance(betas, (list, tuple)) or not betas:
        raise TypeError(f"{where}: betas must be a non-empty sequence of softplus betas, got {short(betas)}")
    for beta in betas:
        check_real(beta, where=where, name="each of betas", gt=0)
    check_int(iters, where=where, name="iters", ge=1)
    k = predicted_target(model, x, check_target(target, x.shape[0], where=where), where=where)
    rows = {}
    for beta in betas:
        with softplus(model, beta):
            c = principal_curvature(model, x, k, iters=iters)
        rows[beta] = {"median": c.median().item(), "max": c.max().item()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "beta"
    return table


def _logit_grad(model: nn.Module, x: Tensor, k: Tensor) -> Tensor:
    """``grad_x g_k(x)`` per sample, with ``create_graph=True`` (differentiable in ``x`` and the weights)."""
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    with second_order(model, "hessian_norm"):
        (grad,) = torch.autograd.grad(model(x).gather(1, k[:, None]).sum(), x, create_graph=True)
    return grad


def hessian_frobenius_sq(model: nn.Module, x: Tensor, k: Tensor, *, estimator: str = "finite_difference",
                         h: float = 1e-2, samples: int = 1, generator: Optional[torch.Generator] = None) -> Tensor:
    """``||H(x)||_F^2`` per sample, ``H`` the input Hessian of the logit ``g_k``, estimated as
    ``E_v ||H v||^2`` over ``v ~ N(0, I)`` (Hutchinson) from ``samples`` directions drawn from
    ``generator``; differentiable in the weights (``x`` is a leaf: the input the Hessian is
    taken at), no checks (see :func:`hessian_norm`).

    ``"finite_difference"``: ``H v ~ (grad g(x + h v) - grad g(x)) / h`` (Dombrowski et al.
    2022, appendix): it also sees a ReLU network's kinks. ``"hutchinson"``: ``H v`` exactly, by
    a Hessian-vector product (zero almost everywhere on a ReLU network)."""
    xr = x.detach().requires_grad_(True)  # the point the Hessian is taken at; the weights stay in the graph
    grad = _logit_grad(model, xr, k)
    total = x.new_zeros(x.shape[0])
    for _ in range(samples):
        v = torch.randn(x.shape, generator=generator).to(x)
        if estimator == "finite_difference":
            hv = (_logit_grad(model, xr + h * v, k) - grad) / h
        else:
            (hv,) = torch.autograd.grad((grad * v).sum(), xr, create_graph=True)
        total = total + hv.flatten(1).pow(2).sum(1)
    return total / samples


def hessian_norm(model: nn.Module, x: Tensor, target: TargetLike = None, *, estimator: str = "finite_difference",
                 h: float = 1e-2, samples: int = 8, seed: int = 0) -> Tensor:
    """``||H(x)||_F`` per sample ``(N,)``: the Frobenius norm of the input Hessian of the
    explained logit, the quantity whose size bounds how far a gradient map can be manipulated
    (Dombrowski et al. 2022, Sec. 5.3) and what ``train_robust(..., "hessian_norm")`` lowers.

    Estimated from ``samples`` random directions (:func:`hessian_frobenius_sq`); on a ReLU
    network use the default finite differences (step ``h`` in the units of ``x``): its exact
    Hessian is zero almost everywhere. Higher = more curved, less robust.
    """
    where = "hessian_norm"
    check_call(model, x, where=where)
    check_choice(estimator, ("finite_difference", "hutchinson"), where=where, name="estimator")
    check_real(h, where=where, name="h", gt=0)
    check_int(samples, where=where, name="samples", ge=1)
    check_int(seed, where=where, name="seed", ge=0, le=2**63 - 1)
    k = predicted_target(model, x, check_target(target, x.shape[0], where=where), where=where)
    with torch.enable_grad():
        sq = hessian_frobenius_sq(model, x, k, estimator=estimator, h=h, samples=samples,
                                  generator=torch.Generator().manual_seed(seed))
    return sq.detach().sqrt()  # a measurement: the graph built for it is not kept


__all__ = ["principal_curvature", "dense_principal_curvatures", "theorem2", "curvature_vs_beta", "hessian_norm",
           "hessian_frobenius_sq"]
