"""Every differentiable method: float64 finite differences of a random linear functional of the
map agree with autograd under create_graph=True, w.r.t. the input and the parameters."""
from __future__ import annotations

import pytest
import torch

import manipex

from conftest import make, method_options

DIFFERENTIABLE = [m for m in manipex.methods()]
EPS = 1e-6


def functional(model, method, opts, v, target):
    """A random linear functional of the map, for a fixed class (the predicted class may flip
    within the finite-difference step where two logits are nearly tied)."""
    return lambda x: (manipex.explain(model, x, method, target, create_graph=True, **opts) * v).sum()


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("name", ["small_cnn", "vgg_style"])
@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_second_order_matches_finite_differences(name, method, patterns_for):
    model, x = make(name)
    opts = method_options(method, name, model, patterns_for)
    torch.manual_seed(4)
    h = manipex.explain(model, x, method, **opts)
    assert h.shape == x.shape and h.abs().sum() > 0, "map must be non-trivial for the check to mean anything"
    f = functional(model, method, opts, torch.randn_like(h), model(x).argmax(1))

    # w.r.t. the input (occlusion too: its map is a sum of forward passes)
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(f(xg), xg)
    d = torch.randn_like(x)
    fd = (f(x + EPS * d) - f(x - EPS * d)).item() / (2 * EPS)
    assert relative_error((gx * d).sum().item(), fd) < 1e-5

    # w.r.t. every parameter at once, along a random direction
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(f(x), params, allow_unused=True)
    dirs = [torch.randn_like(p) for p in params]
    analytic = sum((g * dp).sum().item() for g, dp in zip(grads, dirs) if g is not None)
    with torch.no_grad():
        for p, dp in zip(params, dirs):
            p.add_(EPS * dp)
        plus = f(x).item()
        for p, dp in zip(params, dirs):
            p.sub_(2 * EPS * dp)
        minus = f(x).item()
        for p, dp in zip(params, dirs):
            p.add_(EPS * dp)
    assert abs(analytic) > 0
    assert relative_error(analytic, (plus - minus) / (2 * EPS)) < 1e-5


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
