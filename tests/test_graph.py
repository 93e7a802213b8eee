"""Propagation methods on model graphs (ResNet, DenseNet, U-Net-like nets): ground truths,
extensible composites, refusals that name the node, attacks through a ResNet."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manipex
from manipex.attacks import evaluate_manipulation, manipulate_input, manipulate_model
from manipex.explainers import UnsupportedModelError
from manipex.explainers.composites import Composite, conv, dense, first_layer, module_type, register_composite
from manipex.explainers.graph import model_graph
from manipex.explainers.rules import Epsilon, Gamma, Pass, Rule, ZBox, ZPlus, stabilize, vjp
from manipex.metrics import pcc
from manipex.models.resnet import BasicBlock, ResNet
from manipex.objectives import CenterOfMass, TargetImage

from conftest import GRAPH_MODELS, MODELS, assert_same_state, make, state_of

PROPAGATION = ["guided_backprop", "lrp", "pattern_attribution"]
CONSERVING = [
    ("zb_zplus", {}), ("epsilon", {"epsilon": 1e-12, "stabilizer": 1e-12}), ("alpha_beta", {}),
    ("epsilon_plus", {"epsilon": 1e-12}), ("epsilon_plus_flat", {"epsilon": 1e-12}),
    ("epsilon_gamma_box", {"epsilon": 1e-12}),
]


def bias_and_batchnorm_free(model: nn.Module) -> nn.Module:
    """The same net without biases and with every BatchNorm replaced by the identity."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity().eval())
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.bias = None
    return model


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_lrp_epsilon_conserves_relevance_on_bias_free_graphs(name):
    """Residual sums, concatenation, pooling and upsampling pass on exactly the starting
    relevance (1, the one-hot of Dombrowski Eq. 1) on a bias-free net, whatever its weights."""
    model, x = make(name, softplus=False)
    model = bias_and_batchnorm_free(model)
    h = manipex.explain(model, x, "lrp", composite="epsilon", epsilon=1e-12, stabilizer=1e-12)
    assert torch.allclose(h.flatten(1).sum(1), torch.ones(x.shape[0], dtype=x.dtype), atol=1e-6)


