"""Every public entry point against every kind of bad input, generated from tables.

Each case asserts the error type, that the message names the problem, and that the model
(parameters, buffers, modules, hooks, flags) and ``x`` are exactly as they were afterwards.
The metrics' own table is in test_metrics.py, the data loaders' in test_data.py and the
configuration and command line's in test_faults.py / test_config_files.py.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest
import torch
from torch import nn

import manipex
from conftest import CNN_METHODS
from manipex.attacks import evaluate_manipulation, manipulate_input, manipulate_model, transfer_matrix
from manipex.defenses import atex_finetune, beta_sweep, detect_manipulation, noise_maps, weight_noise_test
from manipex.defenses.detection import with_weight_noise
from manipex.geometry import curvature_vs_beta, principal_curvature
from manipex.metrics import class_agreement, output_change
from manipex.objectives import CenterOfMass, HideFeatures, RegionHighlight, TargetImage, TargetMap, TopKSuppression

N = 4


@pytest.fixture(scope="module")
def base(mnist_model):
    x, y = manipex.data.load("mnist5k", split="test")
    patterns = manipex.fit_patterns(mnist_model, manipex.data.load("mnist5k", split="train")[0][:200])
    return mnist_model, x[:N].clone(), y[:N].clone(), patterns


# ---------------------------------------------------------------------------------------------
# the entry points: (model, x, target, y, ctx) -> call. ``None`` in a slot: the kind does not apply.

def _explain(method: str) -> Callable:
    def call(model, x, target, y, ctx):
        options = {"patterns": ctx["patterns"]} if method == "pattern_attribution" else {}
        if method == "smoothgrad":
            options = {"samples": 2, "seed": 0}
        if method == "integrated_gradients":
            options = {"steps": 4}
        return manipex.explain(model, x, method, target, **options)
    return call


ATTACK = dict(steps=1, progress=False)

ENTRY_POINTS: Dict[str, Tuple[Callable, bool]] = {  # name -> (call, takes a target)
    **{f"explain:{m}": (_explain(m), True) for m in CNN_METHODS},
    "manipulate_input": (lambda model, x, t, y, c: manipulate_input(
        model, x, TargetImage(c["x_target"]), "gradient", target=t, **ATTACK), True),
    "manipulate_input:lrp": (lambda model, x, t, y, c: manipulate_input(
        model, x, CenterOfMass(), "lrp", target=t, beta=None, **ATTACK), True),
    "manipulate_model": (lambda model, x, t, y, c: manipulate_model(
        model, (x, y), CenterOfMass(), epochs=1, progress=False), False),
    "evaluate_manipulation": (lambda model, x, t, y, c: evaluate_manipulation(
        model, model, (x, y), CenterOfMass(), methods=["gradient"]), False),
    "atex_finetune": (lambda model, x, t, y, c: atex_finetune(
        model, x, epochs=1, copies=1, samples=1, progress=False), False),
    "principal_curvature": (lambda model, x, t, y, c: principal_curvature(model, x, t, iters=2), True),
    "curvature_vs_beta": (lambda model, x, t, y, c: curvature_vs_beta(model, x, [1.0], iters=2, target=t), True),
    "transfer_matrix": (lambda model, x, t, y, c: transfer_matrix(
        model, x, CenterOfMass(), ["gradient"], target=t, **ATTACK), True),
    "beta_sweep": (lambda model, x, t, y, c: beta_sweep(model, x, c["x_target"], betas=[None], **ATTACK), False),
    "fit_patterns": (lambda model, x, t, y, c: manipex.fit_patterns(model, x), False),
    "output_change": (lambda model, x, t, y, c: output_change(model, x, x), False),
    "class_agreement": (lambda model, x, t, y, c: class_agreement(model, x, x), False),
    "weight_noise_test": (lambda model, x, t, y, c: weight_noise_test(
        model, (x, y), CenterOfMass(), sigmas=[0.0]), False),
}

#: entry points that take a model but no batch of inputs
MODEL_ONLY = {
    "detect_manipulation": lambda model, c: detect_manipulation(model, (1, 28, 28), [c["reference"]], n=4),
    "detect_manipulation:reference": lambda model, c: detect_manipulation(c["reference"], (1, 28, 28), [model], n=4),
    "noise_maps": lambda model, c: noise_maps(model, (1, 28, 28), n=2),
}

#: entry points that need no autograd and so work under torch.inference_mode() (allowed)
NO_AUTOGRAD = {"explain:occlusion", "output_change", "class_agreement"}


# ---------------------------------------------------------------------------------------------
# the kinds of bad input: each changes one argument and names the error it must raise

class Tuple1(nn.Module):
    """Returns two candidate logits: manipex cannot tell which (one, or a "logits" key, is read)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return (out, out)


