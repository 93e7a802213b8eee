"""Models that return a dict, a tuple or an object with ``.logits`` (issue 24).

Each test model splits the small CNN of conftest into ``features`` (its first five modules,
giving ``(N, 6, 2, 2)`` maps) and ``head`` (the rest): the very weights of ``small_cnn()``, so
every map must equal that of ``Split``, the same network returning its logits tensor (and,
but for Grad-CAM, whose default layer depends on the module structure, the plain CNN's).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import warnings
from typing import Optional

import pytest
import torch
import torch.fx
from torch import Tensor, nn

import manipex
from manipex.attacks import evaluate_manipulation, manipulate_input, manipulate_model
from manipex.models import Logits, ModelOutputWarning
from manipex.objectives import CenterOfMass, TargetImage

from conftest import CNN_METHODS, assert_same_state, small_cnn, state_of

SHAPE = (2, 1, 8, 8)


@dataclasses.dataclass
class ModelOutput(collections.OrderedDict):
    """Like Hugging Face's ``ModelOutput``: a dataclass and an OrderedDict of its non-None fields."""

    logits: Optional[Tensor] = None
    hidden: Optional[Tensor] = None
    loss: Optional[Tensor] = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value


class Split(nn.Module):
    """The small CNN as ``head(features(x))``; returns the logits tensor."""

    def __init__(self, act: type = nn.ReLU, **kw) -> None:
        super().__init__()
        net = small_cnn(act, **kw)
        self.features, self.head = net[:5], net[5:]
        self.eval()

    def parts(self, x):
        f = self.features(x)
        return self.head(f), f

    def forward(self, x):
        return self.parts(x)[0]


class DictNet(Split):
    def forward(self, x):
        logits, f = self.parts(x)
        return {"logits": logits, "hidden": f}


class ObjectNet(Split):
    def forward(self, x):
        logits, f = self.parts(x)
        return ModelOutput(logits=logits, hidden=f)


class TupleNet(Split):
    def forward(self, x):
        return self.parts(x)


class FlatTupleNet(Split):
    """(logits, flattened features): two (N, K)-shaped tensors, so no automatic choice."""

    def forward(self, x):
        logits, f = self.parts(x)
        return logits, f.flatten(1)


KINDS = {"dict": DictNet, "object": ObjectNet, "tuple": TupleNet}


def inputs(n: int = SHAPE[0]) -> Tensor:
    torch.manual_seed(2)
    return torch.rand((n,) + SHAPE[1:], dtype=torch.float64) * 0.8 + 0.1


def options(method: str, patterns) -> dict:
    """Small options for every method (as conftest's method_options for the small CNN)."""
    return {
        "integrated_gradients": {"steps": 4},
        "smoothgrad": {"samples": 3, "seed": 1, "sigma": 0.1},
        "occlusion": {"window": 3, "stride": 2},
        "pattern_attribution": {"patterns": patterns},
    }.get(method, {})


def fitted(model: nn.Module):
    """PatternAttribution patterns of ``model``, fitted on the model that returns logits (they
    are keyed by its layers' fx names: a wrapped model's patterns are fitted on the wrapper)."""
    torch.manual_seed(3)
    return manipex.fit_patterns(model, torch.rand((64,) + SHAPE[1:], dtype=torch.float64))


def caught(call):
    """``call()``'s result and the ModelOutputWarnings it gave."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = call()
    return result, [w for w in seen if issubclass(w.category, ModelOutputWarning)]


@pytest.fixture(scope="module")
def reference():
    """Every method's map of ``Split``, which returns the logits tensor (patterns fitted on it)."""
    model, x = Split(), inputs()
    patterns = fitted(model)
    return {m: manipex.explain(model, x, m, **options(m, patterns)) for m in CNN_METHODS}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_method_gives_the_plain_maps_and_warns_once(kind, reference):
    model, x = KINDS[kind](), inputs()
    patterns = fitted(Logits(model, 0 if kind == "tuple" else "logits"))  # the fx names of the wrapper's layers
    before = state_of(model)

    def run():
        return {m: manipex.explain(model, x, m, **options(m, patterns)) for m in CNN_METHODS}

    maps, seen = caught(run)
    for method, h in maps.items():
        torch.testing.assert_close(h, reference[method], rtol=1e-10, atol=1e-12, msg=method)
    assert len(seen) == 1, [str(w.message) for w in seen]
    label = {"dict": "['logits']", "object": ".logits", "tuple": "[0]"}[kind]
    returns = {"dict": "dict", "object": "ModelOutput", "tuple": "tuple"}[kind]
    assert str(seen[0].message) == (f"{type(model).__name__} returns {returns}; manipex uses its {label} "
                                     "(pass output=... to choose another)")
    assert seen[0].filename == __file__  # it points at the user's call
    _, again = caught(lambda: manipex.explain(model, x, "gradient"))
    assert again == []  # once per model object
    _, other = caught(lambda: manipex.explain(KINDS[kind](), x, "gradient"))
    assert len(other) == 1  # a new model object is learned (and said) anew
    assert_same_state(before, state_of(model))