@pytest.mark.parametrize("name", GRAPH_MODELS)
@pytest.mark.parametrize("composite,opts", CONSERVING)
def test_every_composite_conserves_relevance_where_contributions_are_positive(name, composite, opts):
    """Every composite conserves on bias-free nets with non-negative weights. (z+ and γ pass on
    a neuron's relevance through its positive contributions; in a ResNet with signed weights a
    branch whose output is negative while the residual sum is positive receives relevance that
    it may have no positive contribution to pass on to, in manipex as in Zennit.)"""
    model, x = make(name, softplus=False)
    model = bias_and_batchnorm_free(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.abs_()
    h = manipex.explain(model, x, "lrp", composite=composite, **opts)
    assert h.abs().sum() > 0
    assert torch.allclose(h.flatten(1).sum(1), torch.ones(x.shape[0], dtype=x.dtype), atol=1e-6)


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_lrp_zero_equals_gradient_times_input_on_bias_free_relu_graphs(name):
    """Closed form: on a bias-free ReLU network LRP-0 is Gradient x Input (Ancona et al. 2018),
    also through residual sums (the proportional rule is LRP-0 on a sum) and concatenation."""
    model, x = make(name, softplus=False)
    model = bias_and_batchnorm_free(model)
    t = model(x).argmax(1)
    logit = model(x).gather(1, t[:, None]).detach().reshape(-1, 1, 1, 1)
    lrp0 = manipex.explain(model, x, "lrp", t, composite="epsilon", epsilon=1e-12, stabilizer=1e-12)
    gxi = manipex.explain(model, x, "grad_x_input", t)
    # manipex starts LRP at the one-hot (Eq. 1), Gradient x Input sums to the logit
    assert torch.allclose(lrp0 * logit, gxi, atol=1e-9 * gxi.abs().max().item())


def test_residual_sum_shares_relevance_by_contribution():
    """``z = a + b``: ``R_a = a / z R`` and ``R_b = b / z R`` (Zennit's Norm rule)."""

    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(1, 1, bias=False)
            self.b = nn.Linear(1, 1, bias=False)
            self.head = nn.Linear(1, 2, bias=False)

        def forward(self, x):
            return self.head(self.a(x) + self.b(x))

    model = TwoPaths().double().eval()
    with torch.no_grad():
        model.a.weight.fill_(3.0)
        model.b.weight.fill_(1.0)
        model.head.weight.copy_(torch.tensor([[1.0], [0.5]]))
    x = torch.tensor([[2.0]], dtype=torch.float64)
    # the input gets the relevance of both paths: 3/4 + 1/4 = 1; as a check of the split,
    # make path a carry a rule that keeps only its own share
    keep_b = Composite([(lambda layer: layer.module is model.a, _Zero())], stabilizer=1e-12)
    h = manipex.explain(model, x, "lrp", 0, composite=keep_b)
    assert torch.allclose(h, torch.tensor([[0.25]], dtype=torch.float64))


class _Zero(Rule):
    def __call__(self, record, relevance, create_graph):
        return torch.zeros_like(record.input)


def test_module_called_twice_is_two_layers():
    """torchvision's BasicBlock calls ``self.relu`` twice: each call is its own layer, and the
    maps equal those of the same block with two separate ReLU modules."""
    torch.manual_seed(0)
    block = BasicBlock(3, 3).double().eval()

    class TwoReLUs(nn.Module):
        def __init__(self, b):
            super().__init__()
            self.b, self.r1, self.r2 = b, nn.ReLU(), nn.ReLU()

        def forward(self, x):
            out = self.r1(self.b.bn1(self.b.conv1(x)))
            return self.r2(self.b.bn2(self.b.conv2(out)) + x)

    shared = nn.Sequential(block, nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    separate = nn.Sequential(TwoReLUs(block), shared[1], shared[2]).eval()
    relus = [layer for layer in model_graph(shared, "lrp").layers.values() if layer.kind == "activation"]
    assert len(relus) == 2 and relus[0].module is relus[1].module
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    for method in ("lrp", "guided_backprop"):
        assert torch.allclose(manipex.explain(shared, x, method), manipex.explain(separate, x, method))


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_pass_guided_backprop_is_the_per_layer_rule_to_second_order(name, softplus):
    """Guided backprop runs as one backward through activations with the guided backward; it
    is the per-layer definition (GuidedReLU at each activation, the gradient elsewhere): the
    map, its gradient w.r.t. the input and w.r.t. every weight."""
    from manipex.explainers.base import get_explainer
    from manipex.explainers.propagation import PropagationExplainer

    model, x = make(name, softplus=softplus)
    assert model_graph(model, "guided_backprop").piecewise_linear is not softplus  # Softplus: per layer
    explainer = get_explainer("guided_backprop")
    params = [p for p in model.parameters() if p.requires_grad]

    def map_and_derivatives(attribute):
        xg = x.clone().requires_grad_(True)
        h = attribute(explainer, model, xg, None, True)
        loss = (h * torch.linspace(-1, 1, h.numel(), dtype=h.dtype).reshape(h.shape)).pow(2).sum()
        grads = torch.autograd.grad(loss, [xg] + params, allow_unused=True)  # a DenseNet's last BatchNorm...
        return (h, *[torch.zeros_like(p) if g is None else g for p, g in zip([xg] + params, grads)])

    one_pass = map_and_derivatives(type(explainer).attribute)
    per_layer = map_and_derivatives(PropagationExplainer.attribute)
    for a, b in zip(one_pass, per_layer):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_guided_backprop_matches_captum_on_resnet18():
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = manipex.models.resnet18(num_classes=10).double().eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    t = model(x).argmax(1)
    ours = manipex.explain(model, x, "guided_backprop", t)
    theirs = captum.GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=t).detach()
    assert ours.abs().max() > 0
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_guided_backprop_matches_captum_on_graph_models(name):
    captum = pytest.importorskip("captum.attr")
    model, x = make(name, softplus=False)
    t = model(x).argmax(1)
    ours = manipex.explain(model, x, "guided_backprop", t)
    theirs = captum.GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=t).detach()
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