class Dict1(Tuple1):
    """A dict without a "logits" key."""

    def forward(self, x):
        return {"scores": self.inner(x)}


def _nan_weight(model):
    m = copy.deepcopy(model)
    with torch.no_grad():
        next(m.parameters()).view(-1)[0] = float("nan")
    return m


def _train_mode(model):
    return copy.deepcopy(model).train()


MODEL_KINDS: Dict[str, Tuple[Callable, type, str]] = {
    "train_mode": (_train_mode, ValueError, "training mode"),
    "not_a_module": (lambda m: (lambda x: m(x)), TypeError, "nn.Module"),
    "nan_weight": (_nan_weight, ValueError, "NaN"),
    "tuple_output": (lambda m: Tuple1(m).eval(), ValueError, "logits"),
    "dict_output": (lambda m: Dict1(m).eval(), ValueError, "logits"),
    "float64_model": (lambda m: copy.deepcopy(m).double(), TypeError, "dtype"),
}

X_KINDS: Dict[str, Tuple[Callable, type, str]] = {
    "nan": (lambda x: x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), ValueError, "NaN"),
    "inf": (lambda x: torch.where(x > 0.5, torch.tensor(float("inf")), x), ValueError, "Inf"),
    "rank3": (lambda x: x[:, 0].clone(), ValueError, "shape"),
    "int": (lambda x: (x * 255).to(torch.uint8), TypeError, "dtype"),
    "long": (lambda x: x.long(), TypeError, "dtype"),
    "empty": (lambda x: x[:0].clone(), ValueError, "empty"),
    "numpy": (lambda x: x.numpy().copy(), TypeError, "Tensor"),
    "list": (lambda x: x.tolist(), TypeError, "Tensor"),
    "half": (lambda x: x.half(), TypeError, "dtype"),
    "wrong_channels": (lambda x: x.repeat(1, 3, 1, 1), ValueError, "shape"),
    "rank1": (lambda x: x.flatten()[:10].clone(), ValueError, "shape"),
}

TARGET_KINDS: Dict[str, Tuple[Any, type, str]] = {
    "out_of_range": (10, ValueError, "out of range"),
    "negative": (-1, ValueError, "out of range"),
    "tensor_out_of_range": (torch.tensor([0, 1, 2, 99]), ValueError, "99"),
    "float_tensor": (torch.zeros(N), TypeError, "integer"),
    "wrong_length": (torch.zeros(N + 1, dtype=torch.long), ValueError, "shape"),
    "bool": (True, TypeError, "bool"),
    "string": ("cat", TypeError, "target"),
}

LABEL_KINDS: Dict[str, Tuple[Callable, type, str]] = {
    "label_out_of_range": (lambda y: y + 10, ValueError, "out of range"),
    "float_labels": (lambda y: y.float(), TypeError, "integer"),
    "labels_wrong_length": (lambda y: y[:-1], ValueError, "shape"),
    "labels_not_tensor": (lambda y: y.tolist(), TypeError, "tensor"),
}


# ---------------------------------------------------------------------------------------------

def snapshot(model) -> Dict[str, Any]:
    """Everything about a model an entry point must leave unchanged (NaN-aware)."""
    if not isinstance(model, nn.Module):
        return {}
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": [(n, type(m), id(m), m.training) for n, m in model.named_modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(a.nan_to_num(0.0, 1.0, -1.0), b.nan_to_num(0.0, 1.0, -1.0))
            and torch.equal(a.isnan(), b.isnan())) if a.is_floating_point() else torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def copy_of(value):
    return value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)


