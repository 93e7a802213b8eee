"""Modern CNN families (issue 24): small replicas of MobileNetV3, EfficientNet, RegNet-Y,
ConvNeXt, timm's BatchNormAct2d, a forward with optional arguments and an Inception block with
functional ReLUs (tests/replicas.py), through every method: exact to second order (float64 finite
differences), conserving where the rules conserve, attacked, audited, the model untouched."""
from __future__ import annotations

import pytest
import torch

import manipex
from conftest import CNN_METHODS, assert_same_state, state_of
from replicas import REPLICAS, build
from test_derivatives import COMPOSITES, check_second_order
from test_zennit_agreement import ZENNIT  # at import: it puts benchmarks/ on sys.path

NAMES = list(REPLICAS)
SHAPE = (2, 3, 16, 16)


def replica(name: str, plain: bool = False, dtype=torch.float64, softplus: bool = False):
    """A replica and a batch; ``softplus``: its ReLUs (modules and functional calls) as
    Softplus(3), as the rest of the finite-difference table (tests/test_derivatives.py) takes
    its models: a central difference cannot resolve a ReLU kink inside its step, and a map
    evaluated at hundreds of thousands of ReLU units (occlusion) meets one."""
    model = build(name, plain=plain, dtype=dtype)
    if softplus and manipex.surgery.has_relu(model):
        model = manipex.surgery.softplus_copy(model, 3.0)
    torch.manual_seed(2)
    return model, torch.rand(SHAPE, dtype=dtype) * 0.8 + 0.1


def fd_step(name: str, method: str) -> float:
    """The finite-difference step: 1e-6, but 1e-7 for the normalised LRP maps inside AGG-Mean/Var
    on ConvNeXt, whose curvature is large (z+ on LayerNorm outputs of both signs divides by sums
    of positive contributions near zero; at 1e-7 the difference matches autograd to 1e-9)."""
    return 1e-7 if name == "convnext" and method in ("agg_mean", "agg_var") else 1e-6


_PATTERNS: dict = {}


def options(method: str, name: str, model) -> dict:
    if method == "pattern_attribution":
        if name not in _PATTERNS:
            torch.manual_seed(3)
            _PATTERNS[name] = manipex.fit_patterns(model, torch.rand((32,) + SHAPE[1:], dtype=torch.float64))
        return {"patterns": _PATTERNS[name]}
    if method == "gradcam" and name == "timm_bn_act":
        # at the default (the last BatchNormAct2d's output) every class's map of this random net
        # is ReLU-clipped to exactly zero; its last convolution's is not
        return {"layer": "features.4"}
    return {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2, "seed": 1, "sigma": 0.1},
            "occlusion": {"window": 4, "stride": 4}}.get(method, {})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", CNN_METHODS)
def test_second_order_matches_finite_differences(name, method):
    model, x = replica(name, softplus=True)
    before = state_of(model)
    check_second_order(model, x, method, options(method, name, model), fd_step(name, method))
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("composite", COMPOSITES)
def test_every_lrp_composite_is_exactly_differentiable(name, composite):
    model, x = replica(name, softplus=True)
    opts = {"composite": composite, "epsilon": 1e-3}
    if composite == "alpha_beta":
        opts.update(alpha=2.0, beta=1.0)
    check_second_order(model, x, "lrp", opts)


# --- conservation ------------------------------------------------------------------------------

from manipex.explainers.composites import Composite, kinds  # noqa: E402
from manipex.explainers.rules import Epsilon, Product  # noqa: E402
from test_graph import CONSERVING  # noqa: E402