def test_a_model_returning_a_tensor_is_used_as_it_is_without_a_warning(reference):
    model, x = small_cnn(), inputs()
    h, seen = caught(lambda: manipex.explain(model, x, "gradient"))
    assert seen == []
    torch.testing.assert_close(h, reference["gradient"], rtol=1e-10, atol=1e-12)
    from manipex.models import interfaces

    assert interfaces._RETURNS_TENSOR[model] is True
    assert interfaces.logits_model(model, x, where="test") is model  # no wrapper, no forward


def test_the_learning_forward_runs_once_per_model_on_one_sample():
    model, x = DictNet(), inputs(3)
    sizes = []
    handle = model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        caught(lambda: manipex.explain(model, x, "gradient"))
        caught(lambda: manipex.explain(model, x, "gradient"))
    finally:
        handle.remove()
    assert sizes == [1, 3, 3]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_wrong_selection_raises_a_clear_error_and_leaves_the_model(kind):
    model, x = KINDS[kind](), inputs()
    before = state_of(model)
    with pytest.raises(ValueError) as info:
        manipex.explain(model, x, "gradient", output="hidden")
    text = str(info.value)
    assert text.startswith("explain(method='gradient'): ")
    assert type(model).__name__ in text and "output=" in text
    if kind == "tuple":  # no attribute or key 'hidden': its items are listed
        assert "tuple" in text and "no attribute or key 'hidden'" in text
        assert "[0] a tensor of shape (1, 5)" in text and "[1] a tensor of shape (1, 6, 2, 2)" in text
    else:  # found, but feature maps: said so, with the keys/attributes
        assert "its .hidden is a tensor of shape (1, 6, 2, 2)" in text or "['hidden']" in text
        assert "logits (a tensor of shape (1, 5))" in text and "hidden (a tensor" in text
        assert ("ModelOutput" if kind == "object" else "dict") in text
    assert_same_state(before, state_of(model))
    with pytest.raises(ValueError, match="no attribute or key 'scores'"):
        manipex.explain(model, x, "lrp", output="scores")
    assert_same_state(before, state_of(model))


def test_an_index_selects_from_a_tuple(reference):
    model, x = TupleNet(), inputs()
    h, seen = caught(lambda: manipex.explain(model, x, "lrp", output=0))
    assert seen == []  # chosen explicitly: nothing to say
    torch.testing.assert_close(h, reference["lrp"], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"its \[1\] is a tensor of shape \(1, 6, 2, 2\)"):
        manipex.explain(model, x, "gradient", output=1)
    with pytest.raises(ValueError, match=r"no item \[2\] \(it has 2\)"):
        manipex.explain(model, x, "gradient", output=2)
    h = manipex.explain(model, x, "gradient", output=lambda out: out[0])
    torch.testing.assert_close(h, reference["gradient"], rtol=1e-10, atol=1e-12)


def test_an_ambiguous_tuple_asks_for_a_choice(reference):
    model, x = FlatTupleNet(), inputs()
    before = state_of(model)
    with pytest.raises(ValueError, match="cannot|no part that manipex can tell") as info:
        manipex.explain(model, x, "gradient")
    assert "[0] a tensor of shape (1, 5)" in str(info.value) and "[1] a tensor of shape (1, 24)" in str(info.value)
    assert_same_state(before, state_of(model))
    h = manipex.explain(model, x, "gradient", output=0)
    torch.testing.assert_close(h, reference["gradient"], rtol=1e-10, atol=1e-12)


def test_bad_output_arguments_are_refused():
    model, x = DictNet(), inputs()
    for bad in (1.5, True, torch.zeros(1), ["logits"]):
        with pytest.raises(TypeError, match="output must be"):
            manipex.explain(model, x, "gradient", output=bad)
    with pytest.raises(TypeError, match="output must be"):
        Logits(model, None)
    with pytest.raises(TypeError, match="nn.Module"):
        Logits(lambda x: x)
    with pytest.raises(ValueError, match="no attribute or key 'logits'"):
        manipex.explain(small_cnn(), x, "gradient", output="logits")  # a tensor has no logits


def test_create_graph_maps_of_a_dict_model_differentiate_as_the_plain_ones():
    x = inputs()
    plain, wrapped = Split(nn.Softplus, beta=3.0), DictNet(nn.Softplus, beta=3.0)
    grads = []
    for model in (plain, wrapped):
        xg = x.clone().requires_grad_(True)
        h, _ = caught(lambda: manipex.explain(model, xg, "lrp", create_graph=True, composite="epsilon"))
        assert h.requires_grad
        grads.append(torch.autograd.grad((h ** 2).sum(), [xg] + list(model.parameters())))
    assert grads[0][0].abs().sum() > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcam_layer_names_of_the_wrapped_model_resolve(reference):
    model, x = DictNet(), inputs()
    h, _ = caught(lambda: manipex.explain(model, x, "gradcam", layer="features.3"))
    plain = manipex.explain(small_cnn(), x, "gradcam", layer="3")
    torch.testing.assert_close(h, plain, rtol=1e-10, atol=1e-12)
    plain = manipex.explain(Split(), x, "gradcam", layer="features.3")
    torch.testing.assert_close(h, plain, rtol=1e-10, atol=1e-12)


