"""Closed forms, chunking, and the guarantees of explain(): model unchanged, clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex.explainers import UnsupportedModelError

from conftest import CNN_METHODS, assert_same_state, make, method_options, state_of


# ----------------------------------------------------------------------------- closed forms

def test_linear_model_gradient_is_its_weight_row():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 1])
    h = manipex.explain(model, x, "gradient", target)
    assert torch.allclose(h, model.weight[target])
    assert torch.allclose(manipex.explain(model, x, "grad_x_input", target), x * model.weight[target])


def test_integrated_gradients_completeness_error_shrinks_with_steps():
    model, x = make("small_cnn")
    t = model(x).argmax(1)
    gap = model(x).gather(1, t[:, None]) - model(torch.zeros_like(x)).gather(1, t[:, None])
    errors = []
    for steps in (2, 8, 32, 128):
        h = manipex.explain(model, x, "integrated_gradients", t, steps=steps, rule="riemann_right")
        errors.append((h.flatten(1).sum(1, keepdim=True) - gap).abs().max().item())
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 0.05 * errors[0]


def test_gauss_legendre_integrates_polynomials_exactly():
    from manipex.explainers.gradient import quadrature

    t, w = quadrature("gausslegendre", 5)
    for k in range(10):  # exact up to degree 2n - 1 = 9
        assert abs((w * t**k).sum().item() - 1 / (k + 1)) < 1e-12


def _bias_free(model):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias = None
    return model


@pytest.mark.parametrize("composite", ["zb_zplus", "alpha_beta"])
def test_lrp_conserves_relevance_on_bias_free_relu_net(composite):
    model, x = make("small_cnn", softplus=False)
    model = _bias_free(model)
    h = manipex.explain(model, x, "lrp", composite=composite)
    assert torch.allclose(h.flatten(1).sum(1), torch.ones(x.shape[0], dtype=x.dtype), atol=1e-6)


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-1.0, 2.0)])
def test_lrp_zplus_layer_rule_matches_dombrowski_eq2(low, high):
    """z+ (Eq. 2) then zB (Eq. 3) by hand on a two-layer net."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.add_(0.3)  # keep the hidden units active
        model[2].weight.abs_()
    x = torch.rand(1, 4, dtype=torch.float64)
    h = manipex.explain(model, x, "lrp", 0, low=low, high=high)
    a = F.relu(x @ model[0].weight.T)
    w2p = model[2].weight.clamp(min=0)
    r1 = a * w2p[0] / (a * w2p[0]).sum()  # z+ at the last layer, R^L = delta_{i,0}
    w, wp, wn = model[0].weight, model[0].weight.clamp(min=0), model[0].weight.clamp(max=0)
    l, hi = torch.full_like(x, low), torch.full_like(x, high)
    z = (x * w - l * wp - hi * wn)  # (3, 4): z_ji for neuron j, input i
    r0 = (z / z.sum(1, keepdim=True) * r1.T).sum(0, keepdim=True)
    assert torch.allclose(h, r0)


def test_guided_backprop_on_softplus_uses_reference_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Softplus(beta=5.0), nn.Linear(4, 2)).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    h = manipex.explain(model, x, "guided_backprop", 1)
    z = x @ model[0].weight.T + model[0].bias
    signal = F.softplus(model[2].weight[1].expand(2, -1), beta=5.0) * torch.sigmoid(5.0 * z)
    assert torch.allclose(h, signal @ model[0].weight)


def test_relevance_normalises_abs_sum_over_channels():
    h = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.0]]]])  # (1, 2, 1, 2)
    r = manipex.relevance(h)
    assert r.shape == (1, 1, 2)
    assert torch.allclose(r, torch.tensor([[[4.0, 2.0]]]) / 6)
    assert torch.allclose(manipex.relevance(torch.tensor([[1.0, -3.0]])), torch.tensor([[0.25, 0.75]]))