def lrp0(uniform: bool) -> Composite:
    rules = [(kinds("conv", "dense"), Epsilon(1e-12))]
    return Composite(rules + ([(kinds("product"), Product(uniform=True))] if uniform else []), stabilizer=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_lrp_zero_conserves_relevance_on_plain_replicas(name):
    """On the bias-free, normalisation-free replicas LRP-0 passes on exactly the starting
    relevance (1), whatever the weights: activations pass it (identity rule), the
    squeeze-excitation gate's product gives it all to the signal, layer scale, residual sums,
    pooling, permutes and stochastic depth pass or share it."""
    model, x = replica(name, plain=True)
    h = manipex.explain(model, x, "lrp", composite=lrp0(uniform=False))
    assert h.abs().sum() > 0
    assert torch.allclose(h.flatten(1).sum(1), torch.ones(x.shape[0], dtype=x.dtype), atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_uniform_product_rule_conserves_where_the_gate_branch_is_alive(name):
    """The uniform rule (AttnLRP) sends half of a gated product's relevance down the gate's own
    branch; with non-negative weights every unit there is active and it all comes back."""
    model, x = replica(name, plain=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.abs_()
    h = manipex.explain(model, x, "lrp", composite=lrp0(uniform=True))
    assert torch.allclose(h.flatten(1).sum(1), torch.ones(x.shape[0], dtype=x.dtype), atol=1e-6)


def test_the_uniform_product_rule_loses_what_a_dead_gate_branch_absorbs():
    """Its measured deficit, pinned: RegNet-Y's squeeze has 2 and 4 ReLU units; where all are
    dead (pre-activation <= 0) the gate's branch has no contribution to pass its half of the
    relevance to, and the stabiliser absorbs it (0.43% and 0.24% of the relevance here). The
    default gate rule (signal takes all) loses nothing."""
    model, x = replica("regnet_y", plain=True)
    deficit = 1 - manipex.explain(model, x, "lrp", composite=lrp0(uniform=True)).flatten(1).sum(1)
    assert torch.allclose(deficit, torch.tensor([0.0043, 0.0024], dtype=x.dtype), atol=5e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("composite,opts", CONSERVING)
def test_every_composite_conserves_on_plain_replicas_with_positive_weights(name, composite, opts):
    """Every composite conserves where contributions are positive (non-negative weights; see
    tests/test_graph.py for why signed weights can leave z+ without a positive contribution)."""
    model, x = replica(name, plain=True)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.abs_()
    h = manipex.explain(model, x, "lrp", composite=composite, **opts)
    assert h.abs().sum() > 0
    assert torch.allclose(h.flatten(1).sum(1), torch.ones(x.shape[0], dtype=x.dtype), atol=1e-6)


def test_the_gate_rule_gives_the_squeeze_excitation_branch_no_relevance():
    """Signal-take-all: with the gate held constant, the SE branch (pool -> fc1 -> fc2 ->
    hardsigmoid) receives no relevance, so a map that differs from the uniform rule's shows it."""
    model, x = replica("mobilenet_v3", plain=True)
    gate = manipex.explain(model, x, "lrp", composite=lrp0(uniform=False))
    uniform = manipex.explain(model, x, "lrp", composite=lrp0(uniform=True))
    assert not torch.allclose(gate, uniform, atol=1e-6)
    from manipex.explainers.graph import model_graph
    products = [layer for layer in model_graph(model, "lrp").layers.values() if layer.kind == "product"]
    assert len(products) == 2 and all(layer.gate == 0 for layer in products)  # torchvision: scale * input


# --- attacks ---------------------------------------------------------------------------------------

import torch.nn.functional as F  # noqa: E402

from manipex.attacks import manipulate_input, manipulate_model  # noqa: E402
from manipex.metrics import center_of_mass, pcc  # noqa: E402
from manipex.objectives import CenterOfMass, TargetImage  # noqa: E402


def digits(split: str, n: int):
    """MNIST-5k digits 0-2 at 16x16 in three channels: images the replicas can learn."""
    x, y = manipex.data.load("mnist5k", split=split)
    keep = y < 3
    x, y = x[keep][:n], y[keep][:n]
    return F.interpolate(x, size=16, mode="bilinear").repeat(1, 3, 1, 1).clamp(0, 1), y


@pytest.fixture(scope="module")
def trained():
    """Each replica trained two epochs on 600 digits (a random-init net's maps are nearly the
    same for every image: PCC 0.8-0.93 between two images' maps, leaving no room to move)."""
    train = digits("train", 600)
    models = {}
    for name in NAMES:
        model = build(name)
        manipex.models.train_classifier(model, *train, epochs=2, lr=3e-3, batch_size=32, progress=False)
        models[name] = model
    return models, train, digits("test", 8)[0]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["gradient", "lrp"])
def test_targeted_input_attack_moves_the_map_and_keeps_the_class(trained, name, method):
    models, _, x = trained
    model = models[name]
    before = state_of(model)
    x_target = x.roll(1, 0)
    res = manipulate_input(model, x, TargetImage(x_target), method, steps=150, eps=0.1, lr=2e-2, progress=False,
                           beta=(10.0, 100.0) if method == "gradient" else None)
    assert_same_state(before, state_of(model))
    r_target = manipex.relevance(manipex.explain(model, x_target, method, model(x).argmax(1)))
    rise = (pcc(res.maps_after, r_target) - pcc(res.maps_before, r_target)).mean().item()
    assert rise >= 0.1
    assert res.class_kept.float().mean().item() >= 0.95
    assert (res.x_adv - x).abs().max().item() <= 0.1 + 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_center_of_mass_model_manipulation_moves_the_map(trained, name):
    models, (x_train, y_train), x = trained
    model = models[name]
    before = state_of(model)
    result = manipulate_model(model, (x_train[:128], y_train[:128]), CenterOfMass((0, 0)), "gradient", epochs=3,
                              lr=3e-3, batch_size=32, progress=False)
    assert_same_state(before, state_of(model))
    distance = [center_of_mass(manipex.relevance(manipex.explain(m, x, "gradient"))).norm(dim=-1).mean().item()
                for m in (model, result.model)]
    assert distance[1] <= distance[0] - 1.0, distance  # pixels, towards the corner (0, 0)


# --- agreement with peers ------------------------------------------------------------------------

import copy  # noqa: E402


def _captum():
    return pytest.importorskip("captum.attr")


def _close(ours, theirs, tol=1e-6):
    assert ours.abs().max() > 0
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < tol


@pytest.mark.parametrize("name", NAMES)
def test_gradient_family_matches_captum(name):
    """Captum's Saliency, InputXGradient and IntegratedGradients on the same replica (float64)."""
    captum = _captum()
    model, x = replica(name)
    t = model(x).argmax(1)
    _close(manipex.explain(model, x, "gradient", t), captum.Saliency(model).attribute(x, t, abs=False))
    _close(manipex.explain(model, x, "grad_x_input", t), captum.InputXGradient(model).attribute(x, t))
    _close(manipex.explain(model, x, "integrated_gradients", t, steps=5, rule="riemann_middle"),
           captum.IntegratedGradients(model).attribute(x, target=t, n_steps=5, method="riemann_middle"))


def test_guided_backprop_matches_captum_where_every_rectifier_is_an_nn_relu():
    """RegNet-Y: nn.ReLU everywhere, a Sigmoid gate (both pass the plain gradient there).
    Captum defines guided backprop for nn.ReLU modules only; elsewhere manipex states its own rule."""
    captum = _captum()
    model, x = replica("regnet_y")
    theirs_model = copy.deepcopy(model)
    for m in theirs_model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False  # Captum's backward hooks cannot see through in-place ReLUs
    t = model(x).argmax(1)
    _close(manipex.explain(model, x, "guided_backprop", t), captum.GuidedBackprop(theirs_model).attribute(x, t))


def _standard_modules(model):
    """The replica with each BatchNormAct2d written as BatchNorm2d followed by its activation."""
    from replicas import BatchNormAct2d

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BatchNormAct2d):
                bn = torch.nn.BatchNorm2d(child.num_features, eps=child.eps).to(child.weight)
                bn.load_state_dict({k: v for k, v in child.state_dict().items()})
                setattr(parent, name, torch.nn.Sequential(bn, child.drop, child.act).eval())
    return model


def test_lrp_on_timm_batchnorm_act_matches_zennit_on_the_same_net_in_standard_modules():
    """Zennit 0.5's EpsilonPlusFlat with its BatchNorm canonizer, on the timm BatchNormAct2d
    replica written with nn.BatchNorm2d + nn.SiLU (SiLU passes relevance in both: Zennit's Pass
    rule, manipex's identity rule; adaptive average pooling: Norm in both). On BatchNormAct2d
    itself Zennit's hooks mis-attribute (the relevance sums differ by 50%, measured), so the
    peer runs on the standard-module form; manipex reads the fused module's F.batch_norm and
    gives the same map on both. BatchNorm eps = 0, for the reason tests/test_zennit_agreement.py
    gives."""
    zennit = ZENNIT
    if zennit is None:
        pytest.skip("zennit is not installed")
    composites, canonizers, attribution = zennit
    model, x = replica("timm_bn_act")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 0.0
        if hasattr(m, "inplace"):
            m.inplace = False
    standard = _standard_modules(model)
    t = model(x).argmax(1)
    ours = manipex.explain(model, x, "lrp", t, composite="epsilon_plus_flat", stabilizer=1e-6, epsilon=1e-6)
    composite = composites.EpsilonPlusFlat(canonizers=[canonizers.SequentialMergeBatchNorm()])
    with attribution.Gradient(model=copy.deepcopy(standard), composite=composite) as attributor:
        _, theirs = attributor(x, F.one_hot(t, 3).to(x.dtype))
    _close(ours, theirs)
    _close(manipex.explain(standard, x, "lrp", t, composite="epsilon_plus_flat", stabilizer=1e-6, epsilon=1e-6), ours)


# --- a Hugging Face convolutional classifier (optional: transformers needs no torchvision) --------


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hugging_face_convnext_through_every_method():
    """``ConvNextForImageClassification`` from a tiny config: its output object is read through
    ``.logits``; its forward checks ``pixel_values.shape[1]`` in Python, so the propagation graph
    is traced at the input's shape. Every method runs with create_graph=True; LRP and guided
    backprop are exact to second order (float64 finite differences)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # layer scale 0.5, not Hugging Face's 1e-6: the blocks then shape the map, and its
    # derivatives w.r.t. their weights are not at the finite difference's noise floor
    config = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                         num_labels=3, image_size=32, layer_scale_init_value=0.5)
    model = transformers.ConvNextForImageClassification(config).eval()
    x = torch.rand(2, 3, 32, 32)
    before = state_of(model)
    for method in CNN_METHODS:
        opts = {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2, "seed": 0},
                "occlusion": {"window": 8, "stride": 8}}.get(method, {})
        if method == "pattern_attribution":
            opts = {"patterns": manipex.fit_patterns(model, torch.rand(8, 3, 32, 32))}
        h = manipex.explain(model, x.clone().requires_grad_(True), method, create_graph=True, **opts)
        assert h.shape == x.shape and torch.isfinite(h).all() and h.abs().sum() > 0, method
    assert_same_state(before, state_of(model))
    wrapped = manipex.models.Logits(model.double())
    for method in ("lrp", "guided_backprop"):
        check_second_order(wrapped, x.double(), method, {})
    model.float()


# --- the audit -------------------------------------------------------------------------------------


def test_the_audit_runs_on_a_mobilenet_v3_replica(tmp_path, monkeypatch, capsys):
    """``manipex audit`` of a user's MobileNetV3-style model (a factory in the current directory,
    one input channel for MNIST-5k) at a tiny budget: every part runs and the report is written."""
    import sys

    from manipex.cli import main
    from manipex.experiments import ResultStore
    from test_audit_factory import SMALL_ARGS

    (tmp_path / "mobilemodule.py").write_text(
        "import replicas\n\ndef build():\n    return replicas.mobilenet_v3(num_classes=10, channels=1)\n")
    x, y = manipex.data.load("mnist5k", split="train")
    torch.manual_seed(0)
    net = manipex.models.train_classifier(REPLICAS["mobilenet_v3"](num_classes=10, channels=1).eval(), x[:512], y[:512],
                                          epochs=1, progress=False)
    torch.save(net.state_dict(), tmp_path / "mobile.pth")
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["audit", "mobile.pth", "--arch", "mobilemodule:build", "--out", str(tmp_path / "runs"),
                     *SMALL_ARGS])
    finally:
        sys.modules.pop("mobilemodule", None)
    assert code == 0
    folder = tmp_path / "runs" / "audit"
    parts = set(ResultStore(folder).frame().part)
    assert {"detection"} <= parts and len(parts) >= 3, parts
    assert (folder / "report.html").exists()


# --- the model is untouched, also after errors ------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_model_is_untouched_after_errors(name):
    """Errors raised before any work (a wrong shape, a bad option) and inside the forward (an
    input with a channel too many) leave the replica exactly as it was: parameters, buffers,
    modules, hooks, flags; also within an attack on its Softplus surrogate."""
    model, x = replica(name, dtype=torch.float32)
    before = state_of(model)
    bad_channels = torch.rand(2, 4, 16, 16)
    for method in ("gradient", "lrp", "guided_backprop", "gradcam", "smoothgrad"):
        with pytest.raises((ValueError, RuntimeError)):
            manipex.explain(model, bad_channels, method)
        with pytest.raises(ValueError):
            manipex.explain(model, x, method, target=7)
    with pytest.raises((ValueError, RuntimeError)):
        manipulate_input(model, bad_channels, TargetImage(bad_channels), "gradient", steps=2, progress=False)
    assert_same_state(before, state_of(model))
    assert not model._forward_hooks and not model._forward_pre_hooks


@pytest.mark.parametrize("method", ["guided_backprop", "lrp"])
def test_propagation_under_the_surrogate_sees_functional_relus_as_softplus(method):
    """β-smoothing (``softplus_beta``) of the Inception replica, whose ReLUs are ``F.relu``
    calls: the propagation graph evaluates them as the surrogate's Softplus, so the map equals
    the one of the canonicalised model (the same calls as ``nn.ReLU`` modules, swapped)."""
    model, x = replica("inception")
    canonical = manipex.surgery.canonicalize(model)
    t = model(x).argmax(1)
    ours = manipex.explain(model, x, method, t, softplus_beta=2.0)
    theirs = manipex.explain(canonical, x, method, t, softplus_beta=2.0)
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours, manipex.explain(model, x, method, t), atol=1e-6)