@pytest.mark.parametrize("name", GRAPH_MODELS)
@pytest.mark.parametrize("method", PROPAGATION)
def test_model_is_unchanged_by_graph_propagation_also_after_an_error(name, method, patterns_for):
    model, x = make(name, softplus=False)
    opts = {"patterns": patterns_for(name, model)} if method == "pattern_attribution" else {}
    before = state_of(model)
    manipex.explain(model, x, method, create_graph=True, **opts)
    assert_same_state(before, state_of(model))
    with pytest.raises(ValueError, match="target"):
        manipex.explain(model, x, method, target=99, **opts)
    assert_same_state(before, state_of(model))


# --- composites a user can extend ----------------------------------------------------------


class AbsZ(Rule):
    """LRP-0 with absolute weights: the docstring example of a user's own rule."""

    def __call__(self, record, relevance, create_graph):
        x = record.input
        weight, _ = record.layer.parameters()
        z = record.layer.forward_with(x, weight.abs(), None)
        return x * vjp(z, x, relevance / stabilize(z, 1e-9), create_graph)


def test_user_composite_with_own_rule_and_predicates():
    model, x = make("resnet_basic", softplus=False)
    mine = Composite([(first_layer, ZBox(0.0, 1.0)), (module_type(nn.Linear), Epsilon(1e-3)), (conv, AbsZ())])
    h = manipex.explain(model, x, "lrp", composite=mine, create_graph=True)
    (g,) = torch.autograd.grad(h.pow(2).sum(), list(model.parameters())[:1])
    assert g.abs().sum() > 0, "a user's rule keeps the weight gradients"
    # the same map as the built-in rules where the user picks them
    same = Composite([(first_layer, ZBox(0.0, 1.0, 1e-9)), (dense, ZPlus(1e-9)), (conv, ZPlus(1e-9))], stabilizer=1e-9)
    assert torch.allclose(manipex.explain(model, x, "lrp", composite=same), manipex.explain(model, x, "lrp"))


def test_registered_composite_by_name():
    register_composite("test_gamma_everywhere", lambda gamma, stabilizer, **_: Composite(
        [(conv, Gamma(gamma, stabilizer)), (dense, Gamma(gamma, stabilizer))], "test_gamma_everywhere"),
        overwrite=True)
    model, x = make("resnet_basic", softplus=False)
    h = manipex.explain(model, x, "lrp", composite="test_gamma_everywhere", gamma=0.5)
    assert h.shape == x.shape and h.abs().sum() > 0
    with pytest.raises(ValueError, match="already registered"):
        register_composite("epsilon", lambda **_: Composite([]))


def test_bad_composites_are_named():
    model, x = make("resnet_basic", softplus=False)
    with pytest.raises(TypeError, match="entry 0 must be a \\(predicate, Rule\\) pair"):
        Composite([("conv", ZPlus())])
    with pytest.raises(ValueError, match="composite must be a Composite, .auto. or one of.*epsilon_gamma_box"):
        manipex.explain(model, x, "lrp", composite="gamma")
    wrong = Composite([(lambda layer: layer.kind == "add", ZPlus())])
    with pytest.raises(ValueError, match=r"ZPlus applies to conv/dense/batchnorm layers, not to call add"):
        manipex.explain(model, x, "lrp", composite=wrong)
    before = state_of(model)
    with pytest.raises(ValueError, match="Pass needs a layer that keeps the shape"):
        manipex.explain(model, x, "lrp", composite=Composite([(conv, Pass())]))
    assert_same_state(before, state_of(model))


