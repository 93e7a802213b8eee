"""Every differentiable method: float64 finite differences of a random linear functional of the
map agree with autograd under create_graph=True, w.r.t. the input and the parameters."""
from __future__ import annotations

import pytest
import torch

import manipex

from conftest import CNN_METHODS, MODELS, make, method_options

DIFFERENTIABLE = list(CNN_METHODS)
EPS = 1e-6


def functional(model, method, opts, v, target):
    """A random linear functional of the map, for a fixed class (the predicted class may flip
    within the finite-difference step where two logits are nearly tied)."""
    return lambda x: (manipex.explain(model, x, method, target, create_graph=True, **opts) * v).sum()


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_second_order_matches_finite_differences(name, method, patterns_for):
    model, x = make(name)
    opts = method_options(method, name, model, patterns_for)
    check_second_order(model, x, method, opts)


COMPOSITES = ["zb_zplus", "epsilon", "alpha_beta", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box"]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("composite", COMPOSITES)
def test_every_lrp_composite_is_exactly_differentiable(name, composite):
    model, x = make(name)
    opts = {"composite": composite, "epsilon": 1e-3}
    if composite == "alpha_beta":
        opts.update(alpha=2.0, beta=1.0)
    check_second_order(model, x, "lrp", opts)


def check_second_order(model, x, method, opts, step: float = EPS):
    """d/dx and d/dθ of a random linear functional of the map (itself a first derivative, so
    these are second-order derivatives) against central differences along random directions
    (of ``step``)."""
    torch.manual_seed(4)
    h = manipex.explain(model, x, method, **opts)
    assert h.shape == x.shape and h.abs().sum() > 0, "map must be non-trivial for the check to mean anything"
    f = functional(model, method, opts, torch.randn_like(h), model(x).argmax(1))

    # w.r.t. the input (occlusion too: its map is a sum of forward passes)
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(f(xg), xg)
    d = torch.randn_like(x)
    assert relative_error((gx * d).sum().item(), central_difference(lambda t: f(x + t * d).item(), step)) < 1e-5

    # w.r.t. every parameter at once, along a random direction
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(f(x), params, allow_unused=True)
    dirs = [torch.randn_like(p) for p in params]
    analytic = sum((g * dp).sum().item() for g, dp in zip(grads, dirs) if g is not None)
    original = [p.detach().clone() for p in params]

    def at(t: float) -> float:
        with torch.no_grad():
            for p, p0, dp in zip(params, original, dirs):
                p.copy_(p0 + t * dp)
        return f(x).item()

    try:
        numeric = central_difference(at, step)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, original):
                p.copy_(p0)
    assert abs(analytic) > 0
    assert relative_error(analytic, numeric) < 1e-5


def central_difference(g, h: float = EPS) -> float:
    """The five-point stencil ``(8 (g(h) - g(-h)) - (g(2h) - g(-2h))) / 12h``, error O(h^4)."""
    return (8 * (g(h) - g(-h)) - (g(2 * h) - g(-2 * h))) / (12 * h)


@pytest.mark.parametrize("method", ["gradient", "lrp", "guided_backprop"])
def test_map_is_differentiable_wrt_a_graph_input(method):
    """A map of x = x0 + delta is differentiable w.r.t. delta (as input attacks need)."""
    model, x0 = make("small_cnn")
    delta = torch.zeros_like(x0, requires_grad=True)
    h = manipex.explain(model, x0 + delta, method, create_graph=True)
    (g,) = torch.autograd.grad((h ** 2).sum(), delta)
    assert g.abs().sum() > 0


def test_without_create_graph_the_map_carries_no_graph():
    model, x = make("small_cnn")
    for method in ("gradient", "lrp", "integrated_gradients"):
        assert not manipex.explain(model, x.requires_grad_(True), method).requires_grad