def test_manipulate_input_runs_on_a_dict_model_as_on_the_plain_one():
    x = inputs()
    settings = dict(steps=3, eps=0.2, progress=False, keep_best=False)
    plain = manipulate_input(small_cnn(), x, TargetImage(x.roll(1, 0)), "gradient", **settings)
    model = DictNet()
    before = state_of(model)
    result, seen = caught(lambda: manipulate_input(model, x, TargetImage(x.roll(1, 0)), "gradient", **settings))
    assert len(seen) == 1 and result.steps_run == 3
    torch.testing.assert_close(result.x_adv, plain.x_adv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.maps_after, plain.maps_after, rtol=1e-10, atol=1e-12)
    assert_same_state(before, state_of(model))


def test_manipulate_model_returns_the_users_kind_of_model():
    x = inputs(6)
    y = torch.arange(6) % 5
    settings = dict(epochs=1, batch_size=3, lr=1e-3, progress=False, trainable=["head"])
    plain = manipulate_model(Split(), (x, y), CenterOfMass(), **settings)
    model = DictNet()
    before = state_of(model)
    result, seen = caught(lambda: manipulate_model(model, (x, y), CenterOfMass(), **settings))
    assert len(seen) == 1
    assert type(result.model) is DictNet and not result.model.training
    assert result.trainable == plain.trainable == [n for n, _ in model.named_parameters() if n.startswith("head.")]
    assert result.model.state_dict().keys() == model.state_dict().keys()
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[k], v, rtol=1e-10, atol=1e-12)
    assert isinstance(result.model(x), dict)  # its output as it was
    assert not torch.equal(result.model.head[1].weight, model.head[1].weight)
    assert_same_state(before, state_of(model))
    evaluation, _ = caught(lambda: evaluate_manipulation(model, result.model, (x, y), CenterOfMass(),
                                                         methods=["gradient"]))
    assert evaluation.summary["class_agreement"] >= 0


def test_one_warning_across_entry_points_for_one_model():
    model, x = ObjectNet(), inputs()
    _, seen = caught(lambda: (manipex.explain(model, x, "gradient"),
                              manipulate_input(model, x, CenterOfMass(), "gradient", steps=1, progress=False)))
    assert len(seen) == 1


def test_logits_traces_with_fx_and_follows_the_wrapped_models_mode():
    for kind, net in KINDS.items():
        model = net()
        wrapper = Logits(model, 0 if kind == "tuple" else "logits")
        x = inputs()
        traced = torch.fx.symbolic_trace(wrapper)
        torch.testing.assert_close(traced(x), small_cnn()(x), rtol=0, atol=0)
        assert [n.op for n in traced.graph.nodes].count("call_module") == 10
    with pytest.raises(ValueError, match="while torch.fx traces it"):  # a tuple's shapes are unknown there
        torch.fx.symbolic_trace(Logits(TupleNet(), "auto"))
    wrapper = Logits(TupleNet(), "auto")
    wrapper(inputs())  # seen once on real tensors: its choice holds while tracing
    assert wrapper.resolved == ("index", 0)
    torch.testing.assert_close(torch.fx.symbolic_trace(wrapper)(inputs()), small_cnn()(inputs()), rtol=0, atol=0)
    model = DictNet()
    wrapper = Logits(model)
    assert wrapper.training is False and wrapper.model is model
    wrapper.train()
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert wrapper.training is False
    assert copy.deepcopy(wrapper).training is False
    assert dict(wrapper.named_parameters()).keys() == {f"model.{n}" for n, _ in model.named_parameters()}


def test_hugging_face_convnext():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                         num_labels=3, image_size=32)
    model = transformers.ConvNextForImageClassification(config).eval()
    x = torch.rand(2, 3, 32, 32)
    before = state_of(model)
    h, seen = caught(lambda: manipex.explain(model, x, "gradient"))
    assert len(seen) == 1
    assert str(seen[0].message).startswith("ConvNextForImageClassification returns ImageClassifierOutput")
    assert "manipex uses its .logits (pass output=... to choose another)" in str(seen[0].message)
    xg = x.clone().requires_grad_(True)
    logits = model(xg).logits
    (expected,) = torch.autograd.grad(logits.gather(1, logits.argmax(1)[:, None]).sum(), xg)
    torch.testing.assert_close(h, expected)
    ig, again = caught(lambda: manipex.explain(model, x, "integrated_gradients", steps=4))
    assert again == [] and ig.shape == x.shape and torch.isfinite(ig).all() and ig.abs().sum() > 0
    with pytest.raises(ValueError, match="hidden_states is None"):
        manipex.explain(model, x, "gradient", output="hidden_states")
    assert_same_state(before, state_of(model))


def test_the_split_reference_is_the_plain_cnn_but_for_gradcam(reference):
    plain, x = small_cnn(), inputs()
    patterns = fitted(plain)
    for method in CNN_METHODS:
        if method != "gradcam":
            h = manipex.explain(plain, x, method, **options(method, patterns))
            torch.testing.assert_close(h, reference[method], rtol=1e-10, atol=1e-12, msg=method)