def run_case(call, model, x, expected, fragment, inference=False):
    before_model, before_x = snapshot(model), copy_of(x)
    with pytest.raises(expected) as info:
        if inference:
            with torch.inference_mode():
                call()
        else:
            call()
    assert fragment.lower() in str(info.value).lower(), str(info.value)
    assert len(str(info.value)) < 1200, "an error message must not echo an unbounded value"
    assert same(snapshot(model), before_model), "the model was changed"
    assert same(x, before_x), "x was changed"


def context(base) -> Dict[str, Any]:
    model, x, y, patterns = base
    return {"patterns": patterns, "x_target": x.roll(1, 0).clone(), "reference": model}


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_model(base, entry, kind):
    model, x, y, _ = base
    make, expected, fragment = MODEL_KINDS[kind]
    bad = make(model)
    call, _ = ENTRY_POINTS[entry]
    run_case(lambda: call(bad, x, None, y, context(base)), bad, x, expected, fragment)
    assert same(snapshot(model), snapshot(model))


@pytest.mark.parametrize("kind", list(X_KINDS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_x(base, entry, kind):
    model, x, y, _ = base
    make, expected, fragment = X_KINDS[kind]
    bad = make(x)
    call, _ = ENTRY_POINTS[entry]
    yy = y[:0] if kind == "empty" else y
    run_case(lambda: call(model, bad, None, yy, context(base)), model, bad, expected, fragment)


@pytest.mark.parametrize("kind", list(TARGET_KINDS))
@pytest.mark.parametrize("entry", [e for e, (_, takes) in ENTRY_POINTS.items() if takes])
def test_bad_target(base, entry, kind):
    model, x, y, _ = base
    target, expected, fragment = TARGET_KINDS[kind]
    call, _ = ENTRY_POINTS[entry]
    run_case(lambda: call(model, x, copy_of(target), y, context(base)), model, x, expected, fragment)


@pytest.mark.parametrize("kind", list(LABEL_KINDS))
@pytest.mark.parametrize("entry", ["manipulate_model", "evaluate_manipulation", "weight_noise_test"])
def test_bad_labels(base, entry, kind):
    model, x, y, _ = base
    make, expected, fragment = LABEL_KINDS[kind]
    call, _ = ENTRY_POINTS[entry]
    run_case(lambda: call(model, x, None, make(y), context(base)), model, x, expected, fragment)


@pytest.mark.parametrize("entry", sorted(set(ENTRY_POINTS) - NO_AUTOGRAD))
def test_inference_mode_is_refused_plainly(base, entry):
    model, x, y, _ = base
    call, _ = ENTRY_POINTS[entry]
    run_case(lambda: call(model, x, None, y, context(base)), model, x, RuntimeError, "inference_mode",
             inference=True)


@pytest.mark.parametrize("entry", sorted(NO_AUTOGRAD))
def test_what_needs_no_autograd_works_in_inference_mode(base, entry):
    model, x, y, _ = base
    call, _ = ENTRY_POINTS[entry]
    with torch.inference_mode():
        out = call(model, x, None, y, context(base))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", [k for k in MODEL_KINDS if k != "float64_model"])
@pytest.mark.parametrize("entry", list(MODEL_ONLY))
def test_bad_model_without_inputs(base, entry, kind):
    model = base[0]
    make, expected, fragment = MODEL_KINDS[kind]
    bad = make(model)
    run_case(lambda: MODEL_ONLY[entry](bad, context(base)), bad, None, expected, fragment)


# ---------------------------------------------------------------------------------------------
# options: (entry, call with the bad option, error, fragment)

nan, inf = float("nan"), float("inf")


def _ex(method, **options):
    return lambda m, x, c: manipex.explain(m, x, method, **options)


def _mi(**options):
    return lambda m, x, c: manipulate_input(m, x, TargetImage(c["x_target"]), "gradient",
                                            **{**ATTACK, **options})


def _mm(**options):
    return lambda m, x, c: manipulate_model(m, (x, c["y"]), CenterOfMass(), **{"progress": False, **options})


def _det(**options):
    def call(m, x, c):
        args = {"input_shape": (1, 28, 28), "references": [c["reference"]], "n": 4, **options}
        return detect_manipulation(m, args.pop("input_shape"), args.pop("references"), **args)
    return call


def _atex(**options):
    return lambda m, x, c: atex_finetune(m, x, **{"epochs": 1, "copies": 1, "samples": 1, "progress": False,
                                                  **options})


OPTIONS = [
    # explain
    ("lrp epsilon nan", _ex("lrp", composite="epsilon", epsilon=nan), ValueError, "epsilon"),
    ("lrp epsilon inf", _ex("lrp", composite="epsilon", epsilon=inf), ValueError, "epsilon"),
    ("lrp stabilizer nan", _ex("lrp", stabilizer=nan), ValueError, "stabilizer"),
    ("lrp stabilizer negative", _ex("lrp", stabilizer=-1.0), ValueError, "stabilizer"),
    ("lrp gamma nan", _ex("lrp", composite="epsilon_gamma_box", gamma=nan), ValueError, "gamma"),
    ("lrp alpha nan", _ex("lrp", composite="alpha_beta", alpha=nan), ValueError, "alpha"),
    ("lrp low nan", _ex("lrp", low=nan), ValueError, "low"),
    ("lrp high inf", _ex("lrp", high=inf), ValueError, "high"),
    ("lrp low above high", _ex("lrp", low=2.0, high=1.0), ValueError, "below high"),
    ("lrp low tensor above high", _ex("lrp", low=torch.ones(1, 1, 1), high=0.5), ValueError, "below high"),
    ("lrp low tensor nan", _ex("lrp", low=torch.full((1, 1, 1), nan)), ValueError, "finite"),
    ("lrp low string", _ex("lrp", low="0"), TypeError, "low"),
    ("lrp unknown composite", _ex("lrp", composite="zz"), ValueError, "composite"),
    ("agg_var var_constant nan", _ex("agg_var", var_constant=nan), ValueError, "var_constant"),
    ("agg_var var_constant negative", _ex("agg_var", var_constant=-1.0), ValueError, "var_constant"),
    ("agg_var var_constant string", _ex("agg_var", var_constant="10"), TypeError, "var_constant"),
    ("agg_mean methods [3]", _ex("agg_mean", methods=[3]), TypeError, "methods"),
    ("agg_mean methods string", _ex("agg_mean", methods="gradient"), ValueError, "methods"),
    ("agg_mean methods empty", _ex("agg_mean", methods=[]), ValueError, "methods"),
    ("agg_mean methods unknown", _ex("agg_mean", methods=["nope"]), ValueError, "nope"),
    ("agg_mean nested aggregate", _ex("agg_mean", methods=["agg_var"]), ValueError, "agg_var"),
    ("smoothgrad sigma nan", _ex("smoothgrad", sigma=nan), ValueError, "sigma"),
    ("smoothgrad sigma inf", _ex("smoothgrad", sigma=inf), ValueError, "sigma"),
    ("smoothgrad sigma negative", _ex("smoothgrad", sigma=-0.1), ValueError, "sigma"),
    ("smoothgrad samples 0", _ex("smoothgrad", samples=0), ValueError, "samples"),
    ("smoothgrad samples float", _ex("smoothgrad", samples=2.5), TypeError, "samples"),
    ("smoothgrad seed negative", _ex("smoothgrad", seed=-1), ValueError, "seed"),
    ("smoothgrad relative string", _ex("smoothgrad", relative="yes"), TypeError, "relative"),
    ("smoothgrad base_options list", _ex("smoothgrad", base_options=[1]), TypeError, "base_options"),
    ("smoothgrad base itself", _ex("smoothgrad", base="smoothgrad"), ValueError, "smoothgrad"),
    ("ig steps 0", _ex("integrated_gradients", steps=0), ValueError, "steps"),
    ("ig steps nan", _ex("integrated_gradients", steps=nan), TypeError, "steps"),
    ("ig baseline nan", _ex("integrated_gradients", baseline=nan), ValueError, "baseline"),
    ("ig baseline tensor inf", _ex("integrated_gradients", baseline=torch.full((1, 28, 28), inf)), ValueError,
     "baseline"),
    ("ig baseline wrong shape", _ex("integrated_gradients", baseline=torch.zeros(3, 5)), ValueError, "baseline"),
    ("ig rule unknown", _ex("integrated_gradients", rule="simpson"), ValueError, "rule"),
    ("ig batch_size 0", _ex("integrated_gradients", batch_size=0), ValueError, "batch_size"),
    ("occlusion window 0", _ex("occlusion", window=0), ValueError, "window"),
    ("occlusion window string", _ex("occlusion", window="4"), ValueError, "window"),
    ("occlusion window too large", _ex("occlusion", window=40), ValueError, "window"),
    ("occlusion stride negative", _ex("occlusion", stride=-2), ValueError, "stride"),
    ("occlusion batch_size 0", _ex("occlusion", batch_size=0), ValueError, "batch_size"),
    ("occlusion baseline nan", _ex("occlusion", baseline=nan), ValueError, "baseline"),
    ("gradcam layer unknown", _ex("gradcam", layer="nope" * 100), ValueError, "no layer"),
    ("gradcam layer int", _ex("gradcam", layer=3), TypeError, "layer"),
    ("pattern_attribution no patterns", _ex("pattern_attribution"), ValueError, "patterns"),
    ("softplus_beta nan", _ex("gradient", softplus_beta=nan), ValueError, "softplus_beta"),
    ("softplus_beta zero", _ex("gradient", softplus_beta=0.0), ValueError, "softplus_beta"),
    ("unknown option", _ex("gradient", stpes=3), TypeError, "stpes"),
    ("unknown method", _ex("gradient_x"), ValueError, "gradient_x"),
    ("create_graph string", lambda m, x, c: manipex.explain(m, x, "gradient", create_graph="yes"), TypeError,
     "create_graph"),
    # manipulate_input
    ("attack eps nan", _mi(eps=nan), ValueError, "eps"),
    ("attack eps negative", _mi(eps=-0.1), ValueError, "eps"),
    ("attack eps string", _mi(eps="big"), ValueError, "eps"),
    ("attack eps None", _mi(eps=None), ValueError, "eps"),
    ("attack gamma nan", _mi(gamma=nan), ValueError, "gamma"),
    ("attack gamma negative", _mi(gamma=-1.0), ValueError, "gamma"),
    ("attack lr nan", _mi(lr=nan), ValueError, "lr"),
    ("attack lr zero", _mi(lr=0.0), ValueError, "lr"),
    ("attack steps 0", _mi(steps=0), ValueError, "steps"),
    ("attack steps float", _mi(steps=1.5), TypeError, "steps"),
    ("attack beta nan", _mi(beta=nan), ValueError, "beta"),
    ("attack beta pair with zero", _mi(beta=(0.0, 10.0)), ValueError, "beta"),
    ("attack beta triple", _mi(beta=(1.0, 2.0, 3.0)), ValueError, "beta"),
    ("attack optimizer unknown", _mi(optimizer="sgd"), ValueError, "optimizer"),
    ("attack norm unknown", _mi(norm="l1"), ValueError, "norm"),
    ("attack clamp nan", _mi(clamp=(nan, 1.0)), ValueError, "clamp"),
    ("attack clamp reversed", _mi(clamp=(1.0, 0.0)), ValueError, "clamp"),
    ("attack clamp not a pair", _mi(clamp=0.5), ValueError, "clamp"),
    ("attack clamp excludes x", _mi(clamp=(0.2, 0.3)), ValueError, "clamp"),
    ("attack patience 0", _mi(patience=0), ValueError, "patience"),
    ("attack check_every 0", _mi(check_every=0), ValueError, "check_every"),
    ("attack smooth_pools string", _mi(smooth_pools="yes"), TypeError, "smooth_pools"),
    ("attack keep_best int", _mi(keep_best=1), TypeError, "keep_best"),
    ("attack method unknown", lambda m, x, c: manipulate_input(m, x, CenterOfMass(), "nope", **ATTACK), ValueError,
     "nope"),
    ("attack method_options list", _mi(method_options=[1]), TypeError, "method_options"),
    ("attack objective missing", lambda m, x, c: manipulate_input(m, x, "center", **ATTACK), TypeError, "objective"),
    ("attack target map shape", lambda m, x, c: manipulate_input(m, x, TargetImage(c["x_target"][:2]), **ATTACK),
     ValueError, "shape"),
    # manipulate_model
    ("model attack lam nan", _mm(lam=nan), ValueError, "lam"),
    ("model attack lam negative", _mm(lam=-1.0), ValueError, "lam"),
    ("model attack lr nan", _mm(lr=nan), ValueError, "lr"),
    ("model attack lr string", _mm(lr="fast"), TypeError, "lr"),
    ("model attack gamma inf", _mm(gamma=inf), ValueError, "gamma"),
    ("model attack epochs 0", _mm(epochs=0), ValueError, "epochs"),
    ("model attack batch_size 0", _mm(batch_size=0), ValueError, "batch_size"),
    ("model attack beta 0", _mm(beta=0.0), ValueError, "beta"),
    ("model attack seed negative", _mm(seed=-1), ValueError, "seed"),
    ("model attack classification", _mm(classification="mse"), ValueError, "classification"),
    ("model attack trainable unknown", _mm(trainable=["nope"]), ValueError, "nope"),
    ("model attack data not a pair", lambda m, x, c: manipulate_model(m, x, CenterOfMass()), TypeError, "pair"),
    # detection
    ("detect margin nan", _det(margin=nan), ValueError, "margin"),
    ("detect margin negative", _det(margin=-1.0), ValueError, "margin"),
    ("detect alpha nan", _det(alpha=nan), ValueError, "alpha"),
    ("detect alpha one", _det(alpha=1.0), ValueError, "alpha"),
    ("detect n 1", _det(n=1), ValueError, "n"),
    ("detect n float", _det(n=4.0), TypeError, "n"),
    ("detect input_shape int", _det(input_shape=28), TypeError, "input_shape"),
    ("detect input_shape negative", _det(input_shape=(1, -28, 28)), ValueError, "input_shape"),
    ("detect input_shape string", _det(input_shape="1x28x28"), TypeError, "input_shape"),
    ("detect input_shape huge", _det(input_shape=(3, 100000, 100000)), ValueError, "input_shape"),
    ("detect references empty", _det(references=[]), ValueError, "reference"),
    ("detect references a model", lambda m, x, c: detect_manipulation(m, (1, 28, 28), m, n=4), TypeError,
     "references"),
    ("detect reference in training mode", lambda m, x, c: detect_manipulation(
        m, (1, 28, 28), [_train_mode(m)], n=4), ValueError, "training mode"),
    ("weight noise sigma nan", lambda m, x, c: with_weight_noise(m, nan), ValueError, "sigma"),
    ("weight noise sigmas scalar", lambda m, x, c: weight_noise_test(m, (x, c["y"]), CenterOfMass(), sigmas=0.1),
     TypeError, "sigmas"),
    ("weight noise sigmas negative", lambda m, x, c: weight_noise_test(m, (x, c["y"]), CenterOfMass(),
                                                                       sigmas=[-0.1]), ValueError, "sigmas"),
    # ATEX, geometry, sweeps
    ("atex eps nan", _atex(eps=nan), ValueError, "eps"),
    ("atex temperature 0", _atex(temperature=0.0), ValueError, "temperature"),
    ("atex copies 0", _atex(copies=0), ValueError, "copies"),
    ("atex alpha nan", _atex(alpha=nan), ValueError, "alpha"),
    ("atex shift negative", _atex(shift=-0.1), ValueError, "shift"),
    ("curvature iters 0", lambda m, x, c: principal_curvature(m, x, iters=0), ValueError, "iters"),
    ("curvature betas nan", lambda m, x, c: curvature_vs_beta(m, x, [nan]), ValueError, "betas"),
    ("curvature betas scalar", lambda m, x, c: curvature_vs_beta(m, x, 1.0), TypeError, "betas"),
    ("beta_sweep x_target shape", lambda m, x, c: beta_sweep(m, x, x[:2], **ATTACK), ValueError, "x_target"),
    ("beta_sweep betas nan", lambda m, x, c: beta_sweep(m, x, c["x_target"], betas=[nan], **ATTACK), ValueError,
     "betas"),
    # objectives
    ("TargetMap nan", lambda m, x, c: manipulate_input(m, x, TargetMap(torch.full((N, 28, 28), nan)), **ATTACK),
     ValueError, "NaN"),
    ("TargetMap zero", lambda m, x, c: manipulate_input(m, x, TargetMap(torch.zeros(N, 28, 28)), **ATTACK),
     ValueError, "zero everywhere"),
    ("TargetMap integer", lambda m, x, c: TargetMap(torch.ones(N, 28, 28, dtype=torch.long)), TypeError, "float"),
    ("TargetImage nan", lambda m, x, c: manipulate_input(m, x, TargetImage(c["x_target"] * nan), **ATTACK),
     ValueError, "NaN"),
    ("CenterOfMass point nan", lambda m, x, c: CenterOfMass((nan, 0.0)), ValueError, "point"),
    ("CenterOfMass point string", lambda m, x, c: CenterOfMass("corner"), TypeError, "point"),
    ("TopKSuppression k 0", lambda m, x, c: TopKSuppression(0), ValueError, "k"),
    ("TopKSuppression k too large", lambda m, x, c: manipulate_input(m, x, TopKSuppression(10**6), **ATTACK),
     ValueError, "exceeds"),
    ("RegionHighlight mask of 2s", lambda m, x, c: RegionHighlight(torch.full((28, 28), 2.0)), ValueError, "0/1"),
    ("RegionHighlight empty mask", lambda m, x, c: RegionHighlight(torch.zeros(28, 28)), ValueError, "no feature"),
    ("RegionHighlight mask shape", lambda m, x, c: manipulate_input(
        m, x, RegionHighlight(torch.ones(5, 5)), **ATTACK), ValueError, "mask"),
    ("HideFeatures mask list", lambda m, x, c: HideFeatures([1, 0]), TypeError, "mask"),
    ("transfer methods string", lambda m, x, c: transfer_matrix(m, x, CenterOfMass(), "gradient", **ATTACK),
     TypeError, "methods"),
    ("transfer unknown method", lambda m, x, c: transfer_matrix(m, x, CenterOfMass(), ["gradient", "nope"],
                                                                **ATTACK), ValueError, "nope"),
]


@pytest.mark.parametrize("name, call, expected, fragment", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_bad_option(base, name, call, expected, fragment):
    model, x, y, _ = base
    ctx = {**context(base), "y": y}
    run_case(lambda: call(model, x, ctx), model, x, expected, fragment)


def test_the_table_is_large():
    """The issue's acceptance: at least 200 generated cases in this file alone."""
    takes_target = sum(takes for _, takes in ENTRY_POINTS.values())
    cases = (len(ENTRY_POINTS) * (len(MODEL_KINDS) + len(X_KINDS)) + takes_target * len(TARGET_KINDS)
             + 3 * len(LABEL_KINDS) + len(ENTRY_POINTS) + len(MODEL_ONLY) * (len(MODEL_KINDS) - 1) + len(OPTIONS))
    assert cases >= 200, cases


class Raises(nn.Module):
    """A model whose forward raises ``error`` (after a first layer, as a real failure would)."""

    def __init__(self, error):
        super().__init__()
        self.layer = nn.Linear(784, 10)
        self.error = error

    def forward(self, x):
        self.layer(x.flatten(1))
        raise self.error


@pytest.mark.parametrize("method", ["gradient", "smoothgrad", "integrated_gradients", "occlusion"])
def test_out_of_memory_passes_with_advice_and_other_errors_pass_unchanged(base, method):
    x = base[1]
    oom = Raises(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")).eval()
    with pytest.raises(torch.OutOfMemoryError) as info:
        manipex.explain(oom, x, method)
    assert any("batch" in note for note in getattr(info.value, "__notes__", []))
    bug = Raises(RuntimeError("the user's own assertion failed")).eval()
    with pytest.raises(RuntimeError, match="the user's own assertion failed") as info:
        manipex.explain(bug, x, method)
    assert "check that x has the shape" not in str(info.value)  # not relabelled as a shape problem


def test_a_numpy_integer_target_is_a_class_index(base):
    model, x, _, _ = base
    assert torch.equal(manipex.explain(model, x, "gradient", np.int64(3)), manipex.explain(model, x, "gradient", 3))