def test_agg_mean_is_the_mean_of_member_heatmaps():
    model, x = make("small_cnn", softplus=False)
    agg = manipex.explain(model, x, "agg_mean")
    members = [manipex.relevance(manipex.explain(model, x, m)) for m in ("gradient", "guided_backprop", "lrp")]
    assert torch.allclose(manipex.relevance(agg), sum(members) / 3)
    var = manipex.relevance(manipex.explain(model, x, "agg_var", methods=["gradient", "lrp"]))
    stack = torch.stack(members[::2])
    std = stack.std(0, unbiased=False)
    expected = stack.mean(0) / (std + 10 * std.flatten(1).mean(1)[:, None, None])
    assert torch.allclose(var, expected / expected.flatten(1).sum(1)[:, None, None], atol=1e-9)


def test_occlusion_of_linear_model_is_weight_times_input():
    """For a linear model with a 1-wide window and zero baseline, occlusion = w * x."""
    torch.manual_seed(0)
    model = nn.Linear(5, 2).double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    h = manipex.explain(model, x, "occlusion", 1, window=1, stride=1)
    assert torch.allclose(h, x * model.weight[1])


def test_gradcam_of_uniform_layer_is_positive_and_upsampled():
    model, x = make("small_cnn", softplus=False)
    h = manipex.explain(model, x, "gradcam", layer="3")
    assert h.shape == x.shape and (h >= 0).all()


def test_pattern_attribution_recovers_the_signal_direction():
    """Kindermans et al.'s linear toy case: x = s*a + noise; the pattern of y = w^T x is a."""
    torch.manual_seed(0)
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    s = torch.randn(4000, 1, dtype=torch.float64)
    d = torch.randn(4000, 1, dtype=torch.float64)
    x = s * a + d * torch.tensor([1.0, 1.0], dtype=torch.float64)  # distractor along (1, 1)
    model = nn.Linear(2, 1, bias=False).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))  # the filter cancels the distractor
    patterns = manipex.fit_patterns(model, x)
    (pattern,) = patterns.values()
    assert torch.allclose(pattern[0], a, atol=0.05)


# ----------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("method,opts", [
    ("integrated_gradients", {"steps": 6}),
    ("smoothgrad", {"samples": 5, "seed": 3}),
    ("smoothgrad", {"samples": 4, "seed": 3, "base": "lrp"}),
])
def test_chunked_equals_unchunked_map_and_second_order_gradient(method, opts):
    model, x = make("small_cnn")
    v = torch.randn_like(x)
    results = []
    for batch_size in (None, x.shape[0] * 2, 1):
        xg = x.clone().requires_grad_(True)
        h = manipex.explain(model, xg, method, create_graph=True, batch_size=batch_size, **opts)
        grads = torch.autograd.grad((h * v).sum(), [xg] + list(model.parameters()), allow_unused=True)
        results.append((h.detach(), grads))
    for h, grads in results[1:]:
        assert torch.allclose(h, results[0][0], atol=1e-12)
        for g, g0 in zip(grads, results[0][1]):
            assert (g is None and g0 is None) or torch.allclose(g, g0, atol=1e-12)


def test_smoothgrad_map_of_an_image_does_not_depend_on_its_batch():
    model, x = make("small_cnn")
    both = manipex.explain(model, x, "smoothgrad", 0, samples=4, seed=7)
    alone = manipex.explain(model, x[1:], "smoothgrad", 0, samples=4, seed=7)
    assert torch.allclose(both[1:], alone)


# ----------------------------------------------------------------------------- model unchanged

ALL_METHODS = CNN_METHODS


@pytest.mark.parametrize("method", ALL_METHODS)
def test_model_unchanged_after_every_method(method, patterns_for):
    model, x = make("vgg_style", softplus=False)
    opts = method_options(method, "vgg_style", model, patterns_for)
    before = state_of(model)
    manipex.explain(model, x, method, **opts)
    h = manipex.explain(model, x.clone().requires_grad_(True), method, create_graph=True, **opts)
    h.sum().backward()  # the user may backpropagate: only .grad changes
    for p in model.parameters():
        p.grad = None
    assert_same_state(before, state_of(model))


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside the model")