def test_first_layer_is_found_through_the_graph():
    model, _ = make("densenet_small", softplus=False)
    firsts = [layer.name for layer in model_graph(model, "lrp").layers.values() if layer.first]
    assert firsts == ["layer 'features.conv0' (Conv2d)"]
    layers = model_graph(model, "lrp").layers.values()
    merged = [layer.module for layer in layers if layer.batchnorm is not None]
    # conv0 -> norm0 and each dense layer's conv1 -> norm2 merge; norm1, the transition's norm
    # and norm5 follow a concatenation or pooling and stand alone (pre-activation BatchNorm)
    assert merged == [model.features.conv0] + [m.conv1 for m in model.modules() if hasattr(m, "norm2")]
    assert len(merged) == 5
    assert sum(layer.kind == "batchnorm" for layer in layers) == 6


# --- refusals that name the node and the operation ----------------------------------------


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, g):  # pragma: no cover
        return g


class _Net(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.conv, self.fc, self.body = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2, 2), body

    def forward(self, x):
        h = self.body(self, self.conv(x))
        return self.fc(h.mean((2, 3)))


REFUSED = [
    (lambda m, h: h * (h > 0), r"does not support the operation 'gt'"),
    (lambda m, h: h.relu_(), r"'relu_' \(an in-place operation\) \(fx node 'relu_'\)"),
    (lambda m, h: h[:, :1].detach(), r"'detach' \(fx node 'detach'\)"),
    (lambda m, h: _Square.apply(h), r"custom autograd Function _Square"),
    (lambda m, h: h if h.sum() > 0 else -h, r"torch.fx could not trace|needs a model that torch.fx can trace"),
    (lambda m, h: h - h.mean(0, keepdim=True), r"reduces over the batch dimension"),
    (lambda m, h: torch.cat([h, h], 0)[: h.shape[0]], r"concatenates along the batch dimension"),
    (lambda m, h: F.conv2d(h, m.conv.weight * h[0, 0, 0, 0], padding=1), r"computed from an activation \(a dynamic filter\)"),
    (lambda m, h: h / h.sum((1, 2, 3), keepdim=True), r"call truediv at node 'truediv': it divides by an activation"),
]


@pytest.mark.parametrize("body,message", REFUSED)
def test_unsupported_structures_are_refused_with_the_node_named(body, message):
    torch.manual_seed(0)
    model = _Net(body).eval()
    before = state_of(model)
    with pytest.raises(UnsupportedModelError, match=message):
        manipex.explain(model, torch.rand(2, 1, 4, 4), "lrp")
    assert_same_state(before, state_of(model))


def test_model_returning_several_tensors_is_refused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            y = self.fc(x)
            return y, y

    with pytest.raises(ValueError, match="no part that manipex can tell is the logits"):
        manipex.explain(Two().eval(), torch.rand(2, 3), "guided_backprop", target=0)


# --- attacks and model manipulation through a ResNet, unchanged ----------------------------


@pytest.fixture(scope="module")
def tiny_resnet():
    """A width-4 ResNet-8 trained three epochs on MNIST-5k digits in three channels (~0.8)."""
    x, y = manipex.data.load("mnist5k", split="train")
    x = x.expand(-1, 3, -1, -1)
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [1, 1, 1], 10, stem="cifar", width=4)
    manipex.models.train_classifier(model, x, y, epochs=3, lr=3e-3, progress=False)
    xt, yt = manipex.data.load("mnist5k", split="test")
    return model.eval(), (x[:2000], y[:2000]), (xt[:200].expand(-1, 3, -1, -1), yt[:200])


# Dombrowski et al.'s reference code attacks LRP on the ReLU net itself ("LRP works without" the
# softplus surrogate); on this BatchNorm ResNet the surrogate's LRP maps do not transfer to
# the ReLU net (PCC rise 0.07 with β 10 -> 100 against 0.29 without), so LRP runs with beta=None.
ATTACKS = [("lrp", {"beta": None}), ("guided_backprop", {})]


