"""Agreement with Captum 0.9 on the same models and inputs (ReLU versions, float64)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

import manipex

from conftest import make


def close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = 1e-5) -> None:
    scale = theirs.abs().max().clamp(min=1e-12)
    assert ((ours - theirs).abs().max() / scale).item() < tol


@pytest.fixture(params=["small_cnn", "vgg_style"])
def model_and_input(request):
    model, x = make(request.param, softplus=False)
    return model, x, model(x).argmax(1)


def test_gradient_matches_saliency(model_and_input):
    model, x, t = model_and_input
    close(manipex.explain(model, x, "gradient", t), captum_attr.Saliency(model).attribute(x, t, abs=False))


def test_grad_x_input_matches_input_x_gradient(model_and_input):
    model, x, t = model_and_input
    close(manipex.explain(model, x, "grad_x_input", t), captum_attr.InputXGradient(model).attribute(x, t))


@pytest.mark.parametrize("rule", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"])
def test_integrated_gradients_matches(model_and_input, rule):
    model, x, t = model_and_input
    steps = 7
    ours = manipex.explain(model, x, "integrated_gradients", t, steps=steps, rule=rule, baseline=0.1)
    theirs = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=0.1, target=t, n_steps=steps, method=rule
    )
    if rule == "riemann_trapezoid":
        # Captum's trapezoid weights are 1/n with halved ends (they sum to (n-1)/n, so the map
        # misses completeness by 1/n); manipex uses the trapezoid rule's 1/(n-1).
        ours = ours * (steps - 1) / steps
    close(ours, theirs)


def test_guided_backprop_matches(model_and_input):
    model, x, t = model_and_input
    close(manipex.explain(model, x, "guided_backprop", t), captum_attr.GuidedBackprop(model).attribute(x, t))


class FunctionalFlatten(nn.Module):
    """The same network with its top-level nn.Flatten called functionally: Captum's LRP hooks
    fail on an nn.Flatten module ("hook has changed the size of value")."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        i = next(i for i, m in enumerate(seq) if isinstance(m, nn.Flatten))
        self.features, self.head = seq[:i], seq[i + 1 :]

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def _captum_lrp(model, x, t, rule_factory):
    """Captum's LRP edits weights in place and sets attributes: run it on a copy."""
    clone = FunctionalFlatten(copy.deepcopy(model)).eval()
    for m in clone.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.rule = rule_factory()

    return captum_attr.LRP(clone).attribute(x, target=t)


def test_lrp_epsilon_matches_captum(model_and_input):
    model, x, t = model_and_input
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        pytest.skip("Captum applies the epsilon rule to BatchNorm alone; manipex merges it (Zennit's convention)")
    from captum.attr._utils.lrp_rules import EpsilonRule

    logit = model(x).gather(1, t[:, None]).reshape(-1, 1, 1, 1)
    ours = manipex.explain(model, x, "lrp", t, composite="epsilon", epsilon=1e-3)
    close(ours * logit, _captum_lrp(model, x, t, lambda: EpsilonRule(epsilon=1e-3)))


def test_lrp_alpha1_beta0_matches_captum(model_and_input):
    model, x, t = model_and_input
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        pytest.skip("Captum's Alpha1_Beta0_Rule does not support BatchNorm (its own warning)")
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule

    logit = model(x).gather(1, t[:, None]).reshape(-1, 1, 1, 1)
    ours = manipex.explain(model, x, "lrp", t, composite="alpha_beta", alpha=1.0, beta=0.0)
    theirs = _captum_lrp(model, x, t, lambda: Alpha1_Beta0_Rule(set_bias_to_zero=True))
    close(ours * logit, theirs)


def test_lrp_epsilon_matches_captum_on_the_merged_batchnorm_model():
    """With BatchNorm merged into the convolutions beforehand, Captum and manipex agree."""
    model, x = make("vgg_style", softplus=False)
    merged = copy.deepcopy(model)
    for seq in [m for m in merged.modules() if isinstance(m, nn.Sequential)]:
        layers = list(seq)
        keep = []
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.BatchNorm2d) and isinstance(layers[i - 1], nn.Conv2d):
                conv, bn = layers[i - 1], layer
                s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.data = conv.weight.data * s.reshape(-1, 1, 1, 1)
                conv.bias.data = (conv.bias.data - bn.running_mean) * s + bn.bias.data
            else:
                keep.append(layer)
        for name in list(seq._modules):
            del seq._modules[name]
        for i, layer in enumerate(keep):
            seq.add_module(str(i), layer)
    assert torch.allclose(merged(x), model(x))
    t = model(x).argmax(1)
    from captum.attr._utils.lrp_rules import EpsilonRule

    logit = model(x).gather(1, t[:, None]).reshape(-1, 1, 1, 1)
    ours = manipex.explain(model, x, "lrp", t, composite="epsilon", epsilon=1e-3)
    close(ours * logit, _captum_lrp(merged, x, t, lambda: EpsilonRule(epsilon=1e-3)))