@pytest.mark.parametrize("method", ["gradcam", "guided_backprop", "lrp", "smoothgrad", "gradient"])
def test_model_unchanged_after_an_error_inside_a_method(method):
    model, x = make("small_cnn", softplus=False)
    model.insert(4, Exploding())  # an error in the middle of the forward pass
    before = state_of(model)
    with pytest.raises((RuntimeError, ValueError)):
        manipex.explain(model, x, method, layer="3") if method == "gradcam" else manipex.explain(model, x, method)
    assert_same_state(before, state_of(model))


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def relu_model():
    return make("small_cnn", softplus=False)


@pytest.mark.parametrize("bad,exc,words", [
    (lambda x: x.clone().fill_(float("nan")), ValueError, "NaN"),
    (lambda x: torch.where(x > 0.5, float("inf"), x), ValueError, "Inf"),
    (lambda x: x[0, 0], ValueError, "shape"),
    (lambda x: x[:0], ValueError, "empty"),
    (lambda x: (x * 255).long(), TypeError, "dtype"),
    (lambda x: x.numpy(), TypeError, "torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(relu_model, bad, exc, words):
    model, x = relu_model
    for method in ("gradient", "lrp"):
        with pytest.raises(exc, match=words):
            manipex.explain(model, bad(x), method)


@pytest.mark.parametrize("target,exc,words", [
    (5, ValueError, "out of range"),
    (-1, ValueError, "out of range"),
    (torch.tensor([0, 1, 2]), ValueError, "shape"),
    (torch.tensor([0.0, 1.0]), TypeError, "integer"),
    ("cat", TypeError, "target"),
])
def test_bad_targets(relu_model, target, exc, words):
    model, x = relu_model
    for method in ("gradient", "integrated_gradients", "lrp", "occlusion"):
        with pytest.raises(exc, match=words):
            manipex.explain(model, x, method, target)


def test_unknown_method_and_option(relu_model):
    model, x = relu_model
    with pytest.raises(ValueError, match="unknown method 'saliency'.*gradient"):
        manipex.explain(model, x, "saliency")
    with pytest.raises(TypeError, match="unknown option 'stepz'.*steps"):
        manipex.explain(model, x, "integrated_gradients", stepz=3)
    with pytest.raises(ValueError, match="composite"):
        manipex.explain(model, x, "lrp", composite="gamma")
    with pytest.raises(ValueError, match="steps"):
        manipex.explain(model, x, "integrated_gradients", steps=0)
    with pytest.raises(ValueError, match="patterns"):
        manipex.explain(model, x, "pattern_attribution")


def test_model_in_training_mode_is_refused_and_left_in_training_mode(relu_model):
    model, x = relu_model
    model.train()
    with pytest.raises(ValueError, match="training mode.*eval"):
        manipex.explain(model, x, "gradient")
    assert model.training


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.LocalResponseNorm(2), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(1, 1, 6, 6))
    model.eval()
    with pytest.raises(UnsupportedModelError, match=r"layer '2' \(LocalResponseNorm\)"):
        manipex.explain(model, torch.rand(2, 1, 6, 6), "lrp")
    # gradient methods need no layer-by-layer rules: they work on any differentiable model
    assert manipex.explain(model, torch.rand(2, 1, 6, 6), "gradient").shape == (2, 1, 6, 6)


def test_functional_relu_and_view_are_canonicalised():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 3, 3), nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv(x)), 1)
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(0)
    functional = Functional().double().eval()
    sequential = nn.Sequential(functional.conv, nn.ReLU(), nn.MaxPool2d(1), nn.Flatten(), functional.fc).eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    for method in ("lrp", "guided_backprop"):
        assert torch.allclose(manipex.explain(functional, x, method), manipex.explain(sequential, x, method))


def test_maps_work_under_no_grad(relu_model):
    model, x = relu_model
    with torch.no_grad():
        h = manipex.explain(model, x, "gradient")
    assert h.abs().sum() > 0