@pytest.mark.parametrize("method,opts", ATTACKS)
def test_targeted_input_attack_moves_the_map_of_a_resnet(tiny_resnet, method, opts):
    model, _, (x, _) = tiny_resnet
    x = x[:8].contiguous()
    before = state_of(model)
    x_target = x.roll(1, 0)
    res = manipulate_input(model, x, TargetImage(x_target), method, steps=60, lr=0.01, eps=0.1,
                           progress=False, **opts)
    assert_same_state(before, state_of(model))
    t = model(x).argmax(1)
    r_target = manipex.relevance(manipex.explain(model, x_target, method, t))
    rise = (pcc(res.maps_after, r_target) - pcc(res.maps_before, r_target)).mean().item()
    assert rise >= 0.15
    assert res.class_kept.float().mean().item() >= 0.85


def test_center_of_mass_fine_tune_moves_the_lrp_map_of_a_resnet(tiny_resnet):
    """Against a control fine-tuned the same way with the manipulation weight at 0."""
    model, data, held_out = tiny_resnet
    corner = CenterOfMass((0.0, 0.0))
    distances = {}
    for lam in (0.0, 0.01):
        result = manipulate_model(model, data, corner, "lrp", lam=lam, lr=1e-3, epochs=1, beta=None, progress=False)
        ev = evaluate_manipulation(model, result.model, held_out, corner, methods=["lrp"])
        distances[lam] = ev.table.loc["lrp", "manipulated"]
        assert ev.summary["accuracy_manipulated"] >= ev.summary["accuracy_original"] - 0.15
    assert distances[0.01] <= 0.95 * ev.table.loc["lrp", "original"]
    assert distances[0.01] <= distances[0.0] - 1.0


def test_a_model_is_freed_after_explanations():
    """The graph cache holds models and their modules weakly (also with β-smoothing)."""
    import gc
    import weakref

    model, x = make("resnet_basic", softplus=False)
    manipex.explain(model, x, "lrp")
    manipex.explain(model, x, "guided_backprop", softplus_beta=3.0)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_lrp_zero_on_an_all_zero_receptive_field_gives_no_nan():
    """ε = 0 (LRP-0): a bias-free convolution over a black border sums to exactly 0; that sum
    shares nothing instead of dividing 0 by 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3, bias=False)).eval()
    x = torch.zeros(2, 1, 8, 8)
    x[:, :, 3:5, 3:5] = torch.rand(2, 1, 2, 2) + 0.1
    h = manipex.explain(net, x, "lrp", 0, composite="epsilon", epsilon=0.0)
    assert torch.isfinite(h).all() and h.abs().sum() > 0
    assert (h[:, :, :2] == 0).all()  # the black border gets nothing


@pytest.mark.parametrize("method", ["lrp", "guided_backprop", "agg_mean"])
def test_propagation_refuses_a_model_with_hooks_naming_the_module_and_the_hook(method):
    """The rules evaluate layers without calling their modules: a user's hook would be skipped
    silently, so the model is refused, naming module and hook; the gradient family honours hooks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.rand(3, 4)

    def double_it(module, inputs, output):
        return output * 2

    for register, kind in ((net[0].register_forward_hook, "forward hook"),
                           (lambda h: net[2].register_forward_pre_hook(lambda m, a: None), "forward pre hook"),
                           (lambda h: net[2].register_full_backward_hook(lambda m, gi, go: None), "backward hook")):
        handle = register(double_it)
        try:
            with pytest.raises(UnsupportedModelError, match=f"{kind} .* on module '[02]'"):
                manipex.explain(net, x, method, 0)
            if kind == "forward hook":  # the gradient family sees the hook's doubling
                assert torch.allclose(manipex.explain(net, x, "gradient", 0), _doubled(net, x))
        finally:
            handle.remove()
    manipex.explain(net, x, method, 0)  # without hooks: as before


def _doubled(net, x):
    """The gradient map with net[0]'s output doubled, computed by hand (net[0]'s own map,
    without calling the module and its hook)."""
    xg = x.clone().requires_grad_(True)
    out = net[2](net[1](2 * F.linear(xg, net[0].weight, net[0].bias)))
    (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
    return g
