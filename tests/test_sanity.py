"""The model parameter randomisation test (Adebayo et al. 2018) of :mod:`manipex.evaluation.sanity`."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn

import manipex
from manipex.evaluation.sanity import default_layers, model_randomization, randomized_models
from conftest import assert_same_state, state_of

COLUMNS = ["method", "step", "layer", "mode", "metric", "mean", "std"]
METHODS = ["gradient", "guided_backprop"]


@pytest.fixture(scope="module")
def mnist_batch():
    x, _ = manipex.data.load("mnist5k", split="test")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:16]
    return x[idx]


@pytest.fixture(scope="module")
def cascade(mnist_model, mnist_batch):
    return model_randomization(mnist_model, mnist_batch, METHODS, mode="cascading", progress=False)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 12 * 12, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def small_x(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# Adebayo's finding on the trained MNIST CNN

def test_gradient_is_sensitive_to_randomisation_and_guided_backprop_much_less(cascade, mnist_model):
    """Adebayo Fig. 2/4: the gradient map decays towards no similarity as the layers are
    re-initialised from the top; guided backprop stays far more similar to the original.
    Measured (16 test images, 4 image sets x 3 seeds): gradient SSIM 1 -> 0.24..0.33 after the
    logits layer -> 0.05..0.08 fully random; Spearman 0.51..0.57 -> 0.17..0.22; guided backprop
    SSIM 0.78..0.87 -> 0.32..0.51, Spearman 0.76..0.83 -> 0.41..0.48."""
    assert cascade.steps == ("original", "9", "7", "3", "0")  # Linear, Linear, Conv, Conv: top first
    assert cascade.kinds == ("", "Linear", "Linear", "Conv2d", "Conv2d")
    grad_ssim, grad_sp = cascade.score("gradient", "ssim").mean(1), cascade.score("gradient", "spearman").mean(1)
    gbp_ssim, gbp_sp = cascade.score("guided_backprop", "ssim").mean(1), cascade.score("guided_backprop", "spearman").mean(1)
    # the gradient map of the random network is clearly not the trained one's
    assert grad_ssim[-1] < 0.5 * grad_ssim[1] and grad_ssim[-1] < 0.15
    assert grad_sp[-1] < grad_sp[1] - 0.25
    # similarity falls along the cascade (each further layer removes more of the trained model)
    assert (grad_sp[1:].diff() < 0).all()
    # guided backprop is much less sensitive at every step: a direction with a margin, on any trained model
    # (measured gap >= 0.22 on the default model)
    assert (gbp_ssim[1:] > grad_ssim[1:] + 0.15).all(), (gbp_ssim, grad_ssim)
    assert (gbp_sp[1:] > grad_sp[1:] + 0.15).all(), (gbp_sp, grad_sp)
    assert (1 - grad_ssim[-1]) > (1 - gbp_ssim[-1]) + 0.15


def test_original_step_is_one_and_the_table_summarises_the_scores(cascade, mnist_batch):
    n = mnist_batch.shape[0]
    assert cascade.scores.shape == (2, 5, 2, n)
    torch.testing.assert_close(cascade.scores[:, 0], torch.ones(2, 2, n), atol=1e-5, rtol=0)
    table = cascade.table
    assert isinstance(table, pd.DataFrame) and list(table.columns) == COLUMNS
    assert len(table) == 2 * 5 * 2 and set(table["mode"]) == {"cascading"}
    row = table[(table.method == "gradient") & (table.metric == "spearman") & (table.step == 4)].iloc[0]
    assert row.layer == "0"
    assert row["mean"] == pytest.approx(float(cascade.score("gradient", "spearman")[4].double().mean()))
    assert row["std"] == pytest.approx(float(cascade.score("gradient", "spearman")[4].double().std()))
    assert (table[table.step == 0]["mean"] > 0.9999).all()
    # the class explained is the original model's prediction
    assert cascade.target.shape == (n,)


def test_the_figure_renders(cascade, tmp_path):
    fig = cascade.plot()
    axes = fig.get_axes()
    assert len(axes) == 2  # one panel per metric
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["original", "9 (Linear)", "7 (Linear)",
                                                                  "3 (Conv2d)", "0 (Conv2d)"]
    assert len(axes[0].get_lines()) >= 2  # one line per method
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["Gradient", "Guided Backprop"]  # display names
    path = tmp_path / "randomization.png"
    fig.savefig(path, dpi=100)
    assert path.stat().st_size > 10_000


def test_signed_maps_of_the_gradient_lose_their_structure_faster(mnist_model, mnist_batch, cascade):
    signed = model_randomization(mnist_model, mnist_batch, "gradient", metrics="spearman", absolute=False,
                                 progress=False)
    assert not signed.absolute and signed.metrics == ("spearman",)
    s = signed.score("gradient", "spearman").mean(1)
    assert s[0] == pytest.approx(1.0, abs=1e-5)
    # the sign of the gradient follows the top layer: a bound with a margin (measured |rho| < 0.02 after step 1)
    assert abs(float(s[-1])) < 0.1
    assert s[-1] < cascade.score("gradient", "spearman").mean(1)[-1] - 0.1


# ---------------------------------------------------------------------------------------------
# the model passed in, and the randomised copies

def test_the_model_passed_in_is_unchanged(mnist_model, mnist_batch):
    before = state_of(mnist_model)
    rng = torch.get_rng_state()
    model_randomization(mnist_model, mnist_batch[:4], "gradient", mode="independent", progress=False)
    assert_same_state(before, state_of(mnist_model))
    assert not mnist_model.training
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is not consumed either


class PoisonedLinear(nn.Linear):
    """A layer whose re-initialisation puts NaN in its weights: every map of it fails."""

    armed = False

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.armed:
            with torch.no_grad():
                self.weight.fill_(float("nan"))


def test_the_model_is_unchanged_after_an_error_midway():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), PoisonedLinear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    model[1].armed = True
    before = state_of(model)
    # step 1 (the top Linear) runs; step 2 re-initialises the poisoned layer, and the map fails
    with pytest.raises(ValueError, match="NaN"):
        model_randomization(model, torch.rand(2, 12), "gradient", metrics="spearman", progress=False)
    assert_same_state(before, state_of(model))
    assert not any(m.training for m in model.modules())


def test_independent_mode_randomises_one_layer_at_a_time_and_cascading_keeps_them():
    model, x = small_net(), small_x()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    layers = default_layers(model, x)
    assert layers == ["7", "5", "2", "0"]
    drawn = {}
    for name, net in randomized_models(model, x, mode="independent", seed=3):
        assert net is not model
        for layer in layers:
            same = all(torch.equal(v, original[f"{layer}.{k}"]) for k, v in net.get_submodule(layer).state_dict().items())
            assert same == (layer != name), (name, layer)
        drawn[name] = copy.deepcopy(net.get_submodule(name).state_dict())
    done = []
    for name, net in randomized_models(model, x, mode="cascading", seed=3):
        done.append(name)
        for layer in layers:
            same = all(torch.equal(v, original[f"{layer}.{k}"]) for k, v in net.get_submodule(layer).state_dict().items())
            assert same == (layer not in done), (name, layer)
        # a layer gets the same draw in both modes (seeded by the seed and its name)
        for k, v in net.get_submodule(name).state_dict().items():
            assert torch.equal(v, drawn[name][k])
    assert done == layers
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_default_layers_follow_the_forward_pass_not_registration():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)      # registered first, called last
            self.unused = nn.Linear(8, 8)    # never called: nothing to randomise
            self.body = nn.Linear(4, 8)
            self.norm = nn.BatchNorm1d(8)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.head(self.act(self.norm(self.body(x))))

    net = Net().eval()
    assert default_layers(net, torch.rand(2, 4)) == ["head", "norm", "body"]
    assert default_layers(net) == ["norm", "body", "unused", "head"]  # without x: registration order, reversed


def test_a_container_is_one_step():
    model = manipex.models.atex_cnn().eval()
    original = copy.deepcopy(model.state_dict())
    (name, net), = list(randomized_models(model, torch.rand(1, 1, 28, 28), layers=["features"]))
    assert name == "features"
    changed = {k.split(".")[0] for k, v in net.state_dict().items() if not torch.equal(v, original[k])}
    assert changed == {"features"}


def test_deterministic_under_a_seed():
    model, x = small_net(), small_x()
    a = model_randomization(model, x, "gradient", seed=5, progress=False)
    b = model_randomization(model, x, "gradient", seed=5, progress=False)
    c = model_randomization(model, x, "gradient", seed=6, progress=False)
    assert torch.equal(a.scores, b.scores)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert not torch.equal(a.scores[:, 1:], c.scores[:, 1:])


def test_target_and_method_options_are_used():
    model, x = small_net(), small_x()
    r = model_randomization(model, x, "integrated_gradients", target=2, method_options={"steps": 4},
                            mode="independent", metrics=("spearman", "pcc"), progress=False)
    assert r.method_options == {"integrated_gradients": {"steps": 4}}
    assert torch.equal(r.target, torch.full((3,), 2))
    assert r.steps == ("original", "7", "5", "2", "0") and r.metrics == ("spearman", "pcc")
    several = model_randomization(model, x, ["gradient", "integrated_gradients"],
                                  method_options={"integrated_gradients": {"steps": 4}}, progress=False)
    assert several.method_options == {"gradient": {}, "integrated_gradients": {"steps": 4}}


# ---------------------------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"method": "saliency"}, ValueError, r"method must be one of .*'gradient'"),
    ({"method": []}, TypeError, "method must be"),
    ({"method": ["gradient", "gradient"]}, ValueError, "twice"),
    ({"mode": "top_down"}, ValueError, r"mode must be one of 'cascading', 'independent'"),
    ({"metrics": ("ssim", "hog")}, ValueError, r"metrics must be one of 'ssim', 'spearman'"),
    ({"metrics": ["ssim", "ssim"]}, ValueError, "twice"),
    ({"layers": ["7", "fc"]}, ValueError, r"'fc' is not a module .*valid layers \(top first\): '7', '5', '2', '0'"),
    ({"layers": ["1"]}, ValueError, r"'1' is not a module"),  # a ReLU: nothing to re-initialise
    ({"layers": []}, ValueError, "layers is empty"),
    ({"layers": ["7", "7"]}, ValueError, "given twice"),
    ({"layers": [7]}, TypeError, "module names"),
    ({"method_options": {"stepz": 3}, "method": "integrated_gradients"}, TypeError, "unknown option 'stepz'"),
    ({"method_options": {"lrp": {}}, "method": ["gradient", "guided_backprop"]}, ValueError, "'lrp' is not one of"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"absolute": "yes"}, TypeError, "absolute must be True or False"),
    ({"target": 3}, ValueError, "target 3 is out of range"),
])
def test_bad_options_raise_clear_errors(kwargs, error, pattern):
    model = small_net()
    before = state_of(model)
    with pytest.raises(error, match=pattern) as info:
        model_randomization(model, small_x(), **{"progress": False, **kwargs})
    assert "model_randomization" in str(info.value) or "explain" in str(info.value)
    assert_same_state(before, state_of(model))


def test_bad_models_and_inputs_raise_clear_errors():
    model = small_net()
    with pytest.raises(ValueError, match="training mode"):
        model_randomization(model.train(), small_x(), progress=False)
    model.eval()
    x = small_x()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        model_randomization(model, x, progress=False)
    with pytest.raises(ValueError, match="empty batch"):
        model_randomization(model, small_x()[:0], progress=False)
    mlp = nn.Sequential(nn.Linear(5, 3)).eval()
    with pytest.raises(ValueError, match="'ssim' compares images"):
        model_randomization(mlp, torch.rand(2, 5), progress=False)
    r = model_randomization(mlp, torch.rand(2, 5), metrics="spearman", progress=False)
    assert r.steps == ("original", "0")
    with pytest.raises(ValueError, match="nothing to re-initialise"):
        model_randomization(nn.Sequential(nn.Flatten()).eval(), torch.rand(2, 5), metrics="spearman", progress=False)
